#include "checksum.h"

#include <cstring>

namespace fp::csum {

uint64_t partial(const uint8_t* data, size_t len, uint64_t sum) {
  // Sum 32-bit big-endian words into a 64-bit accumulator: the high and low
  // halves are each a 16-bit word, and one's-complement addition is
  // associative, so fold() at the end gives the RFC 1071 result.
  size_t i = 0;
  for (; i + 4 <= len; i += 4) {
    sum += uint64_t(data[i]) << 24 | uint64_t(data[i + 1]) << 16 | uint64_t(data[i + 2]) << 8 | data[i + 3];
  }
  if (i + 2 <= len) {
    sum += uint64_t(data[i]) << 8 | data[i + 1];
    i += 2;
  }
  if (i < len) sum += uint64_t(data[i]) << 8;
  return sum;
}

}  // namespace fp::csum
