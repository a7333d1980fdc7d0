// N-API glue for the native UDP relay (native/udp_relay.h): the `UdpRelay`
// ObjectWrap (surface declared in src/native.ts). What reaches JS arrives in
// batches: the relay thread signals the ThreadSafeFunction only when its
// queue goes non-empty, and one JS call takes everything queued by then as
//   (dgrams: Float64Array [assoc, natIp, natPort, off, len, keyOff, keyLen] × n,
//    bytes: Buffer (payloads and keys), ended: Float64Array [id, how, dgramsUp,
//    bytesUp, dgramsDown, bytesDown] × m)
// — never an object per datagram. IPv4 addresses cross as unsigned 32-bit
// integers. Like a bound socket, a started relay keeps the loop alive until stop().
#include "udp_relay_addon.h"

#include <napi.h>
#include <net/if.h>

#include <cstring>
#include <memory>
#include <string>

#include "napi_args.h"
#include "napi_errors.h"
#include "udp_relay.h"

namespace fakeproxy {
namespace {

constexpr int kDgramFields = 7;
constexpr int kEndFields = 6;

bool GetU(const Napi::Value& v, double hi, double* out) { return IntegerIn(v, 0, hi, out); }

std::string Bytes(const Napi::Value& v) {
  if (!v.IsBuffer()) return std::string();
  Napi::Buffer<char> b = v.As<Napi::Buffer<char>>();
  return std::string(b.Data(), b.Length());
}

class UdpRelayWrap : public Napi::ObjectWrap<UdpRelayWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "UdpRelay",
                       {
                           InstanceMethod("port", &UdpRelayWrap::Port),
                           InstanceMethod("open", &UdpRelayWrap::Open),
                           InstanceMethod("setSocksRelay", &UdpRelayWrap::SetSocksRelay),
                           InstanceMethod("bind", &UdpRelayWrap::Bind),
                           InstanceMethod("addRemote", &UdpRelayWrap::AddRemote),
                           InstanceMethod("unbind", &UdpRelayWrap::Unbind),
                           InstanceMethod("sendUp", &UdpRelayWrap::SendUp),
                           InstanceMethod("sendDown", &UdpRelayWrap::SendDown),
                           InstanceMethod("close", &UdpRelayWrap::Close),
                           InstanceMethod("lastActive", &UdpRelayWrap::LastActive),
                           InstanceMethod("counts", &UdpRelayWrap::Counts),
                           InstanceMethod("totals", &UdpRelayWrap::Totals),
                           InstanceMethod("stop", &UdpRelayWrap::Stop),
                       });
  }

  // new UdpRelay({ ip, port, recvBufferBytes, mark, maxPayloadBytes, batch, device? }, onEvents)
  // device: the TUN's name; the listener then drops datagrams that arrived on any other interface.
  explicit UdpRelayWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<UdpRelayWrap>(info) {
    Napi::Env env = info.Env();
    Napi::Object o;
    if (!OptionsArg(info, true, "new UdpRelay(options, onEvents) needs an options object and a callback", &o)) return;
    double ip, port, rcvbuf, mark, max_payload, batch;
    if (!IntegerOption(env, o, "UdpRelay", "ip", 0, 4294967295.0, &ip) ||
        !IntegerOption(env, o, "UdpRelay", "port", 0, 65535, &port) ||
        !IntegerOption(env, o, "UdpRelay", "recvBufferBytes", 0, 1 << 30, &rcvbuf) ||
        !IntegerOption(env, o, "UdpRelay", "mark", 0, 4294967295.0, &mark) ||
        !IntegerOption(env, o, "UdpRelay", "maxPayloadBytes", 0, 65507, &max_payload) ||
        !IntegerOption(env, o, "UdpRelay", "batch", 0, 1024, &batch))
      return;
    fp::UdpRelayOptions opts;
    opts.max_payload = static_cast<uint32_t>(max_payload);
    opts.batch = batch < 1 ? 1 : static_cast<int>(batch);
    Napi::Value dev = o.Get("device");
    if (!dev.IsUndefined()) {
      std::string name = dev.IsString() ? dev.As<Napi::String>().Utf8Value() : std::string();
      opts.ingress_ifindex = name.empty() ? 0 : static_cast<int>(if_nametoindex(name.c_str()));
      if (opts.ingress_ifindex == 0) {
        ThrowSys(env, ENODEV, "if_nametoindex",
                 "udp relay: device '" + name + "' does not exist (open the TUN before the listener)");
        return;
      }
    }
    relay_.Create(
        env, info[1], "fakeproxy-udp-relay",
        [&opts](std::function<void()> notify) { return std::make_unique<fp::UdpRelay>(opts, std::move(notify)); },
        [this](Napi::Env e, Napi::Function fn) { Deliver(e, fn); });
    int err = 0;
    std::string what;
    if (!relay_->Start(static_cast<uint32_t>(ip), static_cast<uint16_t>(port), static_cast<int>(rcvbuf),
                       static_cast<uint32_t>(mark), &err, &what)) {
      relay_.Release();
      std::string hint = err == EADDRNOTAVAIL ? " (the gateway address does not exist yet: configure the TUN first)"
                         : err == EADDRINUSE  ? " (another process holds the port: pick another --listen-port)"
                         : err == EPERM       ? " (SO_MARK needs CAP_NET_ADMIN: run as root)"
                                              : "";
      ThrowSys(env, err, what, "udp relay: " + what + ": " + strerror(err) + hint);
      return;
    }
    relay_.Arm(env);
  }

  ~UdpRelayWrap() override { relay_.Destroy(Env()); }

 private:
  bool Ready(Napi::Env env) { return relay_.Ready(env, "udpRelay", "UdpRelay"); }

  void Deliver(Napi::Env env, Napi::Function fn) {
    if (!relay_) return;
    std::vector<fp::UdpJsDatagram> d;
    std::vector<fp::UdpEndRecord> e;
    relay_->Take(&d, &e);
    if (d.empty() && e.empty()) return;
    size_t total = 0;
    for (auto& x : d) total += x.payload.size() + x.key.size();
    Napi::Buffer<uint8_t> bytes = Napi::Buffer<uint8_t>::New(env, total == 0 ? 1 : total);
    Napi::Float64Array meta = Napi::Float64Array::New(env, d.size() * kDgramFields);
    size_t off = 0;
    for (size_t i = 0; i < d.size(); i++) {
      double* m = meta.Data() + i * kDgramFields;
      m[0] = static_cast<double>(d[i].assoc);
      m[1] = d[i].nat_ip;
      m[2] = d[i].nat_port;
      m[3] = static_cast<double>(off);
      m[4] = static_cast<double>(d[i].payload.size());
      std::memcpy(bytes.Data() + off, d[i].payload.data(), d[i].payload.size());
      off += d[i].payload.size();
      m[5] = static_cast<double>(off);
      m[6] = static_cast<double>(d[i].key.size());
      std::memcpy(bytes.Data() + off, d[i].key.data(), d[i].key.size());
      off += d[i].key.size();
    }
    fn.Call({meta, bytes, Ended(env, e)});
  }

  static Napi::Float64Array Ended(Napi::Env env, const std::vector<fp::UdpEndRecord>& e) {
    Napi::Float64Array a = Napi::Float64Array::New(env, e.size() * kEndFields);
    for (size_t i = 0; i < e.size(); i++) {
      double* m = a.Data() + i * kEndFields;
      m[0] = static_cast<double>(e[i].id);
      m[1] = static_cast<double>(static_cast<int>(e[i].how));
      m[2] = static_cast<double>(e[i].dgrams_up);
      m[3] = static_cast<double>(e[i].bytes_up);
      m[4] = static_cast<double>(e[i].dgrams_down);
      m[5] = static_cast<double>(e[i].bytes_down);
    }
    return a;
  }

  Napi::Value Port(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    return Napi::Number::New(env, relay_->Port());
  }

  // open(id, kind 0|1, bindIp, mark, recvBufferBytes, idleMs, dnsIdleMs) → local port
  Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    double v[7];
    const double hi[7] = {9007199254740991.0, 1, 4294967295.0, 4294967295.0, 1 << 30, 4294967295.0, 4294967295.0};
    for (int i = 0; i < 7; i++) {
      if (info.Length() <= static_cast<size_t>(i) || !GetU(info[i], hi[i], &v[i]) || (i == 0 && v[0] < 1)) {
        ThrowArg(env, "udpRelay.open(id ≥ 1, kind 0|1, bindIp, mark, recvBufferBytes, idleMs, dnsIdleMs): integers");
        return env.Undefined();
      }
    }
    int err = 0;
    std::string what;
    uint16_t port = relay_->Open(static_cast<uint64_t>(v[0]), static_cast<fp::UdpAssocKind>(static_cast<int>(v[1])),
                                 static_cast<uint32_t>(v[2]), static_cast<uint32_t>(v[3]), static_cast<int>(v[4]),
                                 static_cast<uint32_t>(v[5]), static_cast<uint32_t>(v[6]), &err, &what);
    if (port == 0) {
      ThrowSys(env, err, what, "udp association socket: " + what + ": " + strerror(err));
      return env.Undefined();
    }
    return Napi::Number::New(env, port);
  }

  // setSocksRelay(id, ip, port) → whether the association is live
  Napi::Value SetSocksRelay(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    double id, ip, port;
    if (info.Length() < 3 || !GetU(info[0], 9007199254740991.0, &id) || !GetU(info[1], 4294967295.0, &ip) ||
        !GetU(info[2], 65535, &port)) {
      ThrowArg(env, "udpRelay.setSocksRelay(id, ip, port): integers");
      return env.Undefined();
    }
    return Napi::Boolean::New(
        env, relay_->SetSocksRelay(static_cast<uint64_t>(id), static_cast<uint32_t>(ip), static_cast<uint16_t>(port)));
  }

  // bind(natIp, natPort, id, dstIp: IPv4 integer | 16-byte IPv6 Buffer, dstPort, socksAddr: Buffer|undefined,
  //      remoteKey: Buffer|undefined, dns) → bool
  Napi::Value Bind(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    double natIp, natPort, id, dstIp = 0, dstPort;
    const bool v6 = info.Length() > 3 && info[3].IsBuffer() && info[3].As<Napi::Buffer<char>>().Length() == 16;
    if (info.Length() < 8 || !GetU(info[0], 4294967295.0, &natIp) || !GetU(info[1], 65535, &natPort) ||
        !GetU(info[2], 9007199254740991.0, &id) || !(v6 || GetU(info[3], 4294967295.0, &dstIp)) ||
        !GetU(info[4], 65535, &dstPort)) {
      ThrowArg(env,
               "udpRelay.bind(natIp, natPort, id, dstIp (integer or 16-byte Buffer), dstPort, socksAddr, remoteKey, "
               "dns): integers first");
      return env.Undefined();
    }
    return Napi::Boolean::New(
        env, relay_->Bind(static_cast<uint32_t>(natIp), static_cast<uint16_t>(natPort), static_cast<uint64_t>(id),
                          static_cast<uint32_t>(dstIp), v6 ? Bytes(info[3]) : std::string(),
                          static_cast<uint16_t>(dstPort), Bytes(info[5]), Bytes(info[6]), info[7].ToBoolean().Value()));
  }

  // addRemote(id, remoteKey: Buffer, natIp, natPort) → bool
  Napi::Value AddRemote(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    double id, natIp, natPort;
    if (info.Length() < 4 || !GetU(info[0], 9007199254740991.0, &id) || !info[1].IsBuffer() ||
        !GetU(info[2], 4294967295.0, &natIp) || !GetU(info[3], 65535, &natPort)) {
      ThrowArg(env, "udpRelay.addRemote(id, remoteKey: Buffer, natIp, natPort)");
      return env.Undefined();
    }
    return Napi::Boolean::New(env, relay_->AddRemote(static_cast<uint64_t>(id), Bytes(info[1]),
                                                     static_cast<uint32_t>(natIp), static_cast<uint16_t>(natPort)));
  }

  bool NatArgs(const Napi::CallbackInfo& info, const char* usage, double* ip, double* port) {
    if (info.Length() < 2 || !GetU(info[0], 4294967295.0, ip) || !GetU(info[1], 65535, port)) {
      ThrowArg(info.Env(), usage);
      return false;
    }
    return true;
  }

  Napi::Value Unbind(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!relay_) return env.Undefined();
    double ip, port;
    if (!NatArgs(info, "udpRelay.unbind(natIp, natPort): integers", &ip, &port)) return env.Undefined();
    relay_->Unbind(static_cast<uint32_t>(ip), static_cast<uint16_t>(port));
    return env.Undefined();
  }

  // sendUp/sendDown(natIp, natPort, payload: Uint8Array) → bool
  Napi::Value Send(const Napi::CallbackInfo& info, bool up) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    double ip, port;
    if (!NatArgs(info, "udpRelay.send*(natIp, natPort, payload: Uint8Array)", &ip, &port)) return env.Undefined();
    if (info.Length() < 3 || !info[2].IsTypedArray()) {
      ThrowArg(env, "udpRelay.send*(natIp, natPort, payload: Uint8Array)");
      return env.Undefined();
    }
    Napi::Uint8Array p = info[2].As<Napi::Uint8Array>();
    bool ok = up ? relay_->SendUp(static_cast<uint32_t>(ip), static_cast<uint16_t>(port), p.Data(), p.ByteLength())
                 : relay_->SendDown(static_cast<uint32_t>(ip), static_cast<uint16_t>(port), p.Data(), p.ByteLength());
    return Napi::Boolean::New(env, ok);
  }
  Napi::Value SendUp(const Napi::CallbackInfo& info) { return Send(info, true); }
  Napi::Value SendDown(const Napi::CallbackInfo& info) { return Send(info, false); }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!relay_) return Napi::Boolean::New(env, false);
    double id;
    if (info.Length() < 1 || !GetU(info[0], 9007199254740991.0, &id)) {
      ThrowArg(env, "udpRelay.close(id): a safe non-negative integer");
      return env.Undefined();
    }
    return Napi::Boolean::New(env, relay_->Close(static_cast<uint64_t>(id)));
  }

  Napi::Value LastActive(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    double id;
    if (!relay_ || info.Length() < 1 || !GetU(info[0], 9007199254740991.0, &id)) return Napi::Number::New(env, -1);
    return Napi::Number::New(env, static_cast<double>(relay_->LastActive(static_cast<uint64_t>(id))));
  }

  // counts(id, out: Float64Array(4)): true and out filled when `id` is live.
  Napi::Value Counts(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    double id;
    if (info.Length() < 2 || !GetU(info[0], 9007199254740991.0, &id) || !info[1].IsTypedArray() ||
        info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
        info[1].As<Napi::Float64Array>().ElementLength() < 4) {
      ThrowArg(env, "udpRelay.counts(id, out): a safe non-negative integer and a Float64Array of 4");
      return env.Undefined();
    }
    if (!relay_) return Napi::Boolean::New(env, false);
    double c[4];
    if (!relay_->Counts(static_cast<uint64_t>(id), c)) return Napi::Boolean::New(env, false);
    Napi::Float64Array out = info[1].As<Napi::Float64Array>();
    for (size_t i = 0; i < 4; i++) out[i] = c[i];
    return Napi::Boolean::New(env, true);
  }

  Napi::Value Totals(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    fp::UdpRelayTotals t = relay_ ? relay_->Totals() : fp::UdpRelayTotals{};
    o.Set("datagramsUp", static_cast<double>(t.dgrams_up));
    o.Set("bytesUp", static_cast<double>(t.bytes_up));
    o.Set("datagramsDown", static_cast<double>(t.dgrams_down));
    o.Set("bytesDown", static_cast<double>(t.bytes_down));
    o.Set("associations", static_cast<double>(t.associations));
    o.Set("bindings", static_cast<double>(t.bindings));
    o.Set("misses", static_cast<double>(t.misses));
    o.Set("unknownRemotes", static_cast<double>(t.unknown));
    Napi::Float64Array d = Napi::Float64Array::New(env, fp::kDropCount);
    for (int i = 0; i < fp::kDropCount; i++) d[i] = static_cast<double>(t.drops[i]);
    o.Set("drops", d);
    Napi::Object gso = Napi::Object::New(env);
    for (int dir = 0; dir < 2; dir++) {
      Napi::Object g = Napi::Object::New(env);
      g.Set("sends", static_cast<double>(t.gso.sends[dir]));
      g.Set("segments", static_cast<double>(t.gso.segments[dir]));
      g.Set("disabled", static_cast<double>(t.gso.disabled[dir]));
      g.Set("limited", static_cast<double>(t.gso.limited[dir]));
      gso.Set(dir == 0 ? "up" : "down", g);
    }
    o.Set("gso", gso);
    Napi::Object gro = Napi::Object::New(env);
    gro.Set("receives", static_cast<double>(t.gro_receives));
    gro.Set("segments", static_cast<double>(t.gro_segments));
    o.Set("gro", gro);
    return o;
  }

  // stop(): close every association and the listener, join the thread → ended records not yet delivered.
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!relay_) return Napi::Float64Array::New(env, 0);
    relay_->Stop();
    std::vector<fp::UdpJsDatagram> d;
    std::vector<fp::UdpEndRecord> e;
    relay_->Take(&d, &e);
    relay_.Release();
    return Ended(env, e);
  }

  ThreadedCore<fp::UdpRelay> relay_;
};

}  // namespace
}  // namespace fakeproxy

void InitUdpRelay(Napi::Env env, Napi::Object exports) {
  using namespace fakeproxy;
  exports.Set("UdpRelay", UdpRelayWrap::Define(env));
  SetLayout(env, exports, "udpRelayDgramFields", kDgramFields);
  SetLayout(env, exports, "udpRelayEndFields", kEndFields);
  SetLayout(env, exports, "udpRelayEnds", static_cast<uint32_t>(fp::UdpEnd::kUpstreamClosed) + 1);
  SetLayout(env, exports, "udpRelayDrops", fp::kDropCount);
}
