// Checked views of IPv4 / TCP / UDP / ICMP headers (modelled on smoltcp's
// src/wire/ipv4.rs): every field has a named offset, and a view is only
// obtained through parse(), which proves that every accessor is in bounds.
// No code outside this header indexes a packet buffer by hand.
//
// Address-family generic keys (IpAddr, FlowKey, NatKey) live here too: IPv4
// is stored in the first 4 bytes of a 16-byte address so IPv6 can follow
// without changing the table.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace fp {

// ---- big-endian (network order) loads and stores ----
inline uint16_t load_be16(const uint8_t* p) { return uint16_t(uint16_t(p[0]) << 8 | p[1]); }
inline uint32_t load_be32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}
inline void store_be16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v >> 8);
  p[1] = uint8_t(v);
}
inline void store_be32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 24);
  p[1] = uint8_t(v >> 16);
  p[2] = uint8_t(v >> 8);
  p[3] = uint8_t(v);
}

enum IpProto : uint8_t { kProtoIcmp = 1, kProtoTcp = 6, kProtoUdp = 17 };
enum class Family : uint8_t { V4 = 4, V6 = 6 };

// Outcome of parsing untrusted bytes into a view.
enum class ParseResult : uint8_t { Ok, Truncated, BadVersion, Ipv6, BadHeader };

// The IP version nibble of a raw packet, or 0 when the buffer is empty.
inline uint8_t ip_version(const uint8_t* buf, size_t len) { return len == 0 ? 0 : uint8_t(buf[0] >> 4); }

// ---------------------------------------------------------------- view bases
// What every header view below holds: the bytes it covers, which its parse()
// proved to be in bounds (or new_unchecked() was told by a builder).
class PacketView {
 public:
  uint8_t* data() const { return buf_; }
  size_t len() const { return len_; }

 protected:
  PacketView() = default;
  PacketView(uint8_t* buf, size_t len) : buf_(buf), len_(len) {}
  uint8_t* buf_ = nullptr;
  size_t len_ = 0;
};

// A view whose payload follows a header of header_len() bytes.
class HeaderedView : public PacketView {
 public:
  size_t header_len() const { return hl_; }
  uint8_t* payload() const { return buf_ + hl_; }
  size_t payload_len() const { return len_ - hl_; }

 protected:
  HeaderedView() = default;
  HeaderedView(uint8_t* buf, size_t len, size_t hl) : PacketView(buf, len), hl_(hl) {}
  size_t hl_ = 0;
};

// ---------------------------------------------------------------- IPv4 (RFC 791)
namespace ipv4 {
constexpr size_t VER_IHL = 0;
constexpr size_t TOS = 1;
constexpr size_t LENGTH = 2;   // 2..4
constexpr size_t IDENT = 4;    // 4..6
constexpr size_t FLG_OFF = 6;  // 6..8: flags (3 bits) + fragment offset (13 bits)
constexpr size_t TTL = 8;
constexpr size_t PROTOCOL = 9;
constexpr size_t CHECKSUM = 10;  // 10..12
constexpr size_t SRC_ADDR = 12;  // 12..16
constexpr size_t DST_ADDR = 16;  // 16..20
constexpr size_t MIN_HEADER_LEN = 20;
constexpr uint16_t FLAG_DF = 0x4000;
constexpr uint16_t FLAG_MF = 0x2000;
constexpr uint16_t OFFSET_MASK = 0x1fff;
}  // namespace ipv4

class Ipv4Packet : public HeaderedView {
 public:
  Ipv4Packet() = default;

  // A complete datagram: version 4, IHL >= 5, IHL*4 <= total length <= len.
  // Bytes past the total length (link padding) are ignored.
  static ParseResult parse(uint8_t* buf, size_t len, Ipv4Packet* out) {
    if (len < 1) return ParseResult::Truncated;
    uint8_t v = ip_version(buf, len);
    if (v == 6) return ParseResult::Ipv6;
    if (v != 4) return ParseResult::BadVersion;
    if (len < ipv4::MIN_HEADER_LEN) return ParseResult::Truncated;
    size_t hl = size_t(buf[ipv4::VER_IHL] & 0x0f) * 4;
    if (hl < ipv4::MIN_HEADER_LEN) return ParseResult::BadHeader;
    size_t total = load_be16(buf + ipv4::LENGTH);
    if (total < hl) return ParseResult::BadHeader;
    if (total > len || hl > len) return ParseResult::Truncated;
    *out = Ipv4Packet(buf, total, hl);
    return ParseResult::Ok;
  }

  // The header of a datagram quoted inside an ICMP error (RFC 792): its total
  // length describes the original datagram, not the bytes we hold, so only
  // the header itself (and `min_payload` bytes after it) must be present.
  static ParseResult parse_quoted(uint8_t* buf, size_t len, size_t min_payload, Ipv4Packet* out) {
    if (len < ipv4::MIN_HEADER_LEN) return ParseResult::Truncated;
    if (ip_version(buf, len) != 4) return ParseResult::BadVersion;
    size_t hl = size_t(buf[ipv4::VER_IHL] & 0x0f) * 4;
    if (hl < ipv4::MIN_HEADER_LEN) return ParseResult::BadHeader;
    if (hl + min_payload > len) return ParseResult::Truncated;
    *out = Ipv4Packet(buf, len, hl);  // len: what we hold, not the quoted total length
    return ParseResult::Ok;
  }

  // For building packets into a buffer the caller sized: no checks.
  static Ipv4Packet new_unchecked(uint8_t* buf, size_t len) { return Ipv4Packet(buf, len, ipv4::MIN_HEADER_LEN); }

  uint8_t tos() const { return buf_[ipv4::TOS]; }
  uint16_t total_len_field() const { return load_be16(buf_ + ipv4::LENGTH); }
  uint16_t ident() const { return load_be16(buf_ + ipv4::IDENT); }
  uint16_t flags_frag() const { return load_be16(buf_ + ipv4::FLG_OFF); }
  bool is_fragment() const { return (flags_frag() & (ipv4::FLAG_MF | ipv4::OFFSET_MASK)) != 0; }
  uint8_t ttl() const { return buf_[ipv4::TTL]; }
  uint8_t protocol() const { return buf_[ipv4::PROTOCOL]; }
  uint16_t checksum() const { return load_be16(buf_ + ipv4::CHECKSUM); }
  uint32_t src() const { return load_be32(buf_ + ipv4::SRC_ADDR); }
  uint32_t dst() const { return load_be32(buf_ + ipv4::DST_ADDR); }
  // First word of the header as a 16-bit checksum word (version/IHL + TOS).
  uint16_t word_ttl_proto() const { return load_be16(buf_ + ipv4::TTL); }

  void set_ver_ihl_tos(uint8_t tos) {
    buf_[ipv4::VER_IHL] = 0x45;
    buf_[ipv4::TOS] = tos;
  }
  void set_total_len(uint16_t v) { store_be16(buf_ + ipv4::LENGTH, v); }
  void set_ident(uint16_t v) { store_be16(buf_ + ipv4::IDENT, v); }
  void set_flags_frag(uint16_t v) { store_be16(buf_ + ipv4::FLG_OFF, v); }
  void set_ttl(uint8_t v) { buf_[ipv4::TTL] = v; }
  void set_protocol(uint8_t v) { buf_[ipv4::PROTOCOL] = v; }
  void set_checksum(uint16_t v) { store_be16(buf_ + ipv4::CHECKSUM, v); }
  void set_src(uint32_t a) { store_be32(buf_ + ipv4::SRC_ADDR, a); }
  void set_dst(uint32_t a) { store_be32(buf_ + ipv4::DST_ADDR, a); }

 private:
  using HeaderedView::HeaderedView;
};

// ---------------------------------------------------------------- TCP (RFC 9293)
namespace tcp {
constexpr size_t SRC_PORT = 0;   // 0..2
constexpr size_t DST_PORT = 2;   // 2..4
constexpr size_t SEQ_NUM = 4;    // 4..8
constexpr size_t ACK_NUM = 8;    // 8..12
constexpr size_t DATA_OFF = 12;  // high nibble
constexpr size_t FLAGS = 13;
constexpr size_t WINDOW = 14;    // 14..16
constexpr size_t CHECKSUM = 16;  // 16..18
constexpr size_t URGENT = 18;    // 18..20
constexpr size_t MIN_HEADER_LEN = 20;
constexpr uint8_t FIN = 0x01, SYN = 0x02, RST = 0x04, PSH = 0x08, ACK = 0x10, URG = 0x20;
}  // namespace tcp

class TcpPacket : public HeaderedView {
 public:
  TcpPacket() = default;
  // `len` is the IP payload length; the data offset must fit inside it.
  static ParseResult parse(uint8_t* buf, size_t len, TcpPacket* out) {
    if (len < tcp::MIN_HEADER_LEN) return ParseResult::Truncated;
    size_t hl = size_t(buf[tcp::DATA_OFF] >> 4) * 4;
    if (hl < tcp::MIN_HEADER_LEN) return ParseResult::BadHeader;
    if (hl > len) return ParseResult::Truncated;
    *out = TcpPacket(buf, len, hl);
    return ParseResult::Ok;
  }
  static TcpPacket new_unchecked(uint8_t* buf, size_t len) { return TcpPacket(buf, len, tcp::MIN_HEADER_LEN); }
  uint16_t src_port() const { return load_be16(buf_ + tcp::SRC_PORT); }
  uint16_t dst_port() const { return load_be16(buf_ + tcp::DST_PORT); }
  uint32_t seq() const { return load_be32(buf_ + tcp::SEQ_NUM); }
  uint32_t ack() const { return load_be32(buf_ + tcp::ACK_NUM); }
  uint8_t flags() const { return buf_[tcp::FLAGS]; }
  uint16_t checksum() const { return load_be16(buf_ + tcp::CHECKSUM); }
  void set_src_port(uint16_t v) { store_be16(buf_ + tcp::SRC_PORT, v); }
  void set_dst_port(uint16_t v) { store_be16(buf_ + tcp::DST_PORT, v); }
  void set_seq(uint32_t v) { store_be32(buf_ + tcp::SEQ_NUM, v); }
  void set_ack(uint32_t v) { store_be32(buf_ + tcp::ACK_NUM, v); }
  void set_data_off_flags(uint8_t words, uint8_t flags) {
    buf_[tcp::DATA_OFF] = uint8_t(words << 4);
    buf_[tcp::FLAGS] = flags;
  }
  void set_window(uint16_t v) { store_be16(buf_ + tcp::WINDOW, v); }
  void set_urgent(uint16_t v) { store_be16(buf_ + tcp::URGENT, v); }
  void set_checksum(uint16_t v) { store_be16(buf_ + tcp::CHECKSUM, v); }

 private:
  using HeaderedView::HeaderedView;
};

// ---------------------------------------------------------------- UDP (RFC 768)
namespace udp {
constexpr size_t SRC_PORT = 0;
constexpr size_t DST_PORT = 2;
constexpr size_t LENGTH = 4;
constexpr size_t CHECKSUM = 6;
constexpr size_t HEADER_LEN = 8;
}  // namespace udp

class UdpPacket : public PacketView {
 public:
  UdpPacket() = default;
  // `len` is the IP payload length; the UDP length field must be within it.
  static ParseResult parse(uint8_t* buf, size_t len, UdpPacket* out) {
    if (len < udp::HEADER_LEN) return ParseResult::Truncated;
    size_t ulen = load_be16(buf + udp::LENGTH);
    if (ulen < udp::HEADER_LEN) return ParseResult::BadHeader;
    if (ulen > len) return ParseResult::Truncated;
    *out = UdpPacket(buf, ulen);
    return ParseResult::Ok;
  }
  uint16_t src_port() const { return load_be16(buf_ + udp::SRC_PORT); }
  uint16_t dst_port() const { return load_be16(buf_ + udp::DST_PORT); }
  uint16_t checksum() const { return load_be16(buf_ + udp::CHECKSUM); }
  void set_src_port(uint16_t v) { store_be16(buf_ + udp::SRC_PORT, v); }
  void set_dst_port(uint16_t v) { store_be16(buf_ + udp::DST_PORT, v); }
  void set_checksum(uint16_t v) { store_be16(buf_ + udp::CHECKSUM, v); }

 private:
  using PacketView::PacketView;
};

// ---------------------------------------------------------------- ICMPv4 (RFC 792)
namespace icmp {
constexpr size_t TYPE = 0;
constexpr size_t CODE = 1;
constexpr size_t CHECKSUM = 2;  // 2..4
constexpr size_t REST = 4;      // 4..8: echo ident/seq, or unused / next-hop MTU
constexpr size_t HEADER_LEN = 8;
constexpr uint8_t ECHO_REPLY = 0, DEST_UNREACH = 3, ECHO_REQUEST = 8, TIME_EXCEEDED = 11, PARAM_PROBLEM = 12;
constexpr uint8_t CODE_PORT_UNREACH = 3;
// Bytes of the offending datagram's transport header an ICMP error is guaranteed to quote.
constexpr size_t QUOTED_L4_MIN = 8;
}  // namespace icmp

class IcmpPacket : public HeaderedView {
 public:
  IcmpPacket() = default;
  static ParseResult parse(uint8_t* buf, size_t len, IcmpPacket* out) {
    if (len < icmp::HEADER_LEN) return ParseResult::Truncated;
    *out = IcmpPacket(buf, len, icmp::HEADER_LEN);
    return ParseResult::Ok;
  }
  static IcmpPacket new_unchecked(uint8_t* buf, size_t len) { return IcmpPacket(buf, len, icmp::HEADER_LEN); }
  uint8_t type() const { return buf_[icmp::TYPE]; }
  uint8_t code() const { return buf_[icmp::CODE]; }
  uint16_t type_code_word() const { return load_be16(buf_ + icmp::TYPE); }
  uint16_t checksum() const { return load_be16(buf_ + icmp::CHECKSUM); }
  void set_type_code(uint8_t t, uint8_t c) {
    buf_[icmp::TYPE] = t;
    buf_[icmp::CODE] = c;
  }
  void set_rest(uint32_t v) { store_be32(buf_ + icmp::REST, v); }
  void set_checksum(uint16_t v) { store_be16(buf_ + icmp::CHECKSUM, v); }

 private:
  using HeaderedView::HeaderedView;
};

// Ports of a TCP or UDP header quoted in an ICMP error: both protocols put
// them in the first 4 bytes; the caller proved that >= 8 bytes are present.
struct QuotedPorts {
  static uint16_t src(const uint8_t* l4) { return load_be16(l4 + 0); }
  static uint16_t dst(const uint8_t* l4) { return load_be16(l4 + 2); }
  static void set_src(uint8_t* l4, uint16_t v) { store_be16(l4 + 0, v); }
  static void set_dst(uint8_t* l4, uint16_t v) { store_be16(l4 + 2, v); }
};

// ---------------------------------------------------------------- virtio_net_hdr
// The 10-byte header a TUN opened with IFF_VNET_HDR puts before every packet
// (struct virtio_net_hdr, <linux/virtio_net.h>). Legacy layout; fields are
// little-endian (the fd is switched with TUNSETVNETLE, and x86 is LE anyway).
inline uint16_t load_le16(const uint8_t* p) { return uint16_t(p[0] | uint16_t(p[1]) << 8); }
inline void store_le16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}

namespace vnet {
constexpr size_t FLAGS = 0;
constexpr size_t GSO_TYPE = 1;
constexpr size_t HDR_LEN = 2;      // 2..4, le16
constexpr size_t GSO_SIZE = 4;     // 4..6, le16
constexpr size_t CSUM_START = 6;   // 6..8, le16: from the start of the IP header
constexpr size_t CSUM_OFFSET = 8;  // 8..10, le16: from csum_start
constexpr size_t HEADER_LEN = 10;
// flags
constexpr uint8_t F_NEEDS_CSUM = 1;  // L4 checksum field holds the pseudo-header sum; complete from csum_start
constexpr uint8_t F_DATA_VALID = 2;  // checksum verified: treat it as complete
// gso_type
constexpr uint8_t GSO_NONE = 0, GSO_TCPV4 = 1, GSO_UDP = 3, GSO_TCPV6 = 4, GSO_UDP_L4 = 5, GSO_ECN = 0x80;
}  // namespace vnet

class VnetHdr : public PacketView {
 public:
  VnetHdr() = default;
  static ParseResult parse(uint8_t* buf, size_t len, VnetHdr* out) {
    if (len < vnet::HEADER_LEN) return ParseResult::Truncated;
    *out = VnetHdr(buf, vnet::HEADER_LEN);
    return ParseResult::Ok;
  }
  uint8_t flags() const { return buf_[vnet::FLAGS]; }
  bool needs_csum() const { return (flags() & vnet::F_NEEDS_CSUM) != 0; }
  bool data_valid() const { return (flags() & vnet::F_DATA_VALID) != 0; }
  uint8_t gso_type() const { return buf_[vnet::GSO_TYPE]; }
  uint16_t hdr_len() const { return load_le16(buf_ + vnet::HDR_LEN); }
  uint16_t gso_size() const { return load_le16(buf_ + vnet::GSO_SIZE); }
  uint16_t csum_start() const { return load_le16(buf_ + vnet::CSUM_START); }
  uint16_t csum_offset() const { return load_le16(buf_ + vnet::CSUM_OFFSET); }
  void set_flags(uint8_t v) { buf_[vnet::FLAGS] = v; }
  void clear() { std::memset(buf_, 0, vnet::HEADER_LEN); }

 private:
  using PacketView::PacketView;
};

// ---------------------------------------------------------------- keys
// 16 bytes for every family; IPv4 in network order in b[0..4], rest zero.
struct IpAddr {
  uint8_t b[16];
  static IpAddr v4(uint32_t a) {
    IpAddr r{};
    store_be32(r.b, a);
    return r;
  }
  uint32_t as_v4() const { return load_be32(b); }
  bool operator==(const IpAddr& o) const { return std::memcmp(b, o.b, 16) == 0; }
};

// Forward key: the original 5-tuple as the app sent it. 40 bytes, no implicit
// padding (keys are hashed and compared as bytes); always value-initialise.
struct FlowKey {
  IpAddr src;
  IpAddr dst;
  uint16_t sport;
  uint16_t dport;
  uint8_t proto;
  Family family;
  uint8_t pad[2];
  bool operator==(const FlowKey& o) const { return std::memcmp(this, &o, sizeof *this) == 0; }
  // Zero-initialised (the padding takes part in hashing and memcmp).
  static FlowKey v4(uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport, uint8_t proto) {
    FlowKey k{};
    k.src = IpAddr::v4(src);
    k.dst = IpAddr::v4(dst);
    k.sport = sport;
    k.dport = dport;
    k.proto = proto;
    k.family = Family::V4;
    return k;
  }
};
static_assert(sizeof(FlowKey) == 40, "FlowKey must have no implicit padding");

// Reverse key: the NAT address the Listener sees as its peer.
struct NatKey {
  IpAddr addr;
  uint16_t port;
  uint8_t proto;
  Family family;
  bool operator==(const NatKey& o) const { return std::memcmp(this, &o, sizeof *this) == 0; }
  // Zero-initialised, like FlowKey::v4.
  static NatKey v4(uint32_t addr, uint16_t port, uint8_t proto) {
    NatKey k{};
    k.addr = IpAddr::v4(addr);
    k.port = port;
    k.proto = proto;
    k.family = Family::V4;
    return k;
  }
};
static_assert(sizeof(NatKey) == 20, "NatKey must have no implicit padding");

}  // namespace fp
