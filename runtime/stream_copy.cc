#include "runtime/stream_copy.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace ckpt {

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
