// crash_saver: a tiny "training job" for the crash tests (tests/reliability/crash_test.cc).
//
//   crash_saver --dir RUN [--steps K] [--leaves L] [--elements N] [--ranks P]
//
// It removes the *.tmp-* leftovers of RUN, resumes from RUN/latest when there is one (restoring
// its state and continuing at the next step), and for each remaining step advances a
// deterministic state (tests/reliability/crash_state.h), saves it as RUN/step/<n> (metadata
// {"step": n}) without waiting and registers it as latest. At the end it drains the Runtime and
// prints "digest <hex> step <n>", a checksum of the final state: an interrupted run resumed to the
// end prints the digest of an uninterrupted one.
// --ranks P (P >= 1) makes it a sharded job of P simulated processes (LocalGroup: threads of this
// process, each with its own Runtime and its box of every params/ leaf, opt/bias replicated):
// every save and registration is collective, resuming restores each process's box from whatever
// process count saved latest (resharding), and the digest is the global state's, the same as a
// single-process run's. A crash point then kills the whole group at once.
// Exit codes: 0 done, 2 a failure, 3 bad arguments. The test kills it with
// CKPT_CRASH_AT=<point>[:n] (io/crash_point.h) or with SIGKILL at a random time.
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "io/error.h"
#include "runtime/catalog.h"
#include "runtime/communicator.h"
#include "runtime/runtime.h"
#include "tests/reliability/crash_state.h"

namespace {

using namespace ckpt;

struct Args {
  std::string dir;
  int steps = 5;
  int leaves = crash::kLeaves;
  std::uint64_t elements = crash::kElements;  // u32 per large leaf
  int ranks = 0;                      // 0: one plain process; P: a sharded job of P processes
};

bool parse(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    std::string_view k = argv[i];
    if (i + 1 >= argc) return false;
    const char* v = argv[++i];
    if (k == "--dir") {
      a.dir = v;
    } else if (k == "--steps") {
      a.steps = std::atoi(v);
    } else if (k == "--leaves") {
      a.leaves = std::atoi(v);
    } else if (k == "--elements") {
      a.elements = std::strtoull(v, nullptr, 10);
    } else if (k == "--ranks") {
      a.ranks = std::atoi(v);
    } else {
      return false;
    }
  }
  return !a.dir.empty() && a.steps > 0 && a.leaves > 0 && a.elements > 0 && a.ranks >= 0;
}

RuntimeOptions saver_options() {
  RuntimeOptions options;
  options.staging_budget = 16u << 20;
  options.unit_bytes = 512u << 10;
  options.copy_threads = 2;
  return options;
}

void remove_leftovers(const std::string& run_dir) {
  for (const auto& p : clean_run_dir(run_dir))
    std::fprintf(stderr, "removed leftover %s\n", p.c_str());
}

// Process `rank` of a sharded job: resumes its boxes from `latest`, saves and registers every
// remaining step collectively. Returns the step reached; throws on a failure.
int run_rank(const Args& a, const std::shared_ptr<Communicator>& comm,
             const std::optional<std::string>& latest, Tree& state) {
  RuntimeOptions options = saver_options();
  options.communicator = comm;
  options.copy_threads = 1;
  options.collective_timeout = std::chrono::seconds(10);  // below the test's deadline
  Runtime rt(options);
  auto [boxes, sharding] =
      crash::box_of(crash::initial_state(a.leaves, a.elements), comm->rank(), a.ranks);
  state = std::move(boxes);
  int step = 0;
  if (latest) {
    boost::json::object md = rt.restore(a.dir + "/" + *latest, state, sharding);
    step = static_cast<int>(md.at("step").as_int64());
    if (comm->rank() == 0)
      std::fprintf(stderr, "resumed from %s (step %d) as %d processes\n", latest->c_str(), step,
                   a.ranks);
  }
  SaveOptions so;
  so.sharding = sharding;
  so.run_dir = a.dir;
  for (int s = step + 1; s <= a.steps; ++s) {
    crash::advance(state, s);
    boost::json::object md;
    md["step"] = s;
    const std::string suffix = "step/" + std::to_string(s);
    rt.save(a.dir + "/" + suffix, state, md, so);
    rt.register_latest(a.dir, suffix);
    step = s;
  }
  DrainReport report = rt.drain();
  for (const auto& e : report.errors)
    std::fprintf(stderr, "process %d failed: %s\n", comm->rank(), e.c_str());
  if (!report.ok()) throw std::runtime_error("saves failed");
  return step;
}

int run_sharded(const Args& a) {
  remove_leftovers(a.dir);  // process 0's job, before any process saves
  const std::optional<std::string> latest = read_latest(a.dir);
  LocalGroup group(a.ranks);
  std::vector<Tree> states(static_cast<std::size_t>(a.ranks));
  std::vector<int> steps(states.size(), -1);
  std::vector<std::thread> threads;
  for (int r = 0; r < a.ranks; ++r) {
    threads.emplace_back([&, r] {
      auto i = static_cast<std::size_t>(r);
      try {
        steps[i] = run_rank(a, group.member(r), latest, states[i]);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "process %d: %s\n", r, e.what());
      }
    });
  }
  for (auto& t : threads) t.join();
  std::vector<const Tree*> boxes;
  for (std::size_t i = 0; i < states.size(); ++i) {
    if (steps[i] != a.steps) return 2;
    boxes.push_back(&states[i]);
  }
  std::printf("digest %08" PRIx32 " step %d\n", crash::digest(boxes), a.steps);
  return 0;
}

int run(const Args& a) {
  if (a.ranks > 0) return run_sharded(a);
  const std::string& run_dir = a.dir;
  remove_leftovers(run_dir);
  Runtime rt(saver_options());

  Tree state = crash::initial_state(a.leaves, a.elements);
  int step = 0;
  if (auto latest = read_latest(run_dir)) {
    boost::json::object md = rt.restore(run_dir + "/" + *latest, state);
    step = static_cast<int>(md.at("step").as_int64());
    std::fprintf(stderr, "resumed from %s (step %d)\n", latest->c_str(), step);
  }
  for (int s = step + 1; s <= a.steps; ++s) {
    crash::advance(state, s);
    boost::json::object md;
    md["step"] = s;
    const std::string suffix = "step/" + std::to_string(s);
    rt.save(run_dir + "/" + suffix, state, md);  // fire-and-forget: drain reports failures
    rt.register_latest(run_dir, suffix);
    step = s;
  }
  DrainReport report = rt.drain();
  for (const auto& e : report.errors) std::fprintf(stderr, "failed: %s\n", e.c_str());
  if (!report.ok()) return 2;
  std::printf("digest %08" PRIx32 " step %d\n", crash::digest({&state}), step);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (!parse(argc, argv, a)) {
    std::fprintf(stderr, "usage: crash_saver --dir RUN [--steps K] [--leaves L] [--elements N] [--ranks P]\n");
    return 3;
  }
  try {
    return run(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crash_saver: %s\n", e.what());
    return 2;
  }
}
