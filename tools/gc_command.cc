// ckpt gc: applies a retention policy to a run directory with the runtime's own retention code
// (runtime/retention.h): never the checkpoint `latest` names, never a step that is a multiple of
// --keep-period.
#include <fmt/format.h>

#include <boost/json.hpp>

#include "io/durable.h"
#include "runtime/catalog.h"
#include "runtime/retention.h"
#include "tools/commands.h"

namespace ckpt::tools {

int run_gc(const std::string& run_dir, const GcOptions& options, bool json) {
  require_directory(run_dir, "run directory");
  RetentionPolicy policy;
  policy.max_to_keep = options.keep;
  policy.keep_period = options.keep_period;
  policy.best_metric = options.best_metric;
  policy.best_mode_max = options.best_mode == "max";
  std::vector<std::string> removed;
  if (options.dry_run) {
    std::set<std::string> protect;
    if (auto latest = read_latest(run_dir)) protect.insert(*latest);
    removed = select_for_removal(list_checkpoints(run_dir), policy, protect);
  } else {
    removed = apply_retention(run_dir, policy);
  }
  std::vector<std::string> leftovers;
  if (options.leftovers && !options.dry_run) leftovers = io::remove_leftovers(run_dir);
  std::size_t kept = list_checkpoints(run_dir).size() - (options.dry_run ? removed.size() : 0);
  if (json) {
    boost::json::object out;
    out["run_dir"] = run_dir;
    out["dry_run"] = options.dry_run;
    out["removed"] = boost::json::value_from(removed);
    out["leftovers_removed"] = boost::json::value_from(leftovers);
    out["kept"] = kept;
    fmt::print("{}\n", boost::json::serialize(out));
    return kExitOk;
  }
  for (const auto& s : removed) fmt::print("{} {}\n", options.dry_run ? "would remove" : "removed", s);
  for (const auto& s : leftovers) fmt::print("removed leftover {}\n", s);
  fmt::print("{}: {} checkpoint{} {}, {} kept\n", run_dir, removed.size(),
             removed.size() == 1 ? "" : "s", options.dry_run ? "to remove" : "removed", kept);
  return kExitOk;
}

}  // namespace ckpt::tools
