// See relay.h. One epoll instance per worker thread; every socket is
// registered edge-triggered for IN|OUT|RDHUP once, so no epoll_ctl per
// event: on IN a direction pumps until its source says EAGAIN or its sink
// blocks (the sink's OUT edge resumes it). Facts taken from Go's
// internal/poll/splice_linux.go and haproxy's raw_sock.c:
// - splice(socket → pipe) returning EAGAIN is ambiguous when the pipe already
//   holds bytes (full pipe or empty socket); we only read into an empty pipe,
//   so EAGAIN there always means "socket empty" and backpressure is "do not
//   read while the pipe holds bytes";
// - a source can hit EOF while the pipe still holds bytes: drain the pipe to
//   the sink first, then shutdown(SHUT_WR) the sink;
// - SPLICE_F_NONBLOCK makes the pipe side non-blocking; the sockets are
//   O_NONBLOCK too, so neither end of a splice ever sleeps in the kernel;
// - at most pipe_size bytes per splice call (Go caps at 1 MiB as well).
#include "relay.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <unordered_set>

namespace fp {

namespace {

int64_t NowMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Reads per direction per wake-up before the pair yields to other pairs
// (it goes on the worker's ready list and continues after the next
// epoll_wait): one fast pair must not starve the others on its thread.
constexpr int kPumpBudget = 16;

// How often connect deadlines are checked while a Dial() is pending: a
// connect timeout fires at most this late.
constexpr int kConnectTickMs = 50;

// At most one ended-pairs signal to the owner per this many ms (relay.h):
// each signal wakes the JavaScript thread, and at a steady trickle of short
// connections (1 000/s, one ending per ms) that was one more JS wake-up per
// connection, as costly as the accept itself on our VM kind. Ends are
// bookkeeping (byte counts, how it ended), never on a connection's data
// path; the engine's flow events to JS are paced the same way.
constexpr int64_t kEndSignalMs = 20;

void ResetOnClose(int fd) {
  // SO_LINGER {on, 0}: close() sends RST instead of FIN (tcp(7)).
  struct linger l = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

}  // namespace

struct RelayPipe {
  int r = -1;
  int w = -1;
};

struct RelayDir {
  RelayPipe pipe;
  size_t in_pipe = 0;
  std::string pre;  // bytes read before the hand-off, written first
  size_t pre_off = 0;
  bool src_eof = false;
  // The source's FIN has arrived (EPOLLRDHUP) but is not read yet: what is
  // left in it is its last bytes, so they are written with SPLICE_F_MORE and
  // the shutdown(SHUT_WR) that follows sends the FIN in their segment.
  bool fin_seen = false;
  bool done = false;  // EOF forwarded as shutdown(SHUT_WR)
  std::atomic<uint64_t> bytes{0};
};

// A proxy handshake in progress (relay.h ProxyPlan).
struct ProxyRun {
  // kTcp: connecting; SOCKS5: kMethod → [kAuth →] kHead → kRest; HTTP: kHttpHead.
  enum Stage : uint8_t { kTcp, kMethod, kAuth, kHead, kRest, kHttpHead };
  ProxyPlan plan;
  Stage stage = kTcp;
  std::string out;  // the message being sent
  size_t out_off = 0;
  uint8_t in[4 + 1 + 255 + 2];  // SOCKS5: the longest reply, ATYP 3 with a 255-byte name
  size_t got = 0;
  size_t need = 0;
  std::string head;   // HTTP: the response head read so far
  uint32_t fail = 0;  // PackHandshakeFailure of a protocol failure, else 0

  void Send(std::string m, size_t reply_len, Stage next) {
    out = std::move(m);
    out_off = 0;
    got = 0;
    need = reply_len;
    stage = next;
  }
};

namespace {

// Dial()'s upstream: a nonblocking TCP socket of `family` with TCP_NODELAY
// (as the JS dial's noDelay: the app already chose its own batching) and
// SO_MARK `mark` unless 0; -1 with *err (and *what, when given) on failure.
int UpstreamSocket(int family, uint32_t mark, int* err, std::string* what) {
  int s = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (s < 0) {
    *err = errno;
    if (what) *what = "socket";
    return -1;
  }
  if (mark != 0 && setsockopt(s, SOL_SOCKET, SO_MARK, &mark, sizeof mark) < 0) {
    *err = errno;
    if (what) *what = "setsockopt SO_MARK (needs CAP_NET_ADMIN)";
    close(s);
    return -1;
  }
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return s;
}

}  // namespace

struct RelayPair {
  uint64_t id = 0;
  int fd[2] = {-1, -1};  // [0] app, [1] upstream
  RelayDir dir[2];       // [0] app → upstream (src fd[0]), [1] upstream → app (src fd[1])
  int64_t last_ms = 0;
  // Dial(): the upstream is still connecting; it must be writable by connect_deadline.
  bool connecting = false;
  uint32_t connect_ms = 0;
  // Dial(): where to connect; the worker calls connect(2) (its kernel work —
  // the SYN through the stack, often the peer's SYN-ACK in the same softirq —
  // is not the JavaScript thread's) and frees it.
  // The upstream socket is made there too (fd[1] stays -1 until then):
  // socket(2) and setsockopt(2) cost the JavaScript thread ~10 µs per
  // connection on our VM kind; a failure ends the pair kConnectFailed.
  std::unique_ptr<struct sockaddr_storage> dst;
  socklen_t dst_len = 0;
  uint32_t mark = 0;  // SO_MARK of that socket (0: none)
  // Dial() with `local`: connect(2) already ran on the caller's thread; its
  // errno (0 or EINPROGRESS when under way) for the worker to act on.
  bool connect_issued = false;
  int connect_err = 0;
  int64_t connect_deadline = 0;
  // Dial() to a proxy: set until its reply is read (the pair stays
  // `connecting` meanwhile and moves no byte either way).
  std::unique_ptr<ProxyRun> proxy;
  bool dead = false;
  bool ready = false;     // on the worker's ready list
  int fd_registered = 0;  // fds [0, n) are in the worker's epoll set
  RelayWorker* worker = nullptr;
};

class RelayWorker {
 public:
  RelayWorker(RelayPool* pool, const RelayOptions& o, int index) : pool_(pool), o_(o), index_(index) {}
  ~RelayWorker() {
    StopAndJoin();
    for (RelayPipe& p : free_) ClosePipe(&p);
    if (ep_ >= 0) close(ep_);
    if (ev_ >= 0) close(ev_);
  }

  bool Start(int* err, std::string* what) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) {
      *err = errno;
      *what = "epoll_create1";
      return false;
    }
    ev_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ev_ < 0) {
      *err = errno;
      *what = "eventfd";
      return false;
    }
    struct epoll_event e = {};
    e.events = EPOLLIN;
    e.data.u64 = 0;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, ev_, &e) < 0) {
      *err = errno;
      *what = "epoll_ctl";
      return false;
    }
    thread_ = std::thread([this, index = index_] {
      // "fp-relay-N" in top -H / perf, beside the engine's "fp-engine-N".
      std::string name = "fp-relay-" + std::to_string(index);
      pthread_setname_np(pthread_self(), name.c_str());
      Run();
    });
    return true;
  }

  enum class CmdType { kAdd, kClose, kStop };
  struct Cmd {
    CmdType type;
    RelayPair* pair;
    uint64_t id;
    bool reset;
  };

  void Post(const Cmd& c) {
    bool wake;
    {
      std::lock_guard<std::mutex> g(cmd_mu_);
      // One wake-up per batch: a non-empty queue has one pending (the worker
      // reads the eventfd before it takes the queue). A wake-up of another
      // thread is a costly interrupt on our VM kind; a burst of new
      // connections then costs one.
      wake = cmds_.empty();
      cmds_.push_back(c);
    }
    if (!wake) return;
    uint64_t one = 1;
    ssize_t n = write(ev_, &one, sizeof one);
    (void)n;  // EAGAIN only when the counter is saturated: a wake-up is pending anyway
  }

  void StopAndJoin() {
    if (!thread_.joinable()) return;
    Post({CmdType::kStop, nullptr, 0, false});
    thread_.join();
  }

  std::atomic<uint64_t> pipes{0};

 private:
  void Run() {
    struct epoll_event evs[256];
    // Idle scan period: a tenth of the timeout, within [10 ms, 1 s].
    int tick = o_.idle_ms == 0 ? 1000 : static_cast<int>(o_.idle_ms / 10);
    if (tick < 10) tick = 10;
    if (tick > 1000) tick = 1000;
    int64_t last_scan = NowMs();
    int64_t last_connect_scan = last_scan;
    while (!stopping_) {
      // Connect deadlines are checked every kConnectTickMs while any pair connects.
      int wait = !ready_.empty() ? 0 : connecting_.empty() ? tick : std::min(tick, kConnectTickMs);
      const int signal_due = pool_->EndSignalDueIn(NowMs());
      if (signal_due >= 0 && signal_due < wait) wait = signal_due;
      int n = epoll_wait(ep_, evs, 256, wait);
      if (n < 0 && errno != EINTR) break;
      now_ = NowMs();
      for (int i = 0; i < n; i++) {
        uint64_t tag = evs[i].data.u64;
        if (tag == 0) {
          Commands();
          continue;
        }
        RelayPair* p = reinterpret_cast<RelayPair*>(tag & ~uint64_t{1});
        int side = static_cast<int>(tag & 1);
        if (p->dead) continue;
        uint32_t ev = evs[i].events;
        if (ev & EPOLLRDHUP) p->dir[side].fin_seen = true;
        if (side == 1 && p->connecting) {
          Connected(p, ev);
          continue;
        }
        if (ev & EPOLLERR) {
          int soerr = 0;
          socklen_t len = sizeof soerr;
          if (getsockopt(p->fd[side], SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr != 0) {
            Fail(p, side, soerr);
            continue;
          }
        }
        if (ev & (EPOLLIN | EPOLLHUP | EPOLLRDHUP | EPOLLERR)) {
          if (!Pump(p, side)) continue;
        }
        if (ev & EPOLLOUT) {
          RelayDir& d = p->dir[1 - side];
          if (d.in_pipe > 0 || d.pre_off < d.pre.size()) Pump(p, 1 - side);
        }
      }
      if (!ready_.empty()) {
        std::vector<RelayPair*> again;
        again.swap(ready_);
        for (RelayPair* p : again) {
          p->ready = false;
          if (!p->dead && Pump(p, 0)) Pump(p, 1);
        }
      }
      if (!connecting_.empty() && now_ - last_connect_scan >= kConnectTickMs) {
        last_connect_scan = now_;
        ScanConnecting();
      }
      if (now_ - last_scan >= tick) {
        last_scan = now_;
        ScanIdle();
      }
      Reap();
      pool_->FlushEndSignal(now_);
    }
    // Stop: close what is left like the JS relay's close('fin').
    std::vector<RelayPair*> left;
    for (auto& kv : local_) left.push_back(kv.second);
    // A pair still connecting has sent the app nothing: reset it, as the
    // Listener resets an app whose dial is cut short (a FIN would pass for an
    // empty but complete response).
    for (RelayPair* p : left) Finish(p, RelayHow::kClosed, 0, p->connecting, p->connecting);
    Reap();
  }

  void Commands() {
    uint64_t v;
    ssize_t r = read(ev_, &v, sizeof v);
    (void)r;
    std::deque<Cmd> cmds;
    {
      std::lock_guard<std::mutex> g(cmd_mu_);
      cmds.swap(cmds_);
    }
    for (const Cmd& c : cmds) {
      switch (c.type) {
        case CmdType::kAdd:
          AddPair(c.pair);
          break;
        case CmdType::kClose: {
          auto it = local_.find(c.id);
          if (it != local_.end() && !it->second->dead) {
            Finish(it->second, RelayHow::kClosed, 0, c.reset, c.reset);
          }
          break;
        }
        case CmdType::kStop:
          stopping_ = true;
          break;
      }
    }
  }

  void AddPair(RelayPair* p) {
    local_[p->id] = p;
    p->last_ms = now_;
    if (p->dst || p->connect_issued) {
      int err = p->connect_err;
      if (p->dst && p->fd[1] < 0) {
        p->fd[1] = UpstreamSocket(p->dst->ss_family, p->mark, &err, nullptr);
        if (p->fd[1] < 0) {
          p->dst.reset();
          p->fd_registered = 0;
          Finish(p, RelayHow::kConnectFailed, err, true, false);
          return;
        }
      }
      if (p->dst) {
        int r = connect(p->fd[1], reinterpret_cast<struct sockaddr*>(p->dst.get()), p->dst_len);
        err = r < 0 ? errno : 0;
        p->dst.reset();
      }
      if (err != 0 && err != EINPROGRESS) {
        p->fd_registered = 0;
        Finish(p, RelayHow::kConnectFailed, err, true, false);
        return;
      }
      // A proxy dial connected at once still has its handshake ahead: the
      // OUT edge reported when the socket joins the epoll set starts it.
      if (err == EINPROGRESS || p->proxy) {
        p->connecting = true;
        p->connect_deadline = now_ + p->connect_ms;
        connecting_.insert(p);
      }
    }
    for (int side = 0; side < 2; side++) {
      struct epoll_event e = {};
      e.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
      e.data.u64 = reinterpret_cast<uint64_t>(p) | static_cast<uint64_t>(side);
      if (epoll_ctl(ep_, EPOLL_CTL_ADD, p->fd[side], &e) < 0) {
        int err = errno;
        p->fd_registered = side;
        Finish(p, side == 0 ? RelayHow::kAppReset : RelayHow::kUpstreamReset, err, side == 1, side == 0);
        return;
      }
    }
    p->fd_registered = 2;
    // Pre-read bytes and whatever is already queued on either socket: edge
    // triggering reports only new readiness, so start both pumps now.
    if (Pump(p, 0)) Pump(p, 1);
  }

  bool AcquirePipe(RelayDir* d) {
    if (!free_.empty()) {
      d->pipe = free_.back();
      free_.pop_back();
      return true;
    }
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return false;
    // Bigger than the 64 KiB default so one splice moves up to pipe_size;
    // refused (EPERM past pipe-user-pages-soft for non-root) → keep default.
    fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(o_.pipe_size));
    d->pipe = {fds[0], fds[1]};
    pipes.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  void ReleasePipe(RelayDir* d) {
    if (d->pipe.r < 0) return;
    if (d->in_pipe == 0 && free_.size() < o_.pool_max) {
      free_.push_back(d->pipe);
    } else {
      // Stale bytes (a pair ended mid-stream) must never leak into another pair.
      ClosePipe(&d->pipe);
    }
    d->pipe = {};
    d->in_pipe = 0;
  }

  void ClosePipe(RelayPipe* p) {
    if (p->r >= 0) close(p->r);
    if (p->w >= 0) close(p->w);
    p->r = p->w = -1;
    pipes.fetch_sub(1, std::memory_order_relaxed);
  }

  // Moves bytes for direction d (source fd[d], sink fd[1-d]) until the source
  // is empty, the sink is full, or the budget is spent. Returns false when
  // the pair ended (it must not be touched further).
  bool Pump(RelayPair* p, int d) {
    RelayDir& D = p->dir[d];
    const int src = p->fd[d];
    const int dst = p->fd[1 - d];
    int budget = kPumpBudget;
    // Proxy handshake under way: the proxy's reply is not the app's, and the
    // app's bytes wait in its socket until the tunnel stands.
    if (p->proxy) return true;
    for (;;) {
      if (D.done) return true;
      if (D.pre_off < D.pre.size()) {
        ssize_t n = send(dst, D.pre.data() + D.pre_off, D.pre.size() - D.pre_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN) return true;  // the sink's OUT edge resumes us
          Fail(p, 1 - d, errno);
          return false;
        }
        D.pre_off += static_cast<size_t>(n);
        D.bytes.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
        p->last_ms = now_;
        if (D.pre_off == D.pre.size()) {
          std::string().swap(D.pre);
          D.pre_off = 0;
        }
        continue;
      }
      if (D.in_pipe > 0) {
        // A source that has sent its FIN ends soon (the next reads reach
        // EOF, and then shutdown() pushes): its last bytes wait corked for
        // that FIN, one segment instead of data + FIN (a short response and
        // its close: one packet less through the TUN each way, the app's
        // ACK of the data included). MSG_MORE holds back only a segment
        // short of the MSS, and never past the shutdown, a reset or close.
        const unsigned more = D.fin_seen && !p->connecting ? SPLICE_F_MORE : 0;
        ssize_t n = splice(D.pipe.r, nullptr, dst, nullptr, D.in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK | more);
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN) return true;
          Fail(p, 1 - d, errno);
          return false;
        }
        D.in_pipe -= static_cast<size_t>(n);
        D.bytes.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
        p->last_ms = now_;
        if (D.in_pipe == 0) ReleasePipe(&D);
        continue;
      }
      if (D.src_eof) {
        // shutdown() of a SYN_SENT socket would abort the connect: the app's
        // FIN waits until the upstream is connected (Connected() pumps again).
        if (p->connecting) return true;
        // Everything before the FIN is out: forward the FIN.
        shutdown(dst, SHUT_WR);
        D.done = true;
        if (p->dir[1 - d].done) {
          Finish(p, RelayHow::kDone, 0, false, false);
          return false;
        }
        return true;
      }
      if (budget-- == 0) {
        if (!p->ready) {
          p->ready = true;
          ready_.push_back(p);
        }
        return true;
      }
      if (D.pipe.r < 0 && !AcquirePipe(&D)) {
        // No fd for a pipe (EMFILE/ENFILE): end the pair with a reset rather
        // than stall it forever; the error says why.
        Finish(p, RelayHow::kClosed, errno, true, true);
        return false;
      }
      ssize_t n = splice(src, nullptr, D.pipe.w, nullptr, o_.pipe_size, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) {
          ReleasePipe(&D);  // empty: back to the pool while the source is quiet
          return true;
        }
        Fail(p, d, errno);
        return false;
      }
      if (n == 0) {
        D.src_eof = true;
        ReleasePipe(&D);
        continue;
      }
      D.in_pipe = static_cast<size_t>(n);
      p->last_ms = now_;
    }
  }

  // An event on a connecting upstream: writable without SO_ERROR means
  // connected (connect(2), EINPROGRESS); an error ends the pair as
  // kConnectFailed and resets the app, like a failed dial in JavaScript.
  void Connected(RelayPair* p, uint32_t ev) {
    if (p->proxy && p->proxy->stage != ProxyRun::kTcp) {
      Handshake(p, ev);
      return;
    }
    // tcp_poll() reports OUT only once the socket left SYN_SENT, and a
    // failed connect (RST, a hard ICMP error) sets ERR and HUP with it: no
    // SO_ERROR read (one system call per connection) unless one is set.
    int soerr = 0;
    if (ev & (EPOLLERR | EPOLLHUP)) {
      socklen_t len = sizeof soerr;
      if (getsockopt(p->fd[1], SOL_SOCKET, SO_ERROR, &soerr, &len) < 0) soerr = errno;
      if (soerr == 0) soerr = ECONNRESET;
    }
    if (soerr != 0) {
      Finish(p, RelayHow::kConnectFailed, soerr, true, false);
      return;
    }
    if (!(ev & EPOLLOUT)) return;
    if (p->proxy) {
      ProxyRun& h = *p->proxy;
      if (h.plan.kind == ProxyPlan::kHttp) {
        h.Send(std::move(h.plan.request), 0, ProxyRun::kHttpHead);
      } else {
        // Greeting: no-auth, plus username/password when we have one (RFC 1928 §3).
        std::string hello = h.plan.auth.empty() ? std::string("\x05\x01\x00", 3) : std::string("\x05\x02\x00\x02", 4);
        h.Send(std::move(hello), 2, ProxyRun::kMethod);
      }
      Handshake(p, ev);
      return;
    }
    Established(p);
  }

  // The upstream stands (connected; through a proxy, its reply read): relay.
  void Established(RelayPair* p) {
    p->proxy.reset();
    p->connecting = false;
    connecting_.erase(p);
    p->last_ms = now_;
    // Bytes (and a FIN) the app sent meanwhile wait in its direction; edge
    // triggering will not repeat the app's readiness, so pump both now.
    if (Pump(p, 0)) Pump(p, 1);
  }

  // Sends the pending handshake message and reads the reply it waits for,
  // until EAGAIN, a failure, or the tunnel stands. Any event on the proxy's
  // socket lands here while the handshake runs.
  void Handshake(RelayPair* p, uint32_t ev) {
    ProxyRun& h = *p->proxy;
    const int fd = p->fd[1];
    if (ev & EPOLLERR) {
      int soerr = 0;
      socklen_t len = sizeof soerr;
      if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr != 0) {
        Finish(p, RelayHow::kConnectFailed, soerr, true, false);
        return;
      }
    }
    for (;;) {
      if (h.out_off < h.out.size()) {
        ssize_t n = send(fd, h.out.data() + h.out_off, h.out.size() - h.out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN) return;  // the OUT edge resumes us
          Finish(p, RelayHow::kConnectFailed, errno, true, false);
          return;
        }
        h.out_off += static_cast<size_t>(n);
        if (h.out_off == h.out.size()) std::string().swap(h.out);
        continue;
      }
      if (h.stage == ProxyRun::kHttpHead) {
        HttpHead(p);
        return;
      }
      // Exactly what is missing of this reply: later bytes stay queued for the relay.
      size_t n = HsRecv(p, h.in + h.got, h.need - h.got, 0);
      if (n == 0) return;
      h.got += n;
      if (h.got < h.need) continue;
      if (!NextStep(p)) return;
    }
  }

  // A complete reply of the current stage is in h.in: check it and queue the
  // next message. False when the pair failed or started relaying.
  bool NextStep(RelayPair* p) {
    ProxyRun& h = *p->proxy;
    switch (h.stage) {
      case ProxyRun::kMethod: {
        if (h.in[0] != 5) return HandshakeFailed(p, HsFail::kVersion, h.in[0]);
        const uint8_t m = h.in[1];
        if (m == 0xff) return HandshakeFailed(p, HsFail::kNoMethod, m);
        if (m == 2 && !h.plan.auth.empty()) {
          h.Send(std::move(h.plan.auth), 2, ProxyRun::kAuth);
          return true;
        }
        if (m != 0) return HandshakeFailed(p, HsFail::kBadMethod, m);
        h.Send(std::move(h.plan.request), 5, ProxyRun::kHead);
        return true;
      }
      case ProxyRun::kAuth:
        // Some servers answer the subnegotiation with VER=5; the status is what matters.
        if (h.in[0] != 1 && h.in[0] != 5) return HandshakeFailed(p, HsFail::kAuthVersion, h.in[0]);
        if (h.in[1] != 0) return HandshakeFailed(p, HsFail::kAuthFailed, h.in[1]);
        h.Send(std::move(h.plan.request), 5, ProxyRun::kHead);
        return true;
      case ProxyRun::kHead: {
        // VER REP RSV ATYP + the address's first byte tell the reply's length.
        if (h.in[0] != 5) return HandshakeFailed(p, HsFail::kVersion, h.in[0]);
        if (h.in[1] != 0) return HandshakeFailed(p, HsFail::kReply, h.in[1]);
        const uint8_t atyp = h.in[3];
        size_t total = atyp == 1 ? 4 + 4 + 2 : atyp == 4 ? 4 + 16 + 2 : atyp == 3 ? 4 + 1 + h.in[4] + 2 : 0;
        if (total == 0) return HandshakeFailed(p, HsFail::kAtyp, atyp);
        h.need = total;
        h.stage = ProxyRun::kRest;
        return true;
      }
      case ProxyRun::kRest:
        Established(p);
        return false;
      case ProxyRun::kTcp:
        break;
    }
    return true;
  }

  // recv() on the proxy's socket mid-handshake: the bytes read (> 0), or 0
  // when the caller must return: nothing queued yet, or the pair ended (a
  // socket error, or the proxy hanging up mid-handshake).
  size_t HsRecv(RelayPair* p, void* buf, size_t len, int flags) {
    for (;;) {
      ssize_t n = recv(p->fd[1], buf, len, flags | MSG_DONTWAIT);
      if (n > 0) return static_cast<size_t>(n);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return 0;
      if (n < 0) {
        Finish(p, RelayHow::kConnectFailed, errno, true, false);
      } else {
        HandshakeFailed(p, HsFail::kClosed, 0);
      }
      return 0;
    }
  }

  bool HandshakeFailed(RelayPair* p, HsFail kind, uint8_t detail) {
    p->proxy->fail = PackHandshakeFailure(2, kind, detail);
    Finish(p, RelayHow::kConnectFailed, 0, true, false);
    return false;
  }

  // Reads the HTTP proxy's response head and not a byte past it: peek what
  // is queued (at most what still fits under max_head, plus one byte to tell
  // "too large"), find the empty line, then read up to it only.
  void HttpHead(RelayPair* p) {
    ProxyRun& h = *p->proxy;
    const int fd = p->fd[1];
    const size_t max = h.plan.max_head;
    if (scratch_.size() < max + 1) scratch_.resize(max + 1);
    for (;;) {
      const size_t room = max + 1 - h.head.size();  // ≥ 1: the head never exceeds max while we read
      const size_t n = HsRecv(p, scratch_.data(), room, MSG_PEEK);
      if (n == 0) return;
      const size_t old = h.head.size();
      h.head.append(scratch_.data(), n);
      const size_t end = HeadEnd(h.head, old >= 3 ? old - 3 : 0);
      const size_t take = end == std::string::npos ? n : end - old;
      h.head.resize(old + take);
      // The same bytes again, this time off the queue (nobody else reads this socket).
      for (size_t off = 0; off < take;) {
        ssize_t r = recv(fd, scratch_.data(), take - off, MSG_DONTWAIT);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
          Finish(p, RelayHow::kConnectFailed, r < 0 ? errno : ECONNRESET, true, false);
          return;
        }
        off += static_cast<size_t>(r);
      }
      if (end == std::string::npos || end > max) {
        if (h.head.size() > max) {
          HandshakeFailed(p, HsFail::kHttpTooLarge, 0);
          return;
        }
        continue;
      }
      if (!HttpTunnelHead(h.head.data(), h.head.size())) {
        HandshakeFailed(p, HsFail::kHttpHead, 0);
        return;
      }
      Established(p);
      return;
    }
  }

  // Index just past the first empty line ("\n\n" or "\n\r\n") at or after
  // `from`, or npos: src/proxy/handshake-io.ts headEnd.
  static size_t HeadEnd(const std::string& b, size_t from) {
    for (size_t i = b.find('\n', from); i != std::string::npos; i = b.find('\n', i + 1)) {
      size_t j = i + 1;
      if (j < b.size() && b[j] == '\r') j++;
      if (j < b.size() && b[j] == '\n') return j + 1;
    }
    return std::string::npos;
  }

  void ScanConnecting() {
    std::vector<RelayPair*> late;
    for (RelayPair* p : connecting_) {
      if (now_ >= p->connect_deadline) late.push_back(p);
    }
    for (RelayPair* p : late) Finish(p, RelayHow::kConnectFailed, ETIMEDOUT, true, false);
  }

  // Side `side` failed (RST, EPIPE, …): reset the other one so its peer sees
  // a reset, not a clean FIN over a truncated stream.
  void Fail(RelayPair* p, int side, int err) {
    if (side == 1 && p->connecting) {
      Finish(p, RelayHow::kConnectFailed, err, true, false);
      return;
    }
    Finish(p, side == 0 ? RelayHow::kAppReset : RelayHow::kUpstreamReset, err, side == 1, side == 0);
  }

  void Finish(RelayPair* p, RelayHow how, int err, bool reset_app, bool reset_up) {
    if (p->dead) return;
    p->dead = true;
    if (p->connecting) connecting_.erase(p);
    const bool reset[2] = {reset_app, reset_up};
    for (int side = 0; side < 2; side++) {
      // Explicit DEL: the hand-off's original fd may still be open for a
      // moment, and epoll forgets a socket only when its last fd closes.
      if (p->fd[side] < 0) continue;  // a Dial() whose upstream socket was never made
      if (side < p->fd_registered) epoll_ctl(ep_, EPOLL_CTL_DEL, p->fd[side], nullptr);
      if (reset[side]) ResetOnClose(p->fd[side]);
      close(p->fd[side]);
      p->fd[side] = -1;
    }
    for (RelayDir& d : p->dir) ReleasePipe(&d);
    RelayEndRecord r;
    r.id = p->id;
    r.bytes_up = p->dir[0].bytes.load(std::memory_order_relaxed);
    r.bytes_down = p->dir[1].bytes.load(std::memory_order_relaxed);
    r.how = how;
    r.error = err;
    if (how == RelayHow::kConnectFailed && p->proxy) {
      const ProxyRun& h = *p->proxy;
      r.handshake = h.fail != 0 ? h.fail : PackHandshakeFailure(h.stage == ProxyRun::kTcp ? 1 : 2, HsFail::kErrno, 0);
      if (h.fail == PackHandshakeFailure(2, HsFail::kHttpHead, 0)) r.head = h.head;
    }
    local_.erase(p->id);
    pool_->Forget(p->id);
    pool_->Ended(r);
    grave_.push_back(p);
  }

  void ScanIdle() {
    if (o_.idle_ms == 0) return;
    std::vector<RelayPair*> idle;
    for (auto& kv : local_) {
      if (kv.second->connecting) continue;  // its connect deadline applies
      if (now_ - kv.second->last_ms >= static_cast<int64_t>(o_.idle_ms)) idle.push_back(kv.second);
    }
    for (RelayPair* p : idle) Finish(p, RelayHow::kIdle, 0, false, false);
  }

  // Freed only after the event batch: a later event of the same batch may
  // still point at a pair that ended earlier in it.
  void Reap() {
    for (RelayPair* p : grave_) delete p;
    grave_.clear();
  }

  RelayPool* pool_;
  RelayOptions o_;
  int index_;
  int ep_ = -1;
  int ev_ = -1;
  std::thread thread_;
  std::mutex cmd_mu_;
  std::deque<Cmd> cmds_;
  bool stopping_ = false;
  int64_t now_ = 0;
  std::unordered_map<uint64_t, RelayPair*> local_;
  std::vector<RelayPair*> ready_;
  std::unordered_set<RelayPair*> connecting_;
  std::vector<RelayPair*> grave_;
  std::vector<RelayPipe> free_;
  std::vector<char> scratch_;  // HTTP response heads are peeked into it
};

namespace {

bool Digit(char c) { return c >= '0' && c <= '9'; }

// JavaScript's \s within latin1 (how http-codec.ts decodes a head): TAB, LF,
// VT, FF, CR, space, NBSP.
bool JsSpace(unsigned char c) { return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0xa0; }

}  // namespace

bool HttpTunnelHead(const char* head, size_t len) {
  size_t pos = 0;
  // The next line as split(/\r?\n/) gives it; false past the end.
  auto line = [&](size_t* b, size_t* e) {
    if (pos > len) return false;
    const void* nl = std::memchr(head + pos, '\n', len - pos);
    size_t end = nl ? static_cast<size_t>(static_cast<const char*>(nl) - head) : len;
    *b = pos;
    *e = end > pos && head[end - 1] == '\r' && nl ? end - 1 : end;
    pos = end + 1;
    return true;
  };
  size_t b, e;
  if (!line(&b, &e)) return false;
  // ^HTTP\/(\d\.\d) (\d{3})(?: (.*))?$ with a 2xx status; `.` matches no CR.
  const char* l = head + b;
  const size_t n = e - b;
  if (n < 12 || std::memcmp(l, "HTTP/", 5) != 0 || !Digit(l[5]) || l[6] != '.' || !Digit(l[7]) || l[8] != ' ' ||
      l[9] != '2' || !Digit(l[10]) || !Digit(l[11])) {
    return false;
  }
  if (n > 12 && (l[12] != ' ' || std::memchr(l + 13, '\r', n - 13) != nullptr)) return false;
  // Header lines up to the first empty one: a name before a colon, no whitespace in it (RFC 9112 §5.1).
  while (line(&b, &e)) {
    if (e == b) return true;
    const void* colon = std::memchr(head + b, ':', e - b);
    if (colon == nullptr || colon == head + b) return false;
    for (const char* c = head + b; c < static_cast<const char*>(colon); c++) {
      if (JsSpace(static_cast<unsigned char>(*c))) return false;
    }
  }
  return true;
}

RelayPool::RelayPool(const RelayOptions& opts, std::function<void()> on_end) : opts_(opts), on_end_(std::move(on_end)) {
  if (opts_.threads < 1) opts_.threads = 1;
  if (opts_.pipe_size < 4096) opts_.pipe_size = 4096;
}

RelayPool::~RelayPool() { Stop(); }

bool RelayPool::Start(int* err, std::string* what) {
  if (started_) return true;
  for (int i = 0; i < opts_.threads; i++) {
    auto w = std::make_unique<RelayWorker>(this, opts_, i);
    if (!w->Start(err, what)) {
      Stop();
      return false;
    }
    workers_.push_back(std::move(w));
  }
  started_ = true;
  return true;
}

namespace {

// EBADF / ENOTSOCK / EPROTOTYPE as relay.h documents; 0 when fd is a TCP-like stream socket.
int CheckStreamSocket(int fd) {
  struct stat st;
  if (fstat(fd, &st) < 0) return errno;
  if (!S_ISSOCK(st.st_mode)) return ENOTSOCK;
  int type = 0;
  socklen_t len = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) return errno;
  if (type != SOCK_STREAM) return EPROTOTYPE;
  return 0;
}

}  // namespace

namespace {

std::string FdProblem(const char* name, int fd, int e) {
  return std::string(name) + " fd " + std::to_string(fd) +
         (e == EBADF        ? " is not an open file descriptor"
          : e == ENOTSOCK   ? " is not a socket"
          : e == EPROTOTYPE ? " is not a stream (TCP) socket"
                            : std::string(" cannot be inspected: ") + strerror(e));
}

// A nonblocking close-on-exec dup of fd, or -1 (errno set).
int DupNonblock(int fd) {
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) return -1;
  int fl = fcntl(d, F_GETFL);
  if (fl >= 0 && !(fl & O_NONBLOCK)) fcntl(d, F_SETFL, fl | O_NONBLOCK);
  return d;
}

}  // namespace

bool RelayPool::Admit(uint64_t id, int app_fd, bool own, int* err, std::string* what) {
  if (stopped_.load() || !started_) {
    *err = ESHUTDOWN;
    *what = "the relay is stopped";
    return false;
  }
  // An owned fd comes from our own accept4 (a nonblocking TCP socket): no need to inspect it.
  int e = app_fd < 0 ? EBADF : own ? 0 : CheckStreamSocket(app_fd);
  if (e != 0) {
    *err = e;
    *what = FdProblem("app", app_fd, e);
    return false;
  }
  std::lock_guard<std::mutex> g(map_mu_);
  if (pairs_.count(id) != 0) {
    *err = EEXIST;
    *what = "relay id " + std::to_string(id) + " is already live";
    return false;
  }
  return true;
}

bool RelayPool::Add(uint64_t id, int app_fd, int up_fd, std::string pre_up, std::string pre_down, int* err,
                    std::string* what) {
  if (!Admit(id, app_fd, false, err, what)) return false;
  int e = up_fd < 0 ? EBADF : CheckStreamSocket(up_fd);
  if (e != 0) {
    *err = e;
    *what = FdProblem("upstream", up_fd, e);
    return false;
  }
  if (app_fd == up_fd) {
    *err = EINVAL;
    *what = "app and upstream fd are the same socket";
    return false;
  }
  auto p = std::make_unique<RelayPair>();
  p->id = id;
  p->fd[1] = DupNonblock(up_fd);
  if (p->fd[1] < 0) {
    *err = errno;
    *what = "dup upstream fd";
    return false;
  }
  p->dir[0].pre = std::move(pre_up);
  p->dir[1].pre = std::move(pre_down);
  return Enqueue(std::move(p), app_fd, false, err, what);
}

bool RelayPool::Dial(uint64_t id, int app_fd, bool own, const struct sockaddr* dst, socklen_t dst_len, uint32_t mark,
                     uint32_t connect_ms, std::string pre_up, int* err, std::string* what,
                     struct sockaddr_storage* local, std::unique_ptr<ProxyPlan> proxy) {
  if (!DialPair(id, app_fd, own, dst, dst_len, mark, connect_ms, std::move(pre_up), err, what, local,
                std::move(proxy))) {
    // An owned app socket is ours to end: reset, as a failed dial resets the app.
    if (own && app_fd >= 0) {
      ResetOnClose(app_fd);
      close(app_fd);
    }
    return false;
  }
  return true;
}

bool RelayPool::DialPair(uint64_t id, int app_fd, bool own, const struct sockaddr* dst, socklen_t dst_len,
                         uint32_t mark, uint32_t connect_ms, std::string pre_up, int* err, std::string* what,
                         struct sockaddr_storage* local, std::unique_ptr<ProxyPlan> proxy) {
  if (!Admit(id, app_fd, own, err, what)) return false;
  if (dst == nullptr || (dst->sa_family != AF_INET && dst->sa_family != AF_INET6)) {
    *err = EAFNOSUPPORT;
    *what = "the destination is not an IPv4 or IPv6 address";
    return false;
  }
  auto p = std::make_unique<RelayPair>();
  p->id = id;
  if (local != nullptr) {
    int s = UpstreamSocket(dst->sa_family, mark, err, what);
    if (s < 0) return false;
    p->fd[1] = s;
    // Here and now: the 4-tuple exists before this call returns. A failure
    // still ends the pair on its worker (kConnectFailed), as when it connects.
    std::memset(local, 0, sizeof *local);
    p->connect_issued = true;
    p->connect_err = connect(s, dst, dst_len) < 0 ? errno : 0;
    socklen_t ll = sizeof *local;
    if ((p->connect_err == 0 || p->connect_err == EINPROGRESS) &&
        getsockname(s, reinterpret_cast<struct sockaddr*>(local), &ll) < 0) {
      std::memset(local, 0, sizeof *local);
    }
  } else {
    p->dst = std::make_unique<struct sockaddr_storage>();
    std::memcpy(p->dst.get(), dst, dst_len);
    p->dst_len = dst_len;
    p->mark = mark;
  }
  p->connect_ms = connect_ms;
  p->dir[0].pre = std::move(pre_up);
  if (proxy) {
    p->proxy = std::make_unique<ProxyRun>();
    p->proxy->plan = std::move(*proxy);
  }
  return Enqueue(std::move(p), app_fd, own, err, what);
}

bool RelayPool::Enqueue(std::unique_ptr<RelayPair> p, int app_fd, bool own, int* err, std::string* what) {
  p->fd[0] = own ? app_fd : DupNonblock(app_fd);
  if (p->fd[0] < 0) {
    *err = errno;
    *what = "dup app fd";
    if (p->fd[1] >= 0) close(p->fd[1]);
    return false;
  }
  const uint64_t id = p->id;
  RelayWorker* w = workers_[next_worker_.fetch_add(1, std::memory_order_relaxed) % workers_.size()].get();
  p->worker = w;
  RelayPair* raw = p.release();
  {
    std::lock_guard<std::mutex> g(map_mu_);
    pairs_[id] = raw;
  }
  w->Post({RelayWorker::CmdType::kAdd, raw, id, false});
  return true;
}

bool RelayPool::Close(uint64_t id, bool reset) {
  RelayWorker* w;
  {
    std::lock_guard<std::mutex> g(map_mu_);
    auto it = pairs_.find(id);
    if (it == pairs_.end()) return false;
    w = it->second->worker;
  }
  w->Post({RelayWorker::CmdType::kClose, nullptr, id, reset});
  return true;
}

bool RelayPool::Bytes(uint64_t id, uint64_t* up, uint64_t* down) {
  std::lock_guard<std::mutex> g(map_mu_);
  auto it = pairs_.find(id);
  if (it == pairs_.end()) return false;
  *up = it->second->dir[0].bytes.load(std::memory_order_relaxed);
  *down = it->second->dir[1].bytes.load(std::memory_order_relaxed);
  return true;
}

RelayTotals RelayPool::Totals() {
  RelayTotals t = {};
  {
    std::lock_guard<std::mutex> g(map_mu_);
    t.active = pairs_.size();
    for (auto& kv : pairs_) {
      t.bytes_up += kv.second->dir[0].bytes.load(std::memory_order_relaxed);
      t.bytes_down += kv.second->dir[1].bytes.load(std::memory_order_relaxed);
    }
    // Read under the same lock Forget() takes, so a pair is counted either
    // live or ended, never both or neither.
    t.bytes_up += ended_up_.load(std::memory_order_relaxed);
    t.bytes_down += ended_down_.load(std::memory_order_relaxed);
  }
  for (auto& w : workers_) t.pipes += w->pipes.load(std::memory_order_relaxed);
  return t;
}

void RelayPool::Forget(uint64_t id) {
  std::lock_guard<std::mutex> g(map_mu_);
  auto it = pairs_.find(id);
  if (it == pairs_.end()) return;
  ended_up_.fetch_add(it->second->dir[0].bytes.load(std::memory_order_relaxed), std::memory_order_relaxed);
  ended_down_.fetch_add(it->second->dir[1].bytes.load(std::memory_order_relaxed), std::memory_order_relaxed);
  pairs_.erase(it);
}

void RelayPool::Ended(const RelayEndRecord& r) {
  bool signal = false;
  {
    std::lock_guard<std::mutex> g(end_mu_);
    ended_.push_back(r);
    if (!signalled_) {
      const int64_t now = NowMs();
      // A failed dial is told at once: its log line and the proxy's health
      // (groups) must not lag the reset the app already got.
      if (r.how == RelayHow::kConnectFailed || now - last_signal_ms_ >= kEndSignalMs) {
        signalled_ = signal = true;
        last_signal_ms_ = now;
        held_.store(false, std::memory_order_relaxed);
      } else {
        held_.store(true, std::memory_order_release);
      }
    }
  }
  if (signal && on_end_) on_end_();
}

int RelayPool::EndSignalDueIn(int64_t now_ms) {
  if (!held_.load(std::memory_order_acquire)) return -1;
  std::lock_guard<std::mutex> g(end_mu_);
  if (!held_.load(std::memory_order_relaxed)) return -1;
  const int64_t left = last_signal_ms_ + kEndSignalMs - now_ms;
  return left > 0 ? static_cast<int>(left) : 0;
}

void RelayPool::FlushEndSignal(int64_t now_ms) {
  if (!held_.load(std::memory_order_acquire)) return;
  bool signal = false;
  {
    std::lock_guard<std::mutex> g(end_mu_);
    if (!held_.load(std::memory_order_relaxed) || now_ms - last_signal_ms_ < kEndSignalMs) return;
    held_.store(false, std::memory_order_relaxed);
    if (!signalled_ && !ended_.empty()) {
      signalled_ = signal = true;
      last_signal_ms_ = now_ms;
    }
  }
  if (signal && on_end_) on_end_();
}

std::vector<RelayEndRecord> RelayPool::TakeEnded() {
  std::vector<RelayEndRecord> out;
  std::lock_guard<std::mutex> g(end_mu_);
  out.swap(ended_);
  signalled_ = false;
  held_.store(false, std::memory_order_relaxed);
  return out;
}

void RelayPool::Stop() {
  if (stopped_.exchange(true)) return;
  for (auto& w : workers_) w->StopAndJoin();
  workers_.clear();
}

}  // namespace fp
