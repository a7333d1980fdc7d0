// Batched packet reads from one fd (a TUN queue) through io_uring (issue 12):
// one multishot read (IORING_OP_READ_MULTISHOT, Linux 6.7) with a ring of
// provided buffers, so the kernel reads every packet that arrives into the
// next free buffer and one io_uring_enter() collects a whole batch, instead
// of one poll() plus one read() system call per packet (on this VM kind each
// system call costs more than the packet copy). Raw system calls, no liburing.
//
// Open() fails (false) where io_uring is missing, disabled (sysctl
// kernel.io_uring_disabled, a seccomp filter) or too old for provided buffer
// rings; Wait() reports kUnsupported when the kernel rejects the multishot
// read itself. The caller then reads with poll() + read() as before.
#pragma once

#include <linux/io_uring.h>
#include <stddef.h>
#include <stdint.h>

#include <vector>

namespace fp {

class ReadRing {
 public:
  // Wait() result when the kernel cannot do multishot reads on this fd.
  static constexpr int kUnsupported = -1000000;

  ReadRing() = default;
  ~ReadRing() { Close(); }
  ReadRing(const ReadRing&) = delete;
  ReadRing& operator=(const ReadRing&) = delete;

  // nbufs (a power of two, <= 32768) buffers of buf_cap bytes each at mem
  // (buffer i at mem + i * buf_cap), owned by the caller. wake_fd: an eventfd
  // whose readability ends a Wait() early. false: no io_uring here (*err).
  bool Open(int fd, int wake_fd, uint8_t* mem, unsigned nbufs, size_t buf_cap, int* err);
  void Close();

  // Waits up to timeout_ms for packets; hands out up to `max` of them in
  // arrival order (bufs[i], lens[i]) and returns how many, 0 on timeout or
  // wake (*woken then true when wake_fd fired: the caller drains it), a
  // negative errno for a read error that ends the loop, or kUnsupported. The
  // buffers stay the caller's until the next Wait().
  //
  // coalesce_us > 0 (and coalesce_n > 1): interrupt coalescing where the
  // kernel has io_uring's min-wait (Linux 6.12): return once coalesce_n
  // packets are in, or coalesce_us after the wait began if at least one is;
  // older kernels wait for the first packet as without it.
  int Wait(int timeout_ms, uint8_t** bufs, size_t* lens, size_t max, bool* woken, unsigned coalesce_us = 0,
           unsigned coalesce_n = 0);
  // Whether Wait() can coalesce here (IORING_FEAT_MIN_TIMEOUT).
  bool CanCoalesce() const { return min_timeout_; }

 private:
  bool Submit(uint8_t opcode, int fd, uint64_t user_data, bool buffer_select, uint32_t poll_events);
  void AddBuffer(uint16_t bid);

  int ring_fd_ = -1;
  int fd_ = -1, wake_fd_ = -1;
  uint8_t* mem_ = nullptr;
  size_t buf_cap_ = 0;
  unsigned nbufs_ = 0;
  // Mappings.
  void* sq_ptr_ = nullptr;
  size_t sq_len_ = 0;
  void* cq_ptr_ = nullptr;
  size_t cq_len_ = 0;
  struct io_uring_sqe* sqes_ = nullptr;
  size_t sqes_len_ = 0;
  struct io_uring_buf_ring* br_ = nullptr;
  size_t br_len_ = 0;
  // SQ/CQ ring fields.
  unsigned *sq_head_ = nullptr, *sq_tail_ = nullptr, *sq_mask_ = nullptr, *sq_array_ = nullptr;
  unsigned *cq_head_ = nullptr, *cq_tail_ = nullptr, *cq_mask_ = nullptr;
  struct io_uring_cqe* cqes_ = nullptr;
  unsigned sq_entries_ = 0;
  struct io_uring_buf* bufs_ = nullptr;  // the provided buffer ring; its tail overlays bufs_[0].resv
  uint16_t br_tail_ = 0;
  // Buffers handed out by the last Wait(), given back at the next.
  std::vector<uint16_t> out_;
  bool read_armed_ = false, wake_armed_ = false;
  bool min_timeout_ = false;
  bool seen_read_ = false;
  int pending_err_ = 0;  // a read completed once: the kernel does multishot reads
};

}  // namespace fp
