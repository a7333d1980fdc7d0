#include "fake_answers.h"

#include <cstring>

namespace fp {
namespace {

constexpr size_t kHeader = 12;
constexpr size_t kMaxNameWire = 255;
constexpr uint16_t kTypeA = 1;
constexpr uint16_t kTypeOpt = 41;
constexpr uint16_t kClassIn = 1;
constexpr uint16_t kFlagQr = 0x8000;
constexpr uint16_t kFlagRa = 0x0080;
constexpr uint16_t kFlagRd = 0x0100;
constexpr uint16_t kFlagCd = 0x0010;
constexpr uint16_t kEdnsDo = 0x8000;

uint16_t Get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
void Put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
void Put32(uint8_t* p, uint32_t v) {
  Put16(p, static_cast<uint16_t>(v >> 16));
  Put16(p + 2, static_cast<uint16_t>(v));
}

}  // namespace

void FakeAnswers::Set(const std::string& name, uint32_t ip) {
  auto it = map_.find(name);
  if (it == map_.end()) {
    map_.emplace(name, Entry{ip, false});
  } else {
    it->second.ip = ip;
  }
}

void FakeAnswers::Delete(const std::string& name) { map_.erase(name); }

void FakeAnswers::Clear() {
  map_.clear();
  hits_.clear();
}

void FakeAnswers::SetTrusted(const std::vector<uint32_t>& addrs, bool loopback, bool all) {
  trusted_.clear();
  trusted_.insert(addrs.begin(), addrs.end());
  loopback_trusted_ = loopback;
  all_trusted_ = all;
}

// The same checks as wire.ts parseQuery, narrowed to what the fast path
// answers: a QUERY with one question and nothing else but at most one OPT
// (version 0, owned by the root); a name of plain labels; A/IN. Anything
// else — including what parseQuery would reject — returns 0 for JavaScript.
size_t FakeAnswers::Answer(const uint8_t* q, size_t len, uint32_t src, uint8_t* out) {
  if (len < kHeader || !Trusted(src)) return 0;
  const uint16_t flags = Get16(q + 2);
  if ((flags & kFlagQr) != 0 || ((flags >> 11) & 0xf) != 0) return 0;
  if (Get16(q + 4) != 1 || Get16(q + 6) != 0 || Get16(q + 8) != 0) return 0;
  const uint16_t arcount = Get16(q + 10);
  if (arcount > 1) return 0;

  key_.clear();
  size_t off = kHeader;
  for (;;) {
    if (off >= len) return 0;
    const uint8_t l = q[off];
    if (l == 0) {
      off++;
      break;
    }
    if ((l & 0xc0) != 0) return 0;
    const size_t start = off + 1;
    const size_t stop = start + l;
    if (stop > len || stop + 1 - kHeader > kMaxNameWire) return 0;
    if (!key_.empty()) key_.push_back('.');
    for (size_t i = start; i < stop; i++) {
      uint8_t c = q[i];
      if (c <= 0x20 || c >= 0x7f || c == 0x2e || c == 0x5c) return 0;  // not plain: JavaScript forwards it
      if (c >= 0x41 && c <= 0x5a) c = static_cast<uint8_t>(c + 0x20);
      key_.push_back(static_cast<char>(c));
    }
    off = stop;
  }
  if (key_.empty() || off + 4 > len) return 0;
  if (Get16(q + off) != kTypeA || Get16(q + off + 2) != kClassIn) return 0;
  const size_t question_end = off + 4;

  bool edns = false;
  uint16_t do_bit = 0;
  if (arcount == 1) {
    off = question_end;
    // Owner: the root (one zero byte); type OPT; version 0; rdata within the message.
    if (off + 11 > len || q[off] != 0) return 0;
    if (Get16(q + off + 1) != kTypeOpt) return 0;
    const uint8_t version = q[off + 6];
    if (version != 0) return 0;
    do_bit = Get16(q + off + 7) & kEdnsDo;
    if (off + 11 + Get16(q + off + 9) > len) return 0;
    edns = true;
  }

  auto it = map_.find(key_);
  if (it == map_.end()) return 0;
  Entry& e = it->second;
  if (!e.hit) {
    e.hit = true;
    hits_.push_back(key_);
  }

  const size_t qlen = question_end - kHeader;
  std::memcpy(out, q, 2);  // id
  Put16(out + 2, static_cast<uint16_t>(kFlagQr | kFlagRa | (flags & (kFlagRd | kFlagCd))));
  Put16(out + 4, 1);
  Put16(out + 6, 1);
  Put16(out + 8, 0);
  Put16(out + 10, edns ? 1 : 0);
  std::memcpy(out + kHeader, q + kHeader, qlen);  // the question as asked (0x20 case kept)
  uint8_t* a = out + kHeader + qlen;
  Put16(a, 0xc00c);
  Put16(a + 2, kTypeA);
  Put16(a + 4, kClassIn);
  Put32(a + 6, ttl_);
  Put16(a + 10, 4);
  Put32(a + 12, e.ip);
  size_t n = kHeader + qlen + 16;
  if (edns) {
    uint8_t* o = out + n;
    o[0] = 0;
    Put16(o + 1, kTypeOpt);
    Put16(o + 3, FakeAnswers::kOurUdpPayload);
    o[5] = 0;  // extended rcode
    o[6] = 0;  // version
    Put16(o + 7, do_bit);
    Put16(o + 9, 0);
    n += 11;
  }
  answered_++;
  return n;
}

std::vector<std::string> FakeAnswers::TakeHits() {
  std::vector<std::string> out;
  out.swap(hits_);
  for (const std::string& name : out) {
    auto it = map_.find(name);
    if (it != map_.end()) it->second.hit = false;
  }
  return out;
}

}  // namespace fp
