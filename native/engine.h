// The packet engine: classify and rewrite one IPv4 packet in place, and the
// thread loop that reads batches from a TUN fd, rewrites them and writes them
// back. Free of napi.h/uv.h so it can be unit-tested and benchmarked alone.
//
// Direction (DESIGN.md "The data path"):
//   reverse  = src == gateway && sport == listenPort (or dnsPort when dnsHijack):
//              a Listener/DNS reply, looked up by (proto, dst, dport) = NAT pair;
//   forward  = everything else: looked up or created by the original 5-tuple.
//
// Policy choices (documented here, tested in test/unit/native):
// - A TCP segment without a flow that is not a bare SYN is answered with a
//   RST (RFC 9293 3.10.7.1: a segment for a connection that does not exist
//   gets a reset), so an app whose flow expired fails fast instead of hanging;
//   a RST without a flow is dropped (dropTcpNoFlow).
// - A bare SYN on a flow in state 'closed' (the app reuses its 4-tuple)
//   replaces the old flow with a fresh NAT pair.
// - UDP replies from a remote the app never sent to: the Listener asks for a
//   flow with ensureFlow(); the engine itself never invents one from the
//   reverse side (dropReverseNoFlow).
// - Who may use it (DESIGN.md "Who may use it"): with the source filter on,
//   a packet entering the TUN in the forward direction is served only when
//   its source is "this machine" or an admitted LAN network. "This machine"
//   is the gateway (the kernel's source for the fake range on this host) and
//   the host's own addresses, which the caller keeps current
//   (set_sources()). The rule is sound because Linux drops, as martians,
//   packets arriving from outside whose source is a local address: a packet
//   that enters the TUN with a local source was sent by this machine. Other
//   sources are dropped (dropForeignSource).
// - The fake range is never a source in the forward direction: only the
//   engine writes NAT addresses, and only towards the gateway. A forward
//   packet claiming one (a LAN host spoofing a NAT address) is dropped
//   (dropNatSource), filter on or off.
// - IP header checksums are not verified (the kernel wrote these packets and
//   verifies what we write back); they are kept correct incrementally.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "flow_table.h"

namespace fp {

// Sources the engine serves when `on`; the gateway always. Networks as
// (address, mask) in host order; a host address is a /32.
struct SourceFilter {
  bool on = false;  // off: every source is served (a bare Engine in tests)
  std::vector<std::pair<uint32_t, uint32_t>> nets;
  bool allows(uint32_t a) const {
    if (!on) return true;
    for (const auto& n : nets)
      if ((a & n.second) == n.first) return true;
    return false;
  }
};

struct EngineConfig {
  TableConfig table;
  SourceFilter sources;
  uint16_t listenPort = 0;  // no default: the caller passes --listen-port (src/options.ts)
  uint16_t dnsPort = 0;
  bool dnsHijack = true;
};

std::string validate_engine_config(const EngineConfig& c);

// Buffers handed to process() must have room for the largest packet the
// engine may build in place: an ICMP error quoting up to 576 - 28 bytes.
constexpr size_t kMinBufCap = 1024;
// RFC 1812 4.3.2.3: an ICMP error carries as much of the original datagram as
// fits in 576 bytes.
constexpr size_t kIcmpErrorMax = 576;
// A RST the engine builds: IPv4 + TCP headers, no options.
constexpr size_t kRstLen = 40;

class Engine {
 public:
  explicit Engine(const EngineConfig& cfg);
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Classify and rewrite the packet in buf[0..len) in place (buf has room for
  // `cap` bytes, cap >= kMinBufCap or the packet length). Returns the length
  // of the packet to write back to the TUN (the rewritten packet, or a RST /
  // ICMP reply built in its place), or 0 to drop it. Caller holds mutex().
  size_t process_locked(uint8_t* buf, size_t len, size_t cap, int64_t now);
  size_t process(uint8_t* buf, size_t len, size_t cap, int64_t now) {
    std::lock_guard<std::mutex> g(mu_);
    return process_locked(buf, len, cap, now);
  }
  // The same for a TUN opened with IFF_VNET_HDR: buf starts with the 10-byte
  // virtio_net_hdr (packet.h VnetHdr), and so does the result (length
  // includes it). TCP/UDP rewrites keep the GSO metadata and a partial
  // checksum (NEEDS_CSUM) partial; packets the engine builds get a zeroed
  // header. Caller holds mutex().
  size_t process_vnet_locked(uint8_t* buf, size_t len, size_t cap, int64_t now);
  size_t process_vnet(uint8_t* buf, size_t len, size_t cap, int64_t now) {
    std::lock_guard<std::mutex> g(mu_);
    return process_vnet_locked(buf, len, cap, now);
  }
  // Expire idle flows. For each TCP flow that timed out while open, a RST
  // towards the app (from its original destination, with the sequence number
  // the app expects next) is appended to `rsts` when given: kRstLen bytes
  // each, preceded by a zeroed virtio_net_hdr when `vnet_hdr`. The app
  // blocked in read learns at once that its connection is gone (the
  // Listener's side is reset by the daemon on the close event).
  void expire(int64_t now, std::vector<uint8_t>* rsts = nullptr, bool vnet_hdr = false) {
    std::lock_guard<std::mutex> g(mu_);
    expire_locked(now, rsts, vnet_hdr);
  }
  void expire_locked(int64_t now, std::vector<uint8_t>* rsts, bool vnet_hdr);
  // Listener side: find or create the flow (src:sport -> dst:dport). Returns
  // a snapshot; ok=false when the table is full or the NAT space exhausted.
  bool ensure_flow(uint8_t proto, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport, int64_t now, Flow* out,
                   FlowTable::Create* why);
  std::vector<FlowEvent> drain_events();
  // Replace the source filter (the host's addresses changed, or --lan).
  void set_sources(SourceFilter f) {
    std::lock_guard<std::mutex> g(mu_);
    cfg_.sources = std::move(f);
  }

  std::mutex& mutex() { return mu_; }
  FlowTable& table() { return table_; }  // hold mutex()
  Counters& counters() { return c_; }
  const EngineConfig& config() const { return cfg_; }

  // Thread body: wait on fd (non-blocking) and wake_fd (an eventfd; readable =
  // stop requested), read up to `batch` packets until EAGAIN (through
  // io_uring where the kernel can, read_ring.h; else poll + read), rewrite them
  // under one lock, write them back, expire every ~250 ms. `notify` is called
  // (from this thread) when events are pending, at most every ~20 ms or per
  // 1024 events, and only while `notify_armed` is true (the consumer re-arms
  // it after draining). `vnet_hdr`: the fd was opened with IFF_VNET_HDR (every
  // read and write starts with a virtio_net_hdr); then a flow's run of
  // equal-sized UDP datagrams with partial checksums in one batch is written
  // as one UDP GSO packet (udpGsoWrites/udpGsoSegments; after the kernel
  // refuses one with EINVAL, udpGsoRefused, one write each). Returns 0 on
  // stop, or the errno that ended the loop.
  int run(int fd, int wake_fd, const std::atomic<bool>& stop, std::atomic<bool>& notify_armed,
          const std::function<void()>& notify, size_t batch = 64, bool vnet_hdr = false);

  // Milliseconds since the Unix epoch that never step backwards (monotonic
  // clock anchored to the wall clock when the engine was made).
  int64_t now_ms() const;

 private:
  // Write the batch's packets back to the TUN (outs[i] bytes of buffer i,
  // 0 = dropped), forward UDP runs of one flow as UDP GSO writes (engine.cc).
  void write_batch(int fd, uint8_t* const* bufs, const size_t* outs, size_t n, bool vnet_hdr);
  void write_one(int fd, const uint8_t* b, size_t len);
  size_t drop(std::atomic<uint64_t>& counter) {
    bump(counter);
    return 0;
  }
  size_t l4(Ipv4Packet& ip, size_t cap, int64_t now);
  size_t icmp(Ipv4Packet& ip, int64_t now);
  size_t icmp_error(Ipv4Packet& ip, IcmpPacket& ic);
  size_t build_rst(Ipv4Packet& ip, const TcpPacket& tcp);
  static void note_app_nxt(Flow* f, uint32_t nxt);
  size_t build_port_unreach(Ipv4Packet& ip, size_t cap);
  void track_tcp(Flow* f, const TcpPacket& seg, bool out, int64_t now);
  bool in_range(uint32_t a) const { return (a & mask_) == network_; }
  bool bad_dst(uint32_t a) const;
  // 0 when `src` may use the engine, else the drop counter to bump.
  std::atomic<uint64_t>* refuse_source(uint32_t src) {
    if (in_range(src) && src != gateway_) return &c_.dropNatSource;
    if (src != gateway_ && !cfg_.sources.allows(src)) return &c_.dropForeignSource;
    return nullptr;
  }
  uint16_t target_port(const Flow& f) const { return f.target == Target::Dns ? cfg_.dnsPort : cfg_.listenPort; }
  bool is_reverse_port(uint16_t sport) const {
    return sport == cfg_.listenPort || (cfg_.dnsHijack && sport == cfg_.dnsPort);
  }

  EngineConfig cfg_;
  uint32_t network_, mask_, broadcast_, gateway_;
  Counters c_;
  std::mutex mu_;
  FlowTable table_;
  int64_t clock_offset_;
  int64_t last_expire_ = 0;
  std::vector<Flow> timedOut_;  // scratch for expire_locked (under mu_)
  // Per-packet context of process_vnet_locked (under mu_): the transport
  // checksum is a partial pseudo-header sum; the packet was rewritten in place
  // (not built or answered by the engine).
  bool partial_ = false;
  bool rewritten_ = false;
  // Thread side: UDP GSO writes to the TUN until the kernel refuses one.
  bool udp_gso_ = true;
};

}  // namespace fp
