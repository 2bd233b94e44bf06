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

}  // namespace ckpt
