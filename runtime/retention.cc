#include "runtime/retention.h"

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

}  // namespace ckpt
