// The main job as a process: resume equivalence under SIGKILL, corrupt `latest`, overlapped mode.
#include <doctest/doctest.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include <boost/json.hpp>
#include <filesystem>

#include "io/engine.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "tests/test_util.h"

using namespace ckpt;
using ckpt::test::TempDir;
using namespace std::chrono_literals;

namespace {

const std::string kBinary = CKPT_TRAIN_LOOP_PATH;

struct Outcome {
  bool exited = false;  // exited by itself (not killed)
  int status = -1;
  std::string output;
};

pid_t spawn_train_loop(const std::vector<std::string>& args, const std::string& log_path) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<char*> argv{const_cast<char*>(kBinary.c_str())};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(kBinary.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

// Waits for a spawned train_loop; SIGKILLs it after `kill_after` unless it ends first. Deadline
// `deadline` (then the test fails).
Outcome wait_train_loop(pid_t pid, std::chrono::milliseconds kill_after, const std::string& log_path,
                        std::chrono::seconds deadline = 60s) {
  auto start = std::chrono::steady_clock::now();
  Outcome out;
  int status = 0;
  bool killed = false;
  for (;;) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    auto elapsed = std::chrono::steady_clock::now() - start;
    if (!killed && kill_after.count() > 0 && elapsed >= kill_after) {
      ::kill(pid, SIGKILL);
      killed = true;
    }
    if (elapsed > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      FAIL("train_loop did not finish within its deadline");
    }
    std::this_thread::sleep_for(1ms);
  }
  out.exited = WIFEXITED(status);
  out.status = out.exited ? WEXITSTATUS(status) : -WTERMSIG(status);
  std::ifstream in(log_path);
  std::stringstream ss;
  ss << in.rdbuf();
  out.output = ss.str();
  return out;
}

// Runs train_loop with `args`; SIGKILLs it after `kill_after` unless it ends first. Deadline 60 s.
Outcome run_train_loop(const std::vector<std::string>& args, std::chrono::milliseconds kill_after,
                       const std::string& log_path) {
  return wait_train_loop(spawn_train_loop(args, log_path), kill_after, log_path);
}

std::string final_line(const std::string& output) {
  std::smatch m;
  static const std::regex re("final step=(\\d+) digest=([0-9a-f]+)");
  return std::regex_search(output, m, re) ? m[0].str() : std::string();
}

void check_run_dir_consistent(const std::string& run_dir) {
  auto engine = io::make_engine({io::EngineKind::threads});
  if (auto latest = read_latest(run_dir)) {
    auto report = verify_checkpoint(*engine, run_dir + "/" + *latest);
    CHECK_MESSAGE(report.ok(), "latest ", *latest, " does not verify");
  }
  for (const auto& c : list_checkpoints(run_dir)) CHECK_MESSAGE(c.error.empty(), c.suffix, ": ", c.error);
}

const std::vector<std::string> kArgs = {"--steps", "300", "--save-every", "10", "--state-mb", "8"};

std::vector<std::string> with(std::vector<std::string> a, std::initializer_list<std::string> more) {
  a.insert(a.end(), more);
  return a;
}

}  // namespace

TEST_CASE("train_loop killed at random moments and resumed reaches the uninterrupted digest") {
  TempDir dir;
  Outcome ref = run_train_loop(with(kArgs, {"--dir", dir / "ref"}), 0ms, dir / "ref.log");
  REQUIRE(ref.status == 0);
  std::string expected = final_line(ref.output);
  REQUIRE_FALSE(expected.empty());
  CHECK(expected.starts_with("final step=300 "));

  const std::string run_dir = dir / "killed/general/default/train_loop";
  std::uint64_t seed = 12345;
  int kills = 0;
  Outcome last;
  for (int attempt = 0; attempt < 60; ++attempt) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    auto delay = std::chrono::milliseconds(20 + (seed >> 33) % 180);
    last = run_train_loop(with(kArgs, {"--dir", dir / "killed", "--resume"}), delay, dir / "run.log");
    if (last.exited) break;
    ++kills;
    check_run_dir_consistent(run_dir);
  }
  if (!last.exited) last = run_train_loop(with(kArgs, {"--dir", dir / "killed", "--resume"}), 0ms, dir / "run.log");
  MESSAGE("processes killed: ", kills);
  CHECK(kills >= 3);
  REQUIRE(last.status == 0);
  CHECK(final_line(last.output) == expected);
  check_run_dir_consistent(run_dir);
}

TEST_CASE("train_loop in overlapped mode computes the same digest as sync mode") {
  TempDir dir;
  Outcome sync = run_train_loop(with(kArgs, {"--dir", dir / "s"}), 0ms, dir / "s.log");
  Outcome overlapped = run_train_loop(with(kArgs, {"--dir", dir / "o", "--mode", "overlapped"}), 0ms, dir / "o.log");
  REQUIRE(sync.status == 0);
  REQUIRE(overlapped.status == 0);
  CHECK(final_line(sync.output) == final_line(overlapped.output));
}

TEST_CASE("train_loop --save-every 0 trains to the same digest without writing a checkpoint") {
  TempDir dir;
  Outcome saving = run_train_loop(with(kArgs, {"--dir", dir / "s", "--sweep"}), 0ms, dir / "s.log");
  Outcome none = run_train_loop({"--steps", "300", "--save-every", "0", "--state-mb", "8", "--sweep",
                                 "--dir", dir / "n", "--step-times", dir / "steps.txt"},
                                0ms, dir / "n.log");
  REQUIRE(saving.status == 0);
  REQUIRE(none.status == 0);
  CHECK(final_line(none.output) == final_line(saving.output));
  CHECK(list_checkpoints(dir / "n/general/default/train_loop").empty());
  CHECK_FALSE(read_latest(dir / "n/general/default/train_loop").has_value());
  // The line before the final one: throughput over the training steps, one timing a step.
  static const std::regex thr("throughput steps_per_s=([0-9.]+)\n(final step=[^\n]*)\n");
  std::smatch m;
  REQUIRE(std::regex_search(none.output, m, thr));
  CHECK(std::stod(m[1].str()) > 0);
  CHECK(m[2].str() == final_line(none.output));
  std::ifstream times(dir / "steps.txt");
  int lines = 0;
  for (std::string line; std::getline(times, line); ++lines) CHECK(std::stod(line) >= 0);
  CHECK(lines == 300);
}

TEST_CASE("train_loop resumes from the newest checkpoint that verifies when latest is corrupt") {
  TempDir dir;
  auto first = run_train_loop(with({"--steps", "100", "--save-every", "10", "--state-mb", "2", "--keep", "5"}, {"--dir", dir.path()}), 0ms, dir / "1.log");
  REQUIRE(first.status == 0);
  const std::string run_dir = dir / "general/default/train_loop";
  REQUIRE(read_latest(run_dir) == "step/100");
  test::flip_byte(run_dir + "/step/100/data-00000.bin", 100);
  auto second = run_train_loop(with({"--steps", "120", "--resume"}, {"--dir", dir.path()}), 0ms, dir / "2.log");
  REQUIRE(second.status == 0);
  CHECK(second.output.find("cannot resume from step/100") != std::string::npos);
  CHECK(second.output.find("restored general/default/train_loop/step/90") != std::string::npos);
  CHECK(final_line(second.output).starts_with("final step=120 "));
}

TEST_CASE("train_loop with nothing to resume starts from scratch") {
  TempDir dir;
  auto out = run_train_loop({"--steps", "20", "--save-every", "10", "--state-mb", "1", "--resume", "--dir", dir.path()}, 0ms, dir / "log");
  REQUIRE(out.status == 0);
  CHECK(out.output.find("starting from scratch") != std::string::npos);
  CHECK(final_line(out.output).starts_with("final step=20 "));
}

TEST_CASE("train_loop rejects bad flags with a usage error") {
  TempDir dir;
  auto out = run_train_loop({"--mode", "sideways", "--dir", dir.path()}, 0ms, dir / "log");
  CHECK(out.status != 0);
  CHECK(out.output.find("sideways") != std::string::npos);
}

TEST_CASE("ckpt gc in a loop beside a live train_loop never removes what latest names, and the run ends with its digest") {
  TempDir dir;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // Instrumented processes run several times slower; the live run must still outlast five gc
  // passes (600 steps gave only four in one ASan run on a slow VM).
  const std::string steps = "1200";
#else
  const std::string steps = "2500";
#endif
  const std::vector<std::string> args = {"--steps", steps, "--save-every", "10", "--state-mb", "4",
                                         "--keep", "50"};
  Outcome ref = run_train_loop(with(args, {"--dir", dir / "ref"}), 0ms, dir / "ref.log");
  REQUIRE(ref.status == 0);
  const std::string expected = final_line(ref.output);
  REQUIRE_FALSE(expected.empty());

  const std::string run_dir = dir / "live/general/default/train_loop";
  pid_t pid = spawn_train_loop(with(args, {"--dir", dir / "live"}), dir / "live.log");
  const std::string tool = CKPT_TOOL_PATH;
  int passes = 0, removed_total = 0, latest_checks = 0;
  for (;;) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      // Reaped here: collect the output the same way as wait_train_loop does.
      Outcome out;
      out.exited = WIFEXITED(status);
      out.status = out.exited ? WEXITSTATUS(status) : -1;
      out.output = test::read_file(dir / "live.log");
      CHECK(out.status == 0);
      CHECK(final_line(out.output) == expected);
      CHECK_FALSE(test::contains(out.output, "no committed checkpoint"));
      break;
    }
    std::string gc_out;
    if (std::filesystem::exists(run_dir)) {
      int rc = test::run_command(tool + " gc " + run_dir + " --keep 1 --json 2>/dev/null", &gc_out);
      REQUIRE_MESSAGE(rc == 0, gc_out);
      ++passes;
      auto doc = boost::json::parse(gc_out);
      removed_total += static_cast<int>(doc.at("removed").as_array().size());
      std::string latest_out;
      if (std::filesystem::exists(run_dir + "/latest")) {
        rc = test::run_command(tool + " latest " + run_dir, &latest_out);
        CHECK_MESSAGE(rc == 0, latest_out);
        ++latest_checks;
      }
    }
    REQUIRE(passes < 100000);
  }
  MESSAGE("gc passes: ", passes, ", checkpoints removed: ", removed_total, ", latest checks: ", latest_checks);
  CHECK(passes >= 5);
  CHECK(removed_total > 0);
  check_run_dir_consistent(run_dir);
}

TEST_CASE("a second train_loop on the same run directory fails at start naming the first one's pid") {
  TempDir dir;
  pid_t first = spawn_train_loop({"--steps", "1000000", "--save-every", "100", "--state-mb", "1",
                                  "--dir", dir.path()},
                                 dir / "first.log");
  // Wait until the first one is past its start-up cleanup: it has registered a checkpoint.
  const std::string run_dir = dir / "general/default/train_loop";
  for (int i = 0; i < 6000 && !std::filesystem::exists(run_dir + "/latest"); ++i) {
    std::this_thread::sleep_for(5ms);
  }
  REQUIRE(std::filesystem::exists(run_dir + "/latest"));
  REQUIRE(std::filesystem::exists(run_dir + "/.ckpt-writer"));
  std::filesystem::create_directories(run_dir + "/step/7.tmp-1-1-1");  // a dead writer's leftover
  Outcome second = run_train_loop({"--steps", "20", "--save-every", "10", "--state-mb", "1",
                                   "--dir", dir.path()},
                                  0ms, dir / "second.log");
  ::kill(first, SIGKILL);
  wait_train_loop(first, 0ms, dir / "first.log");
  CHECK(second.status == 1);
  CHECK_MESSAGE(test::contains(second.output, "pid " + std::to_string(first)), second.output);
  CHECK(test::contains(second.output, "writer lease"));
  // The second writer touched nothing: not even the leftover it would clean when alone.
  CHECK(std::filesystem::exists(run_dir + "/step/7.tmp-1-1-1"));
}

TEST_CASE("train_loop with --keep 2 ends with two checkpoints, latest among them") {
  TempDir dir;
  auto out = run_train_loop({"--steps", "600", "--save-every", "10", "--state-mb", "2", "--keep", "2",
                             "--dir", dir.path()},
                            0ms, dir / "log");
  REQUIRE(out.status == 0);
  const std::string run_dir = dir / "general/default/train_loop";
  std::vector<std::string> left;
  for (const auto& c : list_checkpoints(run_dir)) left.push_back(c.suffix);
  CHECK(left == std::vector<std::string>{"step/590", "step/600"});
  CHECK(read_latest(run_dir) == "step/600");
}

#if defined(CKPT_MPIEXEC)
namespace {

const std::string kShardedArgs = " --sharded --state-mb 2 --steps 40 --save-every 10";

std::string mpirun() { return test::mpirun_prefix(CKPT_MPIEXEC); }

enum class EnvOn { last, first };

// train_loop --sharded on `dir`: alone (np 0) or under mpirun -np np; `env` prefixes the
// command of the last process (or of process 0, with EnvOn::first): a crash point. Only stdout
// is captured; stderr goes to err_path.
std::string sharded_command(int np, const std::string& dir, const std::string& extra,
                            const std::string& err_path, const std::string& env = "",
                            EnvOn env_on = EnvOn::last) {
  const std::string one = kBinary + kShardedArgs + " --dir " + dir + extra;
  const std::string rest = " -np " + std::to_string(np - 1) + " " + one;
  std::string command;
  if (np == 0) {
    command = one;
  } else if (env.empty()) {
    command = mpirun() + " -np " + std::to_string(np) + " " + one;
  } else if (env_on == EnvOn::first) {
    command = mpirun() + " -np 1 env " + env + " " + one + " :" + rest;
  } else {
    command = mpirun() + rest + " : -np 1 env " + env + " " + one;
  }
  return "(" + command + " 2>" + err_path + ")";
}

std::string last_line(const std::string& output) {
  auto end = output.find_last_not_of('\n');
  if (end == std::string::npos) return {};
  auto begin = output.rfind('\n', end);
  return output.substr(begin == std::string::npos ? 0 : begin + 1, end - (begin == std::string::npos ? 0 : begin + 1) + 1);
}

std::string file_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("train_loop --sharded prints the same final digest alone and as two MPI processes, "
          "only process 0 writing to stdout") {
  TempDir dir;
  std::string alone, two;
  REQUIRE(test::run_command(sharded_command(0, dir / "a", "", dir / "a.err"), &alone) == 0);
  const std::string expected = last_line(alone);
  CHECK(expected.starts_with("final step=40 digest="));
  int status = test::run_command(sharded_command(2, dir / "b", "", dir / "b.err"), &two);
  INFO(two, file_text(dir / "b.err"));
  REQUIRE(status == 0);
  CHECK(last_line(two) == expected);
  // One header and one final line: process 1 printed nothing on stdout.
  CHECK(std::count(two.begin(), two.end(), '\n') == std::count(alone.begin(), alone.end(), '\n'));
  CHECK(test::contains(two, ", 2 processes"));
}

TEST_CASE("train_loop --sharded killed mid-save under two MPI processes resumes under three to "
          "the same digest") {
  TempDir dir;
  std::string reference, out;
  REQUIRE(test::run_command(sharded_command(0, dir / "ref", "", dir / "ref.err"), &reference) == 0);
  // Process 1 dies once its third save (step/30) has written its first block; mpirun ends the
  // other. The saves before it are fire-and-forget: on a slow machine the kill can come before
  // process 0 has registered step/10 or even committed it, so `latest` may be missing (the next
  // test kills at a point that leaves it deterministic). The resume then takes the newest
  // committed checkpoint, if any.
  int status = test::run_command(
      sharded_command(2, dir / "run", "", dir / "kill.err", "CKPT_CRASH_AT=mid_write:3"), &out);
  INFO(out, file_text(dir / "kill.err"));
  CHECK(status != 0);
  CHECK_FALSE(test::contains(out, "final step="));
  const std::string run = dir / "run/general/default/train_loop_sharded";
  std::optional<std::string> from = read_latest(run);
  if (from) {
    CHECK((*from == "step/10" || *from == "step/20"));
  } else if (auto committed = list_checkpoints(run); !committed.empty()) {
    from = committed.back().suffix;  // ordered by step
  }
  check_run_dir_consistent(run);

  status = test::run_command(sharded_command(3, dir / "run", " --resume", dir / "resume.err"), &out);
  INFO(out, file_text(dir / "resume.err"));
  REQUIRE(status == 0);
  if (from) {
    CHECK(test::contains(out, "restored general/default/train_loop_sharded/" + *from));
  } else {
    CHECK(test::contains(out, "starting from scratch"));
  }
  CHECK(last_line(out) == last_line(reference));
  CHECK(test::find_tmp_entries(run).empty());  // the dead save's temporary directory is gone
  check_run_dir_consistent(run);
}

TEST_CASE("train_loop --sharded with process 0 killed as it moves latest to step/30 resumes "
          "under three from step/20 to the same digest") {
  TempDir dir;
  std::string reference, out;
  REQUIRE(test::run_command(sharded_command(0, dir / "ref", "", dir / "ref.err"), &reference) == 0);
  // Registrations run in order, each after its save is committed: the third `latest` write is
  // step/30's, so the kill leaves latest at step/20 whatever the timing. step/30 itself is
  // committed; step/40's save may be anywhere in its pipeline.
  int status = test::run_command(sharded_command(2, dir / "run", "", dir / "kill.err",
                                                 "CKPT_CRASH_AT=before_latest_rename:3",
                                                 EnvOn::first),
                                 &out);
  INFO(out, file_text(dir / "kill.err"));
  CHECK(status != 0);
  CHECK_FALSE(test::contains(out, "final step="));
  const std::string run = dir / "run/general/default/train_loop_sharded";
  REQUIRE(read_latest(run) == std::optional<std::string>("step/20"));
  CHECK(std::filesystem::exists(run + "/step/30/manifest.ckpt"));
  check_run_dir_consistent(run);

  status = test::run_command(sharded_command(3, dir / "run", " --resume", dir / "resume.err"), &out);
  INFO(out, file_text(dir / "resume.err"));
  REQUIRE(status == 0);
  CHECK(test::contains(out, "restored general/default/train_loop_sharded/step/20"));
  CHECK(last_line(out) == last_line(reference));
  CHECK(test::find_tmp_entries(run).empty());  // the dead pointer's temporary file is gone
  check_run_dir_consistent(run);
}
#endif
