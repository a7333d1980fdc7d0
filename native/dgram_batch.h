// A UDP socket that moves datagrams in batches: recvmmsg fills up to
// `max_batch` datagrams per syscall, sendmmsg sends a batch per syscall.
// Plain C++ (no napi.h/uv.h): the N-API glue, which polls the fd on the
// event loop, lives in dgram_batch_addon.cc.
//
// Datagrams cross into JS as one compact byte buffer plus a Uint32 metadata
// array, kDgramMetaWords words per datagram (DgramMeta below); the same
// layout describes a batch to send.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace fp {

// Word offsets of one datagram's metadata.
//   kOff, kLen: where its payload lies in the batch buffer
//   kFamily: 4 or 6; kPort: the peer's port
//   kAddr..kAddr+3: the peer's address — IPv4 as one host-order word in
//   kAddr; IPv6 as four words, each holding 4 address bytes big-endian.
enum DgramMeta : int { kOff = 0, kLen = 1, kFamily = 2, kPort = 3, kAddr = 4 };
constexpr int kDgramMetaWords = 8;

struct DgramError {
  int err = 0;
  const char* syscall = "";
};

struct DgramCounters {
  uint64_t received = 0;
  uint64_t recv_calls = 0;
  // Datagrams larger than the receive slot (MSG_TRUNC): dropped.
  uint64_t truncated = 0;
  // The kernel's count of datagrams dropped because the receive buffer was full (SO_RXQ_OVFL).
  uint64_t kernel_drops = 0;
  uint64_t sent = 0;
  uint64_t send_calls = 0;
  // Datagrams the kernel refused to take (EAGAIN/ENOBUFS while the send buffer was full, or an error): dropped.
  uint64_t send_dropped = 0;
  int last_send_errno = 0;
};

class DgramBatchSocket {
 public:
  // max_batch: datagrams per recvmmsg; slot: largest datagram received whole.
  DgramBatchSocket(int max_batch, size_t slot);
  ~DgramBatchSocket();
  DgramBatchSocket(const DgramBatchSocket&) = delete;
  DgramBatchSocket& operator=(const DgramBatchSocket&) = delete;

  // Create a non-blocking socket bound to host:port (an IPv4 or IPv6 literal; port 0 picks one).
  // rcvbuf/sndbuf 0 keep the kernel's defaults.
  bool Open(const std::string& host, uint16_t port, int rcvbuf, int sndbuf, DgramError* e);
  void Close();
  int fd() const { return fd_; }
  int family() const { return family_; }
  uint16_t LocalPort() const;

  // Receive one batch. Payloads are appended compactly to *data (cleared first)
  // and their metadata to *meta. Returns the number of datagrams (0 when none
  // were waiting) or -errno on a hard error.
  int Recv(std::vector<uint8_t>* data, std::vector<uint32_t>* meta);

  // Send n datagrams described by meta (kOff/kLen into data). Returns how many
  // the kernel took; the rest are dropped and counted (the caller must not retry:
  // a full send buffer under overload is exactly when dropping is right).
  int Send(const uint8_t* data, size_t data_len, const uint32_t* meta, int n);

  const DgramCounters& counters() const { return c_; }

 private:
  int fd_ = -1;
  int family_ = 0;
  int max_batch_;
  size_t slot_;
  std::unique_ptr<uint8_t[]> slab_;
  std::vector<struct mmsghdr> msgs_;
  std::vector<struct iovec> iovs_;
  std::vector<struct sockaddr_storage> addrs_;
  std::vector<uint8_t> cmsg_;
  // Send-side scratch, grown to the largest batch sent.
  std::vector<struct mmsghdr> smsgs_;
  std::vector<struct iovec> siovs_;
  std::vector<struct sockaddr_storage> saddrs_;
  DgramCounters c_;
};

// Fill sockaddr from one datagram's metadata; false when the family is unknown.
bool DgramMetaToSockaddr(const uint32_t* m, struct sockaddr_storage* ss, socklen_t* len);
// Write a peer address into one datagram's metadata (kFamily, kPort, kAddr..).
void DgramSockaddrToMeta(const struct sockaddr_storage& ss, uint32_t* m);

}  // namespace fp
