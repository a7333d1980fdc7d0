// Internet checksum: full computation (RFC 1071) and incremental update
// (RFC 1624, equation 3: HC' = ~(~HC + ~m + m')).
//
// All 16-bit values are the big-endian words as they appear on the wire,
// read with load_be16; the result is stored back with store_be16.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fp::csum {

// One's-complement sum of `data` as big-endian 16-bit words (an odd trailing
// byte is padded with zero), added to `sum`. Not folded.
uint64_t partial(const uint8_t* data, size_t len, uint64_t sum = 0);

inline uint16_t fold(uint64_t sum) {
  sum = (sum & 0xffffffffu) + (sum >> 32);
  sum = (sum & 0xffffu) + (sum >> 16);
  sum = (sum & 0xffffu) + (sum >> 16);
  sum = (sum & 0xffffu) + (sum >> 16);
  return uint16_t(sum);
}

// Checksum to store: one's complement of the folded sum.
inline uint16_t finish(uint64_t sum) { return uint16_t(~fold(sum)); }

// IPv4 pseudo-header (RFC 793 / RFC 768) sum for a transport segment of l4_len bytes.
inline uint64_t pseudo_v4(uint32_t src, uint32_t dst, uint8_t proto, size_t l4_len) {
  return uint64_t(src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + proto + uint64_t(l4_len);
}

// Full checksum of an IPv4 header whose checksum field is zero.
inline uint16_t ipv4_header(const uint8_t* hdr, size_t len) { return finish(partial(hdr, len)); }

// Full TCP/UDP checksum over pseudo-header + segment (checksum field zero).
// For UDP the caller maps a result of 0 to 0xffff (RFC 768).
inline uint16_t l4_v4(const uint8_t* seg, size_t len, uint32_t src, uint32_t dst, uint8_t proto) {
  return finish(partial(seg, len, pseudo_v4(src, dst, proto, len)));
}

// RFC 1624 incremental update: collect every changed 16-bit word, then apply
// once to each checksum the words are covered by.
class Delta {
 public:
  void word(uint16_t old_w, uint16_t new_w) {
    acc_ += uint16_t(~old_w);
    acc_ += new_w;
  }
  void dword(uint32_t old_d, uint32_t new_d) {
    word(uint16_t(old_d >> 16), uint16_t(new_d >> 16));
    word(uint16_t(old_d), uint16_t(new_d));
  }
  void add(const Delta& o) { acc_ += o.acc_; }
  // HC' = ~(~HC + sum(~m) + sum(m'))
  uint16_t apply(uint16_t hc) const { return uint16_t(~fold(uint64_t(uint16_t(~hc)) + acc_)); }
  // UDP: a zero checksum means "none" and stays zero; a computed zero is sent as 0xffff.
  uint16_t apply_udp(uint16_t hc) const {
    if (hc == 0) return 0;
    uint16_t r = apply(hc);
    return r == 0 ? 0xffff : r;
  }

 private:
  uint64_t acc_ = 0;
};

}  // namespace fp::csum
