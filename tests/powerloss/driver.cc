// powerloss_driver: the workload the power-loss explorer records (tests/powerloss/explorer.cc).
//
//   powerloss_driver --dir RUN --scenario NAME --phase setup|run
//
// `setup` builds the scenario's starting state in RUN (not recorded; the explorer then treats it
// as durable). `run` performs the scenario with the Runtime (thread-pool engine) while the trace
// shim records its system calls, and marks in the trace what the program was told:
//   K call save <suffix> <seed>     before save()      K ack save <suffix> <seed>    after wait()
//   K call register <suffix>        before register    K ack register <suffix>       after wait()
// The explorer holds every crash state after an `ack` to it. The sharded scenario runs
// kShardedRanks simulated processes (LocalGroup: one thread and one Runtime each) in this
// process; each of its collective saves and registrations is marked once, around all of them.
// Exit codes: 0 done, 2 failure, 3 bad arguments.
#include <dlfcn.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "io/durable.h"
#include "io/file.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/communicator.h"
#include "runtime/runtime.h"
#include "tests/powerloss/scenario.h"

namespace {

using namespace ckpt;

void mark(const std::string& text) {
  using Mark = void (*)(const char*);
  static auto fn = reinterpret_cast<Mark>(::dlsym(RTLD_DEFAULT, "ckpt_trace_mark"));
  if (fn != nullptr) fn(text.c_str());
}

boost::json::object seed_metadata(std::int64_t seed) {
  boost::json::object md;
  md["step"] = seed;
  md["seed"] = seed;
  return md;
}

struct Driver {
  std::string run_dir;
  Runtime rt{powerloss::driver_options()};

  SaveHandle save(const std::string& suffix, std::int64_t seed,
                  SnapshotMode mode = SnapshotMode::sync,
                  const RetentionPolicy& retention = RetentionPolicy(), bool incremental = false) {
    boost::json::object md = seed_metadata(seed);
    SaveOptions o;
    o.mode = mode;
    o.run_dir = run_dir;
    o.retention = retention;
    o.incremental = incremental;
    mark("call save " + suffix + " " + std::to_string(seed));
    Tree state = powerloss::make_state(seed);
    SaveHandle h = rt.save(run_dir + "/" + suffix, state, md, o);
    // Overlapped saves read the arrays after save() returns: keep them until snapshotted.
    h.wait_snapshotted();
    return h;
  }
  void acked(SaveHandle& h, const std::string& suffix, std::int64_t seed) {
    h.wait();
    mark("ack save " + suffix + " " + std::to_string(seed));
  }
  void save_and_wait(const std::string& suffix, std::int64_t seed, bool incremental = false) {
    SaveHandle h = save(suffix, seed, SnapshotMode::sync, RetentionPolicy(), incremental);
    acked(h, suffix, seed);
  }
  RegisterHandle register_latest(const std::string& suffix) {
    mark("call register " + suffix);
    return rt.register_latest(run_dir, suffix);
  }
  void acked(RegisterHandle& h, const std::string& suffix) {
    h.wait();
    mark("ack register " + suffix);
  }
  void register_and_wait(const std::string& suffix) {
    RegisterHandle h = register_latest(suffix);
    acked(h, suffix);
  }
};

// A sharded job of kShardedRanks simulated processes (LocalGroup), each with its own Runtime;
// each collective operation runs on one thread per process, and is marked once.
struct ShardedJob {
  std::string run_dir;
  LocalGroup group{powerloss::kShardedRanks};
  std::vector<std::unique_ptr<Runtime>> rts;

  ShardedJob() {
    for (int r = 0; r < powerloss::kShardedRanks; ++r) {
      RuntimeOptions o = powerloss::driver_options();
      o.communicator = group.member(r);
      o.collective_timeout = std::chrono::seconds(20);
      rts.push_back(std::make_unique<Runtime>(o));
    }
  }
  // Runs fn(rank, runtime) on every process at once; throws the first failure.
  void on_ranks(const std::function<void(int, Runtime&)>& fn) {
    std::vector<std::string> errors(rts.size());
    std::vector<std::thread> threads;
    for (int r = 0; r < static_cast<int>(rts.size()); ++r) {
      threads.emplace_back([&, r] {
        try {
          fn(r, *rts[static_cast<std::size_t>(r)]);
        } catch (const std::exception& e) {
          errors[static_cast<std::size_t>(r)] = "process " + std::to_string(r) + ": " + e.what();
        }
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& e : errors)
      if (!e.empty()) throw std::runtime_error(e);
  }
  void save_and_wait(const std::string& suffix, std::int64_t seed,
                     const RetentionPolicy& retention = RetentionPolicy()) {
    mark("call save " + suffix + " " + std::to_string(seed));
    const Tree state = powerloss::make_state(seed);
    on_ranks([&](int r, Runtime& rt) {
      auto [box, sharding] = powerloss::shard_of(state, r, powerloss::kShardedRanks);
      SaveOptions o;
      o.run_dir = run_dir;
      o.retention = retention;
      o.sharding = sharding;
      rt.save(run_dir + "/" + suffix, box, seed_metadata(seed), o).wait();
    });
    mark("ack save " + suffix + " " + std::to_string(seed));
  }
  void register_and_wait(const std::string& suffix) {
    mark("call register " + suffix);
    on_ranks([&](int, Runtime& rt) { rt.register_latest(run_dir, suffix).wait(); });
    mark("ack register " + suffix);
  }
  void drain() {
    on_ranks([&](int, Runtime& rt) {
      DrainReport report = rt.drain();
      if (!report.ok()) throw std::runtime_error("saves failed: " + report.errors.front());
    });
  }
};

// The sharded scenarios: step/1 is set up, step/2 saved and registered under the recording;
// sharded_overwrite then saves step/2 again with max_to_keep 1 and registers it.
void sharded(const std::string& run_dir, std::string_view scenario, std::string_view phase) {
  ShardedJob job;
  job.run_dir = run_dir;
  for (auto& rt : job.rts) {
    if (rt->stats().engine != "threads")
      throw std::runtime_error("the Runtime uses the " + rt->stats().engine + " engine, not threads");
  }
  const std::string step = phase == "setup" ? "step/1" : "step/2";
  job.save_and_wait(step, phase == "setup" ? 50 : 51);
  job.register_and_wait(step);
  if (phase == "run" && scenario == "sharded_overwrite") {
    RetentionPolicy keep1;
    keep1.max_to_keep = 1;
    job.save_and_wait(step, 52, keep1);
    job.register_and_wait(step);
  }
  job.drain();
}

void setup(Driver& d, std::string_view scenario) {
  if (scenario.starts_with("incremental")) {
    // The chain's first save: incremental on, so its extents carry the hashes later saves match.
    d.save_and_wait("step/1", 101, true);
    d.register_and_wait("step/1");
    return;
  }
  int committed = scenario == "overlapped" || scenario == "sync_api" ? 1
                  : scenario == "register" ? 2
                  : scenario == "retention" ? 3
                  : scenario == "gc"        ? 4
                                            : 0;
  for (int s = 1; s <= committed; ++s) d.save_and_wait("step/" + std::to_string(s), s);
  if (committed > 0) {
    d.register_and_wait("step/" + std::to_string(scenario == "register" ? 1 : committed));
  }
  if (scenario == "gc") {
    // What a save killed before its commit leaves behind.
    const std::string tmp = d.run_dir + "/step/5.tmp-999999-0-0";
    io::make_dirs(tmp);
    io::write_new_file(tmp + "/data-00000.bin", std::string(5000, 'x'));
  }
}

void run(Driver& d, std::string_view scenario) {
  if (scenario == "sync") {
    d.save_and_wait("step/1", 10);
    d.register_and_wait("step/1");
    d.save_and_wait("step/1", 11);  // an overwrite: RENAME_EXCHANGE, then the old one goes
    d.register_and_wait("step/1");
  } else if (scenario == "overlapped") {
    SaveHandle a = d.save("step/2", 20, SnapshotMode::overlapped);
    SaveHandle b = d.save("step/3", 21, SnapshotMode::overlapped);
    RegisterHandle ra = d.register_latest("step/2");
    RegisterHandle rb = d.register_latest("step/3");
    d.acked(a, "step/2", 20);
    d.acked(ra, "step/2");
    d.acked(b, "step/3", 21);
    d.acked(rb, "step/3");
  } else if (scenario == "register") {
    d.register_and_wait("step/2");
  } else if (scenario == "sync_api") {
    // The synchronous writer (save_checkpoint) and write_latest, without the Runtime.
    auto engine = io::make_engine({io::EngineKind::threads, 4, 2});
    WriteOptions o;
    o.extent_bytes = o.unit_bytes = 8192;
    o.queue_depth = 2;
    boost::json::object md;
    md["step"] = 2;
    md["seed"] = 30;
    mark("call save step/2 30");
    save_checkpoint(*engine, d.run_dir + "/step/2", powerloss::make_state(30), md, o);
    mark("ack save step/2 30");
    mark("call register step/2");
    write_latest(d.run_dir, "step/2");
    mark("ack register step/2");
  } else if (scenario == "retention") {
    RetentionPolicy keep2;
    keep2.max_to_keep = 2;
    SaveHandle h = d.save("step/4", 40, SnapshotMode::sync, keep2);
    d.acked(h, "step/4", 40);
    d.register_and_wait("step/4");
  } else if (scenario == "incremental") {
    // step/2 links step/1's data file and writes w0 only; step/3 links both files of step/2,
    // drops the one it does not use, and its retention pass removes step/1, whose file lives on
    // under the names step/2 and step/3 gave it.
    d.save_and_wait("step/2", 102, true);
    d.register_and_wait("step/2");
    RetentionPolicy keep2;
    keep2.max_to_keep = 2;
    SaveHandle h = d.save("step/3", 103, SnapshotMode::sync, keep2, true);
    d.acked(h, "step/3", 103);
    d.register_and_wait("step/3");
  } else if (scenario == "incremental_overlapped") {
    // step/3 starts before step/2 committed: its base is whichever the Runtime knows then.
    RetentionPolicy keep2;
    keep2.max_to_keep = 2;
    SaveHandle a = d.save("step/2", 102, SnapshotMode::overlapped, keep2, true);
    SaveHandle b = d.save("step/3", 103, SnapshotMode::overlapped, keep2, true);
    RegisterHandle ra = d.register_latest("step/2");
    RegisterHandle rb = d.register_latest("step/3");
    d.acked(a, "step/2", 102);
    d.acked(ra, "step/2");
    d.acked(b, "step/3", 103);
    d.acked(rb, "step/3");
  } else {
    throw std::runtime_error("scenario " + std::string(scenario) + " has no run phase here");
  }
  DrainReport report = d.rt.drain();
  for (const auto& e : report.errors) std::fprintf(stderr, "failed: %s\n", e.c_str());
  if (!report.ok()) throw std::runtime_error("saves failed");
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir, scenario, phase;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string_view k = argv[i];
    if (k == "--dir") dir = argv[i + 1];
    else if (k == "--scenario") scenario = argv[i + 1];
    else if (k == "--phase") phase = argv[i + 1];
  }
  if (dir.empty() || scenario.empty() || (phase != "setup" && phase != "run")) {
    std::fprintf(stderr, "usage: powerloss_driver --dir RUN --scenario NAME --phase setup|run\n");
    return 3;
  }
  try {
    if (scenario.starts_with("sharded")) {
      sharded(dir, scenario, phase);
      return 0;
    }
    Driver d;
    d.run_dir = dir;
    // The trace shim sees pwrite and fsync, not io_uring requests (tests/powerloss/trace_shim.cc).
    if (d.rt.stats().engine != "threads") {
      throw std::runtime_error("the Runtime uses the " + d.rt.stats().engine + " engine, not threads");
    }
    if (phase == "setup") {
      setup(d, scenario);
    } else {
      run(d, scenario);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "powerloss_driver: %s\n", e.what());
    return 2;
  }
}
