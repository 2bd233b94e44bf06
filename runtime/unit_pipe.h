#pragma once
// Streams IO units (runtime/layout.h) through a few aligned buffers, keeping up to `depth`
// requests in flight while the calling thread fills (write) or checks (read) the others.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "io/engine.h"
#include "io/file.h"
#include "runtime/layout.h"

namespace ckpt {

// The most reads to keep in flight with `unread` units not yet read (in flight or still to
// issue), at most `depth`: half of them, rounded up, at least one. On a disk that completes its
// whole queue at once (this VM's does), the last read then brings one unit to consume instead
// of a whole queue's (docs/design.md, section 6, "The last reads, halved").
inline std::size_t reads_toward_the_end(std::size_t unread, std::size_t depth) {
  return std::min(depth, std::max<std::size_t>((unread + 1) / 2, 1));
}

class UnitPipe {
 public:
  // `buffers`, when given, are aligned buffers of buffer_bytes each that the pipe uses instead of
  // mapping memory of its own (the Runtime lends pre-faulted staging chunks).
  UnitPipe(io::Engine& engine, std::uint64_t buffer_bytes, unsigned depth,
           std::vector<std::byte*> buffers = {});

  // For each unit in order: fill(unit, buffer), then write it to files[unit.file]. Returns when
  // every write completed; throws the first error (naming the file) after in-flight writes end.
  void write_all(const std::vector<Unit>& units, const std::vector<io::File*>& files,
                 const std::function<void(const Unit&, std::byte*)>& fill);

  // Reads every unit and calls consume(unit, buffer) in unit order, with no more reads in flight
  // than reads_toward_the_end allows. A unit read short (the file is shorter than the manifest
  // says) throws Error(corrupt).
  void read_all(const std::vector<Unit>& units, const std::vector<io::File*>& files,
                const std::function<void(const Unit&, const std::byte*)>& consume);

 private:
  io::Engine& engine_;
  void reserve(const std::vector<Unit>& units);
  std::byte* slot_data(std::size_t slot) const;

  std::uint64_t buffer_bytes_;  // the largest unit accepted
  unsigned depth_;              // the most requests in flight
  std::uint64_t slot_bytes_ = 0;
  unsigned slots_ = 0;
  std::vector<std::byte*> external_;
  io::AlignedBuffer memory_;    // slots_ × slot_bytes_, sized by reserve()
};

}  // namespace ckpt
