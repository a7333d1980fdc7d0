#include "dgram_batch.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <climits>
#include <cstring>

#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40
#endif

namespace fp {

namespace {
// One cmsg per datagram: SO_RXQ_OVFL's uint32 drop counter.
constexpr size_t kCmsgSpace = CMSG_SPACE(sizeof(uint32_t));
// sendmmsg takes at most UIO_MAXIOV (1024) messages per call.
constexpr int kMaxSendVlen = 1024;
}  // namespace

bool DgramMetaToSockaddr(const uint32_t* m, struct sockaddr_storage* ss, socklen_t* len) {
  std::memset(ss, 0, sizeof *ss);
  if (m[kFamily] == 4) {
    auto* a = reinterpret_cast<struct sockaddr_in*>(ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(m[kPort]));
    a->sin_addr.s_addr = htonl(m[kAddr]);
    *len = sizeof *a;
    return true;
  }
  if (m[kFamily] == 6) {
    auto* a = reinterpret_cast<struct sockaddr_in6*>(ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(m[kPort]));
    for (int i = 0; i < 4; i++) {
      uint32_t w = htonl(m[kAddr + i]);
      std::memcpy(a->sin6_addr.s6_addr + 4 * i, &w, 4);
    }
    *len = sizeof *a;
    return true;
  }
  return false;
}

void DgramSockaddrToMeta(const struct sockaddr_storage& ss, uint32_t* m) {
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const struct sockaddr_in*>(&ss);
    m[kFamily] = 4;
    m[kPort] = ntohs(a->sin_port);
    m[kAddr] = ntohl(a->sin_addr.s_addr);
    m[kAddr + 1] = m[kAddr + 2] = m[kAddr + 3] = 0;
    return;
  }
  const auto* a = reinterpret_cast<const struct sockaddr_in6*>(&ss);
  m[kFamily] = 6;
  m[kPort] = ntohs(a->sin6_port);
  for (int i = 0; i < 4; i++) {
    uint32_t w;
    std::memcpy(&w, a->sin6_addr.s6_addr + 4 * i, 4);
    m[kAddr + i] = ntohl(w);
  }
}

DgramBatchSocket::DgramBatchSocket(int max_batch, size_t slot)
    : max_batch_(max_batch < 1 ? 1 : max_batch), slot_(slot < 512 ? 512 : slot) {
  slab_.reset(new uint8_t[static_cast<size_t>(max_batch_) * slot_]);  // not zero-filled: untouched pages stay unmapped
  msgs_.resize(max_batch_);
  iovs_.resize(max_batch_);
  addrs_.resize(max_batch_);
  cmsg_.resize(static_cast<size_t>(max_batch_) * kCmsgSpace);
}

DgramBatchSocket::~DgramBatchSocket() { Close(); }

bool DgramBatchSocket::Open(const std::string& host, uint16_t port, int rcvbuf, int sndbuf, DgramError* e) {
  struct sockaddr_storage ss;
  std::memset(&ss, 0, sizeof ss);
  socklen_t len;
  auto* a4 = reinterpret_cast<struct sockaddr_in*>(&ss);
  auto* a6 = reinterpret_cast<struct sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, host.c_str(), &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    len = sizeof *a4;
  } else if (inet_pton(AF_INET6, host.c_str(), &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(port);
    len = sizeof *a6;
  } else {
    e->err = EINVAL;
    e->syscall = "inet_pton";
    return false;
  }
  int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    e->err = errno;
    e->syscall = "socket";
    return false;
  }
  int one = 1;
  if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  // Best effort: the kernel caps both at rmem_max/wmem_max.
  if (rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  if (sndbuf > 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&ss), len) != 0) {
    e->err = errno;
    e->syscall = "bind";
    close(fd);
    return false;
  }
  fd_ = fd;
  family_ = ss.ss_family == AF_INET ? 4 : 6;
  return true;
}

void DgramBatchSocket::Close() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

uint16_t DgramBatchSocket::LocalPort() const {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (fd_ < 0 || getsockname(fd_, reinterpret_cast<struct sockaddr*>(&ss), &len) != 0) return 0;
  return ss.ss_family == AF_INET ? ntohs(reinterpret_cast<struct sockaddr_in*>(&ss)->sin_port)
                                 : ntohs(reinterpret_cast<struct sockaddr_in6*>(&ss)->sin6_port);
}

int DgramBatchSocket::Recv(std::vector<uint8_t>* data, std::vector<uint32_t>* meta) {
  data->clear();
  meta->clear();
  if (fd_ < 0) return -EBADF;
  for (int i = 0; i < max_batch_; i++) {
    iovs_[i].iov_base = slab_.get() + static_cast<size_t>(i) * slot_;
    iovs_[i].iov_len = slot_;
    struct msghdr& h = msgs_[i].msg_hdr;
    h.msg_name = &addrs_[i];
    h.msg_namelen = sizeof addrs_[i];
    h.msg_iov = &iovs_[i];
    h.msg_iovlen = 1;
    h.msg_control = cmsg_.data() + static_cast<size_t>(i) * kCmsgSpace;
    h.msg_controllen = kCmsgSpace;
    h.msg_flags = 0;
    msgs_[i].msg_len = 0;
  }
  int n;
  do {
    n = recvmmsg(fd_, msgs_.data(), static_cast<unsigned>(max_batch_), MSG_DONTWAIT, nullptr);
  } while (n < 0 && errno == EINTR);
  c_.recv_calls++;
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
  int kept = 0;
  for (int i = 0; i < n; i++) {
    struct msghdr& h = msgs_[i].msg_hdr;
    for (struct cmsghdr* cm = CMSG_FIRSTHDR(&h); cm != nullptr; cm = CMSG_NXTHDR(&h, cm)) {
      if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SO_RXQ_OVFL) {
        uint32_t drops;
        std::memcpy(&drops, CMSG_DATA(cm), sizeof drops);
        // A running total for the socket: keep the largest seen.
        if (drops > c_.kernel_drops) c_.kernel_drops = drops;
      }
    }
    if (h.msg_flags & MSG_TRUNC) {
      c_.truncated++;
      continue;
    }
    size_t len = msgs_[i].msg_len;
    size_t off = data->size();
    data->insert(data->end(), slab_.get() + static_cast<size_t>(i) * slot_,
                 slab_.get() + static_cast<size_t>(i) * slot_ + len);
    size_t m = meta->size();
    meta->resize(m + kDgramMetaWords);
    uint32_t* w = meta->data() + m;
    w[kOff] = static_cast<uint32_t>(off);
    w[kLen] = static_cast<uint32_t>(len);
    DgramSockaddrToMeta(addrs_[i], w);
    kept++;
  }
  c_.received += kept;
  return kept;
}

int DgramBatchSocket::Send(const uint8_t* data, size_t data_len, const uint32_t* meta, int n) {
  if (fd_ < 0 || n <= 0) {
    if (n > 0) c_.send_dropped += n;
    return 0;
  }
  if (static_cast<int>(smsgs_.size()) < n) {
    smsgs_.resize(n);
    siovs_.resize(n);
    saddrs_.resize(n);
  }
  // Build the headers; a malformed entry (out of bounds, bad family) is dropped here.
  int built = 0;
  for (int i = 0; i < n; i++) {
    const uint32_t* m = meta + static_cast<size_t>(i) * kDgramMetaWords;
    socklen_t alen;
    if (static_cast<size_t>(m[kOff]) + m[kLen] > data_len || !DgramMetaToSockaddr(m, &saddrs_[built], &alen)) {
      c_.send_dropped++;
      continue;
    }
    siovs_[built].iov_base = const_cast<uint8_t*>(data) + m[kOff];
    siovs_[built].iov_len = m[kLen];
    struct msghdr& h = smsgs_[built].msg_hdr;
    std::memset(&h, 0, sizeof h);
    h.msg_name = &saddrs_[built];
    h.msg_namelen = alen;
    h.msg_iov = &siovs_[built];
    h.msg_iovlen = 1;
    built++;
  }
  int done = 0;
  int ok = 0;
  while (done < built) {
    int vlen = built - done < kMaxSendVlen ? built - done : kMaxSendVlen;
    int r = sendmmsg(fd_, smsgs_.data() + done, static_cast<unsigned>(vlen), MSG_DONTWAIT);
    c_.send_calls++;
    if (r > 0) {
      done += r;
      ok += r;
      c_.sent += r;
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    int err = r < 0 ? errno : EIO;
    c_.last_send_errno = err;
    if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
      // The send buffer is full: drop the rest of the batch.
      c_.send_dropped += built - done;
      break;
    }
    // An error about this one datagram (EMSGSIZE, a reported ICMP error, no route): skip it.
    c_.send_dropped++;
    done++;
  }
  return ok;
}

}  // namespace fp
