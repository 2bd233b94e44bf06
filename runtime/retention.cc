#include "runtime/retention.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <limits>

#include "io/crash_point.h"
#include "io/durable.h"
#include "io/error.h"
#include "io/log.h"
#include "runtime/run_lock.h"

namespace ckpt {

namespace fs = std::filesystem;

namespace {

// gc refuses to judge a run whose `latest` it cannot read: what it should spare is unknown.
RetentionPass judged(RetentionPass pass, const std::string& run_dir) {
  if (!pass.latest_error.empty()) {
    throw Error(Errc::corrupt,
                pass.latest_error + "; nothing removed, since what it should name is unknown",
                run_dir);
  }
  return pass;
}
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

std::string doom_checkpoint(const std::string& path) {
  std::string doomed = path + std::string(io::kTmpMarker) + "del-" + io::unique_tag();
  io::note_live_tmp(doomed);
  CKPT_CRASH_POINT("before_removal_rename");
  if (::rename(path.c_str(), doomed.c_str()) != 0) {
    int err = errno;
    io::forget_live_tmp(doomed);
    if (err == ENOENT) return {};  // removed already
    throw sys_error("rename", path, err);
  }
  CKPT_CRASH_POINT("after_removal_rename");
  fs::path parent = fs::path(path).parent_path();
  try {
    io::fsync_dir(parent.empty() ? "." : parent.string(), "removal_parent");
  } catch (...) {
    bury(doomed);  // renamed away is gone from the listing; finish the removal
    throw;
  }
  return doomed;
}

void bury(const std::string& doomed) noexcept {
  if (doomed.empty()) return;
  try {
    // File by file, a crash point before each unlink: a crash mid-removal leaves a temporary
    // with some files gone. Files an incremental save shares are other checkpoints' names too
    // (hard links, runtime/incremental.h): unlinking this name never frees their bytes.
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(doomed, ec)) {
      if (entry.is_directory(ec)) continue;
      CKPT_CRASH_POINT("removal_unlink");
      ::unlink(entry.path().c_str());
    }
    io::remove_tree(doomed);
  } catch (const std::exception& e) {
    log().error("could not delete {} (a leftover now): {}", doomed, e.what());
  }
  try {
    io::forget_live_tmp(doomed);
  } catch (...) {
  }
}

void remove_checkpoint(const std::string& path) { bury(doom_checkpoint(path)); }

RetentionPass apply_retention(const std::string& run_dir, const RetentionPolicy& policy,
                              const std::function<std::set<std::string>()>& protect_now,
                              bool dry_run) {
  RetentionPass pass;
  std::vector<CheckpointInfo> listed = list_checkpoints(run_dir);
  pass.listed = listed.size();
  std::set<std::string> keep = protect_now ? protect_now() : std::set<std::string>();
  try {
    if (auto latest = read_latest(run_dir)) keep.insert(*latest);
  } catch (const Error& e) {
    // An unreadable `latest` protects nothing; we then remove nothing either, to be safe.
    pass.latest_error = e.what();
    return pass;
  }
  for (const auto& suffix : select_for_removal(listed, policy, keep)) {
    if (!dry_run) {
      std::string doomed = doom_checkpoint(run_dir + "/" + suffix);
      if (doomed.empty()) continue;
      pass.doomed.push_back(std::move(doomed));
      log().debug("retention removed {}/{}", run_dir, suffix);
    }
    pass.removed.push_back(suffix);
  }
  return pass;
}

GcReport collect_garbage(const std::string& run_dir, const RetentionPolicy& policy,
                         const GcOptions& options) {
  GcReport report;
  // What a writer protects, read after listing (see runtime/run_lock.h): only a live lease
  // holder's publication counts. A dry run takes no lock (it may run on a read-only mount) and
  // honours any publication found.
  auto writer_protects = [&](RunLockFile* file) {
    std::set<std::string> protect;
    if (file != nullptr && !file->held_elsewhere(RunLockFile::Byte::lease)) return protect;
    if (auto state = read_writer_state(run_dir)) {
      report.writer_pid = state->pid;
      report.writer_protected = state->protect;
      protect = state->protect;
    } else if (file != nullptr) {
      report.writer_pid = 0;
    }
    return protect;
  };
  if (options.dry_run) {
    RetentionPass pass =
        judged(apply_retention(
                   run_dir, policy, [&] { return writer_protects(nullptr); }, true),
               run_dir);
    report.removed = std::move(pass.removed);
    report.kept = pass.listed - report.removed.size();
    return report;
  }
  RunLockFile lock_file(run_dir);
  RetentionPass pass;
  {
    lock_file.lock(RunLockFile::Byte::mutation, options.wait, "mutation lock");
    struct Unlock {
      RunLockFile& file;
      ~Unlock() { file.unlock(RunLockFile::Byte::mutation); }
    } unlock{lock_file};
    pass = judged(apply_retention(run_dir, policy, [&] { return writer_protects(&lock_file); }),
                  run_dir);
  }
  for (const auto& doomed : pass.doomed) bury(doomed);  // the lock is released: a writer goes on
  report.removed = std::move(pass.removed);
  report.kept = pass.listed - report.removed.size();
  if (options.leftovers) {
    // Only without a live writer: its temporaries may be saves in flight. Holding the lease
    // keeps one from starting meanwhile (it waits, told that gc holds it).
    if (lock_file.try_lock(RunLockFile::Byte::lease)) {
      struct Release {
        RunLockFile& file;
        ~Release() {
          ::unlink((file.run_dir() + "/" + kWriterFileName).c_str());
          file.unlock(RunLockFile::Byte::lease);
        }
      } release{lock_file};
      publish_writer_state(run_dir, {}, "ckpt gc");
      report.leftovers_removed = io::remove_leftovers(run_dir);
    } else {
      report.leftovers_refused = "leftovers left alone: a writer is live in the run directory (" +
                                 describe_holder(run_dir) +
                                 "); its temporaries may be saves in flight";
    }
  }
  return report;
}

}  // namespace ckpt
