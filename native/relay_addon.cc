// N-API glue for the native TCP relay (native/relay.h): the `Relay`
// ObjectWrap (surface declared in src/native.ts). Ended pairs reach JS in
// batches: a worker signals the ThreadSafeFunction only when the queue goes
// non-empty, and one JS call takes every record queued by then as one
// Float64Array [id, bytesUp, bytesDown, how, errno] × n — never an object per
// pair. The TSFN keeps the loop alive only while pairs are live.
#include "relay_addon.h"

#include <arpa/inet.h>
#include <napi.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>

#include "napi_args.h"
#include "napi_errors.h"
#include "relay.h"

namespace fakeproxy {
namespace {

constexpr int kRecordFields = 6;

class RelayWrap : public Napi::ObjectWrap<RelayWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Relay",
                       {
                           InstanceMethod("add", &RelayWrap::Add),
                           InstanceMethod("dial", &RelayWrap::Dial),
                           InstanceMethod("close", &RelayWrap::Close),
                           InstanceMethod("bytes", &RelayWrap::Bytes),
                           InstanceMethod("totals", &RelayWrap::Totals),
                           InstanceMethod("stop", &RelayWrap::Stop),
                       });
  }

  // new Relay({ threads, pipeSize, idleTimeoutMs }, onEnd)
  explicit RelayWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RelayWrap>(info) {
    Napi::Env env = info.Env();
    Napi::Object o;
    if (!OptionsArg(info, true, "new Relay(options, onEnd) needs an options object and a callback", &o)) return;
    fp::RelayOptions opts;
    double threads = 1, pipe_size = static_cast<double>(opts.pipe_size), idle_ms = static_cast<double>(opts.idle_ms);
    if (!IntegerOption(env, o, "Relay", "threads", 1, 256, &threads, true) ||
        !IntegerOption(env, o, "Relay", "pipeSize", 4096, 1 << 30, &pipe_size, true) ||
        !IntegerOption(env, o, "Relay", "idleTimeoutMs", 0, 4294967295.0, &idle_ms, true))
      return;
    opts.threads = static_cast<int>(threads);
    opts.pipe_size = static_cast<size_t>(pipe_size);
    opts.idle_ms = static_cast<uint32_t>(idle_ms);
    pool_.Create(
        env, info[1], "fakeproxy-relay-ends",
        [&opts](std::function<void()> notify) { return std::make_unique<fp::RelayPool>(opts, std::move(notify)); },
        [this](Napi::Env e, Napi::Function fn) { Deliver(e, fn); });
    pool_.tsfn().Unref(env);
    int err = 0;
    std::string what;
    if (!pool_->Start(&err, &what)) {
      pool_.Release();
      ThrowSys(env, err, what, "Relay: cannot start its threads (" + what + "); raise the fd limit (ulimit -n)");
      return;
    }
    pool_.Arm(env);
  }

  ~RelayWrap() override { pool_.Destroy(Env()); }

 private:
  bool Ready(Napi::Env env) { return pool_.Ready(env, "relay", "Relay"); }

  static bool GetId(const Napi::Value& v, uint64_t* out) {
    double d;
    if (!IntegerIn(v, 0, 9007199254740991.0, &d)) return false;
    *out = static_cast<uint64_t>(d);
    return true;
  }

  static bool GetFd(const Napi::Value& v, int* out) {
    double d;
    if (!IntegerIn(v, -1, 2147483647.0, &d)) return false;
    *out = static_cast<int>(d);
    return true;
  }

  static std::string BufferBytes(const Napi::Value& v) {
    if (!v.IsBuffer()) return std::string();
    Napi::Buffer<char> b = v.As<Napi::Buffer<char>>();
    return std::string(b.Data(), b.Length());
  }

  Napi::Float64Array ToJs(Napi::Env env, const std::vector<fp::RelayEndRecord>& recs) {
    Napi::Float64Array a = Napi::Float64Array::New(env, recs.size() * kRecordFields);
    for (size_t i = 0; i < recs.size(); i++) {
      a[i * kRecordFields + 0] = static_cast<double>(recs[i].id);
      a[i * kRecordFields + 1] = static_cast<double>(recs[i].bytes_up);
      a[i * kRecordFields + 2] = static_cast<double>(recs[i].bytes_down);
      a[i * kRecordFields + 3] = static_cast<double>(static_cast<int>(recs[i].how));
      a[i * kRecordFields + 4] = static_cast<double>(recs[i].error);
      a[i * kRecordFields + 5] = static_cast<double>(recs[i].handshake);
    }
    if (!recs.empty()) Unlive(env, recs.size());
    return a;
  }

  void Unlive(Napi::Env env, size_t n) {
    live_ = n >= live_ ? 0 : live_ - n;
    if (live_ == 0) pool_.tsfn().Unref(env);
  }

  // onEnd(records, heads?): heads, only when some pair has one, is
  // [id, Buffer, …]: the HTTP proxy's response head of a failed CONNECT.
  void Deliver(Napi::Env env, Napi::Function fn) {
    if (!pool_) return;
    std::vector<fp::RelayEndRecord> recs = pool_->TakeEnded();
    if (recs.empty()) return;
    Napi::Value heads = env.Undefined();
    uint32_t n = 0;
    for (const fp::RelayEndRecord& r : recs) {
      if (r.head.empty()) continue;
      if (n == 0) heads = Napi::Array::New(env);
      heads.As<Napi::Array>().Set(n++, static_cast<double>(r.id));
      heads.As<Napi::Array>().Set(n++, Napi::Buffer<char>::Copy(env, r.head.data(), r.head.size()));
    }
    fn.Call({ToJs(env, recs), heads});
  }

  // add(id, appFd, upFd, preUp?, preDown?)
  Napi::Value Add(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    uint64_t id;
    int app, up;
    if (info.Length() < 3 || !GetId(info[0], &id) || !GetFd(info[1], &app) || !GetFd(info[2], &up)) {
      ThrowArg(env, "relay.add(id, appFd, upFd, preUp?, preDown?): id a safe non-negative integer, fds integers");
      return env.Undefined();
    }
    int err = 0;
    std::string what;
    if (!pool_->Add(id, app, up, info.Length() > 3 ? BufferBytes(info[3]) : std::string(),
                    info.Length() > 4 ? BufferBytes(info[4]) : std::string(), &err, &what)) {
      ThrowSys(env, err, "relay.add", "relay.add: " + what);
      return env.Undefined();
    }
    if (live_++ == 0) pool_.tsfn().Ref(env);
    return env.Undefined();
  }

  // dial(id, appFd, addr, port, mark, connectTimeoutMs, preUp?, own?, local?): addr
  // is an IPv4 address as an unsigned 32-bit number (no address text on the
  // accept path) or an IPv4/IPv6 literal; own hands appFd over (no dup);
  // local (a Float64Array of ≥ 2): connect here and now and write the bound
  // [IPv4 as a u32, port] into it (port 0: not IPv4, or the connect failed).
  // proxyRequest (a Buffer): addr:port is a SOCKS5 proxy; the relay sends
  // this CONNECT request after the greeting (and socks5Auth, an RFC 1929
  // request, when the proxy picks username/password) and relays once the
  // proxy's reply is read (relay.h ProxyPlan). With httpMaxHead (a number)
  // it is an HTTP proxy and proxyRequest the CONNECT request head.
  Napi::Value Dial(const Napi::CallbackInfo& info) {
    const bool own = info.Length() > 7 && info[7].ToBoolean().Value();
    int app = -1;
    if (!DialImpl(info, own, &app) && own && app >= 0) {
      // An owned fd is ours to end whatever failed: reset it like a failed dial.
      struct linger l = {1, 0};
      setsockopt(app, SOL_SOCKET, SO_LINGER, &l, sizeof l);
      close(app);
    }
    return info.Env().Undefined();
  }

  // False after throwing; *app is the fd to reset (-1 once the pool owns or closed it).
  bool DialImpl(const Napi::CallbackInfo& info, bool own, int* app_out) {
    Napi::Env env = info.Env();
    if (info.Length() > 1) GetFd(info[1], app_out);
    if (!Ready(env)) return false;
    uint64_t id;
    int app;
    double port = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : -1;
    double mark = info.Length() > 4 && info[4].IsNumber() ? info[4].As<Napi::Number>().DoubleValue() : -1;
    double ms = info.Length() > 5 && info[5].IsNumber() ? info[5].As<Napi::Number>().DoubleValue() : -1;
    if (info.Length() < 6 || !GetId(info[0], &id) || !GetFd(info[1], &app) || !(port >= 1 && port <= 65535) ||
        port != static_cast<int>(port) || !(mark >= 0 && mark <= 4294967295.0) ||
        mark != static_cast<double>(static_cast<uint32_t>(mark)) || !(ms >= 1 && ms <= 4294967295.0)) {
      ThrowArg(env,
               "relay.dial(id, appFd, addr, port, mark, connectTimeoutMs, preUp?): port 1–65535, mark a u32 (0 = "
               "none), connectTimeoutMs ≥ 1");
      return false;
    }
    struct sockaddr_storage ss;
    std::memset(&ss, 0, sizeof ss);
    socklen_t len = 0;
    bool ok = false;
    if (info[2].IsNumber()) {
      double a = info[2].As<Napi::Number>().DoubleValue();
      if (a >= 0 && a <= 4294967295.0 && a == static_cast<double>(static_cast<uint32_t>(a))) {
        auto* sin = reinterpret_cast<struct sockaddr_in*>(&ss);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(static_cast<uint16_t>(port));
        sin->sin_addr.s_addr = htonl(static_cast<uint32_t>(a));
        len = sizeof *sin;
        ok = true;
      }
    } else if (info[2].IsString()) {
      std::string s = info[2].As<Napi::String>().Utf8Value();
      auto* sin = reinterpret_cast<struct sockaddr_in*>(&ss);
      auto* sin6 = reinterpret_cast<struct sockaddr_in6*>(&ss);
      if (inet_pton(AF_INET, s.c_str(), &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(static_cast<uint16_t>(port));
        len = sizeof *sin;
        ok = true;
      } else if (inet_pton(AF_INET6, s.c_str(), &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(static_cast<uint16_t>(port));
        len = sizeof *sin6;
        ok = true;
      }
    }
    if (!ok) {
      ThrowArg(env, "relay.dial: addr must be an IPv4 address as a u32 or an IPv4/IPv6 literal");
      return false;
    }
    Napi::Float64Array out;
    if (info.Length() > 8 && info[8].IsTypedArray() &&
        info[8].As<Napi::TypedArray>().TypedArrayType() == napi_float64_array) {
      out = info[8].As<Napi::Float64Array>();
      if (out.ElementLength() < 2) out = Napi::Float64Array();
    }
    std::unique_ptr<fp::ProxyPlan> proxy;
    if (info.Length() > 9 && !info[9].IsNull() && !info[9].IsUndefined()) {
      std::string req = BufferBytes(info[9]);
      std::string auth = info.Length() > 10 ? BufferBytes(info[10]) : std::string();
      const bool http = info.Length() > 11 && info[11].IsNumber();
      double max_head = http ? info[11].As<Napi::Number>().DoubleValue() : 0;
      if (http) {
        if (req.compare(0, 8, "CONNECT ") != 0 || req.size() < 12 || req.compare(req.size() - 4, 4, "\r\n\r\n") != 0 ||
            !auth.empty() || !(max_head >= 64 && max_head <= 1048576) || max_head != static_cast<int>(max_head)) {
          ThrowArg(env,
                   "relay.dial: an HTTP proxy request must be a CONNECT head ending in an empty line, with no "
                   "socks5Auth and httpMaxHead an integer in [64, 1048576]");
          return false;
        }
      } else if (req.size() < 8 || req[0] != 5 || (!auth.empty() && (auth.size() < 5 || auth[0] != 1))) {
        // VER CMD RSV ATYP + at least 2 address bytes + port; RFC 1929: VER ULEN UNAME PLEN PASSWD.
        ThrowArg(env, "relay.dial: socks5Request must be a SOCKS5 request and socks5Auth an RFC 1929 request");
        return false;
      }
      proxy = std::make_unique<fp::ProxyPlan>();
      proxy->kind = http ? fp::ProxyPlan::kHttp : fp::ProxyPlan::kSocks5;
      proxy->request = std::move(req);
      proxy->auth = std::move(auth);
      if (http) proxy->max_head = static_cast<size_t>(max_head);
    }
    struct sockaddr_storage local;
    int err = 0;
    std::string what;
    if (!pool_->Dial(id, app, own, reinterpret_cast<struct sockaddr*>(&ss), len, static_cast<uint32_t>(mark),
                     static_cast<uint32_t>(ms), info.Length() > 6 ? BufferBytes(info[6]) : std::string(), &err, &what,
                     out.IsEmpty() ? nullptr : &local, std::move(proxy))) {
      *app_out = -1;  // the pool already reset an owned fd
      ThrowSys(env, err, what, "relay.dial: " + what + ": " + std::strerror(err));
      return false;
    }
    if (!out.IsEmpty()) {
      const auto* lin = reinterpret_cast<const struct sockaddr_in*>(&local);
      const bool v4 = local.ss_family == AF_INET;
      out[0] = v4 ? static_cast<double>(ntohl(lin->sin_addr.s_addr)) : 0;
      out[1] = v4 ? static_cast<double>(ntohs(lin->sin_port)) : 0;
    }
    *app_out = -1;
    if (live_++ == 0) pool_.tsfn().Ref(env);
    return true;
  }

  // close(id, reset) → whether a live pair was found
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    uint64_t id;
    if (info.Length() < 1 || !GetId(info[0], &id)) {
      ThrowArg(env, "relay.close(id, reset): id must be a safe non-negative integer");
      return env.Undefined();
    }
    bool reset = info.Length() > 1 && info[1].ToBoolean().Value();
    return Napi::Boolean::New(env, pool_->Close(id, reset));
  }

  // bytes(id, out: Float64Array(2)) → whether the pair is live; out = [up, down]
  Napi::Value Bytes(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    uint64_t id;
    if (info.Length() < 2 || !GetId(info[0], &id) || !info[1].IsTypedArray() ||
        info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
        info[1].As<Napi::Float64Array>().ElementLength() < 2) {
      ThrowArg(env, "relay.bytes(id, out): out must be a Float64Array of length ≥ 2");
      return env.Undefined();
    }
    uint64_t u, d;
    if (!pool_->Bytes(id, &u, &d)) return Napi::Boolean::New(env, false);
    Napi::Float64Array out = info[1].As<Napi::Float64Array>();
    out[0] = static_cast<double>(u);
    out[1] = static_cast<double>(d);
    return Napi::Boolean::New(env, true);
  }

  Napi::Value Totals(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    fp::RelayTotals t = pool_ ? pool_->Totals() : fp::RelayTotals{};
    o.Set("active", static_cast<double>(t.active));
    o.Set("bytesUp", static_cast<double>(t.bytes_up));
    o.Set("bytesDown", static_cast<double>(t.bytes_down));
    o.Set("pipes", static_cast<double>(t.pipes));
    return o;
  }

  // stop(): close every pair (FIN), join the threads; returns the records not
  // yet delivered. Idempotent.
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!pool_) return Napi::Float64Array::New(env, 0);
    pool_->Stop();
    std::vector<fp::RelayEndRecord> recs = pool_->TakeEnded();
    Napi::Float64Array a = ToJs(env, recs);
    pool_.Release();
    return a;
  }

  ThreadedCore<fp::RelayPool> pool_;
  size_t live_ = 0;
};

}  // namespace
}  // namespace fakeproxy

void InitRelay(Napi::Env env, Napi::Object exports) {
  using namespace fakeproxy;
  exports.Set("Relay", RelayWrap::Define(env));
  SetLayout(env, exports, "relayRecordFields", kRecordFields);
  SetLayout(env, exports, "relayEnds", static_cast<uint32_t>(fp::RelayHow::kConnectFailed) + 1);
}
