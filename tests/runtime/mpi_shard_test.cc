// Collective saves over Open MPI: mpirun starts tests/runtime/mpi_shard_driver.cc, which checks
// everything from inside the processes (see its header) and exits 0 only when all passed.
#include <doctest/doctest.h>

#include <filesystem>
#include <string>

#include "io/engine.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "tests/test_util.h"

namespace ckpt {
namespace {

std::string mpirun(int processes, const std::string& dir) {
  return test::mpirun_prefix(CKPT_MPIEXEC) + " -np " + std::to_string(processes) + " " +
         CKPT_MPI_DRIVER + " " + dir + " 2>&1";
}

// Two processes, the second (or the first) armed with a crash point for its second save.
std::string mpirun_crash(int armed, const std::string& point, const std::string& dir) {
  std::string plain = std::string("-np 1 ") + CKPT_MPI_DRIVER + " crash " + dir;
  std::string crash = "-np 1 env CKPT_CRASH_AT=" + point + " " + CKPT_MPI_DRIVER + " crash " + dir;
  return test::mpirun_prefix(CKPT_MPIEXEC) + " " + (armed == 0 ? crash : plain) + " : " +
         (armed == 0 ? plain : crash) + " 2>&1";
}

}  // namespace

TEST_CASE("collective saves over MPI: 4 processes save, any decomposition restores, one "
          "process's EIO or hung IO fails the save everywhere") {
  // One launch (each costs about a second): other process counts run in runtime_sharded_test.
  for (int n : {4}) {
    CAPTURE(n);
    test::TempDir tmp;
    std::string out;
    int status = test::run_command(mpirun(n, tmp.path()), &out);
    MESSAGE(out);
    CHECK(status == 0);
    for (int r = 0; r < n; ++r) CHECK(test::contains(out, "ok " + std::to_string(r) + "\n"));
  }
}

}  // namespace ckpt

namespace ckpt {

TEST_CASE("a process SIGKILLed in a collective save leaves latest and every committed checkpoint "
          "intact, and the next start removes its leftovers") {
  {
    // Process 1 dies with its data written, before it reports: nothing of step/2 is committed.
    test::TempDir tmp;
    std::string out;
    int status = test::run_command(mpirun_crash(1, "before_shard_report:2", tmp.path()), &out);
    MESSAGE(out);
    CHECK(status != 0);
    const std::string run = tmp / "run";
    CHECK(read_latest(run) == std::optional<std::string>("step/1"));
    CHECK(verify_checkpoint(*io::make_engine(), run + "/step/1").ok());
    CHECK_FALSE(std::filesystem::exists(run + "/step/2"));
    CHECK_FALSE(test::find_tmp_entries(run).empty());  // the shared temporary directory
    clean_run_dir(run);
    CHECK(test::find_tmp_entries(run).empty());
    CHECK(list_checkpoints(run).size() == 1);
  }
  {
    // Process 0 dies right after the commit rename, before anyone hears the outcome: step/2 is
    // complete, `latest` still names step/1.
    test::TempDir tmp;
    std::string out;
    int status = test::run_command(mpirun_crash(0, "after_dir_rename:2", tmp.path()), &out);
    MESSAGE(out);
    CHECK(status != 0);
    const std::string run = tmp / "run";
    CHECK(read_latest(run) == std::optional<std::string>("step/1"));
    CHECK(verify_checkpoint(*io::make_engine(), run + "/step/2").ok());
    CHECK(verify_checkpoint(*io::make_engine(), run + "/step/1").ok());
  }
}

}  // namespace ckpt
