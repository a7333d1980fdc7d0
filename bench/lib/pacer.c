/*
 * fpbench-pacer: an open-loop connection client for the tcp-connect bench.
 * Built by bench/lib/tools.ts with `cc -O2` into the run's temp dir; runs only
 * inside a bench namespace.
 *
 * Why not ab: ab is closed-loop (c clients, each starts its next request when
 * the previous one ends), so its latency is c / rate by Little's law: a path
 * with a lower connection rate shows a higher p99 even if no connection waits
 * anywhere. This client starts connection i at start + i/rate whatever happened
 * to the others (open loop), so both paths get the same offered load and the
 * latency difference is what the path adds. Latency runs from the scheduled
 * start (not the actual one), so a client that falls behind counts against the
 * path instead of hiding it.
 *
 *   fpbench-pacer <host> <port> <path> <rate/s> <seconds> <timeout-ms>
 *
 * Each connection: connect, "GET <path> HTTP/1.0", read to EOF, check status
 * 200 and a body of exactly Content-Length bytes. Prints one line:
 *   sent=N ok=N failed=N late=N p50=ms p90=ms p99=ms p999=ms max=ms cp50=ms cp99=ms
 * (cp = connect(2) done, from the scheduled start: through the TUN that part never
 * reaches the daemon's JavaScript, so it separates the packet path from the accept path)
 * and the first error of each kind on stderr. Exit 0 when it ran (failures are
 * counted, the caller decides), 2 on bad usage or setup.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define BUF 2048
#define TIMER_TAG UINT32_MAX

struct conn {
  int fd;
  int state; /* 0 not started, 1 connecting, 2 reading, 3 done */
  int len;
  char *buf;
};

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static long errs[6];
static const char *err_names[] = {"socket", "connect", "write", "read", "response", "timeout"};
static void fail(int kind, const char *detail) {
  if (errs[kind]++ == 0) fprintf(stderr, "pacer: first %s error: %s\n", err_names[kind], detail);
}

/* 1 when buf holds "HTTP/1.x 200", a Content-Length and exactly that many body bytes. */
static int response_ok(const char *buf, int len) {
  if (len < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || memcmp(buf + 8, " 200", 4) != 0) return 0;
  const char *end = memmem(buf, (size_t)len, "\r\n\r\n", 4);
  if (!end) return 0;
  const char *cl = memmem(buf, (size_t)(end - buf), "Content-Length:", 15);
  if (!cl) return 0;
  long want = strtol(cl + 15, NULL, 10);
  return want >= 0 && (long)(len - (end + 4 - buf)) == want;
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: fpbench-pacer <host> <port> <path> <rate/s> <seconds> <timeout-ms>\n");
    return 2;
  }
  const char *host = argv[1], *port = argv[2], *path = argv[3];
  double rate = atof(argv[4]), secs = atof(argv[5]);
  long timeout_ms = atol(argv[6]);
  long total = (long)(rate * secs);
  if (!(rate > 0) || !(secs > 0) || total < 1 || total > 1000000 || timeout_ms < 1) {
    fprintf(stderr, "pacer: rate × seconds must be 1..1000000 and timeout-ms ≥ 1\n");
    return 2;
  }
  struct addrinfo hints = {0}, *ai;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  int g = getaddrinfo(host, port, &hints, &ai);
  if (g != 0) {
    fprintf(stderr, "pacer: resolve %s: %s\n", host, gai_strerror(g));
    return 2;
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  char req[512];
  int req_len = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);

  struct conn *c = calloc((size_t)total, sizeof *c);
  uint64_t *sched = calloc((size_t)total, sizeof *sched);
  uint64_t *lat = calloc((size_t)total, sizeof *lat);
  uint64_t *clat = calloc((size_t)total, sizeof *clat);
  long nconn = 0;
  int ep = epoll_create1(EPOLL_CLOEXEC);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (!c || !sched || !lat || !clat || ep < 0 || tfd < 0) {
    perror("pacer: setup");
    return 2;
  }
  struct epoll_event tev = {.events = EPOLLIN, .data.u32 = TIMER_TAG};
  epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);

  uint64_t start = now_ns() + 1000000; /* 1 ms from now */
  for (long i = 0; i < total; i++) sched[i] = start + (uint64_t)((double)i * 1e9 / rate);
  uint64_t timeout_ns = (uint64_t)timeout_ms * 1000000ull;
  long next = 0, done = 0, ok = 0, late = 0, oldest = 0;
  struct epoll_event evs[256];

  while (done < total) {
    uint64_t now = now_ns();
    /* Start every connection whose time has come. */
    while (next < total && sched[next] <= now) {
      long i = next++;
      /* More than 1 ms behind schedule at start: the client itself is the bottleneck. */
      if (now - sched[i] > 1000000) late++;
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        fail(0, strerror(errno));
        c[i].state = 3;
        done++;
        continue;
      }
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      c[i].fd = fd;
      c[i].state = 1;
      if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
        fail(1, strerror(errno));
        close(fd);
        c[i].state = 3;
        done++;
        continue;
      }
      struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
      epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    /* Time out the oldest unfinished connections. */
    while (oldest < next && (c[oldest].state == 3 || now - sched[oldest] > timeout_ns)) {
      if (c[oldest].state != 3) {
        fail(5, "no complete response in time");
        close(c[oldest].fd);
        free(c[oldest].buf);
        c[oldest].state = 3;
        done++;
      }
      oldest++;
    }
    if (done >= total) break;
    /* Sleep until the next start (timerfd, absolute) or a socket event. */
    if (next < total) {
      struct itimerspec its = {0};
      its.it_value.tv_sec = (time_t)(sched[next] / 1000000000ull);
      its.it_value.tv_nsec = (long)(sched[next] % 1000000000ull);
      timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
    }
    int n = epoll_wait(ep, evs, 256, next < total ? -1 : 10);
    if (n < 0 && errno != EINTR) {
      perror("pacer: epoll_wait");
      return 2;
    }
    for (int k = 0; k < n; k++) {
      uint32_t i = evs[k].data.u32;
      if (i == TIMER_TAG) {
        uint64_t x;
        (void)!read(tfd, &x, sizeof x);
        continue;
      }
      struct conn *s = &c[i];
      if (s->state == 1) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0) {
          fail(1, strerror(err));
          goto finish;
        }
        clat[nconn++] = now_ns() - sched[i];
        if (write(s->fd, req, (size_t)req_len) != req_len) {
          fail(2, strerror(errno));
          goto finish;
        }
        s->state = 2;
        s->buf = malloc(BUF);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
        continue;
      }
      if (s->state != 2) continue;
      for (;;) {
        ssize_t r = read(s->fd, s->buf + s->len, (size_t)(BUF - s->len));
        if (r > 0) {
          s->len += (int)r;
          if (s->len == BUF) {
            fail(4, "response larger than the buffer");
            goto finish;
          }
          continue;
        }
        if (r < 0 && errno == EAGAIN) break;
        if (r < 0) {
          fail(3, strerror(errno));
          goto finish;
        }
        /* EOF: the whole response is in. */
        if (response_ok(s->buf, s->len)) {
          lat[ok++] = now_ns() - sched[i];
        } else {
          fail(4, "not HTTP 200 with a complete Content-Length body");
        }
        goto finish;
      }
      continue;
    finish:
      close(s->fd);
      free(s->buf);
      s->buf = NULL;
      s->state = 3;
      done++;
    }
  }
  qsort(lat, (size_t)ok, sizeof *lat, cmp_u64);
  qsort(clat, (size_t)nconn, sizeof *clat, cmp_u64);
#define PCT(p) (ok ? (double)lat[(long)((double)(ok - 1) * (p))] / 1e6 : -1.0)
#define CPCT(p) (nconn ? (double)clat[(long)((double)(nconn - 1) * (p))] / 1e6 : -1.0)
  long failed = 0;
  for (int k = 0; k < 6; k++) failed += errs[k];
  printf("sent=%ld ok=%ld failed=%ld late=%ld p50=%.3f p90=%.3f p99=%.3f p999=%.3f max=%.3f cp50=%.3f cp99=%.3f\n",
         total, ok, failed, late, PCT(0.5), PCT(0.9), PCT(0.99), PCT(0.999), PCT(1.0), CPCT(0.5), CPCT(0.99));
  return 0;
}
