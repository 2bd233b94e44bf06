#pragma once
// Command-line options of ckpt_bench, resolved (no zero means "default" after resolve()).
#include <boost/json/object.hpp>
#include <cstdint>
#include <memory>
#include <string>

#include "runtime/runtime.h"

namespace ckpt::bench {

struct BenchOptions {
  std::string dir;
  std::uint64_t state_mb = 1024;
  std::size_t leaves = 64;
  int saves = 5;
  std::string mode = "sync";  // sync | overlapped
  std::string engine = "auto";
  bool json = false;
  unsigned copy_threads = 0;     // 0: one per hardware thread (the Runtime's default)
  unsigned overlapped_copy_threads = 0;  // 0: the Runtime's default
  int copy_nice = 10;                    // the Runtime's default
  bool write_during_copy = true;         // the Runtime's default
  bool transactional_restore = true;     // RestoreOptions::transactional
  std::uint64_t staging_mb = 0;  // 0: two saves' worth of staging
  std::uint64_t unit_kb = 0;     // 0: the Runtime's default
  unsigned queue_depth = 32;
  int restores = 3;
  int baseline_runs = 3;
  bool small = false;
  std::uint64_t small_kb = 4;
  bool recheck = true;  // baselines measured again after the saves (drift check)
  bool paired = true;   // one baseline run before each save and restore (see Pairing)
  bool keep = false;
  // --incremental: the measured saves are incremental (each after a step that changes
  // changed_fraction of the leaves), next to the same number of full saves in the same run.
  bool incremental = false;
  double changed_fraction = 1.0;
  bool sharded = false;  // --sharded: a collective save over the processes of an MPI job

  std::string work_dir;  // dir/ckpt_bench-<pid>: everything the run writes, removed at the end

  RuntimeOptions runtime_options() const;
};

// The small-checkpoint benchmark (--small): returns its JSON object.
boost::json::object run_small(const BenchOptions& options);

// The sharded benchmark (--sharded, bench/sharded_bench.cc): prints on process 0; returns the
// exit status. The communicator: MPI's when started by mpirun (and built with MPI), else one
// process.
int run_sharded(BenchOptions& options, std::shared_ptr<Communicator> comm);
std::shared_ptr<Communicator> bench_communicator(int* argc, char*** argv);

}  // namespace ckpt::bench
