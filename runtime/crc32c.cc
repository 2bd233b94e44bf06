#include "runtime/crc32c.h"

#include <isa-l/crc.h>

#include <algorithm>

namespace ckpt {

std::uint32_t crc32c(const void* data, std::size_t len, std::uint32_t crc) noexcept {
  // crc32_iscsi works on the raw register: the standard CRC inverts it on the way in and out.
  // It takes an int length, so large buffers go through in chunks.
  auto* p = static_cast<unsigned char*>(const_cast<void*>(data));
  unsigned int reg = ~crc;
  constexpr std::size_t kChunk = 1u << 30;
  while (len > 0) {
    std::size_t n = std::min(len, kChunk);
    reg = crc32_iscsi(p, static_cast<int>(n), reg);
    p += n;
    len -= n;
  }
  return ~reg;
}

namespace {

constexpr std::uint32_t kPoly = 0x82F63B78u;  // Castagnoli, bit-reflected

// a(x) * b(x) modulo the polynomial, in the reflected representation (bit 31 is x^0).
std::uint32_t multiply_mod(std::uint32_t a, std::uint32_t b) noexcept {
  std::uint32_t product = 0;
  for (std::uint32_t m = 1u << 31; m != 0; m >>= 1) {
    if (a & m) product ^= b;
    b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return product;
}

// x^(2^k) modulo the polynomial, k = 0..63.
struct PowerTable {
  std::uint32_t x2k[64];
  PowerTable() noexcept {
    std::uint32_t p = 1u << 30;  // x^1
    for (auto& v : x2k) {
      v = p;
      p = multiply_mod(p, p);
    }
  }
};

}  // namespace

std::uint32_t crc32c_combine(std::uint32_t crc_a, std::uint32_t crc_b, std::uint64_t len_b) noexcept {
  static const PowerTable table;
  // crc(A.B) = crc(A) * x^(8 len_b) + crc(B): the pre- and post-inversions cancel.
  std::uint32_t shift = 1u << 31;  // x^0
  std::uint64_t bits = len_b;
  for (unsigned k = 3; bits != 0; bits >>= 1, ++k) {
    if (bits & 1) shift = multiply_mod(table.x2k[k & 63], shift);
  }
  return multiply_mod(shift, crc_a) ^ crc_b;
}

}  // namespace ckpt
