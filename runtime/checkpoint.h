#pragma once
// Synchronous save, restore and verification of one checkpoint directory (docs/design.md,
// "On-disk format" and "Commit protocol"). The asynchronous Runtime builds on the same pieces.
#include <boost/json/object.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "io/engine.h"
#include "runtime/manifest.h"
#include "runtime/tree.h"

namespace ckpt {

class Sharding;  // runtime/sharding.h

struct WriteOptions {
  std::uint64_t extent_bytes = 16u << 20;  // extent grid: leaves are cut at its multiples
  std::uint64_t unit_bytes = 16u << 20;    // one write request; staging per save is depth × this
  unsigned queue_depth = 8;                // write requests in flight
  bool allow_direct = true;                // O_DIRECT where the file system accepts it
  // Extra JSON files stored beside metadata.json and covered by the manifest (job.json, ...).
  std::map<std::string, std::string> extra_files;
};

// How a restore's blocks went into the template (ReadOptions::read_how; RuntimeStats counts them).
enum class ReadHow : std::uint8_t {
  nothing,     // no block was wanted (a partial restore of scalars only, an empty tree)
  swapped,     // staged: each unit swapped in as it verified, during the reads still to come
  copied,      // staged: copied in once every unit verified
  placed,      // staged, not transactional: each unit copied in as it verified
  two_passes,  // beyond the staging: one read verifies every block, a second copies them in
  one_pass,    // beyond the staging, not transactional: one read verifies and copies
};

struct ReadOptions {
  std::uint64_t unit_bytes = 16u << 20;  // the least read request; a unit holds whole blocks
  unsigned queue_depth = 8;              // reads in flight
  bool allow_direct = true;
  // A restore verifies every wanted block in staging before its bytes go into the template, and
  // a failure puts back what the template held (transactional). Staging: `borrow(n, bytes)` lends
  // n aligned buffers of at least `bytes` each, or none (the Runtime lends its staging chunks;
  // `give_back` returns them); else the reader maps its own memory, up to staging_bytes. Beyond
  // that, two reads: one verifies everything, one verifies and copies (docs/design.md, section 6).
  std::uint64_t staging_bytes = std::uint64_t{1} << 30;
  std::function<std::vector<std::byte*>(std::size_t, std::uint64_t)> borrow;
  std::function<void(const std::vector<std::byte*>&)> give_back;
  // Threads that verify and scatter (the caller's included; 0: the hardware's, at most 8), and
  // how helpers are started (empty: a std::thread each; the Runtime posts to its copy pool).
  unsigned threads = 0;
  std::function<void(std::function<void()>)> spawn;
  // Template leaves that are boxes of global arrays (runtime/sharding.h; null: every leaf is its
  // whole array). Any checkpoint can be restored into boxes, a sharded one into any
  // decomposition (runtime/sharded_read.h).
  const Sharding* sharding = nullptr;
  // False: the caller discards the template when the restore fails (a template just made for
  // it, as make_template's or Python's restore without one). With staging, each unit is then
  // copied in as soon as its blocks verify, instead of swapped in or copied after the last read;
  // without, the blocks are read once, not twice, and verified as they are copied in. A failed
  // restore then leaves the template partly written. The checks before anything is read and the
  // errors are the same either way.
  bool transactional = true;
  // Where set, receives how the blocks went into the template (a restore that returned).
  ReadHow* read_how = nullptr;
  // Where set, a restore that succeeded hands it a task that destroys what it decoded (the
  // manifest: 5-10 ms of frees at 100,000 leaves), to run after the restore returned (the
  // Runtime posts it to its copy pool). Empty, and for a sharded or resharding restore (its
  // reader's own path): the restore destroys it before it returns.
  std::function<void(std::function<void()>)> dispose;
};

// Writes `tree` and `metadata` as the checkpoint directory `dir` (created with its parents),
// through `<dir>.tmp-<tag>` and an atomic rename; replaces an existing checkpoint at `dir`.
// On failure nothing is left behind and an existing checkpoint at `dir` is untouched.
void save_checkpoint(io::Engine& engine, const std::string& dir, const Tree& tree,
                     const boost::json::object& metadata, const WriteOptions& options = {});

// Reads the checkpoint at `dir` into the arrays of `templ` and returns its metadata.
// The template must have the checkpoint's shape of tree, compared node by node from the root:
// the same kind (dict, list or leaf) at every node, so a dict {"0": x} does not stand for a list
// [x] although both flatten to "0"; the same dict keys and list lengths, empty dicts and lists
// included; at each leaf the same dtype and shape. Template leaves must be writable and must not
// share memory with each other (restoring into both would mix their data).
// With `partial`, the template may be a subset: dict keys and list items it lacks (a prefix of a
// list) are neither read nor reported, and an empty dict or list in the template matches a
// non-empty one of the same kind. Everything the template does name must still be there with
// the same kind, dtype and shape; partial never excuses a template node the checkpoint lacks.
// Throws Error(mismatch) listing every difference (path, what the template has, what the
// checkpoint has) before anything is read, Error(corrupt) naming the file and leaf.
boost::json::object restore_checkpoint(io::Engine& engine, const std::string& dir, Tree& templ,
                                       bool partial = false, const ReadOptions& options = {});

// Reads and validates dir/manifest.ckpt.
Manifest read_manifest(const std::string& dir);
// Reads one JSON file of the checkpoint, checking it against the manifest's size and CRC32C.
std::string read_checked_file(const std::string& dir, const Manifest& manifest,
                              const std::string& name);
boost::json::object read_metadata(const std::string& dir);
// A tree with the checkpoint's structure and zero-filled owned arrays (a template to restore
// into when the caller has none).
Tree make_template(const Manifest& manifest);

struct VerifyReport {
  std::vector<std::string> problems;  // each names the file and, for data, the leaf
  std::uint64_t bytes_checked = 0;
  std::size_t leaves = 0;
  bool ok() const noexcept { return problems.empty(); }
};

// Checks the manifest, every JSON file and every extent's CRC32C. Never throws for corruption:
// every problem goes into the report.
VerifyReport verify_checkpoint(io::Engine& engine, const std::string& dir,
                               const ReadOptions& options = {});

}  // namespace ckpt
