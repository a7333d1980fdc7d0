/*
 * fpbench-origin: the benchmark's origin HTTP server. Built by bench/lib/origin.ts
 * with `cc -O2 -pthread` into the run's temp dir; runs only inside a bench namespace.
 *
 * Why not python -m http.server or a Node server: both copy every byte through
 * user space and cap well below loopback speed on a 2-core VM, so the baseline
 * would measure the origin, not the path. This one uses sendfile(2).
 *
 *   fpbench-origin <bind-ip> <port> <big-file>
 *   GET /big   -> the file (sendfile), Content-Length set
 *   GET /small -> 128 bytes
 * One thread per connection; every response is `Connection: close`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *big_path;
static off_t big_size;
static char small_body[128];

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static void *serve(void *arg) {
  int fd = (int)(long)arg;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char req[8192];
  size_t got = 0;
  for (;;) {
    ssize_t r = read(fd, req + got, sizeof(req) - 1 - got);
    if (r <= 0) goto out;
    got += (size_t)r;
    req[got] = 0;
    if (strstr(req, "\r\n\r\n") || got == sizeof(req) - 1) break;
  }
  char hdr[256];
  if (strncmp(req, "GET /big", 8) == 0) {
    int f = open(big_path, O_RDONLY);
    if (f < 0) goto out;
    int n = snprintf(hdr, sizeof hdr,
                     "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %lld\r\nConnection: close\r\n\r\n",
                     (long long)big_size);
    if (write_all(fd, hdr, (size_t)n) == 0) {
      off_t off = 0;
      while (off < big_size) {
        ssize_t s = sendfile(fd, f, &off, (size_t)(big_size - off) > (1u << 30) ? (1u << 30) : (size_t)(big_size - off));
        if (s < 0 && errno == EINTR) continue;
        if (s <= 0) break;
      }
    }
    close(f);
  } else if (strncmp(req, "GET /small", 10) == 0) {
    /* Header and body in one write: two small writes would meet Nagle + delayed ACK. */
    char resp[512];
    int n = snprintf(resp, sizeof resp, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                     sizeof small_body);
    memcpy(resp + n, small_body, sizeof small_body);
    write_all(fd, resp, (size_t)n + sizeof small_body);
  } else {
    static const char nf[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    write_all(fd, nf, sizeof nf - 1);
  }
  /* Half-close, then drain until the client closes: closing with unread bytes would send RST. */
  shutdown(fd, SHUT_WR);
  {
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char sink[4096];
    while (read(fd, sink, sizeof sink) > 0) {
    }
  }
out:
  close(fd);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s <bind-ip> <port> <big-file>\n", argv[0]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  big_path = argv[3];
  struct stat st;
  if (stat(big_path, &st) != 0) {
    perror("stat big file");
    return 1;
  }
  big_size = st.st_size;
  for (size_t i = 0; i < sizeof small_body; i++) small_body[i] = (char)('a' + i % 26);
  small_body[sizeof small_body - 1] = '\n';

  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)atoi(argv[2]));
  if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) {
    fprintf(stderr, "bad address %s\n", argv[1]);
    return 2;
  }
  if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 4096) != 0) {
    perror("bind/listen");
    return 1;
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  fprintf(stderr, "listening %s:%s\n", argv[1], argv[2]);
  for (;;) {
    int c = accept(ls, NULL, NULL);
    if (c < 0) {
      if (errno == EMFILE || errno == ENFILE) usleep(1000); /* fds exhausted: back off, do not spin */
      if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE) continue;
      perror("accept");
      return 1;
    }
    pthread_t t;
    if (pthread_create(&t, &attr, serve, (void *)(long)c) != 0) close(c);
  }
}
