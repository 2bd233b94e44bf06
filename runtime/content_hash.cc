// content_hash (runtime/incremental.h): XXH3-128, compiled here from Debian's xxhash.h
// (XXH_INLINE_ALL) rather than called in libxxhash, whose build uses the baseline SSE2 code path:
// 31-34 ms for 256 MiB on one thread of this machine's CPU, against 17 ms for the AVX2 path built
// by content_hash_avx2.cc, which the first call selects when the CPU has AVX2. Every path computes
// the same XXH3 value (the algorithm fixes its output, not its instructions).
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "runtime/incremental.h"

namespace ckpt {

#if defined(CKPT_XXH3_AVX2)
namespace detail {
ContentHash content_hash_avx2(const void* data, std::size_t n);
}
#endif

namespace {

ContentHash content_hash_baseline(const void* data, std::size_t n) {
  XXH128_hash_t h = XXH3_128bits(data, n);
  return ContentHash{h.low64, h.high64};
}

using HashFn = ContentHash (*)(const void*, std::size_t);

HashFn pick() {
#if defined(CKPT_XXH3_AVX2)
  if (__builtin_cpu_supports("avx2")) return detail::content_hash_avx2;
#endif
  return content_hash_baseline;
}

}  // namespace

ContentHash content_hash(const void* data, std::size_t n) {
  static const HashFn fn = pick();
  return fn(data, n);
}

}  // namespace ckpt
