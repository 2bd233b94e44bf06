// ckpt_bench --small: the latency of a checkpoint of a few KiB, where fixed costs (directory
// creation, the manifest, fsyncs, renames) dominate, against the least a durable, atomically
// published file costs on the same disk: write 4 KiB into a new file, fsync, rename, fsync the
// directory. The two loops alternate, one iteration each, so both see the same disk conditions;
// what each iteration wrote is removed (untimed) so directories stay small.
#include <fmt/format.h>

#include <filesystem>

#include "bench/baselines.h"
#include "bench/bench_options.h"
#include "bench/bench_util.h"
#include "bench/state.h"
#include "runtime/runtime.h"

namespace ckpt::bench {

namespace fs = std::filesystem;
namespace json = boost::json;

boost::json::object run_small(const BenchOptions& options) {
  constexpr int kWarmup = 10;
  BenchOptions o = options;
  if (o.staging_mb == 0) o.staging_mb = std::max<std::uint64_t>(1, (2 * (o.unit_kb << 10)) >> 20);
  SyntheticState state(o.small_kb << 10, 4);
  Runtime rt(o.runtime_options());
  const std::string bare_dir = o.work_dir + "/bare";
  const std::string run = o.work_dir + "/small";
  fs::create_directories(bare_dir);
  fs::create_directories(run);

  std::vector<double> bare, stall, durable, observed;
  for (int i = -kWarmup; i < o.saves; ++i) {
    const int n = i + kWarmup;
    double bare_ms = bare_small_write_ms(bare_dir, n);
    fs::remove(fmt::format("{}/bare-{}", bare_dir, n));

    std::string path = fmt::format("{}/step_{:06}", run, n);
    json::object meta{{"step", n}};
    auto t0 = Clock::now();
    SaveHandle h = rt.save(path, state.tree(), meta);
    double stall_ms = ms_since(t0);
    h.wait();
    double observed_ms = ms_since(t0);
    SaveTimings t = h.timings();
    fs::remove_all(path);
    if (i < 0) continue;
    bare.push_back(bare_ms);
    stall.push_back(stall_ms);
    observed.push_back(observed_ms);
    durable.push_back(to_ms(t.durable));
  }
  DrainReport drained = rt.drain();

  Summary obs = summarize(observed), b = summarize(bare);
  json::object out;
  out["benchmark"] = "small";
  out["machine"] = describe_machine(o.dir);
  out["engine"] = rt.stats().engine;
  out["saves"] = o.saves;
  out["tree_bytes"] = state.bytes();
  out["leaves"] = state.leaf_count();
  out["small"] = {{"stall_ms", to_json(summarize(stall), true)},
                  {"durable_ms", to_json(summarize(durable), true)},
                  {"observed_ms", to_json(obs, true)}};
  out["bare"] = {{"ms", to_json(b, true)}, {"bytes", 4096}};
  out["ratios"] = {{"small_p50_over_bare_p50", b.p50 > 0 ? obs.p50 / b.p50 : 0.0},
                   {"small_p99_over_bare_p99", b.p99 > 0 ? obs.p99 / b.p99 : 0.0}};
  out["unwaited_failures"] = drained.failed;
  return out;
}

}  // namespace ckpt::bench
