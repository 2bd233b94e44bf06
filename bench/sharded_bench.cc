// ckpt_bench --sharded: a collective save of one global state split over the processes of an MPI
// job (or one process without mpirun), next to baselines taken in the same run:
//
//   mpirun -np 4 build/bench/ckpt_bench --sharded --dir /tmp/ckbench --state-mb 512 --saves 3
//   build/bench/ckpt_bench --sharded --dir /tmp/ckbench --state-mb 512 --saves 3
//   mpirun -np 3 build/bench/ckpt_bench --sharded --dir /tmp/ckbench --state-mb 384 --saves 3
//       --incremental --changed-fraction 0.05    (one line)
//
// The global state (--state-mb, --leaves float32 vectors) is the same for every process count:
// each process holds 1/N of every leaf (a box of it) and saves it with the others. Measured:
//  - stall per process (the save() call; the slowest process), against the memcpy of its own
//    shard with its copy threads, all processes at once from a barrier (the slowest process;
//    best of --baseline-runs);
//  - aggregate time to durable (from a barrier to the last process's handle completing: every
//    byte written, fsynced and the global manifest committed), against the raw write of the same
//    total bytes by all processes at once (each its share, O_DIRECT io_uring + fsync, from a
//    barrier to the last one done);
//  - restore (each process reads its boxes, in the same decomposition; slowest process) against
//    the raw read of the same bytes by all processes at once;
//  - with --incremental, after the full saves: incremental collective saves into a run directory
//    (the newest two kept), each after a step that changes --changed-fraction of the leaves (the
//    same leaves on every process), three warm-ups first; time to durable against the full
//    saves', bytes written (all processes, and the most one process wrote) against the state,
//    and a restore of the last one checked against the state's checksum at its save.
// Process 0 prints the table (and --json); the others print nothing but errors.
#include <fmt/format.h>

#include <algorithm>
#include <boost/json/serialize.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "bench/baselines.h"
#include "bench/bench_options.h"
#include "bench/bench_util.h"
#include "bench/state.h"
#include "io/error.h"
#include "io/file.h"
#include "runtime/communicator.h"
#ifdef CKPT_HAVE_MPI
#include "runtime/mpi_communicator.h"
#endif

namespace ckpt::bench {

namespace {

namespace fs = std::filesystem;
namespace json = boost::json;

Deadline soon() { return Clock::now() + std::chrono::minutes(10); }

// Every process's `v` (on every process).
std::vector<double> everyone(Communicator& comm, double v) {
  std::string mine(sizeof v, '\0');
  std::memcpy(mine.data(), &v, sizeof v);
  std::vector<double> out;
  for (const auto& s : comm.allgather(collective_tag(comm.next_sequence(), 0), mine, soon())) {
    double x = 0;
    std::memcpy(&x, s.data(), sizeof x);
    out.push_back(x);
  }
  return out;
}

// The largest of every process's `v` (on every process).
double slowest(Communicator& comm, double v) {
  std::vector<double> all = everyone(comm, v);
  return *std::max_element(all.begin(), all.end());
}

double sum_over(Communicator& comm, double v) {
  double out = 0;
  for (double x : everyone(comm, v)) out += x;
  return out;
}

void barrier(Communicator& comm) { comm.barrier(collective_tag(comm.next_sequence(), 0), soon()); }

}  // namespace

int run_sharded(BenchOptions& o, std::shared_ptr<Communicator> comm) {
  const int rank = comm->rank();
  const auto n = static_cast<std::uint64_t>(comm->size());
  // Every leaf's global length divisible by the process counts measured (1, 2, 4): equal boxes.
  const std::uint64_t leaf_floats = ((o.state_mb << 20) / o.leaves / sizeof(float) / 64) * 64;
  if (leaf_floats % n != 0 || leaf_floats == 0) {
    throw Error(Errc::invalid_argument, "state too small for this process count");
  }
  const std::uint64_t shard_bytes = leaf_floats / n * sizeof(float) * o.leaves;
  SyntheticState state(shard_bytes, o.leaves);
  Sharding sharding;
  state.tree().for_each_leaf([&](const std::string& path, const Array& a) {
    sharding.shard(path, {a.shape()[0] * n}, {a.shape()[0] * static_cast<std::uint64_t>(rank)});
  });
  const std::string work = o.dir + "/ckpt_bench-sharded";
  if (rank == 0) {
    fs::remove_all(work);
    fs::create_directories(work);
  }
  barrier(*comm);

  // Baselines, every process at once as in a collective save: each run of the memcpy of each
  // process's shard, of the raw write and of the raw read starts at a barrier on every process,
  // and its time is the slowest process's (the aggregate: N files written in parallel).
  io::AlignedBuffer scratch(static_cast<std::size_t>(io::align_up(state.bytes(), 4096)));
  RawSync sync{[&] { barrier(*comm); }, [&](double ms) { return slowest(*comm, ms); }};
  double memcpy_ms =
      memcpy_best_ms(state.spans(), scratch.data(), o.copy_threads, o.baseline_runs, &sync);
  barrier(*comm);
  auto start = Clock::now();
  RawIo raw = raw_io_best(work, scratch.data(), io::align_up(state.bytes(), 4096), o.baseline_runs,
                          true, &sync);
  double raw_write_ms = raw.write_ms;
  double raw_read_ms = raw.read_ms;
  double raw_wall_ms = slowest(*comm, ms_since(start));

  RuntimeOptions ro = o.runtime_options();
  ro.communicator = comm;
  ro.staging_budget = std::max<std::uint64_t>(ro.staging_budget, 2 * state.bytes() + (64u << 20));
  Runtime rt(ro);
  rt.reserve_staging(state.bytes());
  SaveOptions so;
  so.sharding = sharding;
  so.mode = o.mode == "overlapped" ? SnapshotMode::overlapped : SnapshotMode::sync;
  std::vector<double> stall, durable;
  for (int i = 0; i <= o.saves; ++i) {  // save 0 warms up
    barrier(*comm);
    auto t0 = Clock::now();
    SaveHandle h = rt.save(work + "/step/" + std::to_string(i), state.tree(), {}, so);
    double s = ms_since(t0);
    if (so.mode == SnapshotMode::overlapped) h.wait_snapshotted();
    h.wait();
    double d = ms_since(t0);
    s = slowest(*comm, s);
    d = slowest(*comm, d);
    if (i > 0) {
      stall.push_back(s);
      durable.push_back(d);
    }
  }
  std::vector<double> restore;
  const std::string last = work + "/step/" + std::to_string(o.saves);
  const std::uint32_t saved = state.checksum();
  for (int i = 0; i < o.restores; ++i) {
    barrier(*comm);
    auto t0 = Clock::now();
    rt.restore(last, state.tree(), sharding);
    restore.push_back(slowest(*comm, ms_since(t0)));
  }
  bool verified = state.checksum() == saved;
  verified = slowest(*comm, verified ? 0.0 : 1.0) == 0.0;

  // Incremental saves: the same steps, each changing the same fraction of the leaves.
  std::vector<double> inc_stall, inc_durable, inc_written, inc_written_max;
  bool inc_verified = true;
  if (o.incremental) {
    SaveOptions si = so;
    si.incremental = true;
    si.run_dir = work + "/run_inc";
    const int warmups = 3;
    std::vector<std::string> kept;
    std::string inc_last;
    std::uint32_t inc_saved = 0;
    for (int k = 1; k <= warmups + o.saves; ++k) {
      state.update(o.changed_fraction);
      inc_saved = state.checksum();
      inc_last = si.run_dir + "/step_" + std::to_string(k);
      barrier(*comm);
      auto t0 = Clock::now();
      SaveHandle h = rt.save(inc_last, state.tree(), {}, si);
      double s = ms_since(t0);
      if (si.mode == SnapshotMode::overlapped) h.wait_snapshotted();
      h.wait();
      double d = ms_since(t0);
      const auto written = static_cast<double>(h.timings().written_bytes);
      s = slowest(*comm, s);
      d = slowest(*comm, d);
      double all = sum_over(*comm, written);
      double most = slowest(*comm, written);
      // The newest two are kept, as the single-process series does: removed by process 0 between
      // saves, outside the timings (rm -rf is enough: hard links keep what the newer ones share).
      kept.push_back(inc_last);
      if (kept.size() > 2) {
        if (rank == 0) fs::remove_all(kept.front());
        kept.erase(kept.begin());
      }
      if (k > warmups) {
        inc_stall.push_back(s);
        inc_durable.push_back(d);
        inc_written.push_back(all);
        inc_written_max.push_back(most);
      }
    }
    barrier(*comm);
    rt.restore(inc_last, state.tree(), sharding);
    inc_verified = slowest(*comm, state.checksum() == inc_saved ? 0.0 : 1.0) == 0.0;
  }

  Summary st = summarize(stall), du = summarize(durable), re = summarize(restore);
  const double total = static_cast<double>(shard_bytes * n);
  json::object r;
  r["processes"] = n;
  r["communicator"] = comm->describe();
  r["total_bytes"] = shard_bytes * n;
  r["shard_bytes"] = shard_bytes;
  r["leaves"] = o.leaves;
  r["mode"] = o.mode;
  r["memcpy_shard_ms"] = memcpy_ms;
  r["raw_write_ms"] = raw_write_ms;
  r["raw_read_ms"] = raw_read_ms;
  r["raw_wall_ms"] = raw_wall_ms;
  r["stall_ms"] = to_json(st);
  r["durable_ms"] = to_json(du);
  r["restore_ms"] = to_json(re);
  r["stall_over_memcpy"] = st.p50 / memcpy_ms;
  r["raw_write_over_durable"] = raw_write_ms / du.p50;
  r["raw_read_over_restore"] = re.p50 > 0 ? raw_read_ms / re.p50 : 0;
  r["restore_verified"] = verified;
  Summary is = summarize(inc_stall), id = summarize(inc_durable), iw = summarize(inc_written),
          iwm = summarize(inc_written_max);
  if (o.incremental) {
    r["incremental"] = {{"changed_fraction", o.changed_fraction},
                        {"stall_ms", to_json(is)},
                        {"durable_ms", to_json(id)},
                        {"bytes_written", iw.p50},
                        {"bytes_written_max_process", iwm.p50},
                        {"full_bytes_written", total},
                        {"written_over_state", iw.p50 / total},
                        {"durable_over_full", id.p50 / du.p50},
                        {"restore_verified", inc_verified}};
  }
  r["machine"] = describe_machine(o.dir);
  if (rank == 0) {
    auto gbps = [&](double ms) { return total / (ms / 1e3) / 1e9; };
    std::string t;
    t += fmt::format("ckpt_bench --sharded: {} process(es) ({}), {:.0f} MiB global state in {} "
                     "leaves, {:.0f} MiB per process, mode {}\n",
                     n, comm->describe(), total / (1 << 20), o.leaves,
                     static_cast<double>(shard_bytes) / (1 << 20), o.mode);
    t += fmt::format("machine: {}\n\n", machine_line(r["machine"].as_object()));
    t += "                                               p50 ms     max ms   GB/s (total)\n";
    t += fmt::format("  stall per process (slowest)             {:>9.2f}  {:>9.2f}\n", st.p50,
                     st.max);
    t += fmt::format("  memcpy of one shard (slowest process)   {:>9.2f}\n", memcpy_ms);
    t += fmt::format("  aggregate time to durable               {:>9.1f}  {:>9.1f}  {:>8.2f}\n",
                     du.p50, du.max, gbps(du.p50));
    t += fmt::format("  raw write, all processes at once        {:>9.1f}             {:>8.2f}\n",
                     raw_write_ms, gbps(raw_write_ms));
    t += fmt::format("  restore (slowest process)               {:>9.1f}  {:>9.1f}  {:>8.2f}\n",
                     re.p50, re.max, gbps(re.p50));
    t += fmt::format("  raw read, all processes at once         {:>9.1f}             {:>8.2f}\n\n",
                     raw_read_ms, gbps(raw_read_ms));
    t += fmt::format("ratios: stall/memcpy {:.2f} (target <= 1.3), raw write/durable {:.2f} "
                     "(target >= 0.85), raw read/restore {:.2f} (target >= 0.85)\n",
                     st.p50 / memcpy_ms, raw_write_ms / du.p50,
                     re.p50 > 0 ? raw_read_ms / re.p50 : 0);
    t += fmt::format("restore verified against the last save's checksum: {}\n",
                     verified ? "yes" : "NO");
    if (o.incremental) {
      t += fmt::format(
          "\nincremental saves (changed fraction {:.2f}), p50 of {}:\n"
          "  stall (slowest) {:>9.2f} ms   durable {:>9.1f} ms ({:.2f}x the full save's)\n"
          "  written, all processes {:>12.0f} bytes ({:.3f}x the state; most by one process "
          "{:.0f})\n"
          "  restore of the last one verified: {}\n",
          o.changed_fraction, id.n, is.p50, id.p50, id.p50 / du.p50, iw.p50, iw.p50 / total,
          iwm.p50, inc_verified ? "yes" : "NO");
    }
    if (o.json) {
      std::fputs(t.c_str(), stderr);
      std::cout << json::serialize(r) << std::endl;
    } else {
      std::fputs(t.c_str(), stdout);
    }
  }
  rt.drain();
  barrier(*comm);
  if (rank == 0 && !o.keep) fs::remove_all(work);
  return verified && inc_verified ? 0 : 1;
}

std::shared_ptr<Communicator> bench_communicator(int* argc, char*** argv) {
#ifdef CKPT_HAVE_MPI
  if (launched_by_mpirun()) return make_mpi_communicator(argc, argv);
#else
  (void)argc;
  (void)argv;
#endif
  return std::make_shared<SingleProcessCommunicator>();
}

}  // namespace ckpt::bench
