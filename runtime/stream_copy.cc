#include "runtime/stream_copy.h"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <limits>
#include <string>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace ckpt {

std::uint64_t parse_cache_size(std::string_view text) noexcept {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  std::uint64_t value = 0;
  const char* const end = text.data() + text.size();
  const auto [rest, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || rest == text.data()) return 0;
  const std::string_view unit(rest, static_cast<std::size_t>(end - rest));
  unsigned shift = 0;
  if (unit == "K") {
    shift = 10;
  } else if (unit == "M") {
    shift = 20;
  } else if (unit == "G") {
    shift = 30;
  } else if (!unit.empty()) {
    return 0;
  }
  if (value > (std::numeric_limits<std::uint64_t>::max() >> shift)) return 0;
  return value << shift;
}

namespace {

// The size of cpu0's cache of level 3 as sysfs lists it; 0 when there is none to read.
std::uint64_t shared_l3_bytes() {
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream level(dir + "level");
    if (!level) break;
    int n = 0;
    if (!(level >> n) || n != 3) continue;
    std::ifstream size(dir + "size");
    std::string text;
    std::getline(size, text);
    return parse_cache_size(text);
  }
  return 0;
}

}  // namespace

std::uint64_t streaming_bytes() noexcept {
  static const std::uint64_t bytes = []() noexcept {
    try {
      // An L3 beyond 4 GiB is a misread: the floor then.
      const std::uint64_t l3 = shared_l3_bytes();
      return l3 <= (std::uint64_t{4} << 30) ? std::max(kStreamingBytes, 2 * l3) : kStreamingBytes;
    } catch (...) {
      return kStreamingBytes;
    }
  }();
  return bytes;
}

void stream_copy(std::byte* dst, const std::byte* src, std::size_t n) noexcept {
#if defined(__SSE2__)
  constexpr std::size_t kLine = 64;
  if (n < kStreamingMin) {
    std::memcpy(dst, src, n);
    return;
  }
  // The partial line before dst's first line boundary, through the cache.
  const std::size_t head = (kLine - reinterpret_cast<std::uintptr_t>(dst) % kLine) % kLine;
  std::memcpy(dst, src, head);
  dst += head;
  src += head;
  n -= head;
  const std::size_t lines = n / kLine * kLine;
  for (std::size_t at = 0; at < lines; at += kLine) {
    // Four loads, then four stores: one whole line, so the write-combining buffer goes out whole.
    const auto* s = reinterpret_cast<const __m128i*>(src + at);
    auto* d = reinterpret_cast<__m128i*>(dst + at);
    const __m128i a = _mm_loadu_si128(s);
    const __m128i b = _mm_loadu_si128(s + 1);
    const __m128i c = _mm_loadu_si128(s + 2);
    const __m128i e = _mm_loadu_si128(s + 3);
    _mm_stream_si128(d, a);
    _mm_stream_si128(d + 1, b);
    _mm_stream_si128(d + 2, c);
    _mm_stream_si128(d + 3, e);
  }
  std::memcpy(dst + lines, src + lines, n - lines);
#else
  std::memcpy(dst, src, n);
#endif
}

void stream_fence() noexcept {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace ckpt
