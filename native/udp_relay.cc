#include "udp_relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <unordered_set>

#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

namespace fp {

namespace {

constexpr uint64_t kListenerTag = 0;
constexpr uint64_t kWakeTag = 1;
constexpr uint64_t kAssocTag = 1ull << 63;
constexpr int kIdleCheckMs = 50;
constexpr size_t kMaxRemotes = 4096;
// SO_RXQ_OVFL's counter, IP_PKTINFO's ingress interface and UDP_GRO's segment size on the listener.
constexpr size_t kCmsgSpace =
    CMSG_SPACE(sizeof(uint32_t)) + CMSG_SPACE(sizeof(struct in_pktinfo)) + CMSG_SPACE(sizeof(int));
// RFC 1928 §7: RSV(2) FRAG(1) ATYP(1) before the address.
constexpr size_t kSocksMinHeader = 4;
constexpr size_t kMaxUdpPayload = 65507;
// The longest SOCKS5 UDP header: RSV(2) FRAG(1) ATYP(1) LEN(1) name(255) PORT(2).
constexpr size_t kMaxSocksHeader = 262;
// Segments per UDP GSO send (the kernel's UDP_MAX_SEGMENTS is 64 on older kernels).
constexpr int kMaxGsoSegments = 64;
// Datagrams one coalesced (UDP_GRO) receive may hold: the kernel's UDP_MAX_SEGMENTS (128 since 6.9; GRO itself
// stops at 64). A receive claiming more is dropped as oversized.
constexpr int kMaxGroSegments = 128;
constexpr size_t kGsoCmsgSpace = CMSG_SPACE(sizeof(uint16_t));
// recvmmsg rounds per wake-up while each fills its batch: fewer epoll_wait calls under load, and an
// association's replies cannot starve the listener for long.
constexpr int kMaxRounds = 4;
// Socket buffers asked for with SO_*BUFFORCE (as root; past net.core.[rw]mem_max) before the capped call.
constexpr int kSndBuf = 4 << 20;

int64_t NowMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

uint64_t NatKey(uint32_t ip, uint16_t port) { return (static_cast<uint64_t>(ip) << 16) | port; }

struct sockaddr_in Sin(uint32_t ip, uint16_t port) {
  struct sockaddr_in a;
  std::memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(ip);
  a.sin_port = htons(port);
  return a;
}

UdpAddr Addr4(uint32_t ip, uint16_t port) {
  UdpAddr a;
  a.v4 = Sin(ip, port);
  return a;
}

// An IPv4 destination for a socket of `family`: IPv4-mapped on a dual-stack socket.
UdpAddr AddrFor(int family, uint32_t ip, uint16_t port) {
  UdpAddr a;
  if (family != AF_INET6) return Addr4(ip, port);
  std::memset(&a, 0, sizeof a);
  a.v6.sin6_family = AF_INET6;
  a.v6.sin6_port = htons(port);
  a.v6.sin6_addr.s6_addr[10] = 0xff;
  a.v6.sin6_addr.s6_addr[11] = 0xff;
  uint32_t be = htonl(ip);
  std::memcpy(&a.v6.sin6_addr.s6_addr[12], &be, 4);
  return a;
}

socklen_t AddrLen(const UdpAddr& a) {
  return a.sa.sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

bool SameDst(const UdpAddr& a, const UdpAddr& b) {
  if (a.sa.sa_family != b.sa.sa_family) return false;
  if (a.sa.sa_family == AF_INET6)
    return a.v6.sin6_port == b.v6.sin6_port && std::memcmp(&a.v6.sin6_addr, &b.v6.sin6_addr, 16) == 0;
  return a.v4.sin_addr.s_addr == b.v4.sin_addr.s_addr && a.v4.sin_port == b.v4.sin_port;
}

// The SOCKS5 address of a source: the remote key of a direct reply. ATYP 1 for IPv4 (and IPv4-mapped IPv6,
// what a dual-stack socket reports for an IPv4 source), ATYP 4 for IPv6.
std::string SourceKey(const UdpAddr& a) {
  if (a.sa.sa_family == AF_INET6 && !IN6_IS_ADDR_V4MAPPED(&a.v6.sin6_addr)) {
    std::string k(19, '\0');
    k[0] = 4;
    std::memcpy(&k[1], &a.v6.sin6_addr, 16);
    std::memcpy(&k[17], &a.v6.sin6_port, 2);
    return k;
  }
  std::string k(7, '\0');
  k[0] = 1;
  if (a.sa.sa_family == AF_INET6) {
    std::memcpy(&k[1], &a.v6.sin6_addr.s6_addr[12], 4);
    std::memcpy(&k[5], &a.v6.sin6_port, 2);
  } else {
    std::memcpy(&k[1], &a.v4.sin_addr.s_addr, 4);
    std::memcpy(&k[5], &a.v4.sin_port, 2);
  }
  return k;
}

// Length of the SOCKS5 UDP header (RFC 1928 §7) at p, or a drop reason (negative: -1 - UdpDrop).
int SocksHeaderLen(const uint8_t* p, size_t n) {
  if (n < kSocksMinHeader) return -1 - kDropTruncated;
  if (p[2] != 0) return -1 - kDropFragment;
  size_t need;
  switch (p[3]) {
    case 1:
      need = 4 + 4 + 2;
      break;
    case 4:
      need = 4 + 16 + 2;
      break;
    case 3:
      if (n < 5) return -1 - kDropTruncated;
      need = 5 + p[4] + 2;
      break;
    default:
      return -1 - kDropBadAtyp;
  }
  if (n < need) return -1 - kDropTruncated;
  return static_cast<int>(need);
}

// dual: an AF_INET6 socket taking IPv4 too, bound to [::]:port (ip must be 0); AF_INET when the host has no
// IPv6 (*family tells which).
int OpenUdp(uint32_t ip, uint16_t port, bool dual, int rcvbuf, uint32_t mark, int* family, int* err,
            std::string* what) {
  int fd = dual ? socket(AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) : -1;
  int off = 0;
  if (fd >= 0 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) != 0) {
    close(fd);
    fd = -1;
  }
  *family = fd >= 0 ? AF_INET6 : AF_INET;
  if (fd < 0) fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = errno;
    *what = "socket";
    return -1;
  }
  int one = 1;
  // Best effort: as root past net.core.rmem_max/wmem_max (a burst of a 1 Gbit/s flow outgrows the
  // distribution default of 208 KiB), else capped by them.
  if (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  int sndbuf = kSndBuf;
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) != 0)
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
  if (mark != 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) {
    *err = errno;
    *what = "setsockopt(SO_MARK)";
    close(fd);
    return -1;
  }
  UdpAddr a = *family == AF_INET6 ? AddrFor(AF_INET6, 0, port) : Addr4(ip, port);
  if (*family == AF_INET6) a.v6.sin6_addr = in6addr_any;
  if (bind(fd, &a.sa, AddrLen(a)) != 0) {
    *err = errno;
    *what = "bind";
    close(fd);
    return -1;
  }
  return fd;
}

uint16_t LocalPort(int fd) {
  UdpAddr a;
  socklen_t len = sizeof a;
  if (getsockname(fd, &a.sa, &len) != 0) return 0;
  return ntohs(a.sa.sa_family == AF_INET6 ? a.v6.sin6_port : a.v4.sin_port);
}

}  // namespace

struct UdpAssoc {
  uint64_t id;
  int fd;
  int family;
  UdpAssocKind kind;
  struct sockaddr_in relay;
  bool has_relay = false;
  uint32_t idle_ms, dns_idle_ms;
  bool dns_only;
  int64_t last_active;
  uint64_t dgrams_up = 0, bytes_up = 0, dgrams_down = 0, bytes_down = 0;
  UdpGso gso;
  std::unordered_map<std::string, uint64_t> remotes;  // remote key → NAT key
  std::unordered_set<uint64_t> nats;                  // NAT keys bound to it
};

UdpRelay::UdpRelay(const UdpRelayOptions& opts, std::function<void()> notify) : o_(opts), notify_(std::move(notify)) {
  if (o_.batch < 1) o_.batch = 1;
  if (o_.max_payload > kMaxUdpPayload) o_.max_payload = kMaxUdpPayload;
  // Room for a SOCKS5 header plus one byte more than the largest payload: a longer datagram shows as longer (or
  // MSG_TRUNC).
  size_t slot = o_.max_payload + kMaxSocksHeader + 1;
  slab_.reset(new uint8_t[static_cast<size_t>(o_.batch) * slot]);  // not zero-filled: untouched pages stay unmapped
  rmsgs_.resize(o_.batch);
  riovs_.resize(o_.batch);
  raddrs_.resize(o_.batch);
  cmsg_.resize(static_cast<size_t>(o_.batch) * kCmsgSpace);
  // Coalesced receives on the listener (UDP_GRO) only when any fits a slot whole; otherwise the kernel segments.
  gro_ = o_.max_payload >= kMaxUdpPayload;
  // Datagrams per round: a receive may carry up to kMaxGroSegments of them.
  const size_t cap = static_cast<size_t>(o_.batch) * (gro_ ? kMaxGroSegments : 1);
  gmsgs_.resize(cap);
  gcmsg_.resize(cap * kGsoCmsgSpace);
  gfirst_.resize(cap);
  gcount_.resize(cap);
  siovs_.resize(2 * cap);
  saddrs_.resize(cap);
  sbind_.resize(cap);
}

UdpRelay::~UdpRelay() { Stop(); }

bool UdpRelay::Start(uint32_t ip, uint16_t port, int rcvbuf, uint32_t mark, int* err, std::string* what) {
  int family;
  lfd_ = OpenUdp(ip, port, false, rcvbuf, mark, &family, err, what);
  if (lfd_ < 0) return false;
  int one = 1;
  if (o_.ingress_ifindex > 0 && setsockopt(lfd_, IPPROTO_IP, IP_PKTINFO, &one, sizeof one) != 0) {
    *err = errno;
    *what = "setsockopt(IP_PKTINFO)";
    Stop();
    return false;
  }
  // The engine writes a run of one flow's datagrams as one UDP GSO packet into the TUN: take it whole (one
  // queue entry, one receive) and split it here. Best effort: without it (Linux < 5.0) the kernel segments.
  if (gro_ && setsockopt(lfd_, SOL_UDP, UDP_GRO, &one, sizeof one) != 0) gro_ = false;
  port_ = LocalPort(lfd_);
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  wakefd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epfd_ < 0 || wakefd_ < 0) {
    *err = errno;
    *what = epfd_ < 0 ? "epoll_create1" : "eventfd";
    Stop();
    return false;
  }
  struct epoll_event ev;
  ev.events = EPOLLIN;
  ev.data.u64 = kListenerTag;
  epoll_ctl(epfd_, EPOLL_CTL_ADD, lfd_, &ev);
  ev.data.u64 = kWakeTag;
  epoll_ctl(epfd_, EPOLL_CTL_ADD, wakefd_, &ev);
  running_ = true;
  try {
    thread_ = std::thread([this] { Run(); });
  } catch (const std::system_error& e) {
    running_ = false;
    *err = e.code().value();
    *what = "pthread_create";
    Stop();
    return false;
  }
  return true;
}

void UdpRelay::Stop() {
  if (running_) {
    {
      std::lock_guard<std::mutex> g(mu_);
      running_ = false;
    }
    uint64_t one = 1;
    if (write(wakefd_, &one, sizeof one) < 0) {
      // The thread still sees running_ false at its next timeout.
    }
  }
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> g(mu_);
  std::vector<UdpAssoc*> all;
  for (auto& kv : assocs_) all.push_back(kv.second.get());
  for (UdpAssoc* a : all) EndLocked(a, UdpEnd::kClosed);
  for (int* fd : {&lfd_, &epfd_, &wakefd_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

uint16_t UdpRelay::Open(uint64_t id, UdpAssocKind kind, uint32_t bind_ip, uint32_t mark, int rcvbuf, uint32_t idle_ms,
                        uint32_t dns_idle_ms, int* err, std::string* what) {
  std::lock_guard<std::mutex> g(mu_);
  if (epfd_ < 0) {
    *err = ESHUTDOWN;
    *what = "relay stopped";
    return 0;
  }
  if (assocs_.count(id) != 0) {
    *err = EEXIST;
    *what = "association id in use";
    return 0;
  }
  int family;
  const bool dual = kind == UdpAssocKind::kDirect && bind_ip == 0;
  int fd = OpenUdp(bind_ip, 0, dual, rcvbuf, mark, &family, err, what);
  if (fd < 0) return 0;
  auto a = std::make_unique<UdpAssoc>();
  a->id = id;
  a->fd = fd;
  a->family = family;
  a->kind = kind;
  a->idle_ms = idle_ms;
  a->dns_idle_ms = dns_idle_ms;
  a->dns_only = true;
  a->last_active = NowMs();
  struct epoll_event ev;
  ev.events = EPOLLIN;
  ev.data.u64 = kAssocTag | id;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    *err = errno;
    *what = "epoll_ctl";
    close(fd);
    return 0;
  }
  uint16_t port = LocalPort(fd);
  assocs_.emplace(id, std::move(a));
  t_.associations++;
  return port;
}

bool UdpRelay::SetSocksRelay(uint64_t id, uint32_t ip, uint16_t port) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = assocs_.find(id);
  if (it == assocs_.end()) return false;
  it->second->relay = Sin(ip, port);
  it->second->has_relay = true;
  return true;
}

bool UdpRelay::Bind(uint32_t nat_ip, uint16_t nat_port, uint64_t id, uint32_t dst_ip, const std::string& dst_ip6,
                    uint16_t dst_port, const std::string& socks_addr, const std::string& remote_key, bool dns) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = assocs_.find(id);
  if (it == assocs_.end()) return false;
  UdpAssoc* a = it->second.get();
  uint64_t k = NatKey(nat_ip, nat_port);
  auto old = bindings_.find(k);
  if (old != bindings_.end() && old->second.assoc != a) old->second.assoc->nats.erase(k);
  Binding& b = bindings_[k];
  b.assoc = a;
  if (dst_ip6.size() == 16) {
    // On an AF_INET socket (no IPv6 on this host) the send fails and is counted (kDropSendError).
    std::memset(&b.dst, 0, sizeof b.dst);
    b.dst.v6.sin6_family = AF_INET6;
    b.dst.v6.sin6_port = htons(dst_port);
    std::memcpy(&b.dst.v6.sin6_addr, dst_ip6.data(), 16);
  } else {
    b.dst = AddrFor(a->family, dst_ip, dst_port);
  }
  b.header.clear();
  if (a->kind == UdpAssocKind::kSocks5) {
    b.header.assign(3, '\0');
    b.header += socks_addr;
  }
  b.remote_key = remote_key;
  a->nats.insert(k);
  if (!remote_key.empty()) {
    if (a->remotes.size() >= kMaxRemotes) a->remotes.erase(a->remotes.begin());
    a->remotes[remote_key] = k;
  }
  if (!dns) a->dns_only = false;
  return true;
}

bool UdpRelay::AddRemote(uint64_t id, const std::string& remote_key, uint32_t nat_ip, uint16_t nat_port) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = assocs_.find(id);
  if (it == assocs_.end()) return false;
  UdpAssoc* a = it->second.get();
  if (a->remotes.size() >= kMaxRemotes) a->remotes.erase(a->remotes.begin());
  a->remotes[remote_key] = NatKey(nat_ip, nat_port);
  return true;
}

void UdpRelay::Unbind(uint32_t nat_ip, uint16_t nat_port) {
  std::lock_guard<std::mutex> g(mu_);
  uint64_t k = NatKey(nat_ip, nat_port);
  auto it = bindings_.find(k);
  if (it == bindings_.end()) return;
  UdpAssoc* a = it->second.assoc;
  // Every remote that answered through this NAT address now maps nowhere: its next reply goes to JS.
  for (auto r = a->remotes.begin(); r != a->remotes.end();) {
    if (r->second == k)
      r = a->remotes.erase(r);
    else
      ++r;
  }
  a->nats.erase(k);
  bindings_.erase(it);
}

bool UdpRelay::SendUp(uint32_t nat_ip, uint16_t nat_port, const uint8_t* p, size_t n) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = bindings_.find(NatKey(nat_ip, nat_port));
  if (it == bindings_.end()) return false;
  Binding& b = it->second;
  UdpAssoc* a = b.assoc;
  struct mmsghdr m;
  std::memset(&m, 0, sizeof m);
  struct iovec iov[2];
  int nio = 0;
  if (!b.header.empty()) iov[nio++] = {const_cast<char*>(b.header.data()), b.header.size()};
  iov[nio++] = {const_cast<uint8_t*>(p), n};
  if (n > o_.max_payload || b.header.size() + n > kMaxUdpPayload) {
    t_.drops[kDropOversized]++;
    return true;
  }
  m.msg_hdr.msg_iov = iov;
  m.msg_hdr.msg_iovlen = nio;
  UdpAddr dst = a->kind == UdpAssocKind::kSocks5 ? Addr4(0, 0) : b.dst;
  if (a->kind == UdpAssocKind::kSocks5) dst.v4 = a->relay;
  m.msg_hdr.msg_name = &dst;
  m.msg_hdr.msg_namelen = AddrLen(dst);
  a->dgrams_up++;
  a->bytes_up += n;
  a->last_active = NowMs();
  t_.dgrams_up++;
  t_.bytes_up += n;
  if (sendmsg(a->fd, &m.msg_hdr, MSG_DONTWAIT) < 0) t_.drops[kDropSendError]++;
  return true;
}

bool UdpRelay::SendDown(uint32_t nat_ip, uint16_t nat_port, const uint8_t* p, size_t n) {
  std::lock_guard<std::mutex> g(mu_);
  if (lfd_ < 0) return false;
  struct sockaddr_in dst = Sin(nat_ip, nat_port);
  t_.dgrams_down++;
  t_.bytes_down += n;
  if (sendto(lfd_, p, n, MSG_DONTWAIT, reinterpret_cast<struct sockaddr*>(&dst), sizeof dst) < 0) {
    t_.drops[kDropSendError]++;
    return false;
  }
  return true;
}

bool UdpRelay::Close(uint64_t id) {
  bool notify = false;
  {
    std::lock_guard<std::mutex> g(mu_);
    auto it = assocs_.find(id);
    if (it == assocs_.end()) return false;
    EndLocked(it->second.get(), UdpEnd::kClosed);
    if (!signalled_) notify = signalled_ = true;
  }
  if (notify) notify_();
  return true;
}

int64_t UdpRelay::LastActive(uint64_t id) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = assocs_.find(id);
  return it == assocs_.end() ? -1 : it->second->last_active;
}

bool UdpRelay::Counts(uint64_t id, double out[4]) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = assocs_.find(id);
  if (it == assocs_.end()) return false;
  const UdpAssoc* a = it->second.get();
  out[0] = static_cast<double>(a->dgrams_up);
  out[1] = static_cast<double>(a->bytes_up);
  out[2] = static_cast<double>(a->dgrams_down);
  out[3] = static_cast<double>(a->bytes_down);
  return true;
}

void UdpRelay::Take(std::vector<UdpJsDatagram>* dgrams, std::vector<UdpEndRecord>* ended) {
  std::lock_guard<std::mutex> g(mu_);
  dgrams->swap(js_);
  js_.clear();
  js_bytes_ = 0;
  ended->swap(ended_);
  ended_.clear();
  signalled_ = false;
}

UdpRelayTotals UdpRelay::Totals() {
  std::lock_guard<std::mutex> g(mu_);
  UdpRelayTotals t = t_;
  t.associations = assocs_.size();
  t.bindings = bindings_.size();
  return t;
}

void UdpRelay::EndLocked(UdpAssoc* a, UdpEnd how) {
  if (epfd_ >= 0) epoll_ctl(epfd_, EPOLL_CTL_DEL, a->fd, nullptr);
  close(a->fd);
  for (uint64_t k : a->nats) {
    auto it = bindings_.find(k);
    if (it != bindings_.end() && it->second.assoc == a) bindings_.erase(it);
  }
  ended_.push_back({a->id, how, a->dgrams_up, a->bytes_up, a->dgrams_down, a->bytes_down});
  assocs_.erase(a->id);
}

void UdpRelay::QueueJsLocked(UdpJsDatagram&& d) {
  if (js_.size() >= o_.js_queue_max || js_bytes_ + d.payload.size() > o_.js_queue_bytes) {
    t_.drops[kDropQueueFull]++;
    return;
  }
  js_bytes_ += d.payload.size();
  js_.push_back(std::move(d));
}

void UdpRelay::Run() {
  // Named like fp-engine-N and the TCP relay's threads, so top -H and perf --comms can tell it from Node's.
  pthread_setname_np(pthread_self(), "fp-udp-relay");
  struct epoll_event evs[64];
  int64_t last_check = NowMs();
  for (;;) {
    int n = epoll_wait(epfd_, evs, 64, kIdleCheckMs);
    bool notify = false;
    {
      std::lock_guard<std::mutex> g(mu_);
      if (!running_) return;
      now_ = NowMs();
      for (int i = 0; i < n; i++) {
        uint64_t tag = evs[i].data.u64;
        if (tag == kListenerTag) {
          OnListener();
        } else if (tag == kWakeTag) {
          uint64_t v;
          if (read(wakefd_, &v, sizeof v) < 0) {
            // Nothing to drain.
          }
        } else {
          // An association closed earlier in this batch is simply not found.
          auto it = assocs_.find(tag & ~kAssocTag);
          if (it != assocs_.end()) OnAssoc(it->second.get());
        }
      }
      if (now_ - last_check >= kIdleCheckMs) {
        last_check = now_;
        ExpireIdle(now_);
      }
      // New foreign-ingress drops wake JS too: they are logged as they happen, not at the next datagram.
      const bool foreign = t_.drops[kDropForeignIngress] != foreign_reported_;
      if (!signalled_ && (!js_.empty() || !ended_.empty() || foreign)) {
        notify = signalled_ = true;
        foreign_reported_ = t_.drops[kDropForeignIngress];
      }
    }
    if (notify) notify_();
  }
}

// Point the receive headers at the slab; with_ovfl: room for SO_RXQ_OVFL's counter. Returns the slot size.
size_t UdpRelay::PrepareRecv(bool with_ovfl) {
  const size_t slot = o_.max_payload + kMaxSocksHeader + 1;
  for (int i = 0; i < o_.batch; i++) {
    riovs_[i] = {slab_.get() + static_cast<size_t>(i) * slot, slot};
    struct msghdr& h = rmsgs_[i].msg_hdr;
    h.msg_name = &raddrs_[i];
    h.msg_namelen = sizeof(UdpAddr);
    h.msg_iov = &riovs_[i];
    h.msg_iovlen = 1;
    h.msg_control = with_ovfl ? cmsg_.data() + static_cast<size_t>(i) * kCmsgSpace : nullptr;
    h.msg_controllen = with_ovfl ? kCmsgSpace : 0;
    h.msg_flags = 0;
  }
  return slot;
}

void UdpRelay::OnListener() {
  for (int r = 0; r < kMaxRounds && lfd_ >= 0; r++) {
    if (ListenerRound() < o_.batch) return;
  }
}

int UdpRelay::ListenerRound() {
  const size_t slot = PrepareRecv(true);
  int n = recvmmsg(lfd_, rmsgs_.data(), static_cast<unsigned>(o_.batch), MSG_DONTWAIT, nullptr);
  if (n <= 0) return 0;
  int ns = 0;
  for (int i = 0; i < n; i++) {
    struct msghdr& h = rmsgs_[i].msg_hdr;
    int ifindex = 0;
    size_t gro = 0;
    for (struct cmsghdr* cm = CMSG_FIRSTHDR(&h); cm != nullptr; cm = CMSG_NXTHDR(&h, cm)) {
      if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SO_RXQ_OVFL) {
        uint32_t drops;
        std::memcpy(&drops, CMSG_DATA(cm), sizeof drops);
        // The socket's running total: keep the largest seen.
        if (drops > t_.drops[kDropKernel]) t_.drops[kDropKernel] = drops;
      } else if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO) {
        struct in_pktinfo pi;
        std::memcpy(&pi, CMSG_DATA(cm), sizeof pi);
        ifindex = pi.ipi_ifindex;
      } else if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
        int g;
        std::memcpy(&g, CMSG_DATA(cm), sizeof g);
        gro = g > 0 ? static_cast<size_t>(g) : 0;
      }
    }
    size_t len = rmsgs_[i].msg_len;
    // A coalesced receive holds ceil(len / gro) datagrams, all but the last exactly gro bytes.
    const size_t segs = gro > 0 && len > gro ? (len + gro - 1) / gro : 1;
    // Only the engine writes datagrams for the listener, into the TUN. One
    // from another interface claims a NAT source it cannot own (a LAN host
    // spoofing a live flow's address): dropped silently — an ICMP error would
    // travel to that flow's app through the engine.
    if (o_.ingress_ifindex > 0 && ifindex != o_.ingress_ifindex) {
      t_.drops[kDropForeignIngress] += segs;
      continue;
    }
    uint8_t* p = slab_.get() + static_cast<size_t>(i) * slot;
    const size_t seg = segs > 1 ? gro : len;
    if ((h.msg_flags & MSG_TRUNC) || seg > o_.max_payload || segs > static_cast<size_t>(kMaxGroSegments)) {
      t_.drops[kDropOversized] += segs;
      continue;
    }
    if (segs > 1) {
      t_.gro_receives++;
      t_.gro_segments += segs;
    }
    uint32_t ip = ntohl(raddrs_[i].v4.sin_addr.s_addr);
    uint16_t port = ntohs(raddrs_[i].v4.sin_port);
    auto it = bindings_.find(NatKey(ip, port));
    if (it == bindings_.end()) {
      for (size_t k = 0; k < segs; k++) {
        const size_t off = k * seg;
        t_.misses++;
        QueueJsLocked(
            {0, ip, port, std::string(), std::string(reinterpret_cast<char*>(p) + off, std::min(seg, len - off))});
      }
      continue;
    }
    Binding& b = it->second;
    UdpAssoc* a = b.assoc;
    if (b.header.size() + seg > kMaxUdpPayload) {
      t_.drops[kDropOversized] += segs;
      continue;
    }
    for (size_t k = 0; k < segs; k++) {
      const size_t off = k * seg;
      const size_t dlen = std::min(seg, len - off);
      siovs_[2 * static_cast<size_t>(ns)] = {const_cast<char*>(b.header.data()), b.header.size()};
      siovs_[2 * static_cast<size_t>(ns) + 1] = {p + off, dlen};
      if (a->kind == UdpAssocKind::kSocks5)
        saddrs_[ns].v4 = a->relay;
      else
        saddrs_[ns] = b.dst;
      sbind_[ns] = &b;
      a->dgrams_up++;
      a->bytes_up += dlen;
      t_.dgrams_up++;
      t_.bytes_up += dlen;
      ns++;
    }
  }
  // One sendmmsg per run of datagrams for the same association.
  int start = 0;
  for (int i = 1; i <= ns; i++) {
    if (i == ns || sbind_[i]->assoc != sbind_[start]->assoc) {
      sbind_[start]->assoc->last_active = now_;
      SendRunLocked(sbind_[start]->assoc->fd, &sbind_[start]->assoc->gso, 0, start, i - start);
      start = i;
    }
  }
  return n;
}

namespace {

size_t DgramLen(const struct iovec* io) { return io[0].iov_len + io[1].iov_len; }

}  // namespace

void UdpRelay::SendRunLocked(int fd, UdpGso* gso, int dir, int first, int n) {
  int ng = 0;
  for (int i = first; i < first + n;) {
    const size_t seg = DgramLen(&siovs_[2 * static_cast<size_t>(i)]);
    int j = i + 1;
    if (gso->on && seg > 0 && seg <= gso->max_seg) {
      // Every segment but the last exactly `seg` bytes (the kernel cuts the payload at seg), same destination.
      size_t total = seg;
      while (j < first + n && j - i < kMaxGsoSegments) {
        size_t len = DgramLen(&siovs_[2 * static_cast<size_t>(j)]);
        if (len == 0 || len > seg || total + len > kMaxUdpPayload || !SameDst(saddrs_[j], saddrs_[i])) break;
        total += len;
        j++;
        if (len < seg) break;
      }
    }
    struct msghdr& h = gmsgs_[ng].msg_hdr;
    std::memset(&h, 0, sizeof h);
    h.msg_name = &saddrs_[i];
    h.msg_namelen = AddrLen(saddrs_[i]);
    h.msg_iov = &siovs_[2 * static_cast<size_t>(i)];
    h.msg_iovlen = 2 * static_cast<size_t>(j - i);
    if (j - i > 1) {
      h.msg_control = gcmsg_.data() + static_cast<size_t>(ng) * kGsoCmsgSpace;
      h.msg_controllen = kGsoCmsgSpace;
      struct cmsghdr* cm = CMSG_FIRSTHDR(&h);
      cm->cmsg_level = SOL_UDP;
      cm->cmsg_type = UDP_SEGMENT;
      cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
      uint16_t seg16 = static_cast<uint16_t>(seg);
      std::memcpy(CMSG_DATA(cm), &seg16, sizeof seg16);
    }
    gfirst_[ng] = i;
    gcount_[ng] = j - i;
    ng++;
    i = j;
  }
  int done = 0;
  while (done < ng) {
    int r = sendmmsg(fd, &gmsgs_[done], static_cast<unsigned>(ng - done), MSG_DONTWAIT);
    if (r > 0) {
      for (int g = done; g < done + r; g++) {
        if (gcount_[g] > 1) {
          t_.gso.sends[dir]++;
          t_.gso.segments[dir] += static_cast<uint64_t>(gcount_[g]);
        }
      }
      done += r;
      continue;
    }
    int e = errno;
    if (r < 0 && e == EINTR) continue;
    if (r < 0 && (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS)) {
      // The send buffer is full: drop the rest (overload is when dropping is right).
      for (int g = done; g < ng; g++) t_.drops[kDropSendError] += gcount_[g];
      return;
    }
    const int g = done++;
    if (gcount_[g] > 1 && (e == EIO || e == ENOPROTOOPT || e == EINVAL || e == EMSGSIZE)) {
      // GSO refused: no checksum offload towards the destination (EIO), an old kernel (ENOPROTOOPT), or a
      // segment over the path MTU (EINVAL). Learn it and send this group one by one.
      if (e == EIO || e == ENOPROTOOPT) {
        if (gso->on) t_.gso.disabled[dir]++;
        gso->on = false;
      } else {
        size_t seg = DgramLen(&siovs_[2 * static_cast<size_t>(gfirst_[g])]);
        if (seg - 1 < gso->max_seg) {
          gso->max_seg = seg - 1;
          t_.gso.limited[dir]++;
        }
      }
      for (int k = gfirst_[g]; k < gfirst_[g] + gcount_[g]; k++) SendOneLocked(fd, k);
      continue;
    }
    // An error about this one message (EMSGSIZE, no route): skip it.
    t_.drops[kDropSendError] += gcount_[g];
  }
}

void UdpRelay::SendOneLocked(int fd, int i) {
  struct msghdr h;
  std::memset(&h, 0, sizeof h);
  h.msg_name = &saddrs_[i];
  h.msg_namelen = AddrLen(saddrs_[i]);
  h.msg_iov = &siovs_[2 * static_cast<size_t>(i)];
  h.msg_iovlen = 2;
  while (sendmsg(fd, &h, MSG_DONTWAIT) < 0) {
    if (errno == EINTR) continue;
    t_.drops[kDropSendError]++;
    return;
  }
}

void UdpRelay::OnAssoc(UdpAssoc* a) {
  const uint64_t id = a->id;
  for (int r = 0; r < kMaxRounds; r++) {
    if (AssocRound(a) < o_.batch) return;
    // The round may have ended it (a socket error).
    if (assocs_.count(id) == 0) return;
  }
}

int UdpRelay::AssocRound(UdpAssoc* a) {
  const size_t slot = PrepareRecv(false);
  int n = recvmmsg(a->fd, rmsgs_.data(), static_cast<unsigned>(o_.batch), MSG_DONTWAIT, nullptr);
  if (n < 0) {
    int e = errno;
    // ECONNREFUSED: an ICMP error for an earlier send; the socket stays usable.
    if (e != EAGAIN && e != EWOULDBLOCK && e != EINTR && e != ECONNREFUSED) EndLocked(a, UdpEnd::kUpstreamClosed);
    return 0;
  }
  const bool socks = a->kind == UdpAssocKind::kSocks5;
  int ns = 0;
  for (int i = 0; i < n; i++) {
    size_t len = rmsgs_[i].msg_len;
    uint8_t* p = slab_.get() + static_cast<size_t>(i) * slot;
    const UdpAddr& src = raddrs_[i];
    std::string key;
    size_t hdr = 0;
    if (socks) {
      // RFC 1928 §7: only the relay's address; not its port (some relays answer from another socket).
      if (!a->has_relay || src.sa.sa_family != AF_INET || src.v4.sin_addr.s_addr != a->relay.sin_addr.s_addr) {
        t_.drops[kDropForeignSource]++;
        continue;
      }
      int h = SocksHeaderLen(p, len);
      if (h < 0) {
        t_.drops[-1 - h]++;
        continue;
      }
      hdr = static_cast<size_t>(h);
      key.assign(reinterpret_cast<char*>(p) + 3, hdr - 3);
    } else {
      key = SourceKey(src);
    }
    if ((rmsgs_[i].msg_hdr.msg_flags & MSG_TRUNC) || len - hdr > o_.max_payload) {
      t_.drops[kDropOversized]++;
      continue;
    }
    auto r = a->remotes.find(key);
    if (r == a->remotes.end()) {
      t_.unknown++;
      a->last_active = now_;
      QueueJsLocked({a->id, 0, 0, std::move(key), std::string(reinterpret_cast<char*>(p) + hdr, len - hdr)});
      continue;
    }
    uint64_t k = r->second;
    saddrs_[ns] = Addr4(static_cast<uint32_t>(k >> 16), static_cast<uint16_t>(k & 0xffff));
    siovs_[2 * static_cast<size_t>(ns)] = {p, 0};
    siovs_[2 * static_cast<size_t>(ns) + 1] = {p + hdr, len - hdr};
    a->dgrams_down++;
    a->bytes_down += len - hdr;
    t_.dgrams_down++;
    t_.bytes_down += len - hdr;
    ns++;
  }
  if (ns > 0) {
    a->last_active = now_;
    SendRunLocked(lfd_, &lgso_, 1, 0, ns);
  }
  return n;
}

void UdpRelay::ExpireIdle(int64_t now) {
  std::vector<UdpAssoc*> idle;
  for (auto& kv : assocs_) {
    UdpAssoc* a = kv.second.get();
    uint32_t t = a->dns_only ? a->dns_idle_ms : a->idle_ms;
    if (t != 0 && now - a->last_active >= static_cast<int64_t>(t)) idle.push_back(a);
  }
  for (UdpAssoc* a : idle) EndLocked(a, UdpEnd::kIdle);
}

}  // namespace fp
