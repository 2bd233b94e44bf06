#pragma once
// Retention: which committed checkpoints of a run directory to delete.
//
//  - keep_period: checkpoints whose metadata "step" is a multiple of it are kept forever.
//  - max_to_keep: of the others, keep this many (0 keeps all): the newest ones, or with
//    best_metric set, the best ones by that metadata key (best_mode_max: higher is better);
//    checkpoints without the metric count as worst.
//  - Never removed: the checkpoint `latest` names, and every suffix in `protect` (in flight).
// A removal renames the checkpoint to `<suffix>.tmp-del-<tag>` first and fsyncs the parent, so a
// crash mid-removal leaves a temporary that is cleaned up, never half a checkpoint.
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "runtime/catalog.h"

namespace ckpt {

struct RetentionPolicy {
  std::size_t max_to_keep = 0;
  std::int64_t keep_period = 0;
  std::string best_metric;
  bool best_mode_max = false;

  bool active() const noexcept { return max_to_keep > 0; }
};

// The suffixes `policy` would remove, given the run's checkpoints (oldest first, as
// list_checkpoints returns them) and the suffixes never to remove.
std::vector<std::string> select_for_removal(const std::vector<CheckpointInfo>& checkpoints,
                                            const RetentionPolicy& policy,
                                            const std::set<std::string>& protect);

// Applies `policy` to run_dir; returns the removed suffixes.
std::vector<std::string> apply_retention(const std::string& run_dir, const RetentionPolicy& policy,
                                         const std::set<std::string>& protect = {});

// Durably removes one committed checkpoint (rename to a temporary, fsync, delete).
void remove_checkpoint(const std::string& path);

}  // namespace ckpt
