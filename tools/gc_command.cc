// ckpt gc: applies a retention policy to a run directory with the runtime's own retention code
// (runtime/retention.h): never the checkpoint `latest` names, never a step that is a multiple of
// --keep-period, never what a live writer in another process protects (runtime/run_lock.h).
#include <fmt/format.h>

#include <boost/json.hpp>

#include "runtime/catalog.h"
#include "runtime/retention.h"
#include "tools/commands.h"
#include "tools/format.h"

namespace ckpt::tools {

int run_gc(const std::string& run_dir, const GcOptions& options, bool json) {
  require_directory(run_dir, "run directory");
  RetentionPolicy policy;
  policy.max_to_keep = options.keep;
  policy.keep_period = options.keep_period;
  policy.best_metric = options.best_metric;
  policy.best_mode_max = options.best_mode == "max";
  policy.prefix = options.prefix;
  ckpt::GcOptions gc;
  gc.dry_run = options.dry_run;
  gc.leftovers = options.leftovers;
  gc.wait = std::chrono::milliseconds(static_cast<std::int64_t>(options.wait_seconds * 1000));
  GcReport report = collect_garbage(run_dir, policy, gc);
  const int rc = report.leftovers_refused.empty() ? kExitOk : kExitFailed;
  if (json) {
    boost::json::object out;
    out["run_dir"] = run_dir;
    out["dry_run"] = options.dry_run;
    out["removed"] = boost::json::value_from(report.removed);
    out["leftovers_removed"] = boost::json::value_from(report.leftovers_removed);
    out["kept"] = report.kept;
    out["writer_pid"] =
        report.writer_pid ? boost::json::value(*report.writer_pid) : boost::json::value(nullptr);
    out["writer_protected"] = boost::json::value_from(report.writer_protected);
    if (!report.leftovers_refused.empty()) out["leftovers_refused"] = report.leftovers_refused;
    fmt::print("{}\n", boost::json::serialize(out));
    return rc;
  }
  for (const auto& s : report.removed) {
    fmt::print("{} {}\n", options.dry_run ? "would remove" : "removed", escape_name(s));
  }
  for (const auto& s : report.leftovers_removed)
    fmt::print("removed leftover {}\n", escape_name(s));
  if (report.writer_pid) {
    fmt::print("a writer is live (pid {}); spared what it protects ({} suffix{})\n",
               *report.writer_pid, report.writer_protected.size(),
               report.writer_protected.size() == 1 ? "" : "es");
  }
  fmt::print("{}: {} checkpoint{} {}, {} kept\n", run_dir, report.removed.size(),
             report.removed.size() == 1 ? "" : "s", options.dry_run ? "to remove" : "removed",
             report.kept);
  if (!report.leftovers_refused.empty()) fmt::print(stderr, "ckpt: {}\n", report.leftovers_refused);
  return rc;
}

}  // namespace ckpt::tools
