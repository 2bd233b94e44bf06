#pragma once
// The physical limits a checkpoint is measured against, taken on the same machine, the same
// bytes and the same disk in the same run. None of them is weakened to flatter ckpt:
//  - memcpy: the state's own arrays into one destination that is mapped the way the staging pool
//    maps its memory (huge-page advice, pre-faulted) and warmed by a first copy; best of `runs`.
//  - scatter: that destination copied back into the state's arrays (the same bytes), the copy a
//    restore into the arrays makes after its reads; best of `runs`, after the memcpy filled it.
//  - raw write: a fresh file (sized first), O_DIRECT, io_uring at queue depth 16 with 1 MiB
//  requests from
//    registered buffers, fsync included; best of `runs`, each into a new file.
//  - raw read: the same file read back the same way (O_DIRECT bypasses the page cache).
//  - bare small write: write 4 KiB into a new file, fsync, rename, fsync the directory: the least
//    any durable, atomically published file costs on this disk.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace ckpt::bench {

inline constexpr unsigned kRawQueueDepth = 16;
inline constexpr std::uint64_t kRawRequestBytes = 1u << 20;

using Spans = std::vector<std::span<const std::byte>>;
using MutableSpans = std::vector<std::span<std::byte>>;

struct RawSync;

// Copies the concatenation of `src` into `dst` (sum of sizes bytes) with `threads` threads, each
// taking one contiguous share of the bytes; returns the best time of `runs` in ms, after one
// warm-up copy. `sync`: several processes copy together, each run from a barrier, timed to the
// slowest (see RawSync). `first_ms`, where set, receives the warm-up copy's time: a copy into
// memory idle since its last use, as a save's staging is between saves.
double memcpy_best_ms(const Spans& src, std::byte* dst, unsigned threads, int runs,
                      const RawSync* sync = nullptr, double* first_ms = nullptr);

// The reverse of memcpy_best_ms, with no warm-up: scatters `src` (the concatenation) into the
// leaves `dst`, each thread one contiguous share of the bytes; the best time of `runs` in ms. What
// a restore into N arrays adds to reading the bytes, unless it reads straight into them.
double scatter_best_ms(const std::byte* src, const MutableSpans& dst, unsigned threads, int runs);

struct RawIo {
  double write_ms = 0;  // open (create) + writes + fsync
  double read_ms = 0;   // open + reads
  bool fixed_buffers = false;
};

// Several processes measuring the raw IO together: `start` runs before each timed transfer (a
// barrier, so that every process writes, or reads, at the same time), `combine` after it, turning
// this process's time into the aggregate one (the slowest process's). Every process makes the same
// calls in the same order.
struct RawSync {
  std::function<void()> start;
  std::function<double(double)> combine;
};

// Writes `bytes` from `buf` (aligned to 4096, bytes a multiple of 4096) into a fresh file in
// `dir` with O_DIRECT and io_uring, fsyncs it, reads it back into `buf`, removes the file; best
// of `runs` for each direction. `presize` sizes the file with ftruncate before writing (inside
// the timed region): the fastest way to fill a fresh file on ext4, whose extending direct writes
// are serialized; false measures that slower, extending pattern. Throws std::runtime_error when the
// file system refuses O_DIRECT or io_uring is unavailable (the baseline would not be the physical
// limit then).
RawIo raw_io_best(const std::string& dir, std::byte* buf, std::uint64_t bytes, int runs,
                  bool presize = true, const RawSync* sync = nullptr);

// Reads the first `bytes` (4096-aligned, within the file) of an existing file `path` into `buf`
// as raw_io_best reads (O_DIRECT, io_uring, the same depth and requests, registered buffers);
// returns the ms from the open to the last byte.
double raw_read_ms(const std::string& path, std::byte* buf, std::uint64_t bytes);

// One iteration of the bare small-file protocol in `dir` (file name from `i`); returns ms.
double bare_small_write_ms(const std::string& dir, int i);

}  // namespace ckpt::bench
