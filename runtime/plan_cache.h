#pragma once
// Plan reuse: a save plans its layout (flattened paths, extents, blocks, IO units, the manifest's
// skeleton) once per tree structure and reuses it while the structure, dtypes and shapes stay the
// same. "The same" is decided exactly, not by a hash: one walk over the tree compares its
// structure, serialized on the fly (node kinds, dict keys, list lengths, dtypes, shapes), with the
// cached plan's, and collects each leaf's memory, the only per-save work before the copy. On a
// hit the walk allocates nothing but the list of leaf pointers.
#include <cstddef>
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
};

class PlanCache {
 public:
  // The plan for `tree`, reused when its structure equals the last one planned; otherwise
  // plan_save (which refuses trees no reader accepts) and remember it.
  PlannedSave plan(const Tree& tree, std::uint64_t unit_bytes);

 private:
  std::mutex mu_;
  std::string key_;  // the structure of the cached plan, serialized
  std::shared_ptr<const PlanSkeleton> plan_;
  std::uint64_t unit_bytes_ = 0;
};

}  // namespace ckpt
