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

class DgramSocketJs : public Napi::ObjectWrap<DgramSocketJs> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DgramSocket",
                       {
                           InstanceMethod<&DgramSocketJs::Start>("start"),
                           InstanceMethod<&DgramSocketJs::Send>("send"),
                           InstanceMethod<&DgramSocketJs::Address>("address"),
                           InstanceMethod<&DgramSocketJs::Stats>("stats"),
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
      Napi::Buffer<uint8_t> bytes = Napi::Buffer<uint8_t>::Copy(env, data_.data(), data_.size());
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, meta_.size() * sizeof(uint32_t));
      std::memcpy(ab.Data(), meta_.data(), meta_.size() * sizeof(uint32_t));
      Napi::Uint32Array meta = Napi::Uint32Array::New(env, meta_.size(), ab, 0);
      if (!poll_.Deliver(env, Value(), {bytes, meta, Napi::Number::New(env, n)})) return;
      if (n < batch_) return;
    }
  }

  std::unique_ptr<fp::DgramBatchSocket> sock_;
  fp::DgramCounters last_;
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
  SetLayout(env, exports, "dgramMetaWords", fp::kDgramMetaWords);
}

}  // namespace fakeproxy
