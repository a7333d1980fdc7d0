#include "engine.h"

#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <memory>

#include "checksum.h"
#include "read_ring.h"

namespace fp {

namespace {

int64_t clock_ms(clockid_t id) {
  timespec ts;
  clock_gettime(id, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

// Largest IPv4 datagram (total length is 16 bits; also the largest TSO
// super-packet the kernel hands a TUN with offloads) plus the virtio_net_hdr,
// rounded up to a multiple of 64.
constexpr size_t kReadBufCap = 65536 + 64;

// UDP GSO on the TUN write (issue 12): forward datagrams of one flow from one
// read batch leave as one super-packet (VIRTIO_NET_HDR_GSO_UDP_L4), so the
// kernel's IP receive and routing run once for the run instead of once per
// datagram; the Listener's socket takes it whole (UDP_GRO) or segmented by the
// kernel. Segments per write: the kernel's UDP_MAX_SEGMENTS was 64 before 6.x.
constexpr size_t kGsoMaxSegs = 64;
constexpr size_t kUdpIpHdr = ipv4::MIN_HEADER_LEN + udp::HEADER_LEN;
constexpr size_t kMaxIpLen = 65535;

// The UDP payload length of a packet (virtio_net_hdr first) the engine may put
// in a UDP GSO write, else 0: an option-less IPv4 UDP datagram, not itself GSO,
// whose checksum is partial (NEEDS_CSUM at the UDP checksum field). Partial
// means this host's stack wrote it and will complete the sum, so a merged
// packet keeps exactly the guarantees of its datagrams; a datagram with a
// complete checksum (forwarded from a LAN host) goes alone and is verified.
size_t gso_payload(const uint8_t* b, size_t len) {
  if (len <= vnet::HEADER_LEN + kUdpIpHdr) return 0;
  if (b[vnet::FLAGS] != vnet::F_NEEDS_CSUM || b[vnet::GSO_TYPE] != vnet::GSO_NONE) return 0;
  if (load_le16(b + vnet::CSUM_START) != ipv4::MIN_HEADER_LEN || load_le16(b + vnet::CSUM_OFFSET) != udp::CHECKSUM)
    return 0;
  const uint8_t* p = b + vnet::HEADER_LEN;
  if (p[ipv4::VER_IHL] != 0x45 || p[ipv4::PROTOCOL] != kProtoUdp) return 0;
  const size_t ip_len = load_be16(p + ipv4::LENGTH);
  if (ip_len != len - vnet::HEADER_LEN) return 0;
  if (load_be16(p + ipv4::MIN_HEADER_LEN + udp::LENGTH) != ip_len - ipv4::MIN_HEADER_LEN) return 0;
  return ip_len - kUdpIpHdr;
}

// Same flow, and equal in every header field the kernel copies to each
// segment (TOS, flags/fragment, TTL, addresses, ports); the IP ID, lengths
// and checksums are the segments' own.
bool gso_same(const uint8_t* a, const uint8_t* b) {
  a += vnet::HEADER_LEN;
  b += vnet::HEADER_LEN;
  return a[ipv4::TOS] == b[ipv4::TOS] && std::memcmp(a + ipv4::FLG_OFF, b + ipv4::FLG_OFF, 3) == 0 &&
         std::memcmp(a + ipv4::SRC_ADDR, b + ipv4::SRC_ADDR, 8) == 0 &&
         std::memcmp(a + ipv4::MIN_HEADER_LEN, b + ipv4::MIN_HEADER_LEN, 4) == 0;
}

// The virtio_net_hdr + IPv4 + UDP header of a super-packet carrying `payload`
// bytes cut at `seg`, from the first datagram's headers `first`.
void gso_header(uint8_t* h, const uint8_t* first, size_t payload, size_t seg) {
  std::memset(h, 0, vnet::HEADER_LEN);
  h[vnet::FLAGS] = vnet::F_NEEDS_CSUM;
  h[vnet::GSO_TYPE] = vnet::GSO_UDP_L4;
  store_le16(h + vnet::HDR_LEN, uint16_t(kUdpIpHdr));
  store_le16(h + vnet::GSO_SIZE, uint16_t(seg));
  store_le16(h + vnet::CSUM_START, uint16_t(ipv4::MIN_HEADER_LEN));
  store_le16(h + vnet::CSUM_OFFSET, uint16_t(udp::CHECKSUM));
  uint8_t* ip = h + vnet::HEADER_LEN;
  std::memcpy(ip, first + vnet::HEADER_LEN, kUdpIpHdr);
  const size_t udp_len = udp::HEADER_LEN + payload;
  store_be16(ip + ipv4::LENGTH, uint16_t(ipv4::MIN_HEADER_LEN + udp_len));
  store_be16(ip + ipv4::CHECKSUM, 0);
  store_be16(ip + ipv4::CHECKSUM, csum::ipv4_header(ip, ipv4::MIN_HEADER_LEN));
  uint8_t* u = ip + ipv4::MIN_HEADER_LEN;
  store_be16(u + udp::LENGTH, uint16_t(udp_len));
  // Partial: the folded pseudo-header sum over the whole length, as udp4_hwcsum
  // leaves it; segmentation adjusts it per segment.
  store_be16(u + udp::CHECKSUM, csum::fold(csum::pseudo_v4(load_be32(ip + ipv4::SRC_ADDR),
                                                           load_be32(ip + ipv4::DST_ADDR), kProtoUdp, udp_len)));
}

}  // namespace

std::string validate_engine_config(const EngineConfig& c) {
  std::string e = validate_table_config(c.table);
  if (!e.empty()) return e;
  if (c.listenPort == 0) return "listenPort must be 1..65535";
  if (c.dnsPort == 0) return "dnsPort must be 1..65535";
  return "";
}

Engine::Engine(const EngineConfig& cfg)
    : cfg_(cfg),
      network_(cfg.table.network),
      mask_(~uint32_t(0) << (32 - cfg.table.prefixLen)),
      broadcast_(cfg.table.network | ~(~uint32_t(0) << (32 - cfg.table.prefixLen))),
      gateway_(cfg.table.gateway),
      table_(cfg.table, c_),
      clock_offset_(clock_ms(CLOCK_REALTIME) - clock_ms(CLOCK_MONOTONIC)) {}

int64_t Engine::now_ms() const { return clock_ms(CLOCK_MONOTONIC) + clock_offset_; }

bool Engine::bad_dst(uint32_t a) const {
  // Network / broadcast address of the range, 0.0.0.0/8, multicast, class E
  // and the limited broadcast: none of these is a unicast peer we can NAT.
  if (a == network_ || a == broadcast_) return true;
  if ((a >> 24) == 0) return true;
  return a >= 0xe0000000u;
}

namespace {

// Set an IPv4 header's addresses, updating its checksum incrementally.
// Returns the change, which a transport checksum's pseudo-header shares.
csum::Delta set_addrs(Ipv4Packet& ip, uint32_t nsrc, uint32_t ndst) {
  csum::Delta d;
  d.dword(ip.src(), nsrc);
  d.dword(ip.dst(), ndst);
  ip.set_checksum(d.apply(ip.checksum()));
  ip.set_src(nsrc);
  ip.set_dst(ndst);
  return d;
}

// Rewrite addresses and ports of a TCP/UDP packet, fixing the IP header
// checksum and the transport checksum (pseudo-header + ports) incrementally.
//
// `partial` (virtio_net_hdr NEEDS_CSUM): the transport checksum field holds
// the folded pseudo-header sum, not complemented (Linux __tcp_v4_send_check
// stores ~tcp_v4_check(len, saddr, daddr, 0)); the kernel completes it later
// by summing from csum_start, ports included. So only the address words of
// the pseudo-header are updated, as a sum: P' = ~apply(~P). No UDP "0 stays 0"
// rule either: the field is a sum, not "no checksum".
template <class L4>
void rewrite(Ipv4Packet& ip, L4& seg, bool is_udp, bool partial, uint32_t nsrc, uint16_t nsport, uint32_t ndst,
             uint16_t ndport) {
  const csum::Delta addr = set_addrs(ip, nsrc, ndst);
  if (partial) {
    seg.set_checksum(uint16_t(~addr.apply(uint16_t(~seg.checksum()))));
  } else {
    csum::Delta l4 = addr;  // the pseudo-header covers both addresses
    l4.word(seg.src_port(), nsport);
    l4.word(seg.dst_port(), ndport);
    seg.set_checksum(is_udp ? l4.apply_udp(seg.checksum()) : l4.apply(seg.checksum()));
  }
  seg.set_src_port(nsport);
  seg.set_dst_port(ndport);
}

// The offset of the transport checksum field for a protocol, from the start
// of its header.
size_t l4_csum_offset(uint8_t proto) { return proto == kProtoUdp ? udp::CHECKSUM : tcp::CHECKSUM; }

}  // namespace

size_t Engine::process_locked(uint8_t* buf, size_t len, size_t cap, int64_t now) {
  bump(c_.pktsIn);
  bump(c_.bytesIn, len);
  Ipv4Packet ip;
  switch (Ipv4Packet::parse(buf, len, &ip)) {
    case ParseResult::Ok:
      break;
    case ParseResult::Truncated:
      return drop(c_.dropTruncated);
    case ParseResult::BadVersion:
      return drop(c_.dropBadVersion);
    case ParseResult::Ipv6:
      return drop(c_.dropIpv6);
    case ParseResult::BadHeader:
      return drop(c_.dropBadHeader);
  }
  if (ip.header_len() != ipv4::MIN_HEADER_LEN) return drop(c_.dropIpOptions);
  if (ip.is_fragment()) return drop(c_.dropFragment);
  size_t out;
  switch (ip.protocol()) {
    case kProtoTcp:
    case kProtoUdp:
      out = l4(ip, std::max(cap, len), now);
      break;
    case kProtoIcmp:
      out = icmp(ip, now);
      break;
    default:
      return drop(c_.dropProtocol);
  }
  if (out != 0) {
    bump(c_.pktsOut);
    bump(c_.bytesOut, out);
  }
  return out;
}

size_t Engine::process_vnet_locked(uint8_t* buf, size_t len, size_t cap, int64_t now) {
  VnetHdr vh;
  if (VnetHdr::parse(buf, len, &vh) != ParseResult::Ok) {
    bump(c_.pktsIn);
    bump(c_.bytesIn, len);
    return drop(c_.dropTruncated);
  }
  uint8_t* pkt = buf + vnet::HEADER_LEN;
  const size_t plen = len - vnet::HEADER_LEN;
  const size_t pcap = std::max(cap, len) - vnet::HEADER_LEN;
  partial_ = false;
  rewritten_ = false;
  if (vh.gso_type() != vnet::GSO_NONE) bump(c_.gsoIn);
  if (vh.needs_csum()) {
    // The fast path keeps the checksum partial: a TCP/UDP header right after
    // an option-less IPv4 header, checksum field where the protocol puts it.
    // Anything else (ICMP, IP options, odd offsets) is completed here in
    // software first, as the kernel's skb_checksum_help would, and then
    // handled like a packet with a complete checksum.
    // Non-IPv4 and short packets go on to process_locked, which drops them
    // with the usual counters.
    const size_t start = vh.csum_start(), off = vh.csum_offset();
    const bool v4 = ip_version(pkt, plen) == 4 && plen >= ipv4::MIN_HEADER_LEN;
    const uint8_t proto = v4 ? pkt[ipv4::PROTOCOL] : 0;
    const size_t ip_len = v4 ? std::min<size_t>(load_be16(pkt + ipv4::LENGTH), plen) : 0;
    if (!v4) {
      // left for process_locked() to drop (IPv6, bad version, truncated)
    } else if ((proto == kProtoTcp || proto == kProtoUdp) && start == ipv4::MIN_HEADER_LEN &&
               (pkt[ipv4::VER_IHL] & 0x0f) == 5 && off == l4_csum_offset(proto)) {
      partial_ = true;
    } else if (start < ip_len && off + 2 <= ip_len - start) {
      store_be16(pkt + start + off, csum::finish(csum::partial(pkt + start, ip_len - start)));
      vh.set_flags(uint8_t(vh.flags() & ~vnet::F_NEEDS_CSUM));
      bump(c_.csumCompleted);
    } else {
      bump(c_.pktsIn);
      bump(c_.bytesIn, plen);
      return drop(c_.dropBadHeader);
    }
  }
  const size_t out = process_locked(pkt, plen, pcap, now);
  const bool partial = partial_;
  partial_ = false;  // process_locked() called directly never sees a partial checksum
  if (out == 0) return 0;
  if (rewritten_) {
    // Same packet, same header lengths: keep gso_type/gso_size/hdr_len and
    // csum_start/csum_offset; NEEDS_CSUM as read.
    vh.set_flags(partial ? vnet::F_NEEDS_CSUM : 0);
  } else {
    vh.clear();  // built or answered by the engine with complete checksums
  }
  return out + vnet::HEADER_LEN;
}

namespace {
// Sequence space a segment takes: its data, plus one each for SYN and FIN.
uint32_t seg_len(const TcpPacket& t) {
  const uint8_t f = t.flags();
  return uint32_t(t.payload_len()) + ((f & tcp::SYN) ? 1 : 0) + ((f & tcp::FIN) ? 1 : 0);
}
}  // namespace

size_t Engine::l4(Ipv4Packet& ip, size_t cap, int64_t now) {
  const uint8_t proto = ip.protocol();
  const bool is_udp = proto == kProtoUdp;
  TcpPacket tcp;
  UdpPacket udp;
  ParseResult pr = is_udp ? UdpPacket::parse(ip.payload(), ip.payload_len(), &udp)
                          : TcpPacket::parse(ip.payload(), ip.payload_len(), &tcp);
  if (pr == ParseResult::Truncated) return drop(c_.dropTruncated);
  if (pr != ParseResult::Ok) return drop(c_.dropBadHeader);
  const uint16_t sport = is_udp ? udp.src_port() : tcp.src_port();
  const uint16_t dport = is_udp ? udp.dst_port() : tcp.dst_port();
  const uint32_t src = ip.src(), dst = ip.dst();
  const uint8_t flags = is_udp ? 0 : tcp.flags();

  if (src == gateway_ && is_reverse_port(sport)) {
    // Listener (or DNS server) -> NAT address: back to origDst -> origSrc.
    Flow* f = table_.find_nat(NatKey::v4(dst, dport, proto));
    if (f == nullptr || target_port(*f) != sport) return drop(c_.dropReverseNoFlow);
    if (!is_udp) {
      // The Listener's RST is taken as is: a segment from the gateway's
      // address and the Listener's port comes from this host's own stack
      // (the kernel drops one with a local source arriving from outside).
      track_tcp(f, tcp, false, now);
      if (!(flags & tcp::RST)) {
        note_app_nxt(f, tcp.seq() + seg_len(tcp));
        if ((flags & tcp::ACK) && int32_t(tcp.ack() - f->lsnAck) > 0) {
          f->lsnAck = tcp.ack();
          if (int32_t(f->lsnAck - f->appEnd) > 0) f->appEnd = f->lsnAck;
        }
      }
    }
    table_.touch(f, now);
    f->pktsIn++;
    f->bytesIn += ip.len();
    if (is_udp)
      rewrite(ip, udp, true, partial_, f->key.dst.as_v4(), f->key.dport, f->key.src.as_v4(), f->key.sport);
    else
      rewrite(ip, tcp, false, partial_, f->key.dst.as_v4(), f->key.dport, f->key.src.as_v4(), f->key.sport);
    rewritten_ = true;
    bump(c_.reversed);
    return ip.len();
  }

  if (dst == gateway_) return drop(c_.dropToGateway);
  if (bad_dst(dst) || (src >> 24) == 0 || src >= 0xe0000000u) return drop(c_.dropBadAddress);
  if (std::atomic<uint64_t>* why_not = refuse_source(src)) return drop(*why_not);

  const FlowKey k = FlowKey::v4(src, sport, dst, dport, proto);
  Flow* f = table_.find(k);
  const Target target = cfg_.dnsHijack && dport == 53 ? Target::Dns : Target::Listener;
  FlowTable::Create why;
  if (!is_udp) {
    const bool bare_syn = (flags & (tcp::SYN | tcp::ACK | tcp::RST)) == tcp::SYN;
    if (f != nullptr && bare_syn && f->state == FlowState::Closed) {
      table_.remove(f, f->closeReason, now);  // the app reuses its 4-tuple: fresh flow
      f = nullptr;
    }
    // An ACK for a half-open flow early-dropped moments ago: its app is real.
    if (f == nullptr && (flags & (tcp::SYN | tcp::ACK | tcp::RST)) == tcp::ACK) f = table_.revive(k, now);
    if (f == nullptr) {
      if (!bare_syn) {
        bump(c_.dropTcpNoFlow);
        if (flags & tcp::RST) return 0;
        return build_rst(ip, tcp);
      }
      f = table_.create(k, target, now, &why, true);
      if (f == nullptr) {
        // Dropped without a word: the app retransmits the SYN, and that one gets in.
        if (why == FlowTable::Create::FirstSyn) return 0;
        if (why != FlowTable::Create::HalfOpenCap) bump(c_.flowsRefused);  // else counted as halfOpenCapped
        return build_rst(ip, tcp);
      }
      f->lsnAck = f->appEnd = tcp.seq() + 1;
    }
    track_tcp(f, tcp, true, now);
    if (!(flags & tcp::RST)) {
      if (flags & tcp::ACK) note_app_nxt(f, tcp.ack());
      // In-order data only: a segment starting inside [lsnAck, appEnd].
      const uint32_t seq = tcp.seq();
      if (int32_t(seq - f->lsnAck) >= 0 && int32_t(f->appEnd - seq) >= 0) {
        const uint32_t end = seq + seg_len(tcp);
        if (int32_t(end - f->appEnd) > 0) f->appEnd = end;
      }
    }
  } else if (f == nullptr) {
    f = table_.create(k, target, now, &why);
    if (f == nullptr) {
      bump(c_.flowsRefused);
      return build_port_unreach(ip, cap);
    }
  }
  table_.touch(f, now);
  f->pktsOut++;
  f->bytesOut += ip.len();
  if (is_udp)
    rewrite(ip, udp, true, partial_, f->nat.as_v4(), f->natPort, gateway_, target_port(*f));
  else
    rewrite(ip, tcp, false, partial_, f->nat.as_v4(), f->natPort, gateway_, target_port(*f));
  rewritten_ = true;
  bump(c_.forwarded);
  return ip.len();
}

void Engine::track_tcp(Flow* f, const TcpPacket& seg, bool out, int64_t now) {
  const uint8_t flags = seg.flags();
  if (flags & tcp::RST) {
    if (f->state == FlowState::Closed) return;
    // RFC 5961 3.2, as Linux and conntrack apply it: a RST from the app side
    // ends the flow only at exactly the sequence the Listener expects next,
    // its latest ACK or (data still in flight) the end of the app's data.
    // Any other is a blind guess or stale: the flow stays; the segment still
    // goes on, and the Listener's kernel answers it with a challenge ACK.
    if (out && seg.seq() != f->lsnAck && seg.seq() != f->appEnd) {
      bump(c_.rstIgnored);
      return;
    }
    f->closeReason = CloseReason::Rst;
    table_.set_state(f, FlowState::Closed, now);
    return;
  }
  if (f->state == FlowState::Syn) {
    const uint8_t sa = flags & (tcp::SYN | tcp::ACK);
    if (!out && sa == (tcp::SYN | tcp::ACK))
      f->tcpFlags |= tcpflag::SYNACK_SEEN;
    else if (out && sa == tcp::ACK && (f->tcpFlags & tcpflag::SYNACK_SEEN))
      table_.set_state(f, FlowState::Established, now);
  }
  if (flags & tcp::FIN) {
    f->tcpFlags |= out ? tcpflag::FIN_OUT : tcpflag::FIN_IN;
    if ((f->tcpFlags & (tcpflag::FIN_OUT | tcpflag::FIN_IN)) == (tcpflag::FIN_OUT | tcpflag::FIN_IN)) {
      if (f->state != FlowState::Closed) {
        f->closeReason = CloseReason::Fin;
        table_.set_state(f, FlowState::Closed, now);
      }
    } else if (f->state == FlowState::Syn || f->state == FlowState::Established) {
      table_.set_state(f, FlowState::Fin, now);
    }
  }
}

namespace {

// A bare IPv4 + TCP RST (kRstLen bytes) from src:sport to dst:dport, complete checksums.
void fill_rst(uint8_t* b, uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack,
              uint8_t flags) {
  Ipv4Packet r = Ipv4Packet::new_unchecked(b, kRstLen);
  r.set_ver_ihl_tos(0);
  r.set_total_len(kRstLen);
  r.set_ident(0);
  r.set_flags_frag(ipv4::FLAG_DF);
  r.set_ttl(64);
  r.set_protocol(kProtoTcp);
  r.set_checksum(0);
  r.set_src(src);
  r.set_dst(dst);
  r.set_checksum(csum::ipv4_header(b, ipv4::MIN_HEADER_LEN));
  TcpPacket t = TcpPacket::new_unchecked(r.payload(), tcp::MIN_HEADER_LEN);
  t.set_src_port(sport);
  t.set_dst_port(dport);
  t.set_seq(seq);
  t.set_ack(ack);
  t.set_data_off_flags(5, flags);
  t.set_window(0);
  t.set_urgent(0);
  t.set_checksum(0);
  t.set_checksum(csum::l4_v4(t.data(), tcp::MIN_HEADER_LEN, src, dst, kProtoTcp));
}

}  // namespace

// RFC 9293 3.10.7.1: reset for a segment that has no connection. Built in
// place over the offending segment (which is at least 40 bytes long).
size_t Engine::build_rst(Ipv4Packet& ip, const TcpPacket& seg) {
  const uint32_t src = ip.src(), dst = ip.dst();
  const uint16_t sport = seg.src_port(), dport = seg.dst_port();
  const uint32_t seq = seg.seq(), ack = seg.ack();
  const uint8_t flags = seg.flags();
  const uint32_t seglen = seg_len(seg);
  if (flags & tcp::ACK)
    fill_rst(ip.data(), dst, src, dport, sport, ack, 0, tcp::RST);
  else
    fill_rst(ip.data(), dst, src, dport, sport, 0, seq + seglen, tcp::RST | tcp::ACK);
  bump(c_.rstSent);
  return kRstLen;
}

// The app's next expected sequence number: the latest of what it acknowledged
// and the end of what the Listener sent it (serial-number order, RFC 1982).
void Engine::note_app_nxt(Flow* f, uint32_t nxt) {
  if (!(f->tcpFlags & tcpflag::APP_NXT) || int32_t(nxt - f->appNxt) > 0) {
    f->appNxt = nxt;
    f->tcpFlags |= tcpflag::APP_NXT;
  }
}

void Engine::expire_locked(int64_t now, std::vector<uint8_t>* rsts, bool vnet_hdr) {
  if (rsts == nullptr) {
    table_.expire(now);
    return;
  }
  timedOut_.clear();
  table_.expire(now, &timedOut_);
  const size_t hdr = vnet_hdr ? vnet::HEADER_LEN : 0;
  for (const Flow& f : timedOut_) {
    const size_t at = rsts->size();
    rsts->resize(at + hdr + kRstLen, 0);
    // RFC 5961 3.2: a RST is accepted at once only with exactly the
    // receiver's next sequence number (otherwise it answers a challenge ACK,
    // which finds no flow and gets a RST with its own ack number anyway).
    fill_rst(rsts->data() + at + hdr, f.key.dst.as_v4(), f.key.src.as_v4(), f.key.dport, f.key.sport, f.appNxt, 0,
             tcp::RST);
    bump(c_.rstSent);
    bump(f.closeReason == CloseReason::Evicted ? c_.rstOnEvict : c_.rstOnExpiry);
  }
}

// ICMP destination unreachable / port unreachable (RFC 792, RFC 1812
// 4.3.2.3) from the original destination, quoting the offending datagram.
size_t Engine::build_port_unreach(Ipv4Packet& ip, size_t cap) {
  constexpr size_t kHdr = ipv4::MIN_HEADER_LEN + icmp::HEADER_LEN;
  const uint32_t src = ip.src(), dst = ip.dst();
  size_t quoted = std::min(ip.len(), kIcmpErrorMax - kHdr);
  if (kHdr + quoted > cap) quoted = cap > kHdr ? cap - kHdr : 0;
  if (quoted < ipv4::MIN_HEADER_LEN + icmp::QUOTED_L4_MIN) return 0;
  uint8_t* b = ip.data();
  std::memmove(b + kHdr, b, quoted);
  Ipv4Packet r = Ipv4Packet::new_unchecked(b, kHdr + quoted);
  r.set_ver_ihl_tos(0);
  r.set_total_len(uint16_t(kHdr + quoted));
  r.set_ident(0);
  r.set_flags_frag(0);
  r.set_ttl(64);
  r.set_protocol(kProtoIcmp);
  r.set_checksum(0);
  r.set_src(dst);
  r.set_dst(src);
  r.set_checksum(csum::ipv4_header(b, ipv4::MIN_HEADER_LEN));
  IcmpPacket ic = IcmpPacket::new_unchecked(r.payload(), icmp::HEADER_LEN + quoted);
  ic.set_type_code(icmp::DEST_UNREACH, icmp::CODE_PORT_UNREACH);
  ic.set_checksum(0);
  ic.set_rest(0);
  ic.set_checksum(csum::finish(csum::partial(ic.data(), ic.len())));
  bump(c_.icmpUnreachSent);
  return kHdr + quoted;
}

size_t Engine::icmp(Ipv4Packet& ip, int64_t /*now*/) {
  IcmpPacket ic;
  if (IcmpPacket::parse(ip.payload(), ip.payload_len(), &ic) != ParseResult::Ok) return drop(c_.dropTruncated);
  switch (ic.type()) {
    case icmp::ECHO_REQUEST: {
      const uint32_t src = ip.src(), dst = ip.dst();
      if (!in_range(dst) || dst == gateway_) return drop(c_.dropIcmpUnsupported);
      if (bad_dst(dst) || (src >> 24) == 0 || src >= 0xe0000000u) return drop(c_.dropBadAddress);
      if (std::atomic<uint64_t>* why_not = refuse_source(src)) return drop(*why_not);
      // Answer in place: type 8 -> 0 (one checksum word), swap addresses
      // (the header sum is unchanged by a swap), fresh TTL.
      csum::Delta d;
      d.word(ic.type_code_word(), uint16_t(icmp::ECHO_REPLY << 8 | ic.code()));
      ic.set_checksum(d.apply(ic.checksum()));
      ic.set_type_code(icmp::ECHO_REPLY, ic.code());
      csum::Delta di;
      di.word(ip.word_ttl_proto(), uint16_t(64 << 8 | ip.protocol()));
      ip.set_checksum(di.apply(ip.checksum()));
      ip.set_ttl(64);
      ip.set_src(dst);
      ip.set_dst(src);
      bump(c_.echoReplies);
      return ip.len();
    }
    case icmp::DEST_UNREACH:
    case icmp::TIME_EXCEEDED:
    case icmp::PARAM_PROBLEM:
      return icmp_error(ip, ic);
    default:
      return drop(c_.dropIcmpUnsupported);
  }
}

// Translate an ICMP error about a NATed packet so the other side sees it.
//  A) the kernel complains about a packet we wrote towards the Listener
//     (quoted NAT -> gateway:port): deliver to the app as if from origDst;
//  B) the app's host complains about a reply we wrote towards it (quoted
//     origDst -> origSrc): deliver to the Listener as if from the NAT address.
size_t Engine::icmp_error(Ipv4Packet& ip, IcmpPacket& ic) {
  Ipv4Packet q;
  switch (Ipv4Packet::parse_quoted(ic.payload(), ic.payload_len(), icmp::QUOTED_L4_MIN, &q)) {
    case ParseResult::Ok:
      break;
    case ParseResult::Truncated:
      return drop(c_.dropTruncated);
    default:
      return drop(c_.dropBadHeader);
  }
  const uint8_t qp = q.protocol();
  if (qp != kProtoTcp && qp != kProtoUdp) return drop(c_.dropIcmpUnsupported);
  if ((q.flags_frag() & ipv4::OFFSET_MASK) != 0) return drop(c_.dropIcmpUnsupported);  // no L4 header quoted
  uint8_t* ql4 = q.payload();
  const size_t ql4len = q.payload_len();
  const uint32_t qsrc = q.src(), qdst = q.dst();
  const uint16_t qsport = QuotedPorts::src(ql4), qdport = QuotedPorts::dst(ql4);
  uint32_t n_qsrc, n_qdst, n_osrc, n_odst;
  uint16_t n_qsport, n_qdport;
  if (qsrc != gateway_ && qdst == gateway_ && is_reverse_port(qdport)) {
    Flow* f = table_.find_nat(NatKey::v4(qsrc, qsport, qp));
    if (f == nullptr || target_port(*f) != qdport) return drop(c_.dropIcmpNoFlow);
    n_qsrc = f->key.src.as_v4();
    n_qsport = f->key.sport;
    n_qdst = f->key.dst.as_v4();
    n_qdport = f->key.dport;
    n_osrc = f->key.dst.as_v4();
    n_odst = f->key.src.as_v4();
  } else {
    const FlowKey k = FlowKey::v4(qdst, qdport, qsrc, qsport, qp);
    Flow* f = table_.find(k);
    if (f == nullptr) return drop(c_.dropIcmpNoFlow);
    n_qsrc = gateway_;
    n_qsport = target_port(*f);
    n_qdst = f->nat.as_v4();
    n_qdport = f->natPort;
    n_osrc = f->nat.as_v4();
    n_odst = gateway_;
  }
  // Quoted datagram: header checksum and, when quoted, the L4 checksum.
  csum::Delta ql = set_addrs(q, n_qsrc, n_qdst);
  ql.word(qsport, n_qsport);
  ql.word(qdport, n_qdport);
  QuotedPorts::set_src(ql4, n_qsport);
  QuotedPorts::set_dst(ql4, n_qdport);
  if (qp == kProtoUdp) {
    uint8_t* c = ql4 + udp::CHECKSUM;  // within the 8 quoted bytes
    store_be16(c, ql.apply_udp(load_be16(c)));
  } else if (ql4len >= tcp::CHECKSUM + 2) {
    uint8_t* c = ql4 + tcp::CHECKSUM;
    store_be16(c, ql.apply(load_be16(c)));
  }
  // Outer header, then the ICMP checksum over the whole (short) message.
  set_addrs(ip, n_osrc, n_odst);
  ic.set_checksum(0);
  ic.set_checksum(csum::finish(csum::partial(ic.data(), ic.len())));
  bump(c_.icmpErrorsTranslated);
  return ip.len();
}

bool Engine::ensure_flow(uint8_t proto, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport, int64_t now,
                         Flow* out, FlowTable::Create* why) {
  std::lock_guard<std::mutex> g(mu_);
  const FlowKey k = FlowKey::v4(src, sport, dst, dport, proto);
  Flow* f = table_.find(k);
  *why = FlowTable::Create::Ok;
  if (f == nullptr) {
    f = table_.create(k, cfg_.dnsHijack && dport == 53 ? Target::Dns : Target::Listener, now, why);
    if (f == nullptr) {
      bump(c_.flowsRefused);
      return false;
    }
  }
  *out = *f;
  return true;
}

std::vector<FlowEvent> Engine::drain_events() {
  std::vector<FlowEvent> out;
  std::lock_guard<std::mutex> g(mu_);
  out.swap(table_.events());
  return out;
}

void Engine::write_one(int fd, const uint8_t* b, size_t len) {
  // A TUN write is one packet; it does not block (the kernel queues it on the
  // netif backlog) and fails only for malformed packets or a device going away.
  if (write(fd, b, len) < 0) c_.writeErrors.fetch_add(1, std::memory_order_relaxed);
}

void Engine::write_batch(int fd, uint8_t* const* bufs, const size_t* outs, size_t n, bool vnet_hdr) {
  size_t idx[kGsoMaxSegs];
  struct iovec iov[kGsoMaxSegs + 1];
  uint8_t hdr[vnet::HEADER_LEN + kUdpIpHdr];
  for (size_t i = 0; i < n;) {
    if (outs[i] == 0) {
      i++;
      continue;
    }
    const uint8_t* b = bufs[i];
    const size_t seg = vnet_hdr && udp_gso_ ? gso_payload(b, outs[i]) : 0;
    // Gather the run: following datagrams of the flow (dropped packets between
    // them are skipped), each `seg` bytes but a shorter last one.
    size_t k = 1, payload = seg, next = i + 1;
    idx[0] = i;
    if (seg != 0) {
      for (; next < n && k < kGsoMaxSegs; next++) {
        if (outs[next] == 0) continue;
        const uint8_t* c = bufs[next];
        const size_t p = gso_payload(c, outs[next]);
        if (p == 0 || p > seg || kUdpIpHdr + payload + p > kMaxIpLen || !gso_same(b, c)) break;
        idx[k++] = next;
        payload += p;
        if (p < seg) {
          next++;
          break;
        }
      }
    }
    if (k == 1) {
      write_one(fd, b, outs[i]);
      i++;
      continue;
    }
    gso_header(hdr, b, payload, seg);
    iov[0] = {hdr, sizeof hdr};
    for (size_t s = 0; s < k; s++)
      iov[s + 1] = {bufs[idx[s]] + vnet::HEADER_LEN + kUdpIpHdr, outs[idx[s]] - vnet::HEADER_LEN - kUdpIpHdr};
    if (writev(fd, iov, int(k + 1)) >= 0) {
      c_.udpGsoWrites.fetch_add(1, std::memory_order_relaxed);
      c_.udpGsoSegments.fetch_add(k, std::memory_order_relaxed);
    } else if (errno == EINVAL) {
      // The kernel does not take UDP GSO from a TUN (before Linux 6.2): one
      // write per datagram from now on.
      udp_gso_ = false;
      c_.udpGsoRefused.fetch_add(1, std::memory_order_relaxed);
      for (size_t s = 0; s < k; s++) write_one(fd, bufs[idx[s]], outs[idx[s]]);
    } else {
      c_.writeErrors.fetch_add(k, std::memory_order_relaxed);
    }
    i = next;
  }
}

namespace {

// Interrupt coalescing of the TUN reads under a UDP load (issue 12). Datagrams have no ACK clock to keep
// short, and at 1 Gbit/s of 1200-byte datagrams the engine otherwise woke for ~3 packets at a time: a thread
// switch, an io_uring_enter and a small TUN write (one GSO run) per wake, which also woke the UDP relay as
// often. When the previous batch held at least kCoalesceMinUdp IPv4 UDP packets, the next wait returns once
// kCoalesceN packets are in or kCoalesceUs after it began (Linux 6.12's io_uring min-wait; at 100 k
// datagrams/s ~20 per batch), so the TUN write, the Listener socket's wake-up, the relay's recvmmsg and its
// upstream GSO send each carry ~20 datagrams. A trickle (DNS, a game's few packets per frame, TCP) never
// reaches the threshold and waits for its first packet as before.
constexpr unsigned kCoalesceUs = 200;
constexpr size_t kCoalesceN = 64;
constexpr size_t kCoalesceMinUdp = 4;

// A TUN queue whose device was deleted answers TUNGETIFF with EBADFD (a
// socketpair in tests answers ENOTTY: not gone).
bool DeviceGone(int fd) {
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  return ioctl(fd, TUNGETIFF, &ifr) < 0 && errno == EBADFD;
}

bool IsUdp4(const uint8_t* b, size_t len, bool vnet_hdr) {
  const size_t off = vnet_hdr ? vnet::HEADER_LEN : 0;
  return len >= off + 20 && (b[off] >> 4) == 4 && b[off + 9] == 17;
}

}  // namespace

int Engine::run(int fd, int wake_fd, const std::atomic<bool>& stop, std::atomic<bool>& notify_armed,
                const std::function<void()>& notify, size_t batch, bool vnet_hdr) {
  batch = std::max<size_t>(batch, 1);
  // io_uring's provided buffer ring wants a power of two.
  unsigned nbufs = 1;
  while (nbufs < batch) nbufs <<= 1;
  // Not zero-filled: a page of the 4 MiB batch stays unmapped until a read lands in it, so an idle
  // daemon does not carry it resident (docs/memory.md).
  std::unique_ptr<uint8_t[]> mem(new uint8_t[nbufs * kReadBufCap]);
  std::vector<uint8_t*> bufs(batch);
  std::vector<size_t> lens(batch), outs(batch);
  std::vector<uint8_t> rsts;  // RSTs for flows that timed out, written after the batch
  int64_t last_notify = 0;
  bool pending = false;
  pollfd pfd[2] = {{fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
  // One io_uring_enter per batch where the kernel can (read_ring.h), else poll() + one read() per packet.
  ReadRing ring;
  int ring_err = 0;
  bool use_ring = ring.Open(fd, wake_fd, mem.get(), nbufs, kReadBufCap, &ring_err);
  // Datagrams in the previous batch: under a UDP load the next wait coalesces (kCoalesceUs).
  size_t last_udp = 0;
  while (!stop.load(std::memory_order_acquire)) {
    size_t n = 0;
    int fatal = 0;
    if (use_ring) {
      bool woken = false;
      const bool coalesce = last_udp >= kCoalesceMinUdp;
      const int r = ring.Wait(pending ? 20 : 250, bufs.data(), lens.data(), batch, &woken, coalesce ? kCoalesceUs : 0,
                              static_cast<unsigned>(std::min<size_t>(kCoalesceN, batch)));
      if (r == ReadRing::kUnsupported) {
        ring.Close();
        use_ring = false;
        continue;
      }
      if (woken) {
        uint64_t v;
        ssize_t ignored = read(wake_fd, &v, sizeof v);
        (void)ignored;
        if (stop.load(std::memory_order_acquire)) break;
      }
      if (r < 0) {
        c_.readErrors.fetch_add(1, std::memory_order_relaxed);
        fatal = -r;
      } else if (r == 0 && !woken && DeviceGone(fd)) {
        // The multishot read does not always complete when the device is
        // deleted under it (seen: both queues of a 2-queue TUN waited on for
        // minutes); an idle wait asks the kernel once instead.
        c_.readErrors.fetch_add(1, std::memory_order_relaxed);
        fatal = EBADFD;
      } else {
        n = size_t(r);
        c_.ringReads.fetch_add(n, std::memory_order_relaxed);
        if (coalesce && ring.CanCoalesce()) c_.ringCoalesced.fetch_add(1, std::memory_order_relaxed);
      }
    } else {
      int r = poll(pfd, 2, pending ? 20 : 250);
      if (r < 0) {
        if (errno == EINTR) continue;
        return errno;
      }
      if (pfd[1].revents & POLLIN) {
        uint64_t v;
        ssize_t ignored = read(wake_fd, &v, sizeof v);
        (void)ignored;
        if (stop.load(std::memory_order_acquire)) break;
      }
      if (pfd[0].revents & POLLNVAL) return EBADF;
      if (pfd[0].revents & (POLLIN | POLLERR | POLLHUP)) {
        // Drain the device: read until EAGAIN or the batch is full.
        while (n < batch) {
          bufs[n] = mem.get() + n * kReadBufCap;
          ssize_t k = read(fd, bufs[n], kReadBufCap);
          if (k > 0) {
            lens[n++] = size_t(k);
            continue;
          }
          if (k < 0 && errno == EINTR) continue;
          if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            c_.readErrors.fetch_add(1, std::memory_order_relaxed);
            fatal = errno;
          }
          break;
        }
      }
    }
    last_udp = 0;
    for (size_t i = 0; i < n; i++) last_udp += IsUdp4(bufs[i], lens[i], vnet_hdr) ? 1 : 0;
    const int64_t now = now_ms();
    size_t nev;
    {
      std::lock_guard<std::mutex> g(mu_);
      for (size_t i = 0; i < n; i++) {
        uint8_t* b = bufs[i];
        outs[i] =
            vnet_hdr ? process_vnet_locked(b, lens[i], kReadBufCap, now) : process_locked(b, lens[i], kReadBufCap, now);
      }
      if (n != 0) bump(c_.batches);
      if (now - last_expire_ >= 250) {
        rsts.clear();
        expire_locked(now, &rsts, vnet_hdr);
        last_expire_ = now;
      }
      nev = table_.events().size();
    }
    write_batch(fd, bufs.data(), outs.data(), n, vnet_hdr);
    const size_t rst_len = kRstLen + (vnet_hdr ? vnet::HEADER_LEN : 0);
    for (size_t off = 0; off < rsts.size(); off += rst_len)
      if (write(fd, rsts.data() + off, rst_len) < 0) c_.writeErrors.fetch_add(1, std::memory_order_relaxed);
    rsts.clear();
    pending = nev != 0;
    if (pending && (now - last_notify >= 20 || nev >= 1024) && notify_armed.exchange(false)) {
      last_notify = now;
      notify();
    }
    if (fatal != 0 && fatal != ENOBUFS) return fatal;
  }
  return 0;
}

}  // namespace fp
