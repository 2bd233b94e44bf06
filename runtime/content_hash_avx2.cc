// XXH3-128 built for AVX2 (this file alone is compiled with -mavx2; runtime/content_hash.cc calls
// it only on a CPU that has AVX2).
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "runtime/manifest.h"

namespace ckpt::detail {

ContentHash content_hash_avx2(const void* data, std::size_t n) {
  XXH128_hash_t h = XXH3_128bits(data, n);
  return ContentHash{h.low64, h.high64};
}

}  // namespace ckpt::detail
