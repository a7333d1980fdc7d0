// N-API glue for the packet engine: the `Engine` ObjectWrap (surface declared
// in src/native.ts). One std::thread per TUN fd runs fp::Engine::run; flow
// open/close events are queued natively and handed to JS in batches through a
// ThreadSafeFunction that is signalled at most every ~20 ms (or per 1024
// events) and re-armed only after JS drained the queue: never one JS call per
// packet. Teardown: tsfn.Abort(); thread.join(); also from an env cleanup hook.
#include "engine_addon.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine.h"
#include "napi_args.h"
#include "napi_errors.h"
#include "tun.h"

namespace fakeproxy {
namespace {

void ThrowCode(Napi::Env env, const char* code, const std::string& message, bool range = false) {
  if (env.IsExceptionPending()) return;
  Napi::Error e = range ? Napi::Error(Napi::RangeError::New(env, std::string(code) + ": " + message))
                        : Napi::Error::New(env, std::string(code) + ": " + message);
  e.Set("code", Napi::String::New(env, code));
  e.ThrowAsJavaScriptException();
}

bool ParseV4(const Napi::Value& v, uint32_t* out) {
  if (!v.IsString()) return false;
  struct in_addr a;
  if (inet_pton(AF_INET, v.As<Napi::String>().Utf8Value().c_str(), &a) != 1) return false;
  *out = ntohl(a.s_addr);
  return true;
}

std::string V4Text(const fp::IpAddr& a) {
  char buf[INET_ADDRSTRLEN];
  struct in_addr in;
  in.s_addr = htonl(a.as_v4());
  inet_ntop(AF_INET, &in, buf, sizeof buf);
  return buf;
}

bool GetPort(const Napi::Value& v, uint16_t* out) {
  if (!v.IsNumber()) return false;
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 65535) || d != static_cast<double>(static_cast<int>(d))) return false;
  *out = static_cast<uint16_t>(d);
  return true;
}

bool GetProto(const Napi::Value& v, uint8_t* out) {
  if (!v.IsNumber()) return false;
  int p = v.As<Napi::Number>().Int32Value();
  if (p != fp::kProtoTcp && p != fp::kProtoUdp) return false;
  *out = static_cast<uint8_t>(p);
  return true;
}

// "a.b.c.d" or "a.b.c.d/n" -> (network, mask); false when malformed.
bool ParseV4Net(const Napi::Value& v, std::pair<uint32_t, uint32_t>* out) {
  if (!v.IsString()) return false;
  std::string t = v.As<Napi::String>().Utf8Value();
  int len = 32;
  const size_t slash = t.find('/');
  if (slash != std::string::npos) {
    const std::string n = t.substr(slash + 1);
    if (n.empty() || n.size() > 2 || n.find_first_not_of("0123456789") != std::string::npos) return false;
    len = std::stoi(n);
    if (len > 32) return false;
    t.resize(slash);
  }
  struct in_addr a;
  if (inet_pton(AF_INET, t.c_str(), &a) != 1) return false;
  const uint32_t mask = len == 0 ? 0 : ~uint32_t(0) << (32 - len);
  *out = {ntohl(a.s_addr) & mask, mask};
  return true;
}

// A JS array of CIDR strings -> an enabled SourceFilter; false when malformed.
bool ParseSources(const Napi::Value& v, fp::SourceFilter* out) {
  if (!v.IsArray()) return false;
  Napi::Array a = v.As<Napi::Array>();
  fp::SourceFilter f;
  f.on = true;
  for (uint32_t i = 0; i < a.Length(); i++) {
    std::pair<uint32_t, uint32_t> n;
    if (!ParseV4Net(a.Get(i), &n)) return false;
    f.nets.push_back(n);
  }
  *out = std::move(f);
  return true;
}

Napi::Object FlowToJs(Napi::Env env, const fp::Flow& f) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", Napi::Number::New(env, static_cast<double>(f.id)));
  o.Set("proto", Napi::Number::New(env, f.key.proto));
  o.Set("srcIp", V4Text(f.key.src));
  o.Set("srcPort", Napi::Number::New(env, f.key.sport));
  o.Set("dstIp", V4Text(f.key.dst));
  o.Set("dstPort", Napi::Number::New(env, f.key.dport));
  o.Set("natIp", V4Text(f.nat));
  o.Set("natPort", Napi::Number::New(env, f.natPort));
  o.Set("state", fp::state_name(f.state));
  o.Set("createdMs", Napi::Number::New(env, static_cast<double>(f.createdMs)));
  o.Set("lastSeenMs", Napi::Number::New(env, static_cast<double>(f.lastSeenMs)));
  o.Set("pktsOut", Napi::Number::New(env, static_cast<double>(f.pktsOut)));
  o.Set("bytesOut", Napi::Number::New(env, static_cast<double>(f.bytesOut)));
  o.Set("pktsIn", Napi::Number::New(env, static_cast<double>(f.pktsIn)));
  o.Set("bytesIn", Napi::Number::New(env, static_cast<double>(f.bytesIn)));
  return o;
}

Napi::Array EventsToJs(Napi::Env env, const std::vector<fp::FlowEvent>& evs) {
  Napi::Array a = Napi::Array::New(env, evs.size());
  for (size_t i = 0; i < evs.size(); i++) {
    Napi::Object e = Napi::Object::New(env);
    e.Set("type", evs[i].open ? "open" : "close");
    e.Set("flow", FlowToJs(env, evs[i].flow));
    if (!evs[i].open) e.Set("reason", fp::reason_name(evs[i].reason));
    a.Set(static_cast<uint32_t>(i), e);
  }
  return a;
}

// Flow events as numbers: kEventFields per event (layout: FLOW_EVENT in
// src/native.ts). The threads' batches take this path: building each event as
// two objects of named properties and three address strings through N-API cost
// the JavaScript thread ~7 µs per event (two per connection) and ~1 KiB of
// young-generation garbage; NatManager builds the same objects from these
// numbers in JavaScript for a fraction of that.
constexpr size_t kEventFields = 16;

Napi::Float64Array EventsToPacked(Napi::Env env, const std::vector<fp::FlowEvent>& evs) {
  Napi::Float64Array a = Napi::Float64Array::New(env, evs.size() * kEventFields);
  double* d = a.Data();
  for (const fp::FlowEvent& e : evs) {
    const fp::Flow& f = e.flow;
    // 0 = open; 1 + fp::CloseReason = close and why.
    d[0] = e.open ? 0 : 1 + static_cast<double>(e.reason);
    d[1] = static_cast<double>(f.id);
    d[2] = f.key.proto;
    d[3] = f.key.src.as_v4();
    d[4] = f.key.sport;
    d[5] = f.key.dst.as_v4();
    d[6] = f.key.dport;
    d[7] = f.nat.as_v4();
    d[8] = f.natPort;
    d[9] = static_cast<double>(f.state);
    d[10] = static_cast<double>(f.createdMs);
    d[11] = static_cast<double>(f.lastSeenMs);
    d[12] = static_cast<double>(f.pktsOut);
    d[13] = static_cast<double>(f.bytesOut);
    d[14] = static_cast<double>(f.pktsIn);
    d[15] = static_cast<double>(f.bytesIn);
    d += kEventFields;
  }
  return a;
}

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static constexpr size_t kPackedLen = 8;
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Engine",
                       {
                           InstanceMethod<&EngineWrap::Start>("start"),
                           InstanceMethod<&EngineWrap::Stop>("stop"),
                           InstanceMethod<&EngineWrap::Lookup>("lookup"),
                           InstanceMethod<&EngineWrap::LookupPacked>("lookupPacked"),
                           InstanceMethod<&EngineWrap::Entries>("entries"),
                           InstanceMethod<&EngineWrap::Stats>("stats"),
                           InstanceMethod<&EngineWrap::ProcessPacket>("processPacket"),
                           InstanceMethod<&EngineWrap::Expire>("expire"),
                           InstanceMethod<&EngineWrap::EnsureFlow>("ensureFlow"),
                           InstanceMethod<&EngineWrap::DrainEvents>("drainEvents"),
                           InstanceMethod<&EngineWrap::DrainEventsPacked>("drainEventsPacked"),
                           InstanceMethod<&EngineWrap::Clear>("clear"),
                           InstanceMethod<&EngineWrap::SetSources>("setSources"),
                       });
  }

  explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
    Napi::Env env = info.Env();
    Napi::Object o;
    if (!OptionsArg(info, false, "new Engine(options) needs an EngineOptions object (see src/native.ts)", &o)) return;
    fp::EngineConfig cfg;
    double d;
    if (!ParseV4(o.Get("network"), &cfg.table.network)) {
      ThrowArg(env, "Engine: network must be a dotted-quad IPv4 address, e.g. '198.18.0.0'");
      return;
    }
    if (!ParseV4(o.Get("gateway"), &cfg.table.gateway)) {
      ThrowArg(env, "Engine: gateway must be a dotted-quad IPv4 address, e.g. '198.18.0.1'");
      return;
    }
    if (!IntegerIn(o.Get("prefixLen"), 0, 32, &d)) {
      ThrowArg(env, "Engine: prefixLen must be an integer 8..30");
      return;
    }
    cfg.table.prefixLen = static_cast<int>(d);
    if (!GetPort(o.Get("listenPort"), &cfg.listenPort)) {
      ThrowArg(env, "Engine: listenPort must be an integer 1..65535");
      return;
    }
    if (!GetPort(o.Get("dnsPort"), &cfg.dnsPort)) {
      ThrowArg(env, "Engine: dnsPort must be an integer 1..65535");
      return;
    }
    Napi::Value hij = o.Get("dnsHijack");
    if (!hij.IsBoolean()) {
      ThrowArg(env, "Engine: dnsHijack must be a boolean");
      return;
    }
    cfg.dnsHijack = hij.As<Napi::Boolean>().Value();
    // Range checked once, by validate_table_config below (the engine's capacity).
    if (!IntegerIn(o.Get("maxFlows"), 0, 4294967295.0, &d)) {
      ThrowArg(env, "Engine: maxFlows must be an integer");
      return;
    }
    cfg.table.maxFlows = static_cast<uint32_t>(d);
    if (!IntegerIn(o.Get("reuseDelayMs"), 0, 9e15, &d)) {
      ThrowArg(env, "Engine: reuseDelayMs must be an integer >= 0");
      return;
    }
    cfg.table.reuseDelayMs = static_cast<int64_t>(d);
    if (!o.Get("maxHalfOpenPerSource").IsUndefined()) {
      if (!IntegerIn(o.Get("maxHalfOpenPerSource"), 0, 4294967295.0, &d)) {
        ThrowArg(env, "Engine: maxHalfOpenPerSource must be an integer >= 0 (0 = no cap)");
        return;
      }
      cfg.table.maxHalfOpenPerSource = static_cast<uint32_t>(d);
    }
    if (!o.Get("sources").IsUndefined() && !ParseSources(o.Get("sources"), &cfg.sources)) {
      ThrowArg(env, "Engine: sources must be an array of IPv4 addresses or CIDRs, e.g. ['192.168.1.0/24', '10.0.0.2']");
      return;
    }
    Napi::Value tv = o.Get("timeouts");
    if (!tv.IsObject()) {
      ThrowArg(
          env,
          "Engine: timeouts must be an object {tcpSynMs, tcpEstablishedMs, tcpFinMs, tcpClosedMs, udpMs, udpDnsMs}");
      return;
    }
    Napi::Object t = tv.As<Napi::Object>();
    struct {
      const char* name;
      int64_t* dst;
      bool optional;
    } fields[] = {
        {"tcpSynMs", &cfg.table.timeouts.tcpSynMs, false},
        {"tcpEstablishedMs", &cfg.table.timeouts.tcpEstablishedMs, false},
        {"tcpFinMs", &cfg.table.timeouts.tcpFinMs, false},
        {"tcpClosedMs", &cfg.table.timeouts.tcpClosedMs, false},
        {"udpMs", &cfg.table.timeouts.udpMs, false},
        {"udpDnsMs", &cfg.table.timeouts.udpDnsMs, false},
    };
    for (auto& fld : fields) {
      if (fld.optional && t.Get(fld.name).IsUndefined()) continue;
      if (!IntegerIn(t.Get(fld.name), 1, 9e15, &d)) {
        ThrowArg(env, std::string("Engine: timeouts.") + fld.name + " must be a positive integer (milliseconds)");
        return;
      }
      *fld.dst = static_cast<int64_t>(d);
    }
    std::string err = fp::validate_engine_config(cfg);
    if (!err.empty()) {
      ThrowCode(env, "EINVAL", "Engine: " + err, true);
      return;
    }
    engine_ = std::make_unique<fp::Engine>(cfg);
    teardown_.Arm(env, this);
  }

  ~EngineWrap() override {
    StopThreads();
    teardown_.Disarm(Env());
  }

 private:
  bool Ready(Napi::Env env) {
    if (engine_) return true;
    ThrowCode(env, "EINVAL", "Engine was not constructed: fix the options passed to new Engine()");
    return false;
  }

  // start(fds, onEvents(records: Float64Array of kEventFields per event, EventsToPacked))
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    if (running_) {
      ThrowCode(env, "EBUSY", "engine already started: call stop() first");
      return env.Undefined();
    }
    if (info.Length() < 2 || !info[0].IsArray() || !info[1].IsFunction() ||
        (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsArray()) ||
        (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsFunction())) {
      ThrowArg(env,
               "start(fds: number[], onEvents: (events) => void, vnetHdr?: boolean[], onThreadExit?: (errno, queue) => "
               "void)");
      return env.Undefined();
    }
    Napi::Array a = info[0].As<Napi::Array>();
    std::vector<int> fds;
    for (uint32_t i = 0; i < a.Length(); i++) {
      Napi::Value v = a.Get(i);
      if (!v.IsNumber() || v.As<Napi::Number>().Int32Value() < 0) {
        ThrowArg(env, "start: fds must be non-negative integers (from tunOpen().fds)");
        return env.Undefined();
      }
      fds.push_back(v.As<Napi::Number>().Int32Value());
    }
    if (fds.empty()) {
      ThrowArg(env, "start: give at least one fd (from tunOpen().fds)");
      return env.Undefined();
    }
    // Per fd: does every read/write carry a virtio_net_hdr (IFF_VNET_HDR)?
    // Given by the caller, or else asked of the kernel (TUNGETIFF); a fd that
    // is not a TUN (tests with pipes/sockets) has none.
    std::vector<bool> vnet(fds.size(), false);
    if (info.Length() > 2 && info[2].IsArray()) {
      Napi::Array v = info[2].As<Napi::Array>();
      if (v.Length() != fds.size()) {
        ThrowArg(env, "start: vnetHdr must have one boolean per fd");
        return env.Undefined();
      }
      for (uint32_t i = 0; i < v.Length(); i++) vnet[i] = v.Get(i).ToBoolean().Value();
    } else {
      for (size_t i = 0; i < fds.size(); i++) vnet[i] = fakeproxy::TunHasVnetHdr(fds[i]);
    }
    wakeFd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wakeFd_ < 0) {
      ThrowSys(env, errno, "eventfd", "cannot create the engine's wake-up eventfd (raise the fd limit: ulimit -n)");
      return env.Undefined();
    }
    Napi::Function cb = info[1].As<Napi::Function>();
    onEvents_ = Napi::Persistent(cb);
    onThreadExit_.Reset();
    if (info.Length() > 3 && info[3].IsFunction()) onThreadExit_ = Napi::Persistent(info[3].As<Napi::Function>());
    tsfn_ = Napi::ThreadSafeFunction::New(env, cb, "fakeproxy-engine-events", 0, 1);
    // The engine alone does not keep the process alive; the daemon's sockets do.
    tsfn_.Unref(env);
    stop_.store(false);
    armed_.store(true);
    running_ = true;
    threadErrno_.store(0);
    for (size_t i = 0; i < fds.size(); i++) {
      const int fd = fds[i];
      const bool vh = vnet[i];
      threadsRunning_.fetch_add(1);
      threads_.emplace_back([this, fd, vh, i] {
        // "fp-engine-N" in top -H / perf, one per TUN queue.
        std::string name = "fp-engine-" + std::to_string(i);
        pthread_setname_np(pthread_self(), name.c_str());
        int err = engine_->run(
            fd, wakeFd_, stop_, armed_,
            [this] { tsfn_.NonBlockingCall([this](Napi::Env env, Napi::Function fn) { Deliver(env, fn); }); }, 64, vh);
        threadsRunning_.fetch_sub(1);
        if (err != 0) {
          threadErrno_.store(err);
          // A thread that ends on an error (not a stop request) is reported
          // to JS at once: the daemon logs it and exits (issue 15).
          tsfn_.NonBlockingCall([this, err, i](Napi::Env env, Napi::Function) {
            if (!onThreadExit_.IsEmpty())
              onThreadExit_.Call({Napi::Number::New(env, err), Napi::Number::New(env, static_cast<double>(i))});
          });
        }
      });
    }
    return env.Undefined();
  }

  // On the JS thread: hand every queued event to JS in one call, then re-arm.
  void Deliver(Napi::Env env, Napi::Function fn) {
    std::vector<fp::FlowEvent> evs = engine_->drain_events();
    armed_.store(true);
    if (evs.empty()) return;
    fn.Call({EventsToPacked(env, evs)});
  }

  void StopThreads() {
    if (!running_) return;
    running_ = false;
    tsfn_.Abort();
    stop_.store(true, std::memory_order_release);
    uint64_t one = 1;
    ssize_t ignored = write(wakeFd_, &one, sizeof one);
    (void)ignored;
    for (auto& t : threads_) t.join();
    threads_.clear();
    close(wakeFd_);
    wakeFd_ = -1;
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!engine_ || !running_) return env.Undefined();
    StopThreads();
    // Hand over what the threads queued after the last signal.
    Napi::FunctionReference cb = std::move(onEvents_);
    std::vector<fp::FlowEvent> evs = engine_->drain_events();
    if (!evs.empty() && !cb.IsEmpty()) cb.Call({EventsToPacked(env, evs)});
    return env.Undefined();
  }

  // lookup(proto, natIp, natPort)
  Napi::Value Lookup(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    uint8_t proto;
    uint32_t ip;
    uint16_t port;
    if (info.Length() < 3 || !GetProto(info[0], &proto) || !ParseV4(info[1], &ip) || !GetPort(info[2], &port)) {
      ThrowArg(env, "lookup(proto: 6 | 17, natIp: dotted quad, natPort: 0..65535)");
      return env.Undefined();
    }
    const fp::NatKey k = fp::NatKey::v4(ip, port, proto);
    fp::Flow copy;
    {
      std::lock_guard<std::mutex> g(engine_->mutex());
      fp::Flow* f = engine_->table().find_nat(k);
      if (f == nullptr) return env.Undefined();
      copy = *f;
    }
    return FlowToJs(env, copy);
  }

  // lookupPacked(proto, natIpU32, natPort, out: Float64Array(>= kPackedLen)) -> boolean
  // The Listener's per-connection path: numbers in, numbers out, no object
  // and no address text built (FlowToJs costs ~15 property sets and 3
  // inet_ntop strings). Layout: see PACKED in src/native.ts.
  Napi::Value LookupPacked(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    uint8_t proto;
    uint16_t port;
    if (info.Length() < 4 || !GetProto(info[0], &proto) || !info[1].IsNumber() || !GetPort(info[2], &port) ||
        !info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
        info[3].As<Napi::TypedArray>().ElementLength() < kPackedLen) {
      ThrowArg(env, "lookupPacked(proto: 6 | 17, natIp: uint32, natPort: 0..65535, out: Float64Array(8))");
      return env.Undefined();
    }
    double ipd = info[1].As<Napi::Number>().DoubleValue();
    if (!(ipd >= 0 && ipd <= 4294967295.0)) {
      ThrowArg(env, "lookupPacked: natIp must be an IPv4 address as an unsigned 32-bit integer");
      return env.Undefined();
    }
    const fp::NatKey k = fp::NatKey::v4(static_cast<uint32_t>(ipd), port, proto);
    double* out = info[3].As<Napi::Float64Array>().Data();
    {
      std::lock_guard<std::mutex> g(engine_->mutex());
      const fp::Flow* f = engine_->table().find_nat(k);
      if (f == nullptr) return Napi::Boolean::New(env, false);
      out[0] = static_cast<double>(f->id);
      out[1] = f->key.src.as_v4();
      out[2] = f->key.sport;
      out[3] = f->key.dst.as_v4();
      out[4] = f->key.dport;
      out[5] = static_cast<double>(f->state);
      out[6] = static_cast<double>(f->createdMs);
      out[7] = static_cast<double>(f->lastSeenMs);
    }
    return Napi::Boolean::New(env, true);
  }

  Napi::Value Entries(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    std::vector<fp::Flow> all;
    {
      std::lock_guard<std::mutex> g(engine_->mutex());
      all.reserve(engine_->table().size());
      engine_->table().for_each([&](const fp::Flow& f) { all.push_back(f); });
    }
    Napi::Array a = Napi::Array::New(env, all.size());
    for (size_t i = 0; i < all.size(); i++) a.Set(static_cast<uint32_t>(i), FlowToJs(env, all[i]));
    return a;
  }

  // Relaxed reads of the counters: never takes the packet-path lock.
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    Napi::Object o = Napi::Object::New(env);
    fp::Counters& c = engine_->counters();
#define FP_SET(name) o.Set(#name, Napi::Number::New(env, static_cast<double>(c.name.load(std::memory_order_relaxed))));
    FP_COUNTERS(FP_SET)
    FP_GAUGES(FP_SET)
#undef FP_SET
    o.Set("maxFlows", Napi::Number::New(env, engine_->config().table.maxFlows));
    o.Set("threadsRunning", Napi::Number::New(env, threadsRunning_.load()));
    o.Set("threadErrno", Napi::Number::New(env, threadErrno_.load()));
    return o;
  }

  // processPacket(packet, nowMs, vnetHdr?) -> Buffer[]
  Napi::Value ProcessPacket(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    if (info.Length() < 2 || !info[0].IsBuffer() || !info[1].IsNumber()) {
      ThrowArg(env, "processPacket(packet: Buffer, nowMs: number, vnetHdr?: boolean)");
      return env.Undefined();
    }
    Napi::Buffer<uint8_t> in = info[0].As<Napi::Buffer<uint8_t>>();
    int64_t now = info[1].As<Napi::Number>().Int64Value();
    const bool vnet = info.Length() > 2 && info[2].ToBoolean().Value();
    std::vector<uint8_t> buf(std::max(in.Length(), fp::kMinBufCap + (vnet ? fp::vnet::HEADER_LEN : 0)));
    std::copy(in.Data(), in.Data() + in.Length(), buf.begin());
    size_t out = vnet ? engine_->process_vnet(buf.data(), in.Length(), buf.size(), now)
                      : engine_->process(buf.data(), in.Length(), buf.size(), now);
    Napi::Array r = Napi::Array::New(env, out ? 1 : 0);
    if (out) r.Set(0u, Napi::Buffer<uint8_t>::Copy(env, buf.data(), out));
    return r;
  }

  Napi::Value Expire(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsNumber()) {
      ThrowArg(env, "expire(nowMs: number)");
      return env.Undefined();
    }
    // The RSTs the engine thread would write into the TUN for TCP flows that
    // timed out while open (tests drive the engine without threads).
    std::vector<uint8_t> rsts;
    engine_->expire(info[0].As<Napi::Number>().Int64Value(), &rsts);
    Napi::Array r = Napi::Array::New(env, rsts.size() / fp::kRstLen);
    for (size_t i = 0; i * fp::kRstLen < rsts.size(); i++)
      r.Set(static_cast<uint32_t>(i), Napi::Buffer<uint8_t>::Copy(env, rsts.data() + i * fp::kRstLen, fp::kRstLen));
    return r;
  }

  // ensureFlow(proto, srcIp, srcPort, dstIp, dstPort, nowMs)
  Napi::Value EnsureFlow(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    uint8_t proto;
    uint32_t src, dst;
    uint16_t sport, dport;
    if (info.Length() < 6 || !GetProto(info[0], &proto) || !ParseV4(info[1], &src) || !GetPort(info[2], &sport) ||
        !ParseV4(info[3], &dst) || !GetPort(info[4], &dport) || !info[5].IsNumber()) {
      ThrowArg(env, "ensureFlow(proto: 6 | 17, srcIp, srcPort, dstIp, dstPort, nowMs)");
      return env.Undefined();
    }
    fp::Flow f;
    fp::FlowTable::Create why;
    if (!engine_->ensure_flow(proto, src, sport, dst, dport, info[5].As<Napi::Number>().Int64Value(), &f, &why)) {
      if (why == fp::FlowTable::Create::HalfOpenCap)
        ThrowCode(env, "ENOSPC",
                  "source holds " + std::to_string(engine_->config().table.maxHalfOpenPerSource) +
                      " half-open TCP flows already (per-source cap)");
      else if (why == fp::FlowTable::Create::Full)
        ThrowCode(env, "ENOSPC",
                  "NAT table full (" + std::to_string(engine_->config().table.maxFlows) +
                      " flows): raise --max-flows or shorten the timeouts");
      else
        ThrowCode(env, "EADDRNOTAVAIL", "NAT address space exhausted: use a larger --cidr range");
      return env.Undefined();
    }
    return FlowToJs(env, f);
  }

  // setSources(cidrs): serve only these sources (plus the gateway) from now on.
  Napi::Value SetSources(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    fp::SourceFilter f;
    if (info.Length() < 1 || !ParseSources(info[0], &f)) {
      ThrowArg(env, "setSources(cidrs: string[]): IPv4 addresses or CIDRs, e.g. ['192.168.1.0/24', '10.0.0.2']");
      return env.Undefined();
    }
    engine_->set_sources(std::move(f));
    return env.Undefined();
  }

  Napi::Value DrainEvents(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    return EventsToJs(env, engine_->drain_events());
  }

  // drainEventsPacked(): the queued events as start()'s callback gets them (EventsToPacked).
  Napi::Value DrainEventsPacked(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    return EventsToPacked(env, engine_->drain_events());
  }

  // clear(nowMs): remove every flow (close events with reason 'shutdown').
  Napi::Value Clear(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Ready(env)) return env.Undefined();
    int64_t now = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int64Value() : engine_->now_ms();
    std::lock_guard<std::mutex> g(engine_->mutex());
    engine_->table().clear(now);
    return env.Undefined();
  }

  std::unique_ptr<fp::Engine> engine_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> armed_{true};
  std::atomic<int> threadsRunning_{0};
  std::atomic<int> threadErrno_{0};
  int wakeFd_ = -1;
  bool running_ = false;
  Napi::ThreadSafeFunction tsfn_;
  Napi::FunctionReference onEvents_;
  Napi::FunctionReference onThreadExit_;
  EnvTeardown<EngineWrap, &EngineWrap::StopThreads> teardown_;
};

}  // namespace
}  // namespace fakeproxy

void InitEngine(Napi::Env env, Napi::Object exports) {
  using namespace fakeproxy;
  exports.Set("Engine", EngineWrap::Define(env));
  SetLayout(env, exports, "packedFlowLen", EngineWrap::kPackedLen);
  SetLayout(env, exports, "flowStates", static_cast<uint32_t>(fp::FlowState::Udp) + 1);
  SetLayout(env, exports, "flowEventFields", kEventFields);
  SetLayout(env, exports, "closeReasons", static_cast<uint32_t>(fp::CloseReason::Shutdown) + 1);
}
