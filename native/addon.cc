// Module entry: the TUN functions live here; the engine registers itself
// through InitEngine (engine_addon.cc).
#include <arpa/inet.h>
#include <malloc.h>
#include <napi.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <v8.h>

#include <vector>

#include "accept_addon.h"
#include "dgram_batch_addon.h"
#include "engine_addon.h"
#include "mark_addon.h"
#include "napi_args.h"
#include "napi_errors.h"
#include "relay_addon.h"
#include "tun.h"
#include "udp_relay_addon.h"

namespace fakeproxy {
namespace {

bool ParseIpv4(const std::string& text, uint32_t* out) {
  struct in_addr a;
  if (inet_pton(AF_INET, text.c_str(), &a) != 1) return false;
  *out = ntohl(a.s_addr);
  return true;
}

// No defaults here: TypeScript (src/options.ts via TunDevice) passes every
// field, and a missing one is an error naming it. The bounds checked here are
// the kernel's (IPv4 minimum link MTU 68, MAX_TAP_QUEUES 256); the operator's
// narrower ranges live in src/options.ts.
bool GetU32(const Napi::Object& o, const char* key, uint32_t lo, uint32_t hi, uint32_t* out) {
  double d;
  if (!IntegerIn(o.Get(key), lo, hi, &d)) return false;
  *out = static_cast<uint32_t>(d);
  return true;
}

// tunOpen({ name, mtu, address, prefixLen, queues, offload, txQueueLen }) -> { name, ifindex, fds, offload,
// offloadError? }
Napi::Value TunOpenJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) {
    ThrowArg(env, "tunOpen(options) needs an options object");
    return env.Undefined();
  }
  Napi::Object o = info[0].As<Napi::Object>();
  TunConfig cfg;
  Napi::Value name = o.Get("name");
  Napi::Value address = o.Get("address");
  if (!name.IsString() || !address.IsString()) {
    ThrowArg(env, "tunOpen: name and address must be strings");
    return env.Undefined();
  }
  cfg.name = name.As<Napi::String>().Utf8Value();
  if (!ParseIpv4(address.As<Napi::String>().Utf8Value(), &cfg.address)) {
    ThrowArg(env, "tunOpen: address must be a dotted-quad IPv4 address");
    return env.Undefined();
  }
  if (!GetU32(o, "mtu", 68, 65535, &cfg.mtu)) {
    ThrowArg(env, "tunOpen: mtu must be an integer 68..65535");
    return env.Undefined();
  }
  if (!GetU32(o, "prefixLen", 1, 30, &cfg.prefix_len)) {
    ThrowArg(env, "tunOpen: prefixLen must be an integer 1..30");
    return env.Undefined();
  }
  if (!GetU32(o, "queues", 1, 256, &cfg.queues)) {
    ThrowArg(env, "tunOpen: queues must be an integer 1..256");
    return env.Undefined();
  }
  if (!o.Get("txQueueLen").IsUndefined() && !GetU32(o, "txQueueLen", 1, 1u << 20, &cfg.tx_queue_len)) {
    ThrowArg(env, "tunOpen: txQueueLen must be an integer 1..1048576 or undefined (kernel default)");
    return env.Undefined();
  }
  Napi::Value off = o.Get("offload");
  if (!off.IsBoolean()) {
    ThrowArg(env, "tunOpen: offload must be a boolean");
    return env.Undefined();
  }
  cfg.offload = off.As<Napi::Boolean>().Value();
  TunResult result;
  SysError error;
  if (!TunOpen(cfg, &result, &error)) {
    ThrowSys(env, error.err, error.syscall, error.message);
    return env.Undefined();
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("name", result.name);
  r.Set("ifindex", result.ifindex);
  Napi::Array fds = Napi::Array::New(env, result.fds.size());
  for (size_t i = 0; i < result.fds.size(); i++) fds.Set(static_cast<uint32_t>(i), result.fds[i]);
  r.Set("fds", fds);
  r.Set("offload", Napi::Boolean::New(env, result.offload));
  if (!result.offload_error.empty()) r.Set("offloadError", result.offload_error);
  return r;
}

std::vector<int> FdList(const Napi::Value& v) {
  std::vector<int> fds;
  if (!v.IsArray()) return fds;
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value e = a.Get(i);
    if (e.IsNumber()) fds.push_back(e.As<Napi::Number>().Int32Value());
  }
  return fds;
}

Napi::Value TunCloseJs(const Napi::CallbackInfo& info) {
  if (info.Length() >= 1) TunClose(FdList(info[0]));
  return info.Env().Undefined();
}

// The test-only packet calls take (fd, x): info[0] a number and `x_ok` (the
// caller's check of info[1], undefined when missing); else a TypeError with
// `usage`.
bool TestPacketArgs(const Napi::CallbackInfo& info, bool x_ok, const char* usage, int* fd) {
  if (!info[0].IsNumber() || !x_ok) {
    ThrowArg(info.Env(), usage);
    return false;
  }
  *fd = info[0].As<Napi::Number>().Int32Value();
  return true;
}

// Test-only: write one raw packet into the device.
Napi::Value TunWritePacketForTest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!TestPacketArgs(info, info[1].IsBuffer(), "tunWritePacketForTest(fd, buffer)", &fd)) return env.Undefined();
  Napi::Buffer<uint8_t> b = info[1].As<Napi::Buffer<uint8_t>>();
  ssize_t n = write(fd, b.Data(), b.Length());
  if (n < 0) {
    ThrowSys(env, errno, "write", "write packet to TUN");
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// Test-only: wait up to timeoutMs for one packet; undefined when none came. With
// offloads on, the packet starts with its virtio_net_hdr.
Napi::Value TunReadPacketForTest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!TestPacketArgs(info, info[1].IsNumber(), "tunReadPacketForTest(fd, timeoutMs)", &fd)) return env.Undefined();
  int timeout = info[1].As<Napi::Number>().Int32Value();
  struct pollfd p = {fd, POLLIN, 0};
  int r = poll(&p, 1, timeout);
  if (r <= 0) return env.Undefined();
  std::vector<uint8_t> buf(65536 + 64);  // a 64 KiB packet plus the virtio_net_hdr of a device with offloads
  ssize_t n = read(fd, buf.data(), buf.size());
  if (n < 0) {
    if (errno == EAGAIN) return env.Undefined();
    ThrowSys(env, errno, "read", "read packet from TUN");
    return env.Undefined();
  }
  return Napi::Buffer<uint8_t>::Copy(env, buf.data(), static_cast<size_t>(n));
}

// Test-only: a non-blocking SOCK_SEQPACKET socketpair [engineSide, testSide].
// It keeps packet boundaries like a TUN fd, so the engine's thread loop runs
// on it without root (test/unit/native/threadloop.test.ts).
Napi::Value SocketpairForTest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
    ThrowSys(env, errno, "socketpair", "create a test socketpair (raise the fd limit: ulimit -n)");
    return env.Undefined();
  }
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, sv[0]);
  a.Set(1u, sv[1]);
  return a;
}

// lowMemoryNotification(): V8's CollectAllAvailableGarbage, as on a low-memory
// signal: full collections that also shrink the young generation and hand
// freed pages back to the kernel. Node-API has no equivalent, and a plain
// gc() (--expose-gc) keeps the young generation at its peak size (32 MiB
// after a burst of connection set-ups, measured with Node 20); see
// src/util/quietGc.ts for when the daemon calls it. Then malloc_trim(0):
// glibc keeps the free pages of every arena (one per thread that ever
// malloc'd: V8's compiler and GC workers, libuv's pool, our relay threads)
// resident until told; see docs/memory.md for what it gives back.
Napi::Value LowMemoryNotificationJs(const Napi::CallbackInfo& info) {
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  if (isolate != nullptr) isolate->LowMemoryNotification();
  malloc_trim(0);
  return info.Env().Undefined();
}

}  // namespace
}  // namespace fakeproxy

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  using namespace fakeproxy;
  exports.Set("tunOpen", Napi::Function::New(env, TunOpenJs, "tunOpen"));
  exports.Set("tunClose", Napi::Function::New(env, TunCloseJs, "tunClose"));
  exports.Set("tunWritePacketForTest", Napi::Function::New(env, TunWritePacketForTest, "tunWritePacketForTest"));
  exports.Set("tunReadPacketForTest", Napi::Function::New(env, TunReadPacketForTest, "tunReadPacketForTest"));
  exports.Set("socketpairForTest", Napi::Function::New(env, SocketpairForTest, "socketpairForTest"));
  exports.Set("lowMemoryNotification", Napi::Function::New(env, LowMemoryNotificationJs, "lowMemoryNotification"));
  InitEngine(env, exports);
  InitDgramBatch(env, exports);
  InitRelay(env, exports);
  InitUdpRelay(env, exports);
  InitMark(env, exports);
  InitAccept(env, exports);
  return exports;
}

NODE_API_MODULE(fakeproxy, Init)
