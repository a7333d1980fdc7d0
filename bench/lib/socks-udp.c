/*
 * fpbench-socks-udp: UDP straight through a SOCKS5 relay (RFC 1928 UDP ASSOCIATE),
 * no fakeproxy: the "straight to dante" row of the udp scenario, to show
 * whether dante itself is what bounds TUN → fakeproxy → dante. Built by
 * bench/lib/tools.ts with `cc -O2`; runs only inside a bench namespace.
 *
 *   fpbench-socks-udp sink <bind-ip> <port> <idle-ms>
 *     counts datagrams until none came for idle-ms after the first; prints
 *     {"received":N,"bytes":B}
 *   fpbench-socks-udp send <proxy-ip> <proxy-port> <dst> <dst-port> <bits/s> <len> <secs>
 *     UDP ASSOCIATE (no auth), then <len>-byte payloads to dst through the relay
 *     (dst an IPv4 literal: ATYP 1; else a name: ATYP 3, which the relay resolves,
 *     the form fakeproxy sends for a fake IP's name),
 *     paced to <bits/s> of payload in 1 ms slices (like iperf3 -b), sendmmsg per
 *     slice; prints {"sent":N,"seconds":S,"sendErrors":E}
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
  fprintf(stderr, "fpbench-socks-udp: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void addr(struct sockaddr_in *a, const char *ip, int port) {
  memset(a, 0, sizeof *a);
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, ip, &a->sin_addr) != 1) {
    fprintf(stderr, "fpbench-socks-udp: not an IPv4 address: %s\n", ip);
    exit(2);
  }
}

static void read_full(int fd, unsigned char *b, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, b + got, n - got);
    if (r <= 0) {
      if (r == 0) errno = ECONNRESET;
      die("read from the proxy");
    }
    got += (size_t)r;
  }
}

static int sink(const char *ip, int port, int idle_ms) {
  struct sockaddr_in a;
  addr(&a, ip, port);
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) die("socket");
  int buf = 8 << 20;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf) != 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
  printf("ready\n");
  fflush(stdout);
  static unsigned char slab[BATCH][2048];
  struct mmsghdr m[BATCH];
  struct iovec io[BATCH];
  unsigned long long n = 0, bytes = 0;
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    int r = poll(&p, 1, n == 0 ? -1 : idle_ms);
    if (r == 0) break;
    if (r < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    for (int i = 0; i < BATCH; i++) {
      io[i].iov_base = slab[i];
      io[i].iov_len = sizeof slab[i];
      memset(&m[i].msg_hdr, 0, sizeof m[i].msg_hdr);
      m[i].msg_hdr.msg_iov = &io[i];
      m[i].msg_hdr.msg_iovlen = 1;
    }
    int k = recvmmsg(fd, m, BATCH, MSG_DONTWAIT, NULL);
    for (int i = 0; i < k; i++) bytes += m[i].msg_len;
    if (k > 0) n += (unsigned long long)k;
  }
  printf("{\"received\":%llu,\"bytes\":%llu}\n", n, bytes);
  return 0;
}

static int send_through(const char *pip, int pport, const char *dip, int dport, double bps, int len, double secs) {
  if (len < 1 || len > 1400 || bps <= 0 || secs <= 0) {
    fprintf(stderr, "fpbench-socks-udp: need 1 <= len <= 1400, bits/s > 0, secs > 0\n");
    return 2;
  }
  struct sockaddr_in proxy;
  addr(&proxy, pip, pport);
  // RFC 1928 §7 header: RSV RSV FRAG ATYP DST.ADDR DST.PORT, then the payload.
  static unsigned char dgram[4 + 1 + 255 + 2 + 1400];
  size_t hdr = 4;
  struct in_addr ip4;
  memcpy(dgram, "\x00\x00\x00\x01", 4);
  if (inet_pton(AF_INET, dip, &ip4) == 1) {
    memcpy(dgram + hdr, &ip4, 4);
    hdr += 4;
  } else {
    size_t n = strlen(dip);
    if (n == 0 || n > 255) {
      fprintf(stderr, "fpbench-socks-udp: destination name must be 1..255 bytes\n");
      return 2;
    }
    dgram[3] = 3;
    dgram[hdr++] = (unsigned char)n;
    memcpy(dgram + hdr, dip, n);
    hdr += n;
  }
  dgram[hdr++] = (unsigned char)(dport >> 8);
  dgram[hdr++] = (unsigned char)dport;
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (c < 0) die("socket");
  if (connect(c, (struct sockaddr *)&proxy, sizeof proxy) != 0) die("connect to the proxy");
  unsigned char b[262];
  // Greeting: version 5, one method, "no authentication".
  if (write(c, "\x05\x01\x00", 3) != 3) die("write greeting");
  read_full(c, b, 2);
  if (b[0] != 5 || b[1] != 0) {
    fprintf(stderr, "fpbench-socks-udp: the proxy refused no-auth (%u %u)\n", b[0], b[1]);
    return 1;
  }
  // UDP ASSOCIATE from 0.0.0.0:0 (the client's address is not known in advance).
  if (write(c, "\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00", 10) != 10) die("write request");
  read_full(c, b, 4);
  if (b[1] != 0 || b[3] != 1) {
    fprintf(stderr, "fpbench-socks-udp: UDP ASSOCIATE refused (REP %u, ATYP %u)\n", b[1], b[3]);
    return 1;
  }
  read_full(c, b + 4, 6);
  struct sockaddr_in relay;
  memset(&relay, 0, sizeof relay);
  relay.sin_family = AF_INET;
  memcpy(&relay.sin_addr, b + 4, 4);
  memcpy(&relay.sin_port, b + 8, 2);
  // A relay that answers 0.0.0.0 means "the address you reached me on".
  if (relay.sin_addr.s_addr == 0) relay.sin_addr = proxy.sin_addr;
  int u = socket(AF_INET, SOCK_DGRAM, 0);
  if (u < 0) die("socket");
  int buf = 4 << 20;
  if (setsockopt(u, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf) != 0)
    setsockopt(u, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
  memset(dgram + hdr, 0x5a, (size_t)len);
  struct mmsghdr m[BATCH];
  struct iovec io = {dgram, hdr + (size_t)len};
  for (int i = 0; i < BATCH; i++) {
    memset(&m[i].msg_hdr, 0, sizeof m[i].msg_hdr);
    m[i].msg_hdr.msg_name = &relay;
    m[i].msg_hdr.msg_namelen = sizeof relay;
    m[i].msg_hdr.msg_iov = &io;
    m[i].msg_hdr.msg_iovlen = 1;
  }
  const double per_s = bps / (8.0 * len);
  unsigned long long sent = 0, errs = 0;
  const double t0 = now_s();
  double t = t0;
  while (t - t0 < secs) {
    // Datagrams due by now (1 ms slices), at most BATCH per call.
    unsigned long long due = (unsigned long long)((t - t0) * per_s) + 1;
    while (sent + errs < due) {
      unsigned want = (unsigned)(due - sent - errs > BATCH ? BATCH : due - sent - errs);
      int k = sendmmsg(u, m, want, 0);
      if (k > 0) {
        sent += (unsigned long long)k;
      } else if (errno != EINTR) {
        errs++;
      }
    }
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
    t = now_s();
  }
  printf("{\"sent\":%llu,\"seconds\":%.4f,\"sendErrors\":%llu}\n", sent, now_s() - t0, errs);
  close(u);
  close(c);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 5 && strcmp(argv[1], "sink") == 0) return sink(argv[2], atoi(argv[3]), atoi(argv[4]));
  if (argc == 9 && strcmp(argv[1], "send") == 0)
    return send_through(argv[2], atoi(argv[3]), argv[4], atoi(argv[5]), atof(argv[6]), atoi(argv[7]), atof(argv[8]));
  fprintf(stderr,
          "usage: fpbench-socks-udp sink <bind-ip> <port> <idle-ms>\n"
          "       fpbench-socks-udp send <proxy-ip> <proxy-port> <dst-ip|name> <dst-port> <bits/s> <len> <secs>\n");
  return 2;
}
