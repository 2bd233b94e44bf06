#pragma once
// Collective (multi-process, sharded) saves: the parts that do not depend on Asio, used by the
// Runtime's save pipeline (runtime/save_pipeline.cc) and register_latest (runtime/run_dirs.cc).
//
// The protocol (docs/design.md, section 14), for the n-th collective save of every process:
//  1. save(): every process checks its own leaves (boxes inside their global shapes) and sends
//     process 0 a digest of the tree (structure, paths, dtypes, global shapes, which leaves are
//     sharded), its sharded bytes and its status; everyone receives everyone's (allgather). Any
//     failure, or digests that differ, fail save() on every process with the same error, naming
//     the processes and the first differing path, before anything is written. Process 0 also
//     sends the temporary directory's tag. Replicated leaves are then assigned, the same way on
//     every process, to the process with the fewest bytes so far (largest leaf first).
//  2. In the background each process writes its data file `data-<rank>.bin` (its shards and its
//     replicated leaves, packed as in a single-process save) into the shared `<dir>.tmp-<tag>/`
//     and fsyncs it.
//  3. Every process sends process 0 its result: its blocks, their checksums and where each of its
//     boxes lies, or its error (gather, with a deadline).
//  4. Process 0, if all succeeded, builds the global manifest (every leaf's global shape, each
//     box's file, offset and slice), checks that the boxes of every sharded leaf tile it exactly,
//     writes metadata.json, the extra files and manifest.ckpt, fsyncs the directory, renames it to
//     `<dir>` and fsyncs the parent: the commit point, as for one process. On any failure it
//     removes the temporary directory instead.
//  5. Process 0 sends the outcome to every process (broadcast, with a deadline); every process's
//     SaveHandle completes with it.
// register_latest: each process waits for its save's (agreed) outcome; process 0 moves `latest`;
// then its result is broadcast, so every process's RegisterHandle completes with the same result.
#include <boost/json/object.hpp>
#include <chrono>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/communicator.h"
#include "runtime/manifest.h"
#include "runtime/shard_incremental.h"
#include "runtime/sharding.h"
#include "runtime/tree.h"

namespace ckpt {

// One process's part of one collective save.
struct ShardedSave {
  std::shared_ptr<Communicator> comm;
  std::uint64_t seq = 0;  // the collective operation's number (communicator tags)
  std::chrono::milliseconds timeout{0};
  std::string tmp_tag;  // process 0's: the shared temporary directory is <dir>.tmp-<tmp_tag>
  // Per leaf, in flattening order: the box's start (empty for a replicated leaf).
  std::vector<Shape> starts;
  std::vector<bool> sharded;
  // Process 0 only: the global tree (nodes; leaves with their global shapes, without extents).
  Manifest global;
  // Incremental (runtime/shard_incremental.h): process 0's choice, the same on every process.
  bool incremental = false;
  std::string base;         // the base checkpoint's directory; empty: none
  std::string base_origin;  // how linked files name it (its suffix in the run directory)
};

// Process 0's incremental choice, sent to every process at the check.
struct IncrementalChoice {
  bool on = false;
  std::string base;
  std::string origin;
};

// The shared temporary directory of a collective save of final_dir: <final_dir>.tmp-<tmp_tag>.
std::string shared_tmp_dir(const ShardedSave& save, const std::string& final_dir);

struct ShardedPlan {
  std::shared_ptr<ShardedSave> save;
  // The tree this process writes: `tree` with each replicated leaf another process writes
  // replaced by an empty array (so leaf indices stay those of the whole tree).
  Tree local;
};

// Step 1 (collective, on the caller's thread). Throws Error(invalid_argument | mismatch |
// timeout), the same on every process, when a process's leaves are invalid or the trees differ.
// `refused`: this process's own reason to refuse the save (a bad path, metadata), reported to
// the others like a bad leaf.
ShardedPlan plan_sharded_save(const Tree& tree, const Sharding& sharding,
                              std::shared_ptr<Communicator> comm, std::uint64_t seq,
                              std::chrono::milliseconds timeout, const std::string& final_dir,
                              std::exception_ptr refused = nullptr,
                              const IncrementalChoice& incremental = IncrementalChoice());

// This process's data file written and fsynced (or its failure): what steps 3 to 5 need.
struct ShardResult {
  std::exception_ptr failure;                  // this process's own, if any
  // The local plan: leaves' extents (file 0: this process's own file; an incremental save's
  // extents may name a link, by its index), blocks; their CRCs in block_crc, or when that is null
  // in the blocks themselves.
  const Manifest* local = nullptr;
  const std::vector<std::uint32_t>* block_crc = nullptr;
  const std::vector<LinkedFile>* links = nullptr;  // incremental: the base files it links
  std::string tmp_dir;
  std::string final_dir;
  const boost::json::object* metadata = nullptr;
  const std::map<std::string, std::string>* extra_files = nullptr;
  std::int64_t created_unix_ns = 0;
};

// Steps 3 to 5 (collective, blocking: runs on a copy thread). Returns the agreed failure, or
// nullptr when the checkpoint is committed. Process 0 removes the temporary directory on failure;
// every process forgets it as a live temporary.
std::exception_ptr collective_commit(const ShardedSave& save, const ShardResult& result);

// register_latest's last step: process 0's result (`mine` there) becomes every process's.
std::exception_ptr collective_outcome(Communicator& comm, std::uint64_t seq,
                                      std::chrono::milliseconds timeout, std::exception_ptr mine);

// The global manifest from every process's fragment (process 0, step 4); exposed for tests.
// Throws Error(invalid_argument) when the boxes of a sharded leaf do not tile it. Linked files
// some extent uses follow the processes' own files, renumbered densely in the order of their
// indices; `link_order` (when given) receives those indices, old ones, in that order.
Manifest merge_fragments(const ShardedSave& save, const std::vector<std::string>& fragments,
                         std::int64_t created_unix_ns,
                         std::vector<std::uint32_t>* link_order = nullptr);

// Process 0, before the commit: in tmp_dir, renames the links `link_order` names (old indices,
// ascending) to data_file_name(processes + k) and removes every other data file whose index is
// at least `processes` (links no extent uses).
void settle_links(const std::string& tmp_dir, std::uint32_t processes,
                  const std::vector<std::uint32_t>& link_order);

}  // namespace ckpt
