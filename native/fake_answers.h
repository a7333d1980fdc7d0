// The DNS fast path: A answers for names that already hold a fake address,
// made on the socket's own wake-up without a call into JavaScript.
//
// JavaScript stays the owner of the fake-IP map (src/dns/pool.ts): it puts a
// name here once its mapping is durable and removes it when the mapping goes,
// so this table is a cache of the pool, never a second source of truth. What
// the fast path answers is exactly what src/dns/wire.ts buildAResponse would
// (test/unit/dns/fastAnswers.test.ts compares the bytes); every query that
// is not a plain A/IN question for a listed name from a trusted source is
// left to JavaScript untouched.
//
// Plain C++ (no napi.h): the N-API class lives in dgram_batch_addon.cc. Used
// on the JS thread only, so it takes no locks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace fp {

class FakeAnswers {
 public:
  explicit FakeAnswers(uint32_t ttl) : ttl_(ttl) {}

  // name: lower-case presentation form without the trailing dot (the pool's key).
  void Set(const std::string& name, uint32_t ip);
  void Delete(const std::string& name);
  void Clear();
  size_t size() const { return map_.size(); }

  // Which IPv4 sources (host order) may be answered here: every one, or
  // `addrs` and, with `loopback`, 127.0.0.0/8. Everyone else goes to
  // JavaScript (its policy and rate limits). Nobody until this is called.
  void SetTrusted(const std::vector<uint32_t>& addrs, bool loopback, bool all);
  bool Trusted(uint32_t addr) const {
    return all_trusted_ || (loopback_trusted_ && addr >> 24 == 127) || trusted_.count(addr) != 0;
  }

  // Writes the answer to query[0, len) from the IPv4 source `src` (host
  // order) into out (room for kMaxAnswer bytes) and returns its length, or 0
  // when JavaScript must answer it (an untrusted source included). Counts
  // the answer and notes the name as used.
  size_t Answer(const uint8_t* query, size_t len, uint32_t src, uint8_t* out);

  // Names answered here since the last call (each once), for the pool's LRU.
  std::vector<std::string> TakeHits();

  uint64_t answered() const { return answered_; }

  // The payload size our OPT advertises: src/dns/wire.ts OUR_UDP_PAYLOAD
  // (checked at load through the layout, src/native.ts checkLayout).
  static constexpr uint16_t kOurUdpPayload = 1232;

  // Header + question (≤ 4 + 255) + A record + OPT.
  static constexpr size_t kMaxAnswer = 12 + 259 + 16 + 11;

 private:
  struct Entry {
    uint32_t ip;
    bool hit;
  };
  std::unordered_map<std::string, Entry> map_;
  std::unordered_set<uint32_t> trusted_;
  bool all_trusted_ = false;
  bool loopback_trusted_ = false;
  uint32_t ttl_;
  std::vector<std::string> hits_;
  std::string key_;  // reused: a lookup allocates nothing
  uint64_t answered_ = 0;
};

}  // namespace fp
