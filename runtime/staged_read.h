#pragma once
// The transactional restore's read (docs/design.md, section 6). Every wanted unit is read into its
// own staging buffer; as each read completes, a worker checksums that unit's blocks and, when they
// verify, **swaps** the unit's leaf bytes with the template's (the template gets the checkpoint's
// bytes, the staging buffer keeps what the template held), on several threads, while later reads
// are in flight. A restore that fails (a checksum mismatch, EIO, a short read) swaps every unit
// already done back, once no read is in flight: the template is left as it was. Swapping costs
// twice a copy's memory traffic, but it runs during the reads instead of after them. Where most
// reads are in when the leaves become known (a restore of many small leaves, whose manifest
// decodes about as long as its reads take, with check_ahead verifying the blocks meanwhile),
// the units are instead copied once every one verified: nothing reaches the targets before then.
//
// When staging for every unit cannot be had, the read goes in two passes: the first verifies
// every block (nothing written), the second reads, verifies and copies unit by unit. That reads
// twice, and a disk or file that changes between the passes can leave the template partly written.
//
// Not transactional (ReadOptions::transactional false: the caller throws the template away when
// the restore fails), each unit is copied into the targets as soon as it verifies, and without
// staging the read is the second pass alone. A failure then leaves the targets partly written.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "io/engine.h"
#include "io/file.h"
#include "runtime/checkpoint.h"
#include "runtime/layout.h"

namespace ckpt {

// How StagedRead::finish() put the units into the targets: swapped, copied (also where segments
// overlap, by the caller, or into no targets: verified only) or placed (runtime/checkpoint.h).
using ReadPlacement = ReadHow;

struct StagedReadOptions {
  unsigned queue_depth = 8;  // reads in flight
  unsigned threads = 1;      // threads that checksum and scatter, the caller's included
  // Runs a helper task on another thread (the Runtime posts it to its copy pool); empty: a
  // std::thread per helper.
  std::function<void(std::function<void()>)> spawn;
  // The caller vouches that no two segments share a target byte: a whole restore of one
  // process's checkpoint, whose template match refused overlapping leaves and whose manifest's
  // extents tile each leaf (decode_manifest). Only the units' own segments are then checked.
  bool targets_disjoint = false;
  // False: the targets need not be kept as they were when the read fails (ReadOptions).
  bool transactional = true;
  // Called by finish() once it chose how to place the units, before it waits for them (tests).
  std::function<void(ReadPlacement)> on_placed;
  // How the units are copied into the targets; unset: as stores_for says for the bytes copied.
  std::optional<Stores> stores;
};

// The options of a restore's read (threads 0: the hardware's, at most 8).
StagedReadOptions staged_options(const ReadOptions& options);

// Reads units[i] into buffers[i] (aligned, at least units[i].length bytes), verifies every block
// (all units must be made of whole blocks) and puts each unit's segments into targets[leaf]
// (Segment::leaf indexes `targets`; leaf_offset is a byte offset into that array). Throws
// Error(corrupt | io) naming the data file with the targets as they were; returns once no read is
// in flight and every target byte is written. Segments whose bytes overlap, in the units or in the
// targets (only a hostile manifest places them so), are copied after every block verified, on the
// calling thread, instead of swapped.
ReadPlacement staged_read(io::Engine& engine, const Manifest& manifest,
                          const std::vector<Unit>& units, const std::vector<io::File*>& files,
                          const std::vector<std::byte*>& buffers,
                          const std::vector<const Array*>& targets,
                          const StagedReadOptions& options);

// staged_read in two steps, so that the reads can start before the leaves are known: a restore of
// a whole checkpoint reads every block, which decode_layout gives, and issues those reads while it
// decodes the rest of the manifest and matches the template. start() submits the reads of
// `units` (only their file, offset and length count here) into `buffers`; finish() is staged_read
// with the same units planned with their segments. Up to queue_depth reads are in flight until
// finish(); from then on a read is issued only while fewer than half (rounded up) of the units
// not yet read are in flight, so that where reads were still to issue the last read brings one
// unit to place, not a whole queue's. Destroyed without a finish(), it waits for the reads in
// flight (the buffers and files must outlive it).
class StagedRead {
 public:
  StagedRead(io::Engine& engine, const std::vector<Unit>& units,
             const std::vector<io::File*>& files, const std::vector<std::byte*>& buffers,
             unsigned queue_depth);
  ~StagedRead();
  StagedRead(const StagedRead&) = delete;
  StagedRead& operator=(const StagedRead&) = delete;

  void start();
  // Checks each unit's blocks against `layout`'s checksums as its read completes, on one helper,
  // until finish(): what a restore's reads would otherwise wait for after the decode. `units`
  // are the constructor's, planned from `layout` (whole blocks); both must outlive this object.
  // finish() trusts a unit that passed only when the manifest's blocks equal the layout's, and
  // verifies again, naming the leaves, one that failed. No-op with fewer than two threads.
  void check_ahead(const Manifest& layout, const std::vector<Unit>& units,
                   const StagedReadOptions& options);
  using Placement = ReadPlacement;
  // `units`: the constructor's, each the same file, offset and length, with pieces and segments.
  Placement finish(const Manifest& manifest, const std::vector<Unit>& units,
                   const std::vector<const Array*>& targets, const StagedReadOptions& options);
  // Waits up to `timeout` until every read completed, or one failed and none is in flight; false
  // on timeout (also before start()).
  bool wait_read(std::chrono::milliseconds timeout);
  // Units check_ahead has checked so far, and how many of those passed.
  struct Ahead {
    std::size_t checked = 0;
    std::size_t passed = 0;
  };
  Ahead ahead() const;

  struct State;

 private:
  std::shared_ptr<State> st_;
  std::thread ahead_thread_;  // check_ahead's helper, where no spawn was given
};

// Verifies every unit (pass 1), then reads them again, verifying and copying each into `targets`
// (pass 2), through a UnitPipe of `queue_depth` buffers of `unit_bytes` (the largest unit). Not
// `transactional`: pass 2 alone (a block's bytes may reach the targets before it fails).
void two_pass_read(io::Engine& engine, const Manifest& manifest, const std::vector<Unit>& units,
                   const std::vector<io::File*>& files, std::uint64_t unit_bytes,
                   unsigned queue_depth, const std::vector<const Array*>& targets,
                   bool transactional = true);

// The read of `units` (whole blocks, each at most unit_bytes) into `targets`, transactional unless
// options.transactional is false:
// staged_read through staging lent by options.borrow or mapped within options.staging_bytes; else
// two_pass_read over `pass_units` (pieces of at most pass_unit_bytes; empty: `units` themselves).
// Sets *options.read_how once it returned.
void read_into_targets(io::Engine& engine, const Manifest& manifest, const std::vector<Unit>& units,
                       std::uint64_t unit_bytes, const std::vector<io::File*>& files,
                       const std::vector<const Array*>& targets, const ReadOptions& options,
                       const std::vector<Unit>& pass_units = {}, std::uint64_t pass_unit_bytes = 0);

// True when every piece of every unit is a whole block (the units can be verified in parallel).
bool whole_blocks(const std::vector<Unit>& units);

// "checksum mismatch in the block at offset ... holding ...", for messages.
std::string describe_bad_block(const Manifest& manifest, std::uint32_t block);

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
