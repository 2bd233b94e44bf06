// The main job as a process: resume equivalence under SIGKILL, corrupt `latest`, overlapped mode.
#include <doctest/doctest.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

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

// Runs train_loop with `args`; SIGKILLs it after `kill_after` unless it ends first. Deadline 60 s.
Outcome run_train_loop(const std::vector<std::string>& args, std::chrono::milliseconds kill_after,
                       const std::string& log_path) {
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
    if (elapsed > 60s) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      FAIL("train_loop did not finish within 60 s");
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
