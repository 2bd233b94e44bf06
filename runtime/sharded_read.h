#pragma once
// Restore with resharding (docs/design.md, section 14): the template's leaves are boxes of the
// global arrays (a Sharding says which and where; a leaf it does not name is the whole array), in
// any decomposition and for any process count, whatever decomposition saved them.
//
// For every (template box, saved box) pair that intersect, the intersection's bytes are a set of
// runs in the saved box's row-major bytes (one per row of the intersection, longer when trailing
// dimensions are whole in both boxes). Only the checksummed blocks holding such runs are read:
// into staging, O_DIRECT, `queue_depth` reads in flight; as each unit of blocks arrives, a copy
// thread verifies it against its CRC32Cs and swaps its runs into the template
// (runtime/staged_read.h), so the copies overlap the reads. A failure swaps back what was swapped
// in: as for any restore, the template is left as it was. Beyond the staging the restore can
// get, it reads in two passes (verify all, then read, verify and copy).
#include "io/engine.h"
#include "runtime/checkpoint.h"
#include "runtime/manifest.h"
#include "runtime/sharding.h"
#include "runtime/tree.h"

namespace ckpt {

// Reads the checkpoint `dir` (manifest `m`, already decoded) into `templ`. The template must have
// the checkpoint's tree, dtypes and global shapes (Error(mismatch) listing every difference, as
// restore_checkpoint; `partial` as there); each leaf's array must fit its box.
void read_resharded(io::Engine& engine, const std::string& dir, const Manifest& m, Tree& templ,
                    const Sharding* sharding, bool partial, const ReadOptions& options);

}  // namespace ckpt
