#include "udp_relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <unordered_set>

#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40
#endif

namespace fp {

namespace {

constexpr uint64_t kListenerTag = 0;
constexpr uint64_t kWakeTag = 1;
constexpr uint64_t kAssocTag = 1ull << 63;
constexpr int kIdleCheckMs = 50;
constexpr size_t kMaxRemotes = 4096;
// SO_RXQ_OVFL's counter, and IP_PKTINFO's ingress interface on the listener.
constexpr size_t kCmsgSpace = CMSG_SPACE(sizeof(uint32_t)) + CMSG_SPACE(sizeof(struct in_pktinfo));
// RFC 1928 §7: RSV(2) FRAG(1) ATYP(1) before the address.
constexpr size_t kSocksMinHeader = 4;
constexpr size_t kMaxUdpPayload = 65507;
// The longest SOCKS5 UDP header: RSV(2) FRAG(1) ATYP(1) LEN(1) name(255) PORT(2).
constexpr size_t kMaxSocksHeader = 262;

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

// ATYP 1 address of a source: the remote key of a direct reply.
std::string Ipv4Key(const struct sockaddr_in& a) {
  std::string k(7, '\0');
  k[0] = 1;
  std::memcpy(&k[1], &a.sin_addr.s_addr, 4);
  std::memcpy(&k[5], &a.sin_port, 2);
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

int OpenUdp(uint32_t ip, uint16_t port, int rcvbuf, uint32_t mark, int* err, std::string* what) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = errno;
    *what = "socket";
    return -1;
  }
  int one = 1;
  // Best effort: the kernel caps it at net.core.rmem_max.
  if (rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
  if (mark != 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) {
    *err = errno;
    *what = "setsockopt(SO_MARK)";
    close(fd);
    return -1;
  }
  struct sockaddr_in a = Sin(ip, port);
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&a), sizeof a) != 0) {
    *err = errno;
    *what = "bind";
    close(fd);
    return -1;
  }
  return fd;
}

uint16_t LocalPort(int fd) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  if (getsockname(fd, reinterpret_cast<struct sockaddr*>(&a), &len) != 0) return 0;
  return ntohs(a.sin_port);
}

}  // namespace

struct UdpAssoc {
  uint64_t id;
  int fd;
  UdpAssocKind kind;
  struct sockaddr_in relay;
  bool has_relay = false;
  uint32_t idle_ms, dns_idle_ms;
  bool dns_only;
  int64_t last_active;
  uint64_t dgrams_up = 0, bytes_up = 0, dgrams_down = 0, bytes_down = 0;
  std::unordered_map<std::string, uint64_t> remotes;  // remote key → NAT key
  std::unordered_set<uint64_t> nats;                  // NAT keys bound to it
};

UdpRelay::UdpRelay(const UdpRelayOptions& opts, std::function<void()> notify) : o_(opts), notify_(std::move(notify)) {
  if (o_.batch < 1) o_.batch = 1;
  if (o_.max_payload > kMaxUdpPayload) o_.max_payload = kMaxUdpPayload;
  // Room for a SOCKS5 header plus one byte more than the largest payload: a longer datagram shows as longer (or
  // MSG_TRUNC).
  size_t slot = o_.max_payload + kMaxSocksHeader + 1;
  slab_.resize(static_cast<size_t>(o_.batch) * slot);
  rmsgs_.resize(o_.batch);
  riovs_.resize(o_.batch);
  raddrs_.resize(o_.batch);
  cmsg_.resize(static_cast<size_t>(o_.batch) * kCmsgSpace);
  smsgs_.resize(o_.batch);
  siovs_.resize(2 * static_cast<size_t>(o_.batch));
  saddrs_.resize(o_.batch);
  sbind_.resize(o_.batch);
}

UdpRelay::~UdpRelay() { Stop(); }

bool UdpRelay::Start(uint32_t ip, uint16_t port, int rcvbuf, uint32_t mark, int* err, std::string* what) {
  lfd_ = OpenUdp(ip, port, rcvbuf, mark, err, what);
  if (lfd_ < 0) return false;
  int one = 1;
  if (o_.ingress_ifindex > 0 && setsockopt(lfd_, IPPROTO_IP, IP_PKTINFO, &one, sizeof one) != 0) {
    *err = errno;
    *what = "setsockopt(IP_PKTINFO)";
    Stop();
    return false;
  }
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
  int fd = OpenUdp(bind_ip, 0, rcvbuf, mark, err, what);
  if (fd < 0) return 0;
  auto a = std::make_unique<UdpAssoc>();
  a->id = id;
  a->fd = fd;
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

bool UdpRelay::Bind(uint32_t nat_ip, uint16_t nat_port, uint64_t id, uint32_t dst_ip, uint16_t dst_port,
                    const std::string& socks_addr, const std::string& remote_key, bool dns) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = assocs_.find(id);
  if (it == assocs_.end()) return false;
  UdpAssoc* a = it->second.get();
  uint64_t k = NatKey(nat_ip, nat_port);
  auto old = bindings_.find(k);
  if (old != bindings_.end() && old->second.assoc != a) old->second.assoc->nats.erase(k);
  Binding& b = bindings_[k];
  b.assoc = a;
  b.dst = Sin(dst_ip, dst_port);
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
  struct sockaddr_in dst = a->kind == UdpAssocKind::kSocks5 ? a->relay : b.dst;
  m.msg_hdr.msg_name = &dst;
  m.msg_hdr.msg_namelen = sizeof dst;
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
  struct epoll_event evs[64];
  int64_t last_check = NowMs();
  for (;;) {
    int n = epoll_wait(epfd_, evs, 64, kIdleCheckMs);
    bool notify = false;
    {
      std::lock_guard<std::mutex> g(mu_);
      if (!running_) return;
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
      int64_t now = NowMs();
      if (now - last_check >= kIdleCheckMs) {
        last_check = now;
        ExpireIdle(now);
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
    riovs_[i] = {slab_.data() + static_cast<size_t>(i) * slot, slot};
    struct msghdr& h = rmsgs_[i].msg_hdr;
    h.msg_name = &raddrs_[i];
    h.msg_namelen = sizeof raddrs_[i];
    h.msg_iov = &riovs_[i];
    h.msg_iovlen = 1;
    h.msg_control = with_ovfl ? cmsg_.data() + static_cast<size_t>(i) * kCmsgSpace : nullptr;
    h.msg_controllen = with_ovfl ? kCmsgSpace : 0;
    h.msg_flags = 0;
  }
  return slot;
}

void UdpRelay::OnListener() {
  const size_t slot = PrepareRecv(true);
  int n = recvmmsg(lfd_, rmsgs_.data(), static_cast<unsigned>(o_.batch), MSG_DONTWAIT, nullptr);
  if (n <= 0) return;
  int ns = 0;
  for (int i = 0; i < n; i++) {
    struct msghdr& h = rmsgs_[i].msg_hdr;
    int ifindex = 0;
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
      }
    }
    // Only the engine writes datagrams for the listener, into the TUN. One
    // from another interface claims a NAT source it cannot own (a LAN host
    // spoofing a live flow's address): dropped silently — an ICMP error would
    // travel to that flow's app through the engine.
    if (o_.ingress_ifindex > 0 && ifindex != o_.ingress_ifindex) {
      t_.drops[kDropForeignIngress]++;
      continue;
    }
    size_t len = rmsgs_[i].msg_len;
    uint8_t* p = slab_.data() + static_cast<size_t>(i) * slot;
    if ((h.msg_flags & MSG_TRUNC) || len > o_.max_payload) {
      t_.drops[kDropOversized]++;
      continue;
    }
    uint32_t ip = ntohl(raddrs_[i].sin_addr.s_addr);
    uint16_t port = ntohs(raddrs_[i].sin_port);
    auto it = bindings_.find(NatKey(ip, port));
    if (it == bindings_.end()) {
      t_.misses++;
      QueueJsLocked({0, ip, port, std::string(), std::string(reinterpret_cast<char*>(p), len)});
      continue;
    }
    Binding& b = it->second;
    UdpAssoc* a = b.assoc;
    if (b.header.size() + len > kMaxUdpPayload) {
      t_.drops[kDropOversized]++;
      continue;
    }
    struct iovec* io = &siovs_[2 * static_cast<size_t>(ns)];
    int nio = 0;
    if (!b.header.empty()) io[nio++] = {const_cast<char*>(b.header.data()), b.header.size()};
    io[nio++] = {p, len};
    saddrs_[ns] = a->kind == UdpAssocKind::kSocks5 ? a->relay : b.dst;
    struct msghdr& sh = smsgs_[ns].msg_hdr;
    std::memset(&sh, 0, sizeof sh);
    sh.msg_name = &saddrs_[ns];
    sh.msg_namelen = sizeof saddrs_[ns];
    sh.msg_iov = io;
    sh.msg_iovlen = nio;
    sbind_[ns] = &b;
    a->dgrams_up++;
    a->bytes_up += len;
    t_.dgrams_up++;
    t_.bytes_up += len;
    ns++;
  }
  if (ns == 0) return;
  int64_t now = NowMs();
  // One sendmmsg per run of datagrams for the same association.
  int start = 0;
  for (int i = 1; i <= ns; i++) {
    if (i == ns || sbind_[i]->assoc != sbind_[start]->assoc) {
      sbind_[start]->assoc->last_active = now;
      SendBatchLocked(sbind_[start]->assoc->fd, &smsgs_[start], i - start);
      start = i;
    }
  }
}

void UdpRelay::SendBatchLocked(int fd, struct mmsghdr* m, int n) {
  int done = 0;
  while (done < n) {
    int r = sendmmsg(fd, m + done, static_cast<unsigned>(n - done), MSG_DONTWAIT);
    if (r > 0) {
      done += r;
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
      // The send buffer is full: drop the rest (overload is when dropping is right).
      t_.drops[kDropSendError] += n - done;
      return;
    }
    // An error about this one datagram (EMSGSIZE, no route): skip it.
    t_.drops[kDropSendError]++;
    done++;
  }
}

void UdpRelay::OnAssoc(UdpAssoc* a) {
  const size_t slot = PrepareRecv(false);
  int n = recvmmsg(a->fd, rmsgs_.data(), static_cast<unsigned>(o_.batch), MSG_DONTWAIT, nullptr);
  if (n < 0) {
    int e = errno;
    // ECONNREFUSED: an ICMP error for an earlier send; the socket stays usable.
    if (e != EAGAIN && e != EWOULDBLOCK && e != EINTR && e != ECONNREFUSED) EndLocked(a, UdpEnd::kUpstreamClosed);
    return;
  }
  const bool socks = a->kind == UdpAssocKind::kSocks5;
  int ns = 0;
  for (int i = 0; i < n; i++) {
    size_t len = rmsgs_[i].msg_len;
    uint8_t* p = slab_.data() + static_cast<size_t>(i) * slot;
    const struct sockaddr_in& src = raddrs_[i];
    std::string key;
    size_t hdr = 0;
    if (socks) {
      // RFC 1928 §7: only the relay's address; not its port (some relays answer from another socket).
      if (!a->has_relay || src.sin_addr.s_addr != a->relay.sin_addr.s_addr) {
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
      key = Ipv4Key(src);
    }
    if ((rmsgs_[i].msg_hdr.msg_flags & MSG_TRUNC) || len - hdr > o_.max_payload) {
      t_.drops[kDropOversized]++;
      continue;
    }
    auto r = a->remotes.find(key);
    if (r == a->remotes.end()) {
      t_.unknown++;
      a->last_active = NowMs();
      QueueJsLocked({a->id, 0, 0, std::move(key), std::string(reinterpret_cast<char*>(p) + hdr, len - hdr)});
      continue;
    }
    uint64_t k = r->second;
    saddrs_[ns] = Sin(static_cast<uint32_t>(k >> 16), static_cast<uint16_t>(k & 0xffff));
    siovs_[ns] = {p + hdr, len - hdr};
    struct msghdr& sh = smsgs_[ns].msg_hdr;
    std::memset(&sh, 0, sizeof sh);
    sh.msg_name = &saddrs_[ns];
    sh.msg_namelen = sizeof saddrs_[ns];
    sh.msg_iov = &siovs_[ns];
    sh.msg_iovlen = 1;
    a->dgrams_down++;
    a->bytes_down += len - hdr;
    t_.dgrams_down++;
    t_.bytes_down += len - hdr;
    ns++;
  }
  if (ns == 0) return;
  a->last_active = NowMs();
  SendBatchLocked(lfd_, smsgs_.data(), ns);
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
