#pragma once
// The transactional restore's read: every wanted unit is read into its own staging buffer and
// checksummed there, on several threads, while later reads are in flight; only once every block
// verified are the leaf bytes scattered into the template, again on several threads. A restore
// that fails (a checksum mismatch, EIO, a short read) thus leaves the template as it was.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "io/engine.h"
#include "io/file.h"
#include "runtime/layout.h"

namespace ckpt {

struct StagedReadOptions {
  unsigned queue_depth = 8;  // reads in flight
  unsigned threads = 1;      // threads that checksum and scatter, the caller's included
  // Runs a helper task on another thread (the Runtime posts it to its copy pool); empty: a
  // std::thread per helper.
  std::function<void(std::function<void()>)> spawn;
};

// Reads units[i] into buffers[i] (aligned, at least units[i].length bytes), verifies every block
// (all units must be made of whole blocks), then copies each unit's segments into
// targets[leaf]. Throws Error(corrupt | io) naming the data file before any target byte is
// written; returns once no read is in flight.
void staged_read(io::Engine& engine, const Manifest& manifest, const std::vector<Unit>& units,
                 const std::vector<io::File*>& files, const std::vector<std::byte*>& buffers,
                 const std::vector<const Array*>& targets, const StagedReadOptions& options);

// True when every piece of every unit is a whole block (the units can be verified in parallel).
bool whole_blocks(const std::vector<Unit>& units);

// Staging for reading `units`: buffers lent by `borrow` (each at least `unit_bytes`; handed back
// to `give_back` on destruction), else, when the units' total is at most `own_limit`, memory of
// its own. buffers() is empty when neither was possible.
class ReadStaging {
 public:
  ReadStaging(const std::vector<Unit>& units, std::uint64_t unit_bytes, std::uint64_t own_limit,
              const std::function<std::vector<std::byte*>(std::size_t, std::uint64_t)>& borrow,
              std::function<void(const std::vector<std::byte*>&)> give_back);
  ~ReadStaging();
  ReadStaging(const ReadStaging&) = delete;
  ReadStaging& operator=(const ReadStaging&) = delete;
  const std::vector<std::byte*>& buffers() const { return buffers_; }

 private:
  std::vector<std::byte*> lent_;
  std::function<void(const std::vector<std::byte*>&)> give_back_;
  io::AlignedBuffer own_;
  std::vector<std::byte*> buffers_;
};

}  // namespace ckpt
