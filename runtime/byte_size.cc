#include "runtime/byte_size.h"

#include <fmt/format.h>

#include <array>
#include <string_view>

namespace ckpt {

std::string format_bytes(std::uint64_t bytes) {
  static constexpr std::array<std::string_view, 6> kUnits = {"KiB", "MiB", "GiB",
                                                             "TiB", "PiB", "EiB"};
  if (bytes < 1024) return fmt::format("{} B", bytes);
  std::size_t unit = 0;
  std::uint64_t scale = 1024;
  while (unit + 1 < kUnits.size() && bytes / scale >= 1024) {
    scale *= 1024;
    ++unit;
  }
  if (bytes % scale == 0) return fmt::format("{} {}", bytes / scale, kUnits[unit]);
  // Inexact: the exact count too, so that "4.00 KiB" rounded up from 4095 B cannot mislead.
  return fmt::format("{:.2f} {} ({} B)", static_cast<double>(bytes) / static_cast<double>(scale),
                     kUnits[unit], bytes);
}

}  // namespace ckpt
