// Native UDP relay (issue 12): the UDP Listener's socket and the upstream
// socket of every association live here, on one epoll thread, so datagrams
// move in batches (recvmmsg → sendmmsg) without entering JavaScript. Free of
// napi.h/uv.h (glue: udp_relay_addon.cc).
//
// JavaScript keeps every per-flow decision (src/proxy/udp/): NAT lookup,
// route, name resolution, SOCKS5 control connection. It sees
// - a "miss": a datagram from a NAT address that has no binding yet (the
//   first datagram of a flow, or one whose binding went with its flow);
// - an "unknown remote": a reply on an association from a remote that maps
//   to no NAT address (full cone, or a SOCKS5 relay reporting an IP for a
//   name we sent);
// - an "ended" association (idle timeout, socket error, closed by JS) with
//   its counts;
// all in batches (one notification while JS has not drained).
//
// The Listener binds the gateway (IPv4), so NAT addresses are IPv4. A direct
// association's upstream socket is dual-stack (AF_INET6, IPV6_V6ONLY off;
// AF_INET where the host has no IPv6), so a name with only IPv6 addresses is
// reached natively; SOCKS5 associations are IPv4 (the relay's address).
//
// Remote keys are SOCKS5 addresses (RFC 1928 §5: ATYP, address, port big
// endian) for both kinds: direct replies are keyed as ATYP 1 (IPv4, also
// IPv4-mapped) or ATYP 4 (IPv6) of their source, SOCKS5 replies by the
// address in their header.
#pragma once

#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace fp {

enum class UdpAssocKind : uint8_t { kDirect = 0, kSocks5 = 1 };

// Why an association ended (same order as NATIVE_UDP_ENDS in src/native.ts).
enum class UdpEnd : uint8_t { kIdle = 0, kClosed = 1, kUpstreamClosed = 2 };

// Drop reasons counted natively (same order as NATIVE_UDP_DROPS in src/native.ts).
enum UdpDrop : int {
  kDropOversized = 0,   // payload (plus SOCKS5 header) over max_payload
  kDropSendError,       // the kernel refused a send to the upstream or the app
  kDropTruncated,       // SOCKS5 reply shorter than its header
  kDropFragment,        // SOCKS5 reply with FRAG != 0
  kDropBadAtyp,         // SOCKS5 reply with an unknown ATYP
  kDropForeignSource,   // on a SOCKS5 association, from anyone but the relay
  kDropQueueFull,       // the queue towards JS (misses, unknown remotes) was full
  kDropKernel,          // the listener's receive buffer overflowed (SO_RXQ_OVFL)
  kDropForeignIngress,  // to the listener, but not through the TUN (a spoofed NAT source from another interface)
  kDropCount
};

struct UdpRelayOptions {
  // Largest payload relayed either way.
  uint32_t max_payload = 65507;
  // Datagrams per recvmmsg.
  int batch = 64;
  // Datagrams (and bytes) held for JS between two drains; past either, dropped (kDropQueueFull).
  uint32_t js_queue_max = 1024;
  uint32_t js_queue_bytes = 4u << 20;
  // The TUN's ifindex: datagrams to the listener that arrived on any other
  // interface are dropped (kDropForeignIngress). 0: no check.
  int ingress_ifindex = 0;
};

struct UdpEndRecord {
  uint64_t id;
  UdpEnd how;
  uint64_t dgrams_up, bytes_up, dgrams_down, bytes_down;
};

// A datagram handed to JS: a miss (assoc 0, nat_ip/nat_port = its source) or
// an unknown remote (assoc id, key = the remote's SOCKS5 address).
struct UdpJsDatagram {
  uint64_t assoc;
  uint32_t nat_ip;
  uint16_t nat_port;
  std::string key;
  std::string payload;
};

// UDP GSO use, per direction (0: up, towards upstreams; 1: down, from the listener towards apps).
struct UdpGsoTotals {
  // Sends the kernel took with UDP_SEGMENT, and the datagrams they carried (segments / sends = the batching).
  uint64_t sends[2], segments[2];
  // Sockets on which GSO was turned off (EIO, ENOPROTOOPT: see UdpGso), and size limits learned from EINVAL.
  uint64_t disabled[2], limited[2];
};

struct UdpRelayTotals {
  uint64_t dgrams_up, bytes_up, dgrams_down, bytes_down;
  uint64_t associations, bindings, misses, unknown;
  uint64_t drops[kDropCount];
  UdpGsoTotals gso;
  // Listener receives that held several datagrams (UDP_GRO: the engine's GSO writes), and those datagrams.
  uint64_t gro_receives, gro_segments;
};

struct UdpAssoc;

union UdpAddr {
  struct sockaddr sa;
  struct sockaddr_in v4;
  struct sockaddr_in6 v6;
};

// UDP GSO state of one socket: off once the kernel refuses it (EIO: an IPsec (xfrm) route, or before Linux 6.11
// no checksum offload towards the destination, e.g. a TUN without offloads; ENOPROTOOPT: no UDP_SEGMENT); segments
// above max_seg (learned from EINVAL: over the path MTU) go one by one.
struct UdpGso {
  bool on = true;
  size_t max_seg = 65507;
};

class UdpRelay {
 public:
  // `notify` runs on the relay thread when the queue towards JS goes from
  // empty to non-empty; the owner then calls Take() from its thread.
  UdpRelay(const UdpRelayOptions& opts, std::function<void()> notify);
  ~UdpRelay();
  UdpRelay(const UdpRelay&) = delete;
  UdpRelay& operator=(const UdpRelay&) = delete;

  // Bind the listener socket to ip:port (host order; port 0 picks one) and
  // start the thread. false with *err/*what on failure.
  bool Start(uint32_t ip, uint16_t port, int rcvbuf, uint32_t mark, int* err, std::string* what);
  uint16_t Port() const { return port_; }

  // A new association `id` (> 0) with its own upstream socket bound to
  // bind_ip:0 (0 = any). Returns the local port, or 0 with *err/*what.
  // idle_ms applies once a non-port-53 destination is bound, dns_idle_ms
  // before (RFC 4787 REQ-5a); 0 disables.
  uint16_t Open(uint64_t id, UdpAssocKind kind, uint32_t bind_ip, uint32_t mark, int rcvbuf, uint32_t idle_ms,
                uint32_t dns_idle_ms, int* err, std::string* what);
  // SOCKS5: where the relay listens (BND.ADDR/BND.PORT). Datagrams from any
  // other source are dropped (RFC 1928 §7).
  bool SetSocksRelay(uint64_t id, uint32_t ip, uint16_t port);
  // Datagrams from nat_ip:nat_port go out on association `id` to dst
  // (direct: dst_ip:dst_port; SOCKS5: prefixed by the header for
  // `socks_addr`, a SOCKS5 address), and replies from the remote keyed
  // `remote_key` go back to nat_ip:nat_port. dst_ip6: 16 bytes of an IPv6
  // destination (then dst_ip is unused), else empty. false: no such association.
  bool Bind(uint32_t nat_ip, uint16_t nat_port, uint64_t id, uint32_t dst_ip, const std::string& dst_ip6,
            uint16_t dst_port, const std::string& socks_addr, const std::string& remote_key, bool dns);
  // Replies from `remote_key` on `id` go to nat_ip:nat_port.
  bool AddRemote(uint64_t id, const std::string& remote_key, uint32_t nat_ip, uint16_t nat_port);
  // The NAT flow behind nat_ip:nat_port is gone.
  void Unbind(uint32_t nat_ip, uint16_t nat_port);
  // Send through the binding of nat_ip:nat_port (datagrams JS held while it set the flow up). false: no binding.
  bool SendUp(uint32_t nat_ip, uint16_t nat_port, const uint8_t* p, size_t n);
  // Send to an app (through the engine) from the listener socket.
  bool SendDown(uint32_t nat_ip, uint16_t nat_port, const uint8_t* p, size_t n);
  // Close association `id`: an ended record follows (kClosed). false: not live.
  bool Close(uint64_t id);
  // Monotonic ms of the association's last datagram either way; -1 when not live.
  int64_t LastActive(uint64_t id);
  // Live counts of association `id` (dgrams up, bytes up, dgrams down, bytes down); false when not live.
  bool Counts(uint64_t id, double out[4]);

  void Take(std::vector<UdpJsDatagram>* dgrams, std::vector<UdpEndRecord>* ended);
  UdpRelayTotals Totals();
  // Closes every association (ended records, kClosed), joins the thread, closes the listener. Idempotent.
  void Stop();

 private:
  void Run();
  void OnListener();
  void OnAssoc(UdpAssoc* a);
  void ExpireIdle(int64_t now);
  // One recvmmsg on the listener (or `a`) and the sends it makes; returns how many datagrams it read.
  int ListenerRound();
  int AssocRound(UdpAssoc* a);
  void EndLocked(UdpAssoc* a, UdpEnd how);
  void QueueJsLocked(UdpJsDatagram&& d);
  // Send prepared datagrams [first, first + n) (iovecs siovs_[2i], siovs_[2i + 1], destination saddrs_[i]) on fd:
  // runs of equal-sized datagrams to one destination leave as one UDP GSO send (UDP_SEGMENT), all in one sendmmsg.
  // What the kernel refuses is dropped and counted (kDropSendError). dir: 0 up, 1 down (UdpGsoTotals).
  void SendRunLocked(int fd, UdpGso* gso, int dir, int first, int n);
  void SendOneLocked(int fd, int i);
  size_t PrepareRecv(bool with_ovfl);

  UdpRelayOptions o_;
  std::function<void()> notify_;
  int lfd_ = -1;
  int epfd_ = -1;
  int wakefd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
  bool running_ = false;
  // Thread side: the clock read once per wake-up (CLOCK_MONOTONIC is a system call on some VMs).
  int64_t now_ = 0;
  UdpGso lgso_;
  // UDP_GRO is on for the listener (set in the constructor when a slot fits any coalesced receive, cleared
  // when the kernel refuses it).
  bool gro_ = false;

  std::mutex mu_;
  struct Binding {
    UdpAssoc* assoc;
    UdpAddr dst;
    std::string header;  // SOCKS5: RSV RSV FRAG + address
    std::string remote_key;
  };
  std::unordered_map<uint64_t, Binding> bindings_;  // (nat ip << 16 | port) →
  std::unordered_map<uint64_t, std::unique_ptr<UdpAssoc>> assocs_;

  std::vector<UdpJsDatagram> js_;
  size_t js_bytes_ = 0;
  std::vector<UdpEndRecord> ended_;
  bool signalled_ = false;
  uint64_t foreign_reported_ = 0;  // kDropForeignIngress when JS was last woken for it
  UdpRelayTotals t_{};

  // Thread-side scratch.
  std::unique_ptr<uint8_t[]> slab_;
  std::vector<struct mmsghdr> rmsgs_, gmsgs_;
  std::vector<struct iovec> riovs_, siovs_;
  std::vector<UdpAddr> raddrs_, saddrs_;
  std::vector<uint8_t> cmsg_, gcmsg_;
  // Per GSO message of a SendRunLocked: its first datagram and how many it carries.
  std::vector<int> gfirst_, gcount_;
  std::vector<Binding*> sbind_;
};

}  // namespace fp
