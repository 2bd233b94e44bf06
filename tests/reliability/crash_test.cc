// Crash consistency: the crash_saver job is killed at every named crash point (several hits each)
// and at random times, then checked: `latest` names a checkpoint that verifies, every listed
// checkpoint verifies, the next start removes every *.tmp-* leftover, and resuming reaches the
// digest of an uninterrupted run (docs/design.md, "Commit protocol"). The same for a sharded job
// of three simulated processes (one crash_saver process, so the whole group dies at once) killed
// at every crash point of the collective commit, whose checkpoints must also restore resharded
// and which resumes as two processes (docs/design.md, section 14).
#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "io/crash_point.h"
#include "io/engine.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/sharding.h"
#include "tests/reliability/crash_state.h"
#include "tests/test_util.h"

extern char** environ;

namespace ckpt {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using test::TempDir;

constexpr const char* kSaver = CKPT_CRASH_SAVER_PATH;
constexpr int kSteps = 5;
constexpr auto kDeadline = 30s;

const char* const kPoints[] = {"after_snapshot",     "mid_write",        "after_data_fsync",
                               "before_dir_rename",  "after_dir_rename", "before_latest_rename",
                               "after_latest_rename"};

struct Saver {
  pid_t pid = -1;
  std::string out_path;
  std::string err_path;
};

// What crash_saver runs: `ranks` > 0 makes it a sharded job of that many simulated processes.
struct Job {
  int ranks = 0;
  std::uint64_t elements = crash::kElements;
  int steps = kSteps;
};

// Starts crash_saver on run_dir; `crash_at` (may be empty) becomes CKPT_CRASH_AT.
Saver start_saver(const std::string& run_dir, const std::string& logs,
                  const std::string& crash_at, const Job& job = {}) {
  static int counter = 0;
  Saver s;
  s.out_path = logs + "/out-" + std::to_string(counter);
  s.err_path = logs + "/err-" + std::to_string(counter++);
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "CKPT_CRASH_AT=", 14) != 0 && std::strncmp(*e, "CKPT_FAULT_AT=", 14) != 0)
      env.emplace_back(*e);
  }
  if (!crash_at.empty()) env.push_back("CKPT_CRASH_AT=" + crash_at);
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = {kSaver,       "--dir",    run_dir,
                                   "--steps",    std::to_string(job.steps),
                                   "--ranks",    std::to_string(job.ranks),
                                   "--elements", std::to_string(job.elements)};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, s.out_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, s.err_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int rc = posix_spawn(&s.pid, kSaver, &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE_MESSAGE(rc == 0, "posix_spawn ", kSaver, ": ", std::strerror(rc));
  return s;
}

// Waits for the saver until `deadline`; past it, kills it and fails the test.
int wait_saver(const Saver& s, Clock::duration deadline = kDeadline) {
  auto until = Clock::now() + deadline;
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(s.pid, &status, WNOHANG);
    REQUIRE(r >= 0);
    if (r == s.pid) return status;
    if (Clock::now() > until) {
      ::kill(s.pid, SIGKILL);
      ::waitpid(s.pid, &status, 0);
      FAIL("crash_saver did not finish within the deadline; stderr:\n",
           test::read_file(s.err_path));
    }
    std::this_thread::sleep_for(2ms);
  }
}

bool has_tmp_entries(const std::string& dir) {
  return std::filesystem::exists(dir) && !test::find_tmp_entries(dir).empty();
}

bool killed(int status) { return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL; }

// Runs the saver to the end (resuming whatever is in run_dir) and returns its digest line.
std::string finish_run(const std::string& run_dir, const std::string& logs, const Job& job = {}) {
  Saver s = start_saver(run_dir, logs, "", job);
  int status = wait_saver(s);
  INFO("stderr: ", test::read_file(s.err_path));
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  return test::read_file(s.out_path);
}

// What must hold after a crash at any instant.
void check_after_crash(io::Engine& engine, const std::string& run_dir) {
  std::optional<std::string> latest;
  REQUIRE_NOTHROW(latest = read_latest(run_dir));
  if (latest) {
    std::string path = run_dir + "/" + *latest;
    VerifyReport v = verify_checkpoint(engine, path);
    std::string problems;
    for (const auto& p : v.problems) problems += p + "\n";
    INFO("latest -> ", *latest, "\n", problems);
    CHECK(v.ok());
    CHECK(read_metadata(path).at("step").as_int64() == std::stoll(latest->substr(5)));
  }
  for (const auto& c : list_checkpoints(run_dir)) {
    INFO("listed: ", c.path);
    CHECK(c.error.empty());
    CHECK(verify_checkpoint(engine, c.path).ok());
  }
}

// After the job finished: nothing temporary left, every step committed, latest at the end.
void check_finished(const std::string& run_dir, const std::string& digest_line,
                    const std::string& expected, int steps = kSteps) {
  CHECK(digest_line == expected);
  CHECK(test::find_tmp_entries(run_dir).empty());
  CHECK(read_latest(run_dir) == "step/" + std::to_string(steps));
  CHECK(list_checkpoints(run_dir).size() == static_cast<std::size_t>(steps));
}

struct Reference {
  std::string digest_line;
  Clock::duration wall{};
};

Reference reference_run(const TempDir& dir, const Job& job = {}) {
  Reference ref;
  auto t0 = Clock::now();
  ref.digest_line = finish_run(dir / "reference", dir.path(), job);
  ref.wall = Clock::now() - t0;
  REQUIRE(test::contains(ref.digest_line, "step " + std::to_string(job.steps)));
  return ref;
}

// The sharded job's crash points: each process passes the first four in every save, process 0
// alone the others (the commit of the global manifest, then register_latest's pointer).
constexpr int kRanks = 3;
// A small, quick job: 20,000 elements per params/ leaf, three steps (saves).
const Job kSharded{kRanks, 20'000, 3};
const char* const kRankPoints[] = {"after_snapshot", "mid_write", "after_data_fsync",
                                   "before_shard_report"};
const char* const kRootPoints[] = {"before_global_manifest", "before_dir_rename",
                                   "after_dir_rename", "before_latest_rename",
                                   "after_latest_rename"};

// Restores `path` as `parts` processes would (box by box, any count: resharding) and returns the
// digest of what they hold together.
std::uint32_t restored_digest(const std::string& path, int parts) {
  Tree zeros = crash::initial_state(crash::kLeaves, kSharded.elements);
  for (auto& [p, a] : zeros.flatten()) std::memset(a.mutable_data(), 0, a.nbytes());
  std::vector<Tree> boxes;
  auto engine = io::make_engine();
  for (int r = 0; r < parts; ++r) {
    auto [box, sharding] = crash::box_of(zeros, r, parts);
    ReadOptions o;
    o.sharding = &sharding;
    restore_checkpoint(*engine, path, box, false, o);
    boxes.push_back(std::move(box));
  }
  std::vector<const Tree*> ptrs;
  for (const auto& b : boxes) ptrs.push_back(&b);
  return crash::digest(ptrs);
}

// What must hold after the sharded job died at `point`'s n-th hit, besides check_after_crash:
// every listed checkpoint restores, whole and as two boxes, to the state of its step; and what
// the commit order implies (saves and registrations take effect in order, one at a time).
void check_sharded_after_crash(const std::string& run_dir, const std::string& point, int nth) {
  std::set<std::string> listed;
  for (const auto& c : list_checkpoints(run_dir)) {
    listed.insert(c.suffix);
    const int step = std::stoi(c.suffix.substr(5));
    const Tree expected = crash::state_at(crash::kLeaves, kSharded.elements, step);
    const std::uint32_t want = crash::digest({&expected});
    CAPTURE(c.suffix);
    CHECK(restored_digest(c.path, 1) == want);
    CHECK(restored_digest(c.path, 2) == want);
  }
  auto step = [](int n) { return "step/" + std::to_string(n); };
  if (point == "before_global_manifest" || point == "before_dir_rename" ||
      point == "after_dir_rename") {
    for (int s = 1; s < nth; ++s) CHECK_MESSAGE(listed.contains(step(s)), step(s), " lost");
    CHECK(listed.contains(step(nth)) == (point == "after_dir_rename"));
  }
  if (point == "before_latest_rename") {
    CHECK(read_latest(run_dir) == (nth == 1 ? std::nullopt : std::optional(step(nth - 1))));
  }
  if (point == "after_latest_rename") CHECK(read_latest(run_dir) == step(nth));
}

}  // namespace

TEST_CASE("a crash at every named crash point leaves latest valid and resumes to the same state") {
  if (!io::crash_points_compiled_in()) {
    MESSAGE("skipped: built with CKPT_CRASH_POINTS=OFF");
    return;
  }
  TempDir dir;
  auto engine = io::make_engine();
  Reference ref = reference_run(dir);
  int kills = 0, left_tmp = 0;
  int run = 0;
  for (const char* point : kPoints) {
    for (int nth : {1, 2, 3, kSteps}) {
      CAPTURE(point);
      CAPTURE(nth);
      std::string run_dir = dir / ("run" + std::to_string(run++));
      Saver s = start_saver(run_dir, dir.path(), std::string(point) + ":" + std::to_string(nth));
      int status = wait_saver(s);
      INFO("stderr: ", test::read_file(s.err_path));
      REQUIRE_MESSAGE(killed(status), "the saver was not killed at the crash point");
      CHECK(test::contains(test::read_file(s.err_path), point));
      ++kills;
      if (has_tmp_entries(run_dir)) ++left_tmp;
      check_after_crash(*engine, run_dir);
      check_finished(run_dir, finish_run(run_dir, dir.path()), ref.digest_line);
    }
  }
  MESSAGE(kills << " kills at named crash points, " << left_tmp << " left *.tmp-* entries");
  CHECK(kills == 28);
}

TEST_CASE("SIGKILL at random times leaves latest valid and resumes to the same state") {
  TempDir dir;
  auto engine = io::make_engine();
  Reference ref = reference_run(dir);
  std::mt19937_64 rng(20240611);
  // Kills fall in the first half of a reference run: resumed jobs (k > 0) have fewer steps left
  // and the sanitizer builds vary in start-up time, so a wider window lets too many kills land
  // after the job already exited.
  auto max_delay = std::chrono::duration_cast<std::chrono::microseconds>(ref.wall) / 2;
  std::uniform_int_distribution<long> delay_us(0, max_delay.count());
  int kills = 0, attempts = 0, mid_save = 0;
  for (int chain = 0; chain < 12; ++chain) {
    // Three kills into the same run directory: later ones hit a resumed job (restore, overwrite
    // of a step committed but never registered, leftover removal).
    std::string run_dir = dir / ("run" + std::to_string(chain));
    for (int k = 0; k < 3; ++k) {
      CAPTURE(chain);
      CAPTURE(k);
      ++attempts;
      Saver s = start_saver(run_dir, dir.path(), "");
      std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
      ::kill(s.pid, SIGKILL);
      int status = wait_saver(s);
      if (killed(status)) {
        ++kills;
        if (has_tmp_entries(run_dir)) ++mid_save;
      } else {
        INFO("stderr: ", test::read_file(s.err_path));
        REQUIRE(WIFEXITED(status));
        REQUIRE(WEXITSTATUS(status) == 0);  // finished before the kill
      }
      check_after_crash(*engine, run_dir);
    }
    check_finished(run_dir, finish_run(run_dir, dir.path()), ref.digest_line);
  }
  MESSAGE(kills << " of " << attempts << " random kills hit a running job, " << mid_save
                << " of them mid-save (reference run "
                << std::chrono::duration_cast<std::chrono::milliseconds>(ref.wall).count()
                << " ms)");
  // At least a third of the attempts must hit a running job, or the test proved nothing.
  CHECK(kills >= attempts / 3);
}

}  // namespace ckpt

namespace ckpt {

TEST_CASE("a sharded job killed at every crash point of the collective commit keeps its committed "
          "checkpoints and resumes resharded to the same state") {
  if (!io::crash_points_compiled_in()) {
    MESSAGE("skipped: built with CKPT_CRASH_POINTS=OFF");
    return;
  }
  TempDir dir;
  auto engine = io::make_engine();
  // A single-process run's digest: the sharded job, resumed as two processes, must reach it.
  Reference ref = reference_run(dir, Job{0, kSharded.elements, kSharded.steps});
  std::vector<std::pair<std::string, int>> kills;
  for (const char* p : kRankPoints) {
    // The first hit, and one in a later save (the third: saves overlap).
    for (int nth : {1, kRanks * 2 + 1}) kills.emplace_back(p, nth);
  }
  for (const char* p : kRootPoints) {
    for (int nth : {1, 3}) kills.emplace_back(p, nth);
  }
  int run = 0, left_tmp = 0;
  for (const auto& [point, nth] : kills) {
    CAPTURE(point);
    CAPTURE(nth);
    std::string run_dir = dir / ("sharded" + std::to_string(run++));
    Saver s = start_saver(run_dir, dir.path(), point + ":" + std::to_string(nth), kSharded);
    int status = wait_saver(s);
    INFO("stderr: ", test::read_file(s.err_path));
    REQUIRE_MESSAGE(killed(status), "the sharded job was not killed at the crash point");
    CHECK(test::contains(test::read_file(s.err_path), point));
    if (has_tmp_entries(run_dir)) ++left_tmp;
    check_after_crash(*engine, run_dir);
    check_sharded_after_crash(run_dir, point, nth);
    // The next start (as two processes) removes the leftovers and saves the remaining steps.
    Job resumed = kSharded;
    resumed.ranks = 2;
    check_finished(run_dir, finish_run(run_dir, dir.path(), resumed), ref.digest_line,
                   kSharded.steps);
  }
  MESSAGE(kills.size() << " kills of a " << kRanks << "-process sharded job, " << left_tmp
                       << " left *.tmp-* entries");
  CHECK(left_tmp > 0);
}

}  // namespace ckpt
