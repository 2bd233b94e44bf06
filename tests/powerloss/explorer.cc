// powerloss: the crash-state explorer (docs/design.md, "Power loss").
//
//   powerloss [--scenario NAME]... [--all] [--drop SITE] [--expect-violations] [--work DIR]
//             [--scratch DIR] [--states-per-point N] [--seed N] [--verbose]
//
// Without --scenario it runs every scenario but the extended ones (scenario.h), with --all those
// too. Per scenario (tests/powerloss/scenario.h): powerloss_driver builds the starting state in
// <work>/<scenario>/run; the run phase (the driver, or `ckpt gc` for the gc scenario) runs under
// the trace shim, which records its file-system system calls; the recording is replayed into the
// crash states the model allows (tests/powerloss/model.h) after every prefix of it, up to
// --states-per-point choices per prefix (enumerated when few, else drawn with --seed); each
// distinct state is written to a scratch directory (--scratch, default /dev/shm) and checked
// (tests/powerloss/checker.h).
// --drop SITE runs the recorded programs with CKPT_DROP_FSYNC=SITE (io/crash_point.h).
// The last line is `powerloss: S states explored, V violations`. Exit status: 0 when there are
// no violations (with --expect-violations: when there are some; it then stops at the first),
// 1 otherwise, 2 on a usage or setup error.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "io/engine.h"
#include "io/log.h"
#include "tests/powerloss/checker.h"
#include "tests/powerloss/model.h"
#include "tests/powerloss/scenario.h"

extern char** environ;

namespace {

using namespace ckpt;
using namespace ckpt::powerloss;
namespace fs = std::filesystem;

struct Args {
  std::vector<std::string> scenarios;
  std::string drop;
  bool expect_violations = false;
  std::string work = "powerloss-work";
  std::string scratch;  // where crash states are written; default /dev/shm (tmpfs) when there
  std::size_t per_point = 256;
  std::uint64_t seed = 13;
  bool verbose = false;
  bool all = false;  // the extended scenarios too
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs argv with the environment plus `extra`; returns the exit status (stderr to `log`).
int spawn(const std::vector<std::string>& args, const std::vector<std::string>& extra,
          const std::string& log) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "LD_PRELOAD=", 11) != 0 && std::strncmp(*e, "CKPT_", 5) != 0)
      env.emplace_back(*e);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  std::vector<char*> envp, argv;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> a = args;
  for (auto& x : a) argv.push_back(x.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error("cannot start " + args[0] + ": " + std::strerror(rc));
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

struct Outcome {
  std::size_t ops = 0, states = 0, violations = 0;
};

Outcome explore(const Args& args, std::string_view scenario, io::Engine& engine) {
  const fs::path dir = fs::path(args.work) / std::string(scenario);
  fs::remove_all(dir);
  fs::create_directories(dir / "run");
  const std::string run = fs::canonical(dir / "run").string();
  const std::string log = (dir / "programs.log").string();
  const std::string name(scenario);
  auto fail = [&](const std::string& what) {
    return std::runtime_error(name + ": " + what + " (see " + log + ")");
  };
  if (spawn({CKPT_POWERLOSS_DRIVER, "--dir", run, "--scenario", name, "--phase", "setup"}, {}, log) != 0)
    throw fail("the setup phase failed");
  Image base = read_image(run);
  const Promises initial = initial_promises(run);
  const std::string trace = (dir / "trace").string();
  std::vector<std::string> env = {"CKPT_TRACE_ROOT=" + run, "CKPT_TRACE_OUT=" + trace,
                                  std::string("LD_PRELOAD=") + CKPT_TRACE_SHIM};
  if (!args.drop.empty()) env.push_back("CKPT_DROP_FSYNC=" + args.drop);
  std::vector<std::string> program =
      scenario == "gc" ? std::vector<std::string>{CKPT_TOOL_PATH, "gc", run, "--keep", "1", "--leftovers"}
                       : std::vector<std::string>{CKPT_POWERLOSS_DRIVER, "--dir", run, "--scenario",
                                                  name, "--phase", "run"};
  if (spawn(program, env, log) != 0) throw fail("the recorded run failed");
  Recording rec = replay(std::move(base), run, slurp(trace + ".log"), slurp(trace + ".data"));

  Outcome out;
  out.ops = rec.ops.size();
  CrashStates states(rec);
  std::mt19937_64 rng(args.seed);
  Promises promises = initial;
  std::set<std::pair<std::uint64_t, std::size_t>> seen;  // (state digest, marks before it)
  std::size_t marks = 0;
  // Each state is written, checked and removed: on tmpfs its fsyncs (cleanup) cost nothing.
  const std::string scratch =
      ((args.scratch.empty() ? dir : fs::path(args.scratch)) / ("powerloss-state-" + std::to_string(::getpid()))).string();
  for (std::size_t k = 0; k <= rec.ops.size(); ++k) {
    if (k > 0) {
      promises.apply(rec.ops[k - 1]);
      if (rec.ops[k - 1].kind == OpKind::mark) ++marks;
    }
    auto units = states.units(k);
    for (const auto& persisted : states.choices(units, args.per_point, rng)) {
      Image img = states.build(k, units, persisted);
      if (!seen.insert({digest(img), marks}).second) continue;
      ++out.states;
      fs::remove_all(scratch);
      materialize(img, scratch);
      // A sharded checkpoint of three processes is resumed as two as well.
      auto bad = check_state(engine, scratch, promises, scenario.starts_with("sharded") ? 2 : 1);
      if (bad.empty()) continue;
      ++out.violations;
      if (out.violations <= 3 || args.verbose) {
        std::string lost;
        std::size_t shown = 0, more = 0;
        for (std::size_t u = 0; u < units.size(); ++u) {
          if (persisted[u]) continue;
          if (shown++ < 8) {
            const Op& op = rec.ops[units[u].op];
            lost += "\n      lost: " + (op.kind == OpKind::write
                                             ? "write " + rec.base[op.node].name + " bytes [" +
                                                   std::to_string(units[u].begin) + ", " +
                                                   std::to_string(units[u].end) + ")"
                                             : describe(rec, op));
          } else {
            ++more;
          }
        }
        if (more > 0) lost += "\n      lost: " + std::to_string(more) + " more";
        std::printf("  VIOLATION %s, crash after %zu of %zu operations (last: %s):%s\n", name.c_str(), k,
                    rec.ops.size(), k > 0 ? describe(rec, rec.ops[k - 1]).c_str() : "none", lost.c_str());
        for (const auto& b : bad) std::printf("    %s\n", b.c_str());
      }
      if (args.expect_violations) {  // stop at the first; its state is shown above, not kept
        fs::remove_all(scratch);
        return out;
      }
    }
  }
  fs::remove_all(scratch);
  return out;
}

bool parse(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    std::string_view k = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (k == "--expect-violations") {
      a.expect_violations = true;
    } else if (k == "--verbose") {
      a.verbose = true;
    } else if (k == "--all") {
      a.all = true;
    } else if (k == "--scenario" || k == "--drop" || k == "--work" || k == "--states-per-point" ||
               k == "--seed" || k == "--scratch") {
      const char* v = value();
      if (v == nullptr) return false;
      if (k == "--scenario") a.scenarios.emplace_back(v);
      if (k == "--drop") a.drop = v;
      if (k == "--work") a.work = v;
      if (k == "--scratch") a.scratch = v;
      if (k == "--states-per-point") a.per_point = std::strtoull(v, nullptr, 10);
      if (k == "--seed") a.seed = std::strtoull(v, nullptr, 10);
    } else {
      return false;
    }
  }
  return a.per_point > 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!parse(argc, argv, args)) {
    std::fprintf(stderr,
                 "usage: powerloss [--scenario NAME]... [--all] [--drop SITE] [--expect-violations] "
                 "[--work DIR] [--scratch DIR] [--states-per-point N] [--seed N] [--verbose]\n");
    return 2;
  }
  if (args.scratch.empty() && ::access("/dev/shm", W_OK) == 0) args.scratch = "/dev/shm";
  if (args.scenarios.empty()) {
    for (const auto& s : kScenarios)
      if (args.all || !s.extended) args.scenarios.emplace_back(s.name);
  }
  log().set_level(spdlog::level::err);  // cleanup of every crash state logs what it removes
  auto engine = io::make_engine({io::EngineKind::threads, 4, 1});
  std::size_t states = 0, violations = 0;
  try {
    for (const auto& s : args.scenarios) {
      auto t0 = std::chrono::steady_clock::now();
      Outcome o = explore(args, s, *engine);
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("powerloss: %-10s %4zu operations, %5zu states, %zu violations (%.1f s)%s%s\n",
                  s.c_str(), o.ops, o.states, o.violations, secs,
                  args.drop.empty() ? "" : ", dropping fsync site ", args.drop.c_str());
      std::fflush(stdout);
      states += o.states;
      violations += o.violations;
      if (args.expect_violations && violations > 0) break;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "powerloss: %s\n", e.what());
    return 2;
  }
  std::printf("powerloss: %zu states explored, %zu violations\n", states, violations);
  return (violations > 0) == args.expect_violations ? 0 : 1;
}
