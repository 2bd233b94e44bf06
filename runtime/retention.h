#pragma once
// Retention: which committed checkpoints of a run directory to delete.
//
//  - keep_period: checkpoints whose metadata "step" is a multiple of it are kept forever.
//  - max_to_keep: of the others, keep this many (0 keeps all): the newest ones, or with
//    best_metric set, the best ones by that metadata key (best_mode_max: higher is better);
//    checkpoints without the metric count as worst.
//  - prefix: when set (e.g. "step/"), the policy sees only checkpoints whose suffix starts with
//    it: max_to_keep counts them alone and nothing else is ever removed ("eval/best" survives
//    a rotation of "step/*"). Empty: every checkpoint of the run directory counts.
//  - Never removed: the checkpoint `latest` names, and every suffix in `protect` (in flight).
// A removal renames the checkpoint to `<suffix>.tmp-del-<tag>` first and fsyncs the parent, so a
// crash mid-removal leaves a temporary that is cleaned up, never half a checkpoint.
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
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
  std::string prefix;

  bool active() const noexcept { return max_to_keep > 0; }
};

// The suffixes `policy` would remove, given the run's checkpoints (oldest first, as
// list_checkpoints returns them) and the suffixes never to remove.
std::vector<std::string> select_for_removal(const std::vector<CheckpointInfo>& checkpoints,
                                            const RetentionPolicy& policy,
                                            const std::set<std::string>& protect);

// What one retention pass took away: the suffixes, and the renamed directories still to delete.
struct RetentionPass {
  std::size_t listed = 0;           // committed checkpoints found
  std::vector<std::string> removed;
  std::vector<std::string> doomed;  // `<path>.tmp-del-<tag>`: bury() them, lock released
  std::string latest_error;         // why `latest` could not be read (then nothing is removed)
};

// Applies `policy` to run_dir. The caller holds the run directory's mutation lock
// (runtime/run_lock.h). Order: list the checkpoints, then call protect_now() (what writers
// protect: called after listing, so a checkpoint that committed before the listing is either
// still protected or was let go), then read `latest`. Doomed checkpoints are renamed away
// (`doom_checkpoint`) and returned; delete them with bury() after releasing the lock. An
// unreadable `latest` removes nothing (the pass says why); `dry_run` renames nothing.
RetentionPass apply_retention(const std::string& run_dir, const RetentionPolicy& policy,
                              const std::function<std::set<std::string>()>& protect_now,
                              bool dry_run = false);

struct GcOptions {
  bool dry_run = false;
  bool leftovers = false;                       // also remove *.tmp-* leftovers
  std::chrono::milliseconds wait{30000};        // for the run directory's mutation lock
};

struct GcReport {
  std::vector<std::string> removed;            // or, for a dry run, would be removed
  std::vector<std::string> leftovers_removed;
  std::size_t kept = 0;                        // committed checkpoints left
  std::optional<long> writer_pid;              // a live writer's pid (0: unknown)
  std::set<std::string> writer_protected;      // what that writer protects
  std::string leftovers_refused;               // why leftovers were left alone, if they were
};

// Retention from outside the writer (`ckpt gc`), safe beside a live writer in another process:
// takes the mutation lock (waiting up to options.wait, then Error(busy) naming the holder),
// spares what the writer publishes as protected and what `latest` names. Leftovers are removed
// only when no writer is live (their temporaries may be saves in flight); gc then holds the
// writer lease meanwhile, so none starts. Throws Error(corrupt) when `latest` is unreadable:
// nothing can be judged safe to remove.
GcReport collect_garbage(const std::string& run_dir, const RetentionPolicy& policy,
                         const GcOptions& options);

// Durably removes one committed checkpoint (rename to a temporary, fsync, delete).
void remove_checkpoint(const std::string& path);
// The first half of remove_checkpoint: renames `path` to `<path>.tmp-del-<tag>` (a live
// temporary of this process) and fsyncs the parent; returns the new name, or "" when `path` was
// gone already. From here the checkpoint is not listed; a crash leaves a leftover.
std::string doom_checkpoint(const std::string& path);
// The second half: deletes what doom_checkpoint renamed (logs, never throws).
void bury(const std::string& doomed) noexcept;

}  // namespace ckpt
