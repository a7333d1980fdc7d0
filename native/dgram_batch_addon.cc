// N-API glue for fp::DgramBatchSocket (dgram_batch.h): the `DgramSocket`
// ObjectWrap (surface declared in src/native.ts). The fd is polled on the
// Node event loop (uv_poll, no extra thread, no cross-thread hop): on each
// wake-up it drains up to `rounds` recvmmsg batches, each handed to JS in ONE
// call as (bytes, meta, count). Sends take a whole batch per call (sendmmsg).
#include "dgram_batch_addon.h"

#include <arpa/inet.h>
#include <napi.h>
#include <uv.h>

#include <cstring>
#include <memory>
#include <vector>

#include "dgram_batch.h"
#include "fake_answers.h"
#include "js_read_poll.h"
#include "napi_args.h"
#include "napi_errors.h"

namespace fakeproxy {
namespace {

uint32_t OptU32(const Napi::Object& o, const char* key, uint32_t def, uint32_t lo, uint32_t hi) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) return def;
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= lo && d <= hi)) return def;
  return static_cast<uint32_t>(d);
}

// Marks FakeAnswers wrappers, so setFastPath can check what it is given.
constexpr napi_type_tag kFakeAnswersTag = {0x6661'6b65'616e'7377ULL, 0x6572'7364'6e73'0001ULL};

// `FakeAnswers` (surface in src/native.ts NativeFakeAnswers): the fast-path
// table of fake_answers.h, shared by the DNS sockets it is attached to.
class FakeAnswersJs : public Napi::ObjectWrap<FakeAnswersJs> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FakeAnswers",
                       {
                           InstanceMethod<&FakeAnswersJs::Set>("set"),
                           InstanceMethod<&FakeAnswersJs::Delete>("delete"),
                           InstanceMethod<&FakeAnswersJs::Clear>("clear"),
                           InstanceMethod<&FakeAnswersJs::SetTrusted>("setTrusted"),
                           InstanceMethod<&FakeAnswersJs::AnswerJs>("answer"),
                           InstanceMethod<&FakeAnswersJs::TakeHits>("takeHits"),
                           InstanceMethod<&FakeAnswersJs::Stats>("stats"),
                       });
  }

  static FakeAnswersJs* From(const Napi::Value& v) {
    if (!v.IsObject()) return nullptr;
    Napi::Object o = v.As<Napi::Object>();
    if (!o.CheckTypeTag(&kFakeAnswersTag)) return nullptr;
    return Unwrap(o);
  }

  explicit FakeAnswersJs(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FakeAnswersJs>(info) {
    Napi::Env env = info.Env();
    Napi::Object o;
    if (!OptionsArg(info, false, "new FakeAnswers({ ttl })", &o)) return;
    double ttl = 0;
    if (!IntegerOption(env, o, "FakeAnswers", "ttl", 0, 2147483647, &ttl)) return;
    table_ = std::make_unique<fp::FakeAnswers>(static_cast<uint32_t>(ttl));
    info.This().As<Napi::Object>().TypeTag(&kFakeAnswersTag);
  }

  fp::FakeAnswers* table() { return table_.get(); }

 private:
  // set(name, ip): ip a host-order IPv4 word.
  Napi::Value Set(const Napi::CallbackInfo& info) {
    double ip = 0;
    if (info.Length() < 2 || !info[0].IsString() || !IntegerIn(info[1], 0, 4294967295.0, &ip)) {
      ThrowArg(info.Env(), "FakeAnswers.set(name, ip)");
      return info.Env().Undefined();
    }
    table_->Set(info[0].As<Napi::String>().Utf8Value(), static_cast<uint32_t>(ip));
    return info.Env().Undefined();
  }

  Napi::Value Delete(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsString()) {
      ThrowArg(info.Env(), "FakeAnswers.delete(name)");
      return info.Env().Undefined();
    }
    table_->Delete(info[0].As<Napi::String>().Utf8Value());
    return info.Env().Undefined();
  }

  Napi::Value Clear(const Napi::CallbackInfo& info) {
    table_->Clear();
    return info.Env().Undefined();
  }

  // setTrusted(addrs: host-order IPv4 words, loopback: boolean, all: boolean)
  Napi::Value SetTrusted(const Napi::CallbackInfo& info) {
    if (info.Length() < 3 || !info[0].IsArray() || !info[1].IsBoolean() || !info[2].IsBoolean()) {
      ThrowArg(info.Env(), "FakeAnswers.setTrusted(addrs, loopback, all)");
      return info.Env().Undefined();
    }
    Napi::Array a = info[0].As<Napi::Array>();
    std::vector<uint32_t> addrs;
    for (uint32_t i = 0; i < a.Length(); i++) {
      double d = 0;
      if (!IntegerIn(a.Get(i), 0, 4294967295.0, &d)) {
        ThrowArg(info.Env(), "FakeAnswers.setTrusted: addresses are host-order IPv4 words");
        return info.Env().Undefined();
      }
      addrs.push_back(static_cast<uint32_t>(d));
    }
    table_->SetTrusted(addrs, info[1].As<Napi::Boolean>().Value(), info[2].As<Napi::Boolean>().Value());
    return info.Env().Undefined();
  }

  // answer(query: Buffer, source: number): what a socket would send back to
  // that IPv4 source, or undefined when the query goes to JavaScript.
  Napi::Value AnswerJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    double src = 0;
    if (info.Length() < 2 || !info[0].IsBuffer() || !IntegerIn(info[1], 0, 4294967295.0, &src)) {
      ThrowArg(env, "FakeAnswers.answer(query, source)");
      return env.Undefined();
    }
    auto q = info[0].As<Napi::Buffer<uint8_t>>();
    uint8_t out[fp::FakeAnswers::kMaxAnswer];
    size_t n = table_->Answer(q.Data(), q.Length(), static_cast<uint32_t>(src), out);
    if (n == 0) return env.Undefined();
    return Napi::Buffer<uint8_t>::Copy(env, out, n);
  }

  Napi::Value TakeHits(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::vector<std::string> hits = table_->TakeHits();
    Napi::Array r = Napi::Array::New(env, hits.size());
    for (uint32_t i = 0; i < hits.size(); i++) r.Set(i, Napi::String::New(env, hits[i]));
    return r;
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object r = Napi::Object::New(env);
    r.Set("entries", Napi::Number::New(env, static_cast<double>(table_->size())));
    r.Set("answered", Napi::Number::New(env, static_cast<double>(table_->answered())));
    return r;
  }

  std::unique_ptr<fp::FakeAnswers> table_;
};

class DgramSocketJs : public Napi::ObjectWrap<DgramSocketJs> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DgramSocket",
                       {
                           InstanceMethod<&DgramSocketJs::Start>("start"),
                           InstanceMethod<&DgramSocketJs::Send>("send"),
                           InstanceMethod<&DgramSocketJs::Address>("address"),
                           InstanceMethod<&DgramSocketJs::Stats>("stats"),
                           InstanceMethod<&DgramSocketJs::SetFastPath>("setFastPath"),
                           InstanceMethod<&DgramSocketJs::Close>("close"),
                       });
  }

  explicit DgramSocketJs(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DgramSocketJs>(info) {
    Napi::Env env = info.Env();
    Napi::Object o;
    if (!OptionsArg(info, false, "new DgramSocket(options) needs { host, port }", &o)) return;
    Napi::Value host = o.Get("host");
    if (!host.IsString()) {
      ThrowArg(env, "DgramSocket: host must be an IP address string");
      return;
    }
    uint32_t port = OptU32(o, "port", 0, 0, 65535);
    batch_ = static_cast<int>(OptU32(o, "batch", 64, 1, 1024));
    rounds_ = static_cast<int>(OptU32(o, "rounds", 4, 1, 1024));
    uint32_t slot = OptU32(o, "maxDatagram", 65535, 512, 65535);
    int rcvbuf = static_cast<int>(OptU32(o, "recvBufferBytes", 0, 0, 1u << 30));
    int sndbuf = static_cast<int>(OptU32(o, "sendBufferBytes", 0, 0, 1u << 30));
    sock_ = std::make_unique<fp::DgramBatchSocket>(batch_, slot);
    fp::DgramError e;
    std::string h = host.As<Napi::String>().Utf8Value();
    if (!sock_->Open(h, static_cast<uint16_t>(port), rcvbuf, sndbuf, &e)) {
      ThrowSys(env, e.err, e.syscall,
               std::string(e.syscall) + " " + h + ":" + std::to_string(port) + ": " + strerror(e.err));
      sock_.reset();
    }
  }

  ~DgramSocketJs() override {
    finalizing_ = true;
    StopPoll();
  }

 private:
  // start(onBatch(bytes: Buffer, meta: Uint32Array, count: number)): begin polling.
  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (poll_.StartBatches(info, sock_ ? sock_->fd() : -1, this, OnPoll, "DgramSocket", "the UDP socket")) {
      Ref();  // alive while polled: only close() lets it go
    }
    return info.Env().Undefined();
  }

  // send(bytes: Buffer, meta: Uint32Array, count): datagrams the kernel took.
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsBuffer() || !info[1].IsTypedArray() || !info[2].IsNumber()) {
      ThrowArg(env, "DgramSocket.send(bytes, meta, count)");
      return env.Undefined();
    }
    auto bytes = info[0].As<Napi::Buffer<uint8_t>>();
    auto meta = info[1].As<Napi::Uint32Array>();
    int n = info[2].As<Napi::Number>().Int32Value();
    if (n < 0 || static_cast<size_t>(n) * fp::kDgramMetaWords > meta.ElementLength()) {
      ThrowArg(env, "DgramSocket.send: count exceeds the metadata");
      return env.Undefined();
    }
    if (!sock_) return Napi::Number::New(env, 0);
    int ok = sock_->Send(bytes.Data(), bytes.Length(), meta.Data(), n);
    return Napi::Number::New(env, ok);
  }

  // setFastPath(answers: FakeAnswers | null): queries the table answers
  // leave from Drain without reaching JavaScript.
  Napi::Value SetFastPath(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || (!info[0].IsNull() && FakeAnswersJs::From(info[0]) == nullptr)) {
      ThrowArg(env, "DgramSocket.setFastPath(answers: FakeAnswers | null)");
      return env.Undefined();
    }
    fast_ref_.Reset();
    fast_ = nullptr;
    if (!info[0].IsNull()) {
      fast_ref_ = Napi::Persistent(info[0].As<Napi::Object>());
      fast_ = FakeAnswersJs::From(info[0])->table();
    }
    return env.Undefined();
  }

  Napi::Value Address(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (!sock_ || sock_->fd() < 0 || getsockname(sock_->fd(), reinterpret_cast<struct sockaddr*>(&ss), &len) != 0) {
      ThrowSys(env, EBADF, "getsockname", "DgramSocket is closed");
      return env.Undefined();
    }
    char text[INET6_ADDRSTRLEN] = "";
    Napi::Object r = Napi::Object::New(env);
    if (ss.ss_family == AF_INET) {
      auto* a = reinterpret_cast<struct sockaddr_in*>(&ss);
      inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
      r.Set("port", Napi::Number::New(env, ntohs(a->sin_port)));
      r.Set("family", Napi::String::New(env, "IPv4"));
    } else {
      auto* a = reinterpret_cast<struct sockaddr_in6*>(&ss);
      inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
      r.Set("port", Napi::Number::New(env, ntohs(a->sin6_port)));
      r.Set("family", Napi::String::New(env, "IPv6"));
    }
    r.Set("address", Napi::String::New(env, text));
    return r;
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object r = Napi::Object::New(env);
    fp::DgramCounters c = sock_ ? sock_->counters() : last_;
    auto set = [&](const char* k, uint64_t v) { r.Set(k, Napi::Number::New(env, static_cast<double>(v))); };
    set("received", c.received);
    set("recvCalls", c.recv_calls);
    set("truncated", c.truncated);
    set("kernelDrops", c.kernel_drops);
    set("sent", c.sent);
    set("sendCalls", c.send_calls);
    set("sendDropped", c.send_dropped);
    set("wakeups", wakeups_);
    set("fastAnswered", fast_answered_);
    r.Set("lastSendError", Napi::String::New(env, c.last_send_errno ? ErrnoName(c.last_send_errno) : ""));
    return r;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    StopPoll();
    if (sock_) {
      last_ = sock_->counters();
      sock_->Close();
      sock_.reset();
    }
    return info.Env().Undefined();
  }

  void StopPoll() {
    if (!poll_.Stop()) return;
    // Balance Start's Ref (not from the destructor: the object is going away then).
    if (!finalizing_) Unref();
  }

  static void OnPoll(uv_poll_t* h, int status, int /*events*/) {
    auto* self = static_cast<DgramSocketJs*>(h->data);
    if (self == nullptr || status < 0) return;
    self->Drain();
  }

  void Drain() {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    wakeups_++;
    for (int round = 0; round < rounds_; round++) {
      if (!sock_ || !poll_.has_callback()) return;
      int n = sock_->Recv(&data_, &meta_);
      if (n <= 0) return;  // nothing more (or a transient socket error; the next wake-up retries)
      int rest = fast_ != nullptr ? AnswerFast(n) : n;
      if (rest == 0) {
        if (n < batch_) return;
        continue;
      }
      Napi::Buffer<uint8_t> bytes = Napi::Buffer<uint8_t>::Copy(env, data_.data(), data_.size());
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, meta_.size() * sizeof(uint32_t));
      std::memcpy(ab.Data(), meta_.data(), meta_.size() * sizeof(uint32_t));
      Napi::Uint32Array meta = Napi::Uint32Array::New(env, meta_.size(), ab, 0);
      if (!poll_.Deliver(env, Value(), {bytes, meta, Napi::Number::New(env, rest)})) return;
      if (n < batch_) return;
    }
  }

  // Answers what the fast-path table can among the n datagrams just received
  // (one sendmmsg for all of them) and compacts meta_ to the rest, whose
  // count it returns; data_ is left as it is (the rest's offsets still hold).
  int AnswerFast(int n) {
    out_data_.resize(static_cast<size_t>(n) * fp::FakeAnswers::kMaxAnswer);
    out_meta_.resize(static_cast<size_t>(n) * fp::kDgramMetaWords);
    int answered = 0;
    int rest = 0;
    size_t out_len = 0;
    for (int i = 0; i < n; i++) {
      const uint32_t* m = meta_.data() + static_cast<size_t>(i) * fp::kDgramMetaWords;
      size_t len = m[fp::kFamily] == 4 ? fast_->Answer(data_.data() + m[fp::kOff], m[fp::kLen], m[fp::kAddr],
                                                       out_data_.data() + out_len)
                                       : 0;
      if (len == 0) {
        if (rest != i) {
          std::memmove(meta_.data() + static_cast<size_t>(rest) * fp::kDgramMetaWords, m,
                       fp::kDgramMetaWords * sizeof(uint32_t));
        }
        rest++;
        continue;
      }
      uint32_t* o = out_meta_.data() + static_cast<size_t>(answered) * fp::kDgramMetaWords;
      std::memcpy(o, m, fp::kDgramMetaWords * sizeof(uint32_t));
      o[fp::kOff] = static_cast<uint32_t>(out_len);
      o[fp::kLen] = static_cast<uint32_t>(len);
      out_len += len;
      answered++;
    }
    if (answered > 0) {
      fast_answered_ += static_cast<uint64_t>(answered);
      sock_->Send(out_data_.data(), out_len, out_meta_.data(), answered);
    }
    meta_.resize(static_cast<size_t>(rest) * fp::kDgramMetaWords);
    return rest;
  }

  std::unique_ptr<fp::DgramBatchSocket> sock_;
  fp::DgramCounters last_;
  fp::FakeAnswers* fast_ = nullptr;
  Napi::ObjectReference fast_ref_;  // keeps the table alive while attached
  std::vector<uint8_t> out_data_;
  std::vector<uint32_t> out_meta_;
  uint64_t fast_answered_ = 0;
  JsReadPoll poll_;
  std::vector<uint8_t> data_;
  std::vector<uint32_t> meta_;
  int batch_ = 64;
  int rounds_ = 4;
  uint64_t wakeups_ = 0;
  bool finalizing_ = false;
};

}  // namespace

void InitDgramBatch(Napi::Env env, Napi::Object exports) {
  exports.Set("DgramSocket", DgramSocketJs::Define(env));
  exports.Set("FakeAnswers", FakeAnswersJs::Define(env));
  SetLayout(env, exports, "dgramMetaWords", fp::kDgramMetaWords);
  SetLayout(env, exports, "dnsUdpPayload", fp::FakeAnswers::kOurUdpPayload);
}

}  // namespace fakeproxy
