#pragma once
// Plan reuse: a save plans its layout (flattened paths, extents, blocks, IO units, the manifest's
// skeleton) once per tree structure and reuses it while the structure, dtypes and shapes stay the
// same. "The same" is decided exactly, not by a hash: one walk over the tree compares its
// structure, serialized on the fly (node kinds, dict keys, list lengths, dtypes, shapes), with the
// cached plan's, and collects each leaf's memory, the only per-save work before the copy. On a
// hit the walk allocates the list of leaf pointers and, for a tree checked in parts, a few
// records per part; nothing per leaf.
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/layout.h"
#include "runtime/manifest.h"
#include "runtime/tree.h"

namespace ckpt {

// What a save plans from the tree's structure alone; immutable once built, shared by saves.
struct PlanSkeleton {
  Manifest manifest;        // layout planned; no checksums, creation time or JSON files
  std::vector<Unit> units;  // write units in file order

  // The manifest's tree part, encoded by the first save that commits with this plan.
  const EncodedTree& encoded_tree() const {
    std::call_once(encoded_once_, [this] { encoded_ = encode_tree(manifest); });
    return encoded_;
  }

 private:
  mutable std::once_flag encoded_once_;
  mutable EncodedTree encoded_;
};

// One save's view of its tree: the plan, and where each leaf's bytes are now.
struct PlannedSave {
  std::shared_ptr<const PlanSkeleton> plan;
  std::vector<const std::byte*> sources;             // per leaf, flattening order
  std::vector<std::shared_ptr<std::byte[]>> owners;  // keeps owned arrays alive until the copy
  bool reused = false;
  std::size_t parts = 0;  // reused after a check in this many parts side by side (0: one walk)
};

class PlanCache {
 public:
  // Runs task(0) ... task(n - 1), on several threads if it can, and returns when all are done.
  using ParallelFor =
      std::function<void(std::size_t n, const std::function<void(std::size_t)>& task)>;

  // The plan for `tree`, reused when its structure equals the last one planned; otherwise
  // plan_save (which refuses trees no reader accepts) and remember it. With `parallel`, a large
  // tree's comparison is cut into parts of a few thousand leaves (a split node's own record, or
  // a whole subtree, each at its recorded place in the key) walked side by side; any difference
  // falls back to the plain walk, which builds the new key.
  PlannedSave plan(const Tree& tree, std::uint64_t unit_bytes, const ParallelFor& parallel = {});

 private:
  struct Part {
    std::vector<std::uint32_t> route;  // child indices from the root
    std::uint32_t first = 0;           // whole: the children [first, last) of the node at route,
    std::uint32_t last = 0;            // or the node itself when first == last
    std::size_t key_begin = 0;         // its bytes in key_
    std::size_t key_end = 0;
    std::size_t leaf_begin = 0;  // its leaves, in flattening order
    std::size_t leaf_end = 0;
    bool whole = false;  // a whole subtree; else only the node's own record
  };
  void split(const Tree& root);
  bool check_in_parts(const Tree& tree, PlannedSave& out, const ParallelFor& parallel);

  std::mutex mu_;
  std::string key_;  // the structure of the cached plan, serialized
  std::shared_ptr<const PlanSkeleton> plan_;
  std::uint64_t unit_bytes_ = 0;
  std::vector<Part> parts_;  // key_ in key order, for a large tree; else empty
};

}  // namespace ckpt
