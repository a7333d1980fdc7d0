// N-API `TcpAcceptor` (surface declared in src/native.ts): the Listener's
// listening socket, accepted in C++ on the Node event loop (uv_poll, no extra
// thread): each wake-up accepts until EAGAIN (at most kMaxBatch) and hands
// JavaScript ONE call with a Float64Array [fd, peerIpU32, peerPort] × n (the
// same array every time: read it before returning) — no
// net.Socket, no address text, no getpeername per connection (accept4 gives
// the peer). The Listener decides per flow: native dial (the fd goes to the
// relay), a JS outbound (the fd is wrapped in a net.Socket), or a reset.
// IPv4 only: the gateway is an IPv4 address.
#include "accept_addon.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/filter.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "js_read_poll.h"
#include "napi_args.h"
#include "napi_errors.h"

namespace fakeproxy {
namespace {

constexpr int kMaxBatch = 256;
constexpr int kFields = 3;

void ResetAndClose(int fd) {
  // SO_LINGER {on, 0}: close() sends RST (tcp(7)).
  struct linger l = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  close(fd);
}

// SO_ATTACH_FILTER: accept only packets that arrived on interface `ifindex`.
int AttachIngressFilter(int fd, unsigned ifindex) {
  struct sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, static_cast<uint32_t>(SKF_AD_OFF + SKF_AD_IFINDEX)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ifindex, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, 0xffffffffu),
      BPF_STMT(BPF_RET | BPF_K, 0),
  };
  struct sock_fprog prog = {static_cast<unsigned short>(sizeof code / sizeof code[0]), code};
  return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog);
}

int Bpf(int cmd, union bpf_attr* a) { return static_cast<int>(syscall(SYS_bpf, cmd, a, sizeof *a)); }

// SO_ATTACH_BPF: the same filter as eBPF, which also counts what it drops in
// a one-slot array map (a classic filter cannot count; the kernel adds a
// filtered segment to the socket's sk_drops, which listen-queue overflows
// share). Returns the map's fd, or -1 with errno (no bpf() here: the caller
// falls back to the classic filter, uncounted).
int AttachCountingIngressFilter(int fd, unsigned ifindex) {
  union bpf_attr m = {};
  m.map_type = BPF_MAP_TYPE_ARRAY;
  m.key_size = 4;
  m.value_size = 8;
  m.max_entries = 1;
  const int map = Bpf(BPF_MAP_CREATE, &m);
  if (map < 0) return -1;
  auto insn = [](uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
    struct bpf_insn i = {};
    i.code = code;
    i.dst_reg = dst & 0xf;
    i.src_reg = src & 0xf;
    i.off = off;
    i.imm = imm;
    return i;
  };
  const struct bpf_insn prog[] = {
      // r2 = skb->ifindex; the TUN's: r0 = -1 (keep all of it), exit.
      insn(BPF_LDX | BPF_MEM | BPF_W, 2, 1, offsetof(struct __sk_buff, ifindex), 0),
      insn(BPF_JMP | BPF_JNE | BPF_K, 2, 0, 2, static_cast<int32_t>(ifindex)),
      insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, -1),
      insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
      // Any other: key 0 on the stack, r0 = lookup(map, &key), *r0 += 1 (atomic), r0 = 0 (drop), exit.
      insn(BPF_ST | BPF_MEM | BPF_W, 10, 0, -4, 0),
      insn(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0),
      insn(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -4),
      insn(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, map),
      insn(0, 0, 0, 0, 0),
      insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
      insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 2, 0),
      insn(BPF_ALU64 | BPF_MOV | BPF_K, 1, 0, 0, 1),
      insn(BPF_STX | BPF_ATOMIC | BPF_DW, 0, 1, 0, BPF_ADD),
      insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0),
      insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
  };
  union bpf_attr p = {};
  p.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
  p.insns = reinterpret_cast<uintptr_t>(prog);
  p.insn_cnt = sizeof prog / sizeof prog[0];
  p.license = reinterpret_cast<uintptr_t>("MIT");
  const int pf = Bpf(BPF_PROG_LOAD, &p);
  const int err = pf < 0 ? errno : setsockopt(fd, SOL_SOCKET, SO_ATTACH_BPF, &pf, sizeof pf) < 0 ? errno : 0;
  if (pf >= 0) close(pf);  // the socket holds the program
  if (err != 0) {
    close(map);
    errno = err;
    return -1;
  }
  return map;
}

// What AttachCountingIngressFilter's program has dropped so far, or -1.
double FilterDrops(int map) {
  if (map < 0) return -1;
  uint32_t key = 0;
  uint64_t value = 0;
  union bpf_attr a = {};
  a.map_fd = static_cast<uint32_t>(map);
  a.key = reinterpret_cast<uintptr_t>(&key);
  a.value = reinterpret_cast<uintptr_t>(&value);
  return Bpf(BPF_MAP_LOOKUP_ELEM, &a) < 0 ? -1 : static_cast<double>(value);
}

class TcpAcceptor : public Napi::ObjectWrap<TcpAcceptor> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "TcpAcceptor",
                       {
                           InstanceMethod("start", &TcpAcceptor::Start),
                           InstanceMethod("port", &TcpAcceptor::Port),
                           InstanceMethod("reset", &TcpAcceptor::Reset),
                           InstanceMethod("filterDrops", &TcpAcceptor::FilterDropsJs),
                           InstanceMethod("congestionErrno", &TcpAcceptor::CongestionErrno),
                           InstanceMethod("close", &TcpAcceptor::Close),
                       });
  }

  // new TcpAcceptor({ host: u32, port, backlog, device? }): bound and listening, or throws (EADDRINUSE, EADDRNOTAVAIL,
  // …).
  explicit TcpAcceptor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TcpAcceptor>(info) {
    Napi::Env env = info.Env();
    Napi::Object o;
    if (!OptionsArg(info, false, "new TcpAcceptor({ host, port, backlog })", &o)) return;
    auto num = [&](const char* k) {
      Napi::Value v = o.Get(k);
      return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1.0;
    };
    double host = num("host"), port = num("port"), backlog = num("backlog");
    if (!(host >= 0 && host <= 4294967295.0) || host != static_cast<double>(static_cast<uint32_t>(host)) ||
        !(port >= 0 && port <= 65535) || port != static_cast<int>(port) || !(backlog >= 1 && backlog <= 65535)) {
      ThrowArg(env, "TcpAcceptor: host an IPv4 address as a u32, port 0–65535, backlog 1–65535");
      return;
    }
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd_ < 0) {
      ThrowSys(env, errno, "socket", std::string("socket: ") + std::strerror(errno));
      return;
    }
    int one = 1;
    // As libuv does for every TCP listener: a restart binds while old connections sit in TIME_WAIT.
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    // As net.createServer({ noDelay: true }): the app already chose its own
    // batching. Set once here: every accepted socket inherits it (Linux clones
    // the listener), one system call per connection less.
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    // device: the TUN. Only the engine writes segments for the Listener, into
    // the TUN. A classic BPF filter on the ingress ifindex drops anything else
    // silently, on the listener and on every accepted socket (they share it):
    // a LAN host spoofing a live flow's NAT address gets no answer at all.
    // Not SO_BINDTODEVICE: the kernel would answer such a segment with a RST
    // to the NAT address, which the engine takes as the flow's end.
    Napi::Value dev = o.Get("device");
    if (!dev.IsUndefined()) {
      std::string name = dev.IsString() ? dev.As<Napi::String>().Utf8Value() : std::string();
      const unsigned ifindex = name.empty() ? 0 : if_nametoindex(name.c_str());
      int err = ifindex == 0 ? ENODEV : 0;
      if (err == 0) filterMap_ = AttachCountingIngressFilter(fd_, ifindex);
      if (err == 0 && filterMap_ < 0 && AttachIngressFilter(fd_, ifindex) < 0) err = errno;
      if (err != 0) {
        close(fd_);
        fd_ = -1;
        ThrowSys(env, err, "setsockopt",
                 "listen: accept only from device '" + name + "': " + std::strerror(err) +
                     (err == ENODEV ? " (open the TUN before the listener)" : ""));
        return;
      }
    }
    // congestion: TCP_CONGESTION on the listening socket; accepted sockets
    // inherit it (tcp_ca_openreq_child keeps a setsockopt choice). A refusal
    // (ENOENT: not in this kernel; EPERM: not allowed without CAP_NET_ADMIN)
    // leaves the system's; JS reads the errno and says so.
    Napi::Value cc = o.Get("congestion");
    if (!cc.IsUndefined()) {
      std::string name = cc.IsString() ? cc.As<Napi::String>().Utf8Value() : std::string();
      if (name.empty() || name.size() >= 16) {
        close(fd_);
        fd_ = -1;
        ThrowArg(env, "TcpAcceptor: congestion must be a congestion control name of 1-15 bytes");
        return;
      }
      if (setsockopt(fd_, IPPROTO_TCP, TCP_CONGESTION, name.data(), static_cast<socklen_t>(name.size())) < 0)
        congestionErrno_ = errno;
    }
    struct sockaddr_in a = {};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(static_cast<uint32_t>(host));
    if (bind(fd_, reinterpret_cast<struct sockaddr*>(&a), sizeof a) < 0 || listen(fd_, static_cast<int>(backlog)) < 0) {
      int err = errno;
      close(fd_);
      fd_ = -1;
      ThrowSys(env, err, "listen", std::string("listen: ") + std::strerror(err));
      return;
    }
    // Spare fd for EMFILE/ENFILE: freed to accept (and reset) the connection
    // the kernel holds, so a level-triggered poll does not spin on it.
    reserve_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  }

  ~TcpAcceptor() override {
    finalizing_ = true;
    Shutdown();
  }

 private:
  // start(onBatch(records: Float64Array, n)): records [fd, peerIpU32, peerPort] × n (one array, reused);
  // fd = -errno for an accept that failed (the connection was reset when it could be).
  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (poll_.StartBatches(info, fd_, this, OnPoll, "TcpAcceptor", "the listening socket")) {
      Ref();  // alive while polled: only close() lets it go
    }
    return info.Env().Undefined();
  }

  Napi::Value Port(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    struct sockaddr_in a = {};
    socklen_t len = sizeof a;
    if (fd_ < 0 || getsockname(fd_, reinterpret_cast<struct sockaddr*>(&a), &len) != 0) {
      ThrowSys(env, EBADF, "getsockname", "TcpAcceptor is closed");
      return env.Undefined();
    }
    return Napi::Number::New(env, ntohs(a.sin_port));
  }

  // reset(fd): close an accepted fd with RST (a peer we do not serve).
  Napi::Value Reset(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) {
      ThrowArg(env, "TcpAcceptor.reset(fd)");
      return env.Undefined();
    }
    int fd = info[0].As<Napi::Number>().Int32Value();
    if (fd >= 0) ResetAndClose(fd);
    return env.Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  void Shutdown() {
    if (poll_.Stop() && !finalizing_) Unref();
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    if (reserve_ >= 0) close(reserve_);
    reserve_ = -1;
    if (filterMap_ >= 0) close(filterMap_);
    filterMap_ = -1;
  }

  // filterDrops(): segments the device filter dropped (not from the TUN), or -1 when not counted.
  Napi::Value CongestionErrno(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), congestionErrno_);
  }

  Napi::Value FilterDropsJs(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), FilterDrops(filterMap_));
  }

  static void OnPoll(uv_poll_t* h, int status, int /*events*/) {
    auto* self = static_cast<TcpAcceptor*>(h->data);
    if (self == nullptr || status < 0) return;
    self->Drain();
  }

  void Drain() {
    int n = 0;
    while (n < kMaxBatch && fd_ >= 0) {
      struct sockaddr_in peer;
      socklen_t len = sizeof peer;
      int c = accept4(fd_, reinterpret_cast<struct sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c < 0) {
        int err = errno;
        if (err == EINTR || err == ECONNABORTED) continue;
        if (err == EAGAIN) break;
        if ((err == EMFILE || err == ENFILE) && reserve_ >= 0) {
          close(reserve_);
          int x = accept(fd_, nullptr, nullptr);
          if (x >= 0) ResetAndClose(x);
          reserve_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
        Put(n++, -err, 0, 0);
        break;  // the next wake-up tries again
      }
      Put(n++, c, peer.sin_family == AF_INET ? ntohl(peer.sin_addr.s_addr) : 0,
          peer.sin_family == AF_INET ? ntohs(peer.sin_port) : 0);
    }
    if (n == 0 || !poll_.has_callback()) return;
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    // One array for every batch (JavaScript reads it before it returns): a
    // new ArrayBuffer per wake-up, i.e. per connection at a paced rate, was
    // a backing store to malloc and an extension for the scavenger to sweep.
    if (out_.IsEmpty()) out_ = Napi::Persistent(Napi::Float64Array::New(env, kMaxBatch * kFields));
    Napi::Float64Array a = out_.Value();
    std::memcpy(a.Data(), recs_, static_cast<size_t>(n) * kFields * sizeof(double));
    poll_.Deliver(env, Value(), {a, Napi::Number::New(env, n)});
  }

  void Put(int i, int fd, uint32_t ip, uint16_t port) {
    recs_[i * kFields + 0] = fd;
    recs_[i * kFields + 1] = ip;
    recs_[i * kFields + 2] = port;
  }

  int fd_ = -1;
  int reserve_ = -1;
  int congestionErrno_ = 0;
  int filterMap_ = -1;  // the eBPF device filter's drop counter (AttachCountingIngressFilter), or -1
  JsReadPoll poll_;
  double recs_[kMaxBatch * kFields];
  Napi::Reference<Napi::Float64Array> out_;  // the array every batch is delivered in
  bool finalizing_ = false;
};

}  // namespace

void InitAccept(Napi::Env env, Napi::Object exports) {
  exports.Set("TcpAcceptor", TcpAcceptor::Define(env));
  SetLayout(env, exports, "acceptRecordFields", kFields);
}

}  // namespace fakeproxy
