#include "runtime/retention.h"

#include "runtime/run_lock.h"

#include <algorithm>
#include <filesystem>
#include <limits>

#include "io/durable.h"
#include "io/error.h"
#include "io/log.h"

namespace ckpt {

namespace fs = std::filesystem;

namespace {
double metric_of(const CheckpointInfo& c, const RetentionPolicy& p) {
  const double worst = p.best_mode_max ? -std::numeric_limits<double>::infinity()
                                       : std::numeric_limits<double>::infinity();
  const auto* v = c.metadata.if_contains(p.best_metric);
  if (v == nullptr) return worst;
  if (v->is_double()) return v->as_double();
  if (v->is_int64()) return static_cast<double>(v->as_int64());
  if (v->is_uint64()) return static_cast<double>(v->as_uint64());
  return worst;
}
}  // namespace

std::vector<std::string> select_for_removal(const std::vector<CheckpointInfo>& checkpoints,
                                            const RetentionPolicy& policy,
                                            const std::set<std::string>& protect) {
  std::vector<std::string> remove;
  if (!policy.active()) return remove;
  std::vector<const CheckpointInfo*> candidates;
  for (const auto& c : checkpoints) {
    if (!c.error.empty()) continue;  // unreadable: not ours to judge, `ckpt verify` reports it
    if (!c.suffix.starts_with(policy.prefix)) continue;  // outside the policy's care
    if (policy.keep_period > 0 && c.step && *c.step % policy.keep_period == 0) continue;
    candidates.push_back(&c);
  }
  // Order best-to-keep first: newest first, or best metric first (newest breaks ties).
  std::vector<const CheckpointInfo*> order(candidates.rbegin(), candidates.rend());
  if (!policy.best_metric.empty()) {
    std::stable_sort(order.begin(), order.end(),
                     [&](const CheckpointInfo* a, const CheckpointInfo* b) {
                       double ma = metric_of(*a, policy);
                       double mb = metric_of(*b, policy);
                       return policy.best_mode_max ? ma > mb : ma < mb;
                     });
  }
  for (std::size_t i = policy.max_to_keep; i < order.size(); ++i) {
    if (!protect.contains(order[i]->suffix)) remove.push_back(order[i]->suffix);
  }
  return remove;
}

void remove_checkpoint(const std::string& path) {
  std::string doomed = path + std::string(io::kTmpMarker) + "del-" + io::unique_tag();
  io::note_live_tmp(doomed);
  struct Forget {
    const std::string& path;
    ~Forget() { io::forget_live_tmp(path); }
  } forget{doomed};
  if (::rename(path.c_str(), doomed.c_str()) != 0) {
    if (errno == ENOENT) return;  // removed already
    throw sys_error("rename", path, errno);
  }
  fs::path parent = fs::path(path).parent_path();
  io::fsync_dir(parent.empty() ? "." : parent.string());
  io::remove_tree(doomed);
}

std::vector<std::string> apply_retention(const std::string& run_dir, const RetentionPolicy& policy,
                                         const std::set<std::string>& protect) {
  std::set<std::string> keep = protect;
  try {
    if (auto latest = read_latest(run_dir)) keep.insert(*latest);
  } catch (const Error& e) {
    // An unreadable `latest` protects nothing; we then remove nothing either, to be safe.
    log().warn("retention skipped for {}: {}", run_dir, e.what());
    return {};
  }
  std::vector<std::string> removed;
  for (const auto& suffix : select_for_removal(list_checkpoints(run_dir), policy, keep)) {
    remove_checkpoint(run_dir + "/" + suffix);
    log().debug("retention removed {}/{}", run_dir, suffix);
    removed.push_back(suffix);
  }
  return removed;
}

GcReport collect_garbage(const std::string& run_dir, const RetentionPolicy& policy,
                         const GcOptions& options) {
  GcReport report;
  RunLockFile lock_file(run_dir);
  // Holding the writer lease proves no writer is live, and keeps one from starting meanwhile.
  const bool no_writer = lock_file.try_lock(RunLockFile::Byte::lease);
  struct Unlock {
    RunLockFile& file;
    bool lease;
    ~Unlock() {
      if (lease) file.unlock(RunLockFile::Byte::lease);
    }
  } unlock_lease{lock_file, no_writer};
  lock_file.lock(RunLockFile::Byte::mutation, options.wait, "mutation lock");
  struct UnlockMutation {
    RunLockFile& file;
    ~UnlockMutation() { file.unlock(RunLockFile::Byte::mutation); }
  } unlock_mutation{lock_file};

  // Listed first, then what the writer protects, then `latest` (see runtime/run_lock.h).
  std::vector<CheckpointInfo> listed = list_checkpoints(run_dir);
  std::set<std::string> keep;
  if (!no_writer) {
    auto state = read_writer_state(run_dir);
    report.writer_pid = state ? state->pid : 0;
    if (state) report.writer_protected = state->protect;
    keep = report.writer_protected;
  }
  std::optional<std::string> latest;
  try {
    latest = read_latest(run_dir);
  } catch (const Error& e) {
    throw Error(Errc::corrupt,
                std::string(e.what()) + "; nothing removed, since what it should name is unknown",
                run_dir);
  }
  if (latest) keep.insert(*latest);
  report.removed = select_for_removal(listed, policy, keep);
  if (!options.dry_run) {
    for (const auto& suffix : report.removed) {
      remove_checkpoint(run_dir + "/" + suffix);
      log().debug("gc removed {}/{}", run_dir, suffix);
    }
  }
  report.kept = listed.size() - report.removed.size();
  if (options.leftovers && !options.dry_run) {
    if (no_writer) {
      report.leftovers_removed = io::remove_leftovers(run_dir);
    } else {
      report.leftovers_refused =
          "leftovers left alone: a writer is live in the run directory (" +
          describe_holder(run_dir) + "); its temporaries may be saves in flight";
    }
  }
  return report;
}

}  // namespace ckpt
