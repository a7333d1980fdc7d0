// Standalone benchmark of the packet engine (no napi, no TUN): issue 4
// "Performance" (a) in-process rewrite rate on one core and (c) native
// memory per flow for 1 M flows. Also a smoke test of the thread loop over a
// SOCK_SEQPACKET socketpair standing in for the TUN fd.
//
// Every figure it prints is verified first: the rewritten packets' addresses,
// ports, payload bytes and checksums are checked, and any check that fails
// (or an unexpected drop) is printed as a line starting with "FAIL" and makes
// the exit status 1, so `npm run bench -- engine` fails instead of printing it.
//
// Build + run: bench/engine_bench.sh   (g++ -O2, same flags as binding.gyp)
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "../native/checksum.h"
#include "../native/engine.h"

using namespace fp;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint32_t kNet = 0xc6120000;  // 198.18.0.0
constexpr uint32_t kGw = 0xc6120001;
constexpr int64_t kT0 = 1'700'000'000'000;
constexpr uint16_t kListen = 1313;  // --listen-port's default (src/options.ts)

// The engine has no defaults of its own: this is what NatManager passes for
// `fakeproxy start` without options (src/options.ts).
EngineConfig config(uint32_t maxFlows) {
  EngineConfig c;
  c.table.network = kNet;
  c.table.prefixLen = 16;
  c.table.gateway = kGw;
  c.table.maxFlows = maxFlows;
  c.table.timeouts = {60'000, 7'440'000, 240'000, 10'000, 60'000, 10'000};
  c.table.reuseDelayMs = 60'000;
  c.listenPort = kListen;
  c.dnsPort = 53;
  c.dnsHijack = true;
  c.table.maxQueuedEvents = 0;  // nobody drains events here
  return c;
}

// IPv4 + TCP (20 + 20 + payload), complete checksums.
std::vector<uint8_t> tcp_packet(uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport, uint8_t flags,
                                size_t payload) {
  std::vector<uint8_t> b(40 + payload, 0xab);
  Ipv4Packet ip = Ipv4Packet::new_unchecked(b.data(), b.size());
  ip.set_ver_ihl_tos(0);
  ip.set_total_len(uint16_t(b.size()));
  ip.set_ident(1);
  ip.set_flags_frag(ipv4::FLAG_DF);
  ip.set_ttl(64);
  ip.set_protocol(kProtoTcp);
  ip.set_src(src);
  ip.set_dst(dst);
  ip.set_checksum(0);
  ip.set_checksum(csum::ipv4_header(b.data(), 20));
  TcpPacket t = TcpPacket::new_unchecked(b.data() + 20, b.size() - 20);
  t.set_src_port(sport);
  t.set_dst_port(dport);
  t.set_seq(1000);
  t.set_ack(2000);
  t.set_data_off_flags(5, flags);
  t.set_window(65535);
  t.set_urgent(0);
  t.set_checksum(0);
  t.set_checksum(csum::l4_v4(t.data(), t.len(), src, dst, kProtoTcp));
  return b;
}

int failures = 0;

// Prints the first 20 failures (a broken rewrite fails every packet) and counts all.
void fail(const char* what, unsigned detail) {
  if (++failures <= 20) std::printf("FAIL %s (%u)\n", what, detail);
}

// A correct checksum sums (with itself included) to zero.
bool checksums_ok(uint8_t* b, size_t n) {
  Ipv4Packet ip;
  if (Ipv4Packet::parse(b, n, &ip) != ParseResult::Ok) return false;
  if (csum::ipv4_header(b, 20) != 0) return false;
  return csum::l4_v4(ip.payload(), ip.payload_len(), ip.src(), ip.dst(), ip.protocol()) == 0;
}

// Rewrites one copy of `pkt` and checks the result goes src:sport -> dst:dport
// with the payload unchanged and both checksums valid.
bool rewrites_to(Engine& e, const std::vector<uint8_t>& pkt, uint32_t src, uint16_t sport, uint32_t dst,
                 uint16_t dport) {
  std::vector<uint8_t> w(std::max<size_t>(pkt.size(), kMinBufCap));
  std::memcpy(w.data(), pkt.data(), pkt.size());
  size_t n = e.process(w.data(), pkt.size(), w.size(), kT0 + 1);
  Ipv4Packet ip;
  TcpPacket t;
  if (n != pkt.size() || Ipv4Packet::parse(w.data(), n, &ip) != ParseResult::Ok ||
      TcpPacket::parse(ip.payload(), ip.payload_len(), &t) != ParseResult::Ok)
    return false;
  return ip.src() == src && t.src_port() == sport && ip.dst() == dst && t.dst_port() == dport &&
         std::memcmp(w.data() + 40, pkt.data() + 40, pkt.size() - 40) == 0 && checksums_ok(w.data(), n);
}

long rss_bytes() {
  std::ifstream f("/proc/self/statm");
  long pages_total = 0, pages_rss = 0;
  f >> pages_total >> pages_rss;
  return pages_rss * sysconf(_SC_PAGESIZE);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// (a) Mpps of classify+rewrite, half forward / half reverse, over `flows`
// established flows, one lock per 64-packet batch like the thread loop.
// Each packet is first copied from its template into the working buffer, as
// the TUN read would; the copy alone is measured and reported too.
void bench_rewrite(uint32_t flows, size_t payload, int runs) {
  Engine e(config(flows + 16));
  // Templates in one contiguous pool (stride = packet length).
  const size_t plen = 40 + payload;
  std::vector<uint8_t> pool;
  pool.reserve(size_t(flows) * 2 * plen);
  std::vector<uint8_t> work(65536);
  for (uint32_t i = 0; i < flows; i++) {
    uint32_t src = 0x0a000000 | (i >> 8);  // 10.x.y.z apps
    uint16_t sport = uint16_t(10000 + (i & 255));
    uint32_t dst = kNet | (2 + (i % 60000));
    auto syn = tcp_packet(src, sport, dst, 443, tcp::SYN, 0);
    std::memcpy(work.data(), syn.data(), syn.size());
    size_t n = e.process(work.data(), syn.size(), work.size(), kT0);
    Ipv4Packet ip;
    Ipv4Packet::parse(work.data(), n, &ip);
    TcpPacket t;
    TcpPacket::parse(ip.payload(), ip.payload_len(), &t);
    uint32_t nat = ip.src();
    uint16_t natPort = t.src_port();
    auto fwd = tcp_packet(src, sport, dst, 443, tcp::ACK, payload);
    auto rev = tcp_packet(kGw, kListen, nat, natPort, tcp::ACK, payload);
    // Verified before it is timed (every flow of small tables, a sample of big ones).
    if (n == 0 || !checksums_ok(work.data(), n)) fail("SYN not rewritten with valid checksums, flow", i);
    if (flows <= 100'000 || i % 997 == 0) {
      if (!rewrites_to(e, fwd, nat, natPort, kGw, kListen)) fail("forward packet not rewritten correctly, flow", i);
      if (!rewrites_to(e, rev, dst, 443, src, sport)) fail("reverse packet not rewritten correctly, flow", i);
    }
    pool.insert(pool.end(), fwd.begin(), fwd.end());
    pool.insert(pool.end(), rev.begin(), rev.end());
  }
  // Shuffle-free but strided order so consecutive packets hit different flows.
  const size_t n = pool.size() / plen;
  const size_t total = std::max<size_t>(n * 4, 8'000'000);
  std::vector<double> mpps, copy_mpps;
  size_t sink = 0;
  for (int r = 0; r < runs; r++) {
    auto t0 = Clock::now();
    size_t i = 0;
    while (i < total) {
      std::lock_guard<std::mutex> g(e.mutex());
      for (size_t k = 0; k < 64; k++, i++) {
        const uint8_t* p = pool.data() + ((i * 7919) % n) * plen;
        std::memcpy(work.data(), p, plen);
        sink += e.process_locked(work.data(), plen, work.size(), kT0 + 1000);
      }
    }
    double s = std::chrono::duration<double>(Clock::now() - t0).count();
    mpps.push_back(double(total) / s / 1e6);
    t0 = Clock::now();
    for (i = 0; i < total; i++) {
      const uint8_t* p = pool.data() + ((i * 7919) % n) * plen;
      std::memcpy(work.data(), p, plen);
      sink += work[(i & 31)];
    }
    s = std::chrono::duration<double>(Clock::now() - t0).count();
    copy_mpps.push_back(double(total) / s / 1e6);
  }
  auto& c = e.counters();
  bool ok = c.forwarded.load() + c.reversed.load() >= uint64_t(total) * runs && c.dropTcpNoFlow.load() == 0;
  std::printf("(a) rewrite %7u flows, %4zu B payload: median %6.2f Mpps (runs:", flows, payload, median(mpps));
  for (double m : mpps) std::printf(" %.2f", m);
  std::printf(")  [memcpy alone %.1f Mpps]%s\n", median(copy_mpps), ok ? "" : "  !! unexpected drops");
  if (!ok) fail("unexpected drops in the rewrite loop, flows", flows);
  if (sink == 42) std::printf(" ");
}

// (c) native memory per flow for `flows` flows (SYNs through the packet path).
void bench_memory(uint32_t flows) {
  long before = rss_bytes();
  auto e = std::make_unique<Engine>(config(flows));
  std::vector<uint8_t> syn = tcp_packet(0x0a000001, 1, kNet | 2, 443, tcp::SYN, 0);
  std::vector<uint8_t> work(2048);
  auto t0 = Clock::now();
  for (uint32_t i = 0; i < flows; i++) {
    std::memcpy(work.data(), syn.data(), syn.size());
    Ipv4Packet ip = Ipv4Packet::new_unchecked(work.data(), syn.size());
    // Vary source address and port (checksums are irrelevant for creation).
    ip.set_src(0x0a000000 | (i >> 6));
    store_be16(work.data() + 20, uint16_t(1024 + (i & 63)));
    if (e->process(work.data(), syn.size(), work.size(), kT0) == 0) {
      std::printf("(c) flow %u was not created\n", i);
      fail("flow not created", i);
      return;
    }
  }
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  long after = rss_bytes();
  size_t est;
  {
    std::lock_guard<std::mutex> g(e->mutex());
    est = e->table().memory_bytes();
  }
  std::printf("(c) memory for %u flows: RSS +%.1f MB = %.0f B/flow (engine estimate %.0f B/flow; sizeof(Flow) %zu); "
              "created at %.2f M flows/s\n",
              flows, (after - before) / 1e6, double(after - before) / flows, double(est) / flows, sizeof(Flow),
              flows / secs / 1e6);
}

// Thread loop over a socketpair: send packets in, read the rewritten ones back.
void smoke_thread_loop() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) != 0) {
    std::perror("socketpair");
    fail("socketpair", 0);
    return;
  }
  fcntl(sv[0], F_SETFL, O_NONBLOCK);
  int wake[2];
  if (pipe(wake) != 0) {
    fail("pipe", 0);
    return;
  }
  EngineConfig cfg = config(1 << 16);
  cfg.table.maxQueuedEvents = 1 << 20;
  Engine e(cfg);
  std::atomic<bool> stop{false}, armed{true};
  std::atomic<int> notified{0};
  std::thread th([&] { e.run(sv[0], wake[0], stop, armed, [&] { notified++; }); });
  const int n = 20000;
  int got = 0, good = 0;
  uint8_t buf[2048];
  auto t0 = Clock::now();
  for (int i = 0; i < n; i++) {
    auto syn = tcp_packet(0x0a000001, uint16_t(1024 + i % 60000), kNet | 2, 80, tcp::SYN, 0);
    if (write(sv[1], syn.data(), syn.size()) < 0) break;
    ssize_t k = read(sv[1], buf, sizeof buf);
    if (k > 0) {
      got++;
      Ipv4Packet ip;
      TcpPacket t;
      if (Ipv4Packet::parse(buf, size_t(k), &ip) == ParseResult::Ok &&
          TcpPacket::parse(ip.payload(), ip.payload_len(), &t) == ParseResult::Ok && ip.dst() == kGw &&
          t.dst_port() == kListen && checksums_ok(buf, size_t(k)))
        good++;
    }
  }
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  stop = true;
  char one = 1;
  if (write(wake[1], &one, 1) < 0) std::perror("write");
  th.join();
  std::printf("thread loop (socketpair, 1 packet in flight): %d/%d rewritten correctly, %.0f k round trips/s, "
              "events signalled %d time(s)\n",
              good, n, n / s / 1e3, notified.load());
  if (good != n) fail("thread loop: packets not rewritten correctly, of 20000", unsigned(n - good));
  close(sv[0]);
  close(sv[1]);
  close(wake[0]);
  close(wake[1]);
}

}  // namespace

int main(int argc, char** argv) {
  int runs = argc > 1 ? std::atoi(argv[1]) : 5;
  std::printf("engine bench (one core, g++ -O2); sizeof(Flow)=%zu sizeof(FlowEvent)=%zu\n", sizeof(Flow),
              sizeof(FlowEvent));
  // Memory first, while the heap is fresh (RSS growth is what we measure).
  bench_memory(1u << 20);
  bench_rewrite(1024, 0, runs);
  bench_rewrite(1024, 1400, runs);
  bench_rewrite(100'000, 0, runs);
  bench_rewrite(1'000'000, 0, 3);
  smoke_thread_loop();
  if (failures > 20) std::printf("FAIL %d checks failed in all\n", failures);
  return failures ? 1 : 0;
}
