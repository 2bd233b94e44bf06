#pragma once
// Copies that store around the CPU caches. A save's copy into staging and a restore's copy out
// of it move more bytes than the caches hold. What reads the copy next finds little of it in the
// cache anyway: a sync save checksums its units once the whole copy is done, the disk reads the
// staging by DMA, the training step reads the restored arrays later. A plain memcpy first reads
// each destination line into the cache (to own it), then writes it back: three passes over
// memory for one copy. Non-temporal stores write whole lines straight to memory: two passes
// (docs/design.md, section 5).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace ckpt {

// How a copy stores its bytes.
enum class Stores : std::uint8_t {
  cached,     // memcpy: the bytes stay in the cache, for a reader that comes soon
  streaming,  // stream_copy: around the cache; stream_fence() before anyone else reads them
};

// The least streaming_bytes() gives: twice this VM's 32 MiB L3.
inline constexpr std::uint64_t kStreamingBytes = 64ull << 20;

// From this many bytes on, a save's or a restore's copy streams: twice the L3 cache one core
// shares, at least kStreamingBytes. The size comes from sysfs (cpu0's cache of level 3), not
// from sysconf(_SC_LEVEL3_CACHE_SIZE): glibc reports a whole AMD package there, 256 MiB on this
// VM's EPYC, of which a core reaches its own 32 MiB. Read once per process.
std::uint64_t streaming_bytes() noexcept;

// The bytes of a sysfs cache size ("32768K", "96M", "1048576", a newline after it); 0 when
// `text` is none.
std::uint64_t parse_cache_size(std::string_view text) noexcept;

// How an operation that copies `bytes` in all stores them.
inline Stores stores_for(std::uint64_t bytes) noexcept {
  return bytes >= streaming_bytes() ? Stores::streaming : Stores::cached;
}

// Copies under two lines go through the cache: at most one whole line to gain. From two on, a
// 160-byte leaf at a line boundary streams two of its three lines (1,000,000 such leaves: stall
// 63-88 -> 52-64 ms against 256 here, docs/design.md section 5).
inline constexpr std::size_t kStreamingMin = 128;

// Copies n bytes: non-temporal stores for the whole 64-byte lines of dst, memcpy for the partial
// lines at either end and for copies under kStreamingMin bytes. The stores are weakly ordered:
// the copying thread calls stream_fence() before another thread or a device reads dst.
// Elsewhere than x86-64, a memcpy.
void stream_copy(std::byte* dst, const std::byte* src, std::size_t n) noexcept;

// Orders every stream_copy of this thread before its later stores (an SFENCE): after it, a
// handover of the buffer (a mutex, an atomic, a system call) shows its bytes.
void stream_fence() noexcept;

// memcpy or stream_copy, as `stores` says (no fence).
inline void copy_bytes(std::byte* dst, const std::byte* src, std::size_t n,
                       Stores stores) noexcept {
  if (stores == Stores::streaming) {
    stream_copy(dst, src, n);
  } else {
    std::memcpy(dst, src, n);
  }
}

}  // namespace ckpt
