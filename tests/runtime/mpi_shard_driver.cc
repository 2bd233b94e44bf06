// Run under mpirun by tests/runtime/mpi_shard_test.cc: collective saves over Open MPI.
//   mpirun -np N mpi_shard_driver DIR
// 1. The N processes save the state of shard_fixture.h as DIR/run/step/1 and register it.
// 2. Every decomposition into M = 1..4 boxes is restored, box b by process b % N, and checked.
// 3. Process N-1's first data write fails with EIO: step/2 must fail on every process, naming it,
//    its registration too; `latest` stays step/1 and nothing of step/2 remains.
// 4. Process N-1's first data write hangs (IO timeout 300 ms): step/3 fails everywhere, naming it.
// Prints "ok" per process, or what failed on stderr; exit status 0 only when every check passed.
//   mpirun -np 1 mpi_shard_driver crash DIR : -np 1 env CKPT_CRASH_AT=... mpi_shard_driver crash DIR
// saves step/1, then step/2 during which the armed process dies (see crash_mode).
#include <chrono>
#include <filesystem>
#include <iostream>

#include "io/fault_engine.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/mpi_communicator.h"
#include "runtime/runtime.h"
#include "tests/runtime/shard_fixture.h"

namespace {

using namespace ckpt;
using Clock = std::chrono::steady_clock;

int failures = 0;

void expect(bool ok, int rank, const std::string& what) {
  if (ok) return;
  ++failures;
  std::cerr << "process " << rank << ": " << what << "\n";
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return {};
}

}  // namespace

// Small units, so each data file has several blocks; *faults receives the FaultEngine.
RuntimeOptions driver_options(std::shared_ptr<Communicator> comm, io::FaultEngine** faults) {
  RuntimeOptions o;
  o.communicator = std::move(comm);
  o.copy_threads = 1;
  o.unit_bytes = 4096;
  o.staging_budget = 4u << 20;
  o.collective_timeout = std::chrono::seconds(20);
  o.wrap_engine = [faults](std::unique_ptr<io::Engine> inner) {
    auto f = std::make_unique<io::FaultEngine>(std::move(inner));
    *faults = f.get();
    return std::unique_ptr<io::Engine>(std::move(f));
  };
  return o;
}

// `crash` mode: step/1 saved and registered, then step/2 saved; a process armed with
// CKPT_CRASH_AT (through mpirun's per-process environment) is SIGKILLed inside step/2's commit.
int crash_mode(const std::string& run, std::shared_ptr<Communicator> comm) {
  io::FaultEngine* faults = nullptr;
  Runtime rt(driver_options(comm, &faults));
  auto state = test::make_sharded_state(static_cast<std::uint64_t>(comm->rank()),
                                        static_cast<std::uint64_t>(comm->size()), true, true);
  SaveOptions so;
  so.sharding = state.sharding;
  so.run_dir = run;
  rt.save(run + "/step/1", state.tree, {}, so).wait();
  rt.register_latest(run, "step/1").wait();
  rt.save(run + "/step/2", state.tree, {}, so).wait();
  rt.register_latest(run, "step/2").wait();
  std::cout << "survived " << comm->rank() << "\n";
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 2 && !(argc == 3 && std::string(argv[1]) == "crash")) {
    std::cerr << "usage: mpirun -np N mpi_shard_driver [crash] DIR\n";
    return 2;
  }
  const std::string run = std::string(argv[argc - 1]) + "/run";
  std::shared_ptr<Communicator> comm = make_mpi_communicator(&argc, &argv);
  if (argc == 3) {
    int status = crash_mode(run, comm);
    comm.reset();
    return status;
  }
  const int rank = comm->rank();
  const int n = comm->size();
  {
    io::FaultEngine* faults = nullptr;
    Runtime rt(driver_options(comm, &faults));
    auto state = test::make_sharded_state(static_cast<std::uint64_t>(rank),
                                          static_cast<std::uint64_t>(n), true, true);
    SaveOptions so;
    so.sharding = state.sharding;
    so.run_dir = run;
    std::string e = error_of([&] {
      rt.save(run + "/step/1", state.tree, {}, so).wait();
      rt.register_latest(run, "step/1").wait();
    });
    expect(e.empty(), rank, "save of step/1: " + e);
    expect(read_latest(run) == std::optional<std::string>("step/1"), rank, "latest is not step/1");

    for (std::uint64_t m = 1; m <= 4; ++m) {
      for (std::uint64_t b = static_cast<std::uint64_t>(rank); b < m; b += static_cast<std::uint64_t>(n)) {
        auto t = test::make_sharded_state(b, m, false, false);
        e = error_of([&] { rt.restore(run + "/step/1", t.tree, t.sharding); });
        expect(e.empty(), rank, "restore: " + e);
        expect(test::count_wrong(t) == 0, rank,
               "box " + std::to_string(b) + " of " + std::to_string(m) + " restored wrong");
      }
    }

    if (rank == n - 1) faults->arm({io::Request::Op::write, 1, io::FaultKind::error, EIO, false});
    auto h = rt.save(run + "/step/2", state.tree, {}, so);
    auto reg = rt.register_latest(run, "step/2");
    e = error_of([&] { h.wait(); });
    const std::string culprit = "process " + std::to_string(n - 1) + ": ";
    expect(e.find(culprit) != std::string::npos && e.find("Input/output error") != std::string::npos,
           rank, "save of step/2 should fail naming " + culprit + " got: " + e);
    e = error_of([&] { reg.wait(); });
    expect(e.find(culprit) != std::string::npos, rank, "register of step/2: " + e);
    expect(read_latest(run) == std::optional<std::string>("step/1"), rank, "latest moved");
    expect(!std::filesystem::exists(run + "/step/2"), rank, "step/2 exists");
    faults->disarm();
    rt.drain();
  }
  {
    // A hung write on the last process: its watchdog fails it, and through it everyone.
    io::FaultEngine* faults = nullptr;
    RuntimeOptions o = driver_options(comm, &faults);
    o.io_timeout = std::chrono::milliseconds(300);
    Runtime rt(o);
    auto state = test::make_sharded_state(static_cast<std::uint64_t>(rank),
                                          static_cast<std::uint64_t>(n), true, true);
    SaveOptions so;
    so.sharding = state.sharding;
    if (rank == n - 1) faults->arm({io::Request::Op::write, 1, io::FaultKind::hang, 0, false});
    auto start = Clock::now();
    auto h = rt.save(run + "/step/3", state.tree, {}, so);
    std::string e = error_of([&] { h.wait(); });
    double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (rank == n - 1) faults->release_hung();
    expect(e.find("IO timeout") != std::string::npos, rank, "hung save: " + e);
    expect(s < 5, rank, "hung save took " + std::to_string(s) + " s");
    if (rank == 0) std::cerr << "hung IO on process " << n - 1 << ": failed after " << s << " s\n";
    rt.drain();
  }
  comm->barrier(collective_tag(comm->next_sequence(), 0), Clock::now() + std::chrono::seconds(20));
  expect(!std::filesystem::exists(run + "/step/3"), rank, "step/3 exists");
  if (failures == 0) std::cout << "ok " << rank << "\n";
  int status = failures == 0 ? 0 : 1;
  comm.reset();  // finalizes MPI
  return status;
}
