// The power-loss explorer can fail: with any one fsync site of the commit protocol dropped
// (CKPT_DROP_FSYNC, io/crash_point.h), it must report violations. Run by `make test-powerloss`
// (ctest label powerloss), not by the default ctest run.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <utility>
#include <vector>

#include "io/crash_point.h"
#include "tests/test_util.h"

extern char** environ;

namespace ckpt {
namespace {

// Runs the explorer dropping `site` (on one scenario, or all when empty); returns its exit
// status and output.
// With `every_violation`, the explorer lists every violating state (and exits non-zero) instead
// of stopping at the first one it finds (and exiting 0).
int explore_dropping(const std::string& site, const std::string& work, std::string& output,
                     const std::string& scenario = "", bool every_violation = false) {
  const std::string out = work + "/output";
  std::vector<std::string> args = {CKPT_POWERLOSS_PATH, "--drop", site, "--work", work};
  if (!every_violation) args.emplace_back("--expect-violations");
  if (!scenario.empty()) {
    args.push_back("--scenario");
    args.push_back(scenario);
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE(rc == 0);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  output = test::read_file(out);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST_CASE("the power-loss explorer reports violations when any one fsync site is dropped") {
  REQUIRE_MESSAGE(io::fsync_dropped("none") == false, "the test build has CKPT_FSYNC_DROP");
  for (std::string_view site : io::kFsyncSites) {
    test::TempDir work;
    std::string output;
    int rc = explore_dropping(std::string(site), work.path(), output);
    INFO("dropping ", site, ":\n", output);
    CHECK(rc == 0);  // with --expect-violations: some were found
    CHECK(test::contains(output, "VIOLATION"));
  }
}

TEST_CASE("the power-loss explorer catches each dropped fsync in the synchronous writer too") {
  // save_checkpoint has its own data-file fsync; the sync scenario finds the Runtime's first.
  for (std::string_view site : {"data_file", "new_file", "checkpoint_dir", "commit_parent",
                                "latest_file", "latest_parent"}) {
    test::TempDir work;
    std::string output;
    int rc = explore_dropping(std::string(site), work.path(), output, "sync_api");
    INFO("dropping ", site, " in sync_api:\n", output);
    CHECK(rc == 0);
    CHECK(test::contains(output, "VIOLATION sync_api"));
  }
}

TEST_CASE("the power-loss explorer catches a lost hard link and a lost shard file when the "
          "checkpoint directory's fsync is dropped") {
  // The incremental save's first entry in its temporary directory is the link of its base's data
  // file (one of several entries a crash can lose: every violation is listed, so that the link's
  // is among them); the sharded save's are the processes' data files.
  {
    test::TempDir work;
    std::string output;
    int rc = explore_dropping("checkpoint_dir", work.path(), output, "incremental", true);
    INFO("dropping checkpoint_dir in incremental:\n", output);
    CHECK(rc != 0);
    CHECK(test::contains(output, "lost: link step/1/data-00000.bin -> step/2.tmp-"));
  }
  test::TempDir work;
  std::string output;
  int rc = explore_dropping("checkpoint_dir", work.path(), output, "sharded");
  INFO("dropping checkpoint_dir in sharded:\n", output);
  CHECK(rc == 0);
  CHECK(test::contains(output, "VIOLATION sharded"));
}

}  // namespace
}  // namespace ckpt
