#pragma once
// CRC32C (Castagnoli), the checksum of every byte ckpt writes. ISA-L's crc32_iscsi does the work.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace ckpt {

// Standard CRC32C of `data` continuing from `crc` (0 to start): crc32c("123456789") == 0xE3069283.
std::uint32_t crc32c(const void* data, std::size_t len, std::uint32_t crc = 0) noexcept;

inline std::uint32_t crc32c(std::string_view s, std::uint32_t crc = 0) noexcept {
  return crc32c(s.data(), s.size(), crc);
}

// The CRC32C of A followed by B from crc32c(A), crc32c(B) and B's length (zlib's crc32_combine,
// for the Castagnoli polynomial): pieces of one byte stream checksummed apart, by different
// threads or processes, give the checksum of the whole. O(log len_b).
std::uint32_t crc32c_combine(std::uint32_t crc_a, std::uint32_t crc_b, std::uint64_t len_b) noexcept;

}  // namespace ckpt
