// Native TCP byte relay (issue 11): moves bytes between pairs of connected
// TCP sockets with splice(2) through a pipe per direction, on epoll worker
// threads, so a plain relay's bytes never enter JavaScript. Free of
// napi.h/uv.h (glue: relay_addon.cc) so it can be tested on its own.
//
// Semantics mirror src/proxy/relay.ts (the JS relay kept for outbounds that
// transform bytes):
// - half-close: EOF from one side becomes shutdown(SHUT_WR) on the other once
//   the bytes still in the pipe (and any pre-read bytes) are written; the
//   other direction keeps flowing until it ends too;
// - a failed side (RST, EPIPE, any socket error) resets the other one
//   (SO_LINGER 0 + close), so the far end never sees a clean FIN over a
//   truncated stream;
// - idle timeout: no byte either way for idle_ms closes both (plain close);
// - Close(id, reset) from the owner: daemon shutdown, NAT flow expiry.
// Dial() connects the upstream itself (nonblocking connect on the worker's
// epoll set) so a `direct` connection costs JavaScript no socket at all: the
// pair is "connecting" until the upstream is writable; the app's bytes wait
// in the pipe meanwhile (a send to a SYN_SENT socket is EAGAIN), its FIN is
// held back until the connect is done (shutdown() of a SYN_SENT socket
// would abort it), and a refused, unreachable or timed-out connect resets
// the app and ends the pair as kConnectFailed with the errno.
// Backpressure: a direction reads its source only while its pipe is empty,
// so at most one pipe (pipe_size) sits in the kernel per direction, however
// slow the reader. Idle pairs hold no pipe: pipes come from a per-thread pool
// when a direction has bytes and go back when it is drained.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace fp {

// How a pair ended; the first thing that ended it. Same order as RelayEnd in
// src/proxy/relay.ts.
enum class RelayHow : uint8_t {
  kDone = 0,
  kIdle = 1,
  kAppReset = 2,
  kUpstreamReset = 3,
  kClosed = 4,
  kConnectFailed = 5
};

struct RelayEndRecord {
  uint64_t id;
  uint64_t bytes_up;    // app → upstream, written to the upstream socket
  uint64_t bytes_down;  // upstream → app
  RelayHow how;
  int error;  // errno behind a reset (0 when none or unknown)
  // A Dial() with a proxy handshake that ended kConnectFailed: where and why
  // (PackHandshakeFailure); 0 otherwise.
  uint32_t handshake = 0;
  // HsFail::kHttpHead: the proxy's whole response head, for the owner to
  // word the failure exactly as its own HTTP client would (status, reason).
  std::string head;
};

// A proxy handshake the worker runs right after the upstream (the proxy)
// connects; the pair relays once the proxy's reply is read, and exactly the
// reply is read, so bytes the proxy sends after it (a server-first banner)
// stay in the socket for the relay. The app's bytes wait in its own socket
// until the tunnel stands.
// SOCKS5 CONNECT (RFC 1928, RFC 1929): not pipelined: small servers
// (microsocks) read one message per recv() and drop the rest, so each
// message waits for the previous reply; replies are read with recv() of the
// remaining length.
// HTTP CONNECT (RFC 9110 §9.3.6): `request` is the whole request head; the
// response head (up to the first empty line, CRLF or bare LF as RFC 9112
// §2.2 lets a recipient accept) is found with MSG_PEEK and then read up to
// its end only. A 2xx with a well-formed head relays; anything else ends the
// pair with HsFail::kHttpHead and the head in the record. A head longer than
// max_head bytes is kHttpTooLarge.
struct ProxyPlan {
  enum Kind : uint8_t { kSocks5, kHttp };
  Kind kind = kSocks5;
  std::string auth;         // SOCKS5: RFC 1929 request; empty: offer no-auth only
  std::string request;      // SOCKS5: VER CMD RSV ATYP DST.ADDR DST.PORT; HTTP: the CONNECT request head
  size_t max_head = 16384;  // HTTP: the longest response head accepted
};

// Why a proxy handshake failed (RelayEndRecord::handshake = stage << 16 |
// kind << 8 | detail). Stage 1: connecting to the proxy (the errno says why),
// 2: the handshake (kind, or the errno when kind is kHsErrno).
enum class HsFail : uint8_t {
  kErrno = 0,         // a socket error or timeout; RelayEndRecord::error has the errno
  kClosed = 1,        // the proxy closed the connection mid-handshake
  kNoMethod = 2,      // SOCKS5 method selection 0xFF: none of ours acceptable
  kBadMethod = 3,     // SOCKS5, detail: a method we did not offer
  kAuthFailed = 4,    // SOCKS5, detail: RFC 1929 status
  kReply = 5,         // SOCKS5, detail: RFC 1928 REP ≠ 0
  kVersion = 6,       // SOCKS5, detail: the version byte of the proxy's message
  kAtyp = 7,          // SOCKS5, detail: the reply's unknown ATYP
  kAuthVersion = 8,   // SOCKS5, detail: the version byte of the RFC 1929 reply
  kHttpHead = 9,      // HTTP: a complete head that is not a well-formed 2xx (RelayEndRecord::head)
  kHttpTooLarge = 10  // HTTP: no empty line within ProxyPlan::max_head bytes
};
constexpr uint32_t PackHandshakeFailure(int stage, HsFail kind, uint8_t detail) {
  return static_cast<uint32_t>(stage) << 16 | static_cast<uint32_t>(kind) << 8 | detail;
}

// Whether an HTTP response head (status line through the empty line) opens a
// tunnel: "HTTP/d.d 2dd" with an optional reason, and header lines "name:
// value" with no whitespace in the name (RFC 9112 §5.1) — exactly what
// src/proxy/http-codec.ts responseHead.decode accepts with a 2xx status.
bool HttpTunnelHead(const char* head, size_t len);

struct RelayOptions {
  int threads = 1;
  // F_SETPIPE_SZ per pipe: the most bytes one direction holds in flight.
  size_t pipe_size = 1 << 20;
  // No byte either way for this long closes the pair. 0 disables.
  uint32_t idle_ms = 600000;
  // Free pipes kept per thread for reuse (the rest are closed).
  size_t pool_max = 64;
};

struct RelayTotals {
  uint64_t active;
  uint64_t bytes_up;  // everything written so far, ended pairs included
  uint64_t bytes_down;
  uint64_t pipes;  // pipes open now (in use + pooled)
};

class RelayWorker;
struct RelayPair;

class RelayPool {
 public:
  // `on_end` is called from a worker thread when the queue of ended pairs
  // goes from empty to non-empty; the owner then calls TakeEnded() (from any
  // thread). Batched: no call per pair while the owner has not drained, and
  // at most one call per kEndSignalMs (a pair ending sooner after the last
  // call waits for the next one, at most that long).
  RelayPool(const RelayOptions& opts, std::function<void()> on_end);
  ~RelayPool();
  RelayPool(const RelayPool&) = delete;
  RelayPool& operator=(const RelayPool&) = delete;

  // Starts the threads; false with *err set (errno) when one could not start.
  bool Start(int* err, std::string* what);

  // Relay app_fd ⇄ up_fd under `id`. Both fds are dup'd (F_DUPFD_CLOEXEC);
  // the caller keeps (and closes) its own. `pre_up` is written to the
  // upstream and `pre_down` to the app before anything else: bytes the
  // owner read off the sockets before the hand-off. False with *err
  // (EBADF: not open; ENOTSOCK: not a socket; EPROTOTYPE: not a stream
  // socket; EEXIST: id in use; ESHUTDOWN: pool stopped) and a message.
  bool Add(uint64_t id, int app_fd, int up_fd, std::string pre_up, std::string pre_down, int* err, std::string* what);

  // Like Add, but the upstream is a new TCP socket connecting to `dst` (an
  // AF_INET or AF_INET6 address), with SO_MARK `mark` when it is not 0 and
  // TCP_NODELAY. The connect must finish within connect_ms or the pair ends
  // as kConnectFailed/ETIMEDOUT. False with *err as Add. The upstream
  // socket is made and connect(2) runs on the pair's worker thread (not the
  // caller's: on the accept path that thread is JavaScript's); their
  // failures (EMFILE, EPERM for a mark, ENETUNREACH, …) end the pair as
  // kConnectFailed.
  // own: app_fd is handed over, not dup'd (a socket the caller accepted
  // itself and will not touch again); on failure it is closed with RST.
  // local: when not null, socket(2) and connect(2) run here, on the caller's
  // thread (their immediate failures return false with *err), and
  // *local gets the address the kernel bound (getsockname; family AF_UNSPEC
  // when the connect failed at once). Global mode's loop guard needs each
  // dial's 4-tuple before the caller can see a captured copy of its SYN.
  // proxy: when not null, dst is a SOCKS5 or HTTP proxy and the worker runs
  // its CONNECT handshake (ProxyPlan) before relaying; connect_ms covers the
  // connect and the handshake; a failure ends the pair kConnectFailed with
  // RelayEndRecord::handshake set.
  bool Dial(uint64_t id, int app_fd, bool own, const struct sockaddr* dst, socklen_t dst_len, uint32_t mark,
            uint32_t connect_ms, std::string pre_up, int* err, std::string* what,
            struct sockaddr_storage* local = nullptr, std::unique_ptr<ProxyPlan> proxy = nullptr);

  // Ends pair `id` now: `reset` sends RST both ways, else a plain close
  // (FIN). It ends as kClosed. False when no such pair is live.
  bool Close(uint64_t id, bool reset);

  // Live byte counts of one pair; false when it is not live.
  bool Bytes(uint64_t id, uint64_t* up, uint64_t* down);

  RelayTotals Totals();

  // Ended pairs since the last call (oldest first).
  std::vector<RelayEndRecord> TakeEnded();

  // Closes every live pair (FIN, kClosed) and joins the threads. Idempotent.
  void Stop();

  // Worker-side hooks.
  void Ended(const RelayEndRecord& r);
  void Forget(uint64_t id);
  // A held-back on_end call (see the constructor): ms until it is due, or -1
  // when none is held; FlushEndSignal makes it once due.
  int EndSignalDueIn(int64_t now_ms);
  void FlushEndSignal(int64_t now_ms);

 private:
  // Checks app_fd, dups it and queues the pair (its fd[1] already set).
  bool Enqueue(std::unique_ptr<RelayPair> p, int app_fd, bool own, int* err, std::string* what);
  bool Admit(uint64_t id, int app_fd, bool own, int* err, std::string* what);
  bool DialPair(uint64_t id, int app_fd, bool own, const struct sockaddr* dst, socklen_t dst_len, uint32_t mark,
                uint32_t connect_ms, std::string pre_up, int* err, std::string* what, struct sockaddr_storage* local,
                std::unique_ptr<ProxyPlan> proxy);

  RelayOptions opts_;
  std::function<void()> on_end_;
  std::vector<std::unique_ptr<RelayWorker>> workers_;
  std::atomic<uint32_t> next_worker_{0};
  std::atomic<bool> stopped_{false};
  bool started_ = false;

  std::mutex map_mu_;
  std::unordered_map<uint64_t, RelayPair*> pairs_;

  std::mutex end_mu_;
  std::vector<RelayEndRecord> ended_;
  bool signalled_ = false;
  int64_t last_signal_ms_ = -(int64_t{1} << 40);
  // Ended records wait for a held-back on_end call (read without the lock by the workers' loops).
  std::atomic<bool> held_{false};

  std::atomic<uint64_t> ended_up_{0};
  std::atomic<uint64_t> ended_down_{0};

  friend class RelayWorker;
};

}  // namespace fp
