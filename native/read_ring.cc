#include "read_ring.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#ifndef IORING_OP_READ_MULTISHOT
#define IORING_OP_READ_MULTISHOT 49  // Linux 6.7; the build machine's headers may be older
#endif
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)  // Linux 6.12: io_uring_getevents_arg.min_wait_usec
#endif

namespace fp {

namespace {

constexpr uint64_t kReadTag = 1;
constexpr uint64_t kWakeTag = 2;
constexpr uint16_t kGroup = 0;

int SysSetup(unsigned entries, struct io_uring_params* p) {
  return static_cast<int>(syscall(__NR_io_uring_setup, entries, p));
}
int SysEnter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags, void* arg, size_t argsz) {
  return static_cast<int>(syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz));
}
int SysRegister(int fd, unsigned op, void* arg, unsigned nr) {
  return static_cast<int>(syscall(__NR_io_uring_register, fd, op, arg, nr));
}

template <class T>
T LoadAcquire(const T* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
template <class T>
void StoreRelease(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

template <class T>
T* At(void* base, uint32_t off) {
  return reinterpret_cast<T*>(static_cast<uint8_t*>(base) + off);
}

}  // namespace

bool ReadRing::Open(int fd, int wake_fd, uint8_t* mem, unsigned nbufs, size_t buf_cap, int* err) {
  if (nbufs == 0 || nbufs > 32768 || (nbufs & (nbufs - 1)) != 0) {
    *err = EINVAL;
    return false;
  }
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  // Completions are only reaped by this thread, inside its own io_uring_enter (DEFER_TASKRUN, Linux 6.1):
  // the reads run there, batched, not in interrupts of other work.
  p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  p.cq_entries = nbufs * 2;
  int rfd = SysSetup(4, &p);
  if (rfd < 0) {
    *err = errno;
    return false;
  }
  ring_fd_ = rfd;
  min_timeout_ = (p.features & IORING_FEAT_MIN_TIMEOUT) != 0;
  if (!(p.features & IORING_FEAT_SINGLE_MMAP) || !(p.features & IORING_FEAT_EXT_ARG)) {
    *err = ENOSYS;
    Close();
    return false;
  }
  sq_len_ = std::max<size_t>(p.sq_off.array + p.sq_entries * sizeof(unsigned),
                             p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe));
  void* sq = mmap(nullptr, sq_len_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, rfd, IORING_OFF_SQ_RING);
  if (sq == MAP_FAILED) {
    *err = errno;
    Close();
    return false;
  }
  sq_ptr_ = sq;
  sqes_len_ = p.sq_entries * sizeof(struct io_uring_sqe);
  void* sqes = mmap(nullptr, sqes_len_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, rfd, IORING_OFF_SQES);
  if (sqes == MAP_FAILED) {
    *err = errno;
    Close();
    return false;
  }
  sqes_ = static_cast<struct io_uring_sqe*>(sqes);
  sq_entries_ = p.sq_entries;
  sq_head_ = At<unsigned>(sq, p.sq_off.head);
  sq_tail_ = At<unsigned>(sq, p.sq_off.tail);
  sq_mask_ = At<unsigned>(sq, p.sq_off.ring_mask);
  sq_array_ = At<unsigned>(sq, p.sq_off.array);
  cq_head_ = At<unsigned>(sq, p.cq_off.head);
  cq_tail_ = At<unsigned>(sq, p.cq_off.tail);
  cq_mask_ = At<unsigned>(sq, p.cq_off.ring_mask);
  cqes_ = At<struct io_uring_cqe>(sq, p.cq_off.cqes);

  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  br_len_ = (nbufs * sizeof(struct io_uring_buf) + page - 1) / page * page;
  void* br = mmap(nullptr, br_len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (br == MAP_FAILED) {
    *err = errno;
    Close();
    return false;
  }
  br_ = static_cast<struct io_uring_buf_ring*>(br);
  bufs_ = static_cast<struct io_uring_buf*>(br);
  struct io_uring_buf_reg reg;
  memset(&reg, 0, sizeof reg);
  reg.ring_addr = reinterpret_cast<uint64_t>(br);
  reg.ring_entries = nbufs;
  reg.bgid = kGroup;
  if (SysRegister(rfd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
    *err = errno;  // EINVAL before Linux 5.19
    Close();
    return false;
  }
  fd_ = fd;
  wake_fd_ = wake_fd;
  mem_ = mem;
  nbufs_ = nbufs;
  buf_cap_ = buf_cap;
  br_tail_ = 0;
  for (unsigned i = 0; i < nbufs; i++) AddBuffer(static_cast<uint16_t>(i));
  StoreRelease(&bufs_[0].resv, br_tail_);
  out_.reserve(nbufs);
  return true;
}

void ReadRing::AddBuffer(uint16_t bid) {
  struct io_uring_buf* b = &bufs_[br_tail_ & (nbufs_ - 1)];
  // Not b->resv: in entry 0 that is the ring's tail.
  b->addr = reinterpret_cast<uint64_t>(mem_ + static_cast<size_t>(bid) * buf_cap_);
  b->len = static_cast<uint32_t>(buf_cap_);
  b->bid = bid;
  br_tail_++;
}

void ReadRing::Close() {
  if (sqes_ != nullptr) munmap(sqes_, sqes_len_);
  if (sq_ptr_ != nullptr) munmap(sq_ptr_, sq_len_);
  if (ring_fd_ >= 0) close(ring_fd_);  // cancels the read; the kernel lets go of the buffer ring
  if (br_ != nullptr) munmap(br_, br_len_);
  sqes_ = nullptr;
  sq_ptr_ = nullptr;
  br_ = nullptr;
  bufs_ = nullptr;
  ring_fd_ = -1;
  read_armed_ = wake_armed_ = false;
  out_.clear();
}

bool ReadRing::Submit(uint8_t opcode, int fd, uint64_t user_data, bool buffer_select, uint32_t poll_events) {
  const unsigned tail = *sq_tail_;
  if (tail - LoadAcquire(sq_head_) >= sq_entries_) return false;
  const unsigned idx = tail & *sq_mask_;
  struct io_uring_sqe* e = &sqes_[idx];
  memset(e, 0, sizeof *e);
  e->opcode = opcode;
  e->fd = fd;
  e->user_data = user_data;
  if (buffer_select) {
    e->flags = IOSQE_BUFFER_SELECT;
    e->buf_group = kGroup;
  }
  e->poll32_events = poll_events;
  sq_array_[idx] = idx;
  StoreRelease(sq_tail_, tail + 1);
  return true;
}

// The kernel's struct io_uring_getevents_arg since Linux 6.12 (older headers call min_wait_usec "pad").
struct GetEventsArg {
  uint64_t sigmask;
  uint32_t sigmask_sz;
  uint32_t min_wait_usec;
  uint64_t ts;
};
static_assert(sizeof(GetEventsArg) == sizeof(struct io_uring_getevents_arg), "io_uring_getevents_arg layout");

int ReadRing::Wait(int timeout_ms, uint8_t** bufs, size_t* lens, size_t max, bool* woken, unsigned coalesce_us,
                   unsigned coalesce_n) {
  *woken = false;
  if (pending_err_ != 0) return -pending_err_;
  if (!out_.empty()) {
    for (uint16_t bid : out_) AddBuffer(bid);
    StoreRelease(&bufs_[0].resv, br_tail_);
    out_.clear();
  }
  if (!read_armed_) read_armed_ = Submit(IORING_OP_READ_MULTISHOT, fd_, kReadTag, true, 0);
  if (!wake_armed_) wake_armed_ = Submit(IORING_OP_POLL_ADD, wake_fd_, kWakeTag, false, POLLIN);
  const unsigned to_submit = *sq_tail_ - LoadAcquire(sq_head_);
  const bool ready = *cq_head_ != LoadAcquire(cq_tail_);
  struct __kernel_timespec ts;
  ts.tv_sec = timeout_ms / 1000;
  ts.tv_nsec = static_cast<long long>(timeout_ms % 1000) * 1000000;
  GetEventsArg arg;
  memset(&arg, 0, sizeof arg);
  arg.ts = reinterpret_cast<uint64_t>(&ts);
  // Coalescing (the caller asks under load): wake for coalesce_n completions, or once coalesce_us has passed
  // with at least one; with DEFER_TASKRUN the kernel does not even wake this thread per packet meanwhile.
  unsigned want = ready ? 0 : 1;
  if (!ready && coalesce_us > 0 && coalesce_n > 1 && min_timeout_) {
    want = coalesce_n;
    arg.min_wait_usec = coalesce_us;
  }
  if (SysEnter(ring_fd_, to_submit, want, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg, sizeof arg) < 0 &&
      errno != ETIME && errno != EINTR && errno != EAGAIN && errno != EBUSY)
    return -errno;
  size_t n = 0;
  int fatal = 0;
  unsigned head = *cq_head_;
  const unsigned tail = LoadAcquire(cq_tail_);
  for (; head != tail && n < max; head++) {
    const struct io_uring_cqe* c = &cqes_[head & *cq_mask_];
    if (c->user_data == kWakeTag) {
      *woken = true;
      wake_armed_ = false;
      continue;
    }
    if (c->user_data != kReadTag) continue;
    if (!(c->flags & IORING_CQE_F_MORE)) read_armed_ = false;
    if (c->flags & IORING_CQE_F_BUFFER) {
      const uint16_t bid = static_cast<uint16_t>(c->flags >> IORING_CQE_BUFFER_SHIFT);
      out_.push_back(bid);
      if (c->res > 0) {
        bufs[n] = mem_ + static_cast<size_t>(bid) * buf_cap_;
        lens[n] = static_cast<size_t>(c->res);
        n++;
      }
      seen_read_ = true;
      continue;
    }
    const int e = -c->res;
    // ENOBUFS: every buffer was in use (the multishot read ends; re-armed next time). Before Linux 6.7 the
    // opcode is unknown (EINVAL).
    if (c->res >= 0 || e == ENOBUFS || e == EAGAIN || e == EINTR || e == ECANCELED) continue;
    if (!seen_read_ && (e == EINVAL || e == EOPNOTSUPP || e == EBADFD)) return kUnsupported;
    fatal = e;
  }
  StoreRelease(cq_head_, head);
  if (fatal != 0 && n == 0) return -fatal;
  if (fatal != 0) pending_err_ = fatal;  // reported after this batch
  return static_cast<int>(n);
}

}  // namespace fp
