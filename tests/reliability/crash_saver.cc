// crash_saver: a tiny "training job" for the crash tests (tests/reliability/crash_test.cc).
//
//   crash_saver --dir RUN [--steps K] [--leaves L] [--elements N]
//
// It removes the *.tmp-* leftovers of RUN, resumes from RUN/latest when there is one (restoring
// its state and continuing at the next step), and for each remaining step advances a
// deterministic state, saves it as RUN/step/<n> (metadata {"step": n}) without waiting and
// registers it as latest. At the end it drains the Runtime and prints "digest <hex> step <n>",
// a checksum of the final state: an interrupted run resumed to the end prints the digest of an
// uninterrupted one. Exit codes: 0 done, 2 a failure, 3 bad arguments. The test kills it with
// CKPT_CRASH_AT=<point>[:n] (io/crash_point.h) or with SIGKILL at a random time.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>

#include "io/error.h"
#include "runtime/catalog.h"
#include "runtime/crc32c.h"
#include "runtime/runtime.h"

namespace {

using namespace ckpt;

struct Args {
  std::string dir;
  int steps = 5;
  int leaves = 3;
  std::uint64_t elements = 200'000;  // u32 per large leaf
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
    } else {
      return false;
    }
  }
  return !a.dir.empty() && a.steps > 0 && a.leaves > 0 && a.elements > 0;
}

// The initial state: `leaves` large u32 arrays plus a small one that ends off the 4 KiB grid.
Tree initial_state(const Args& a) {
  Tree t;
  for (int l = 0; l < a.leaves; ++l) {
    Array x = Array::zeros(DType::u32, {a.elements});
    auto v = x.as<std::uint32_t>();
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::uint32_t>(l * 7919 + i);
    t["params"]["layer" + std::to_string(l)] = x;
  }
  Array bias = Array::zeros(DType::u32, {1001});
  auto b = bias.as<std::uint32_t>();
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::uint32_t>(i * 31);
  t["opt"]["bias"] = bias;
  return t;
}

// One "training step": every element depends on its old value and the step.
void advance(const Tree& t, int step) {
  for (auto& [path, a] : t.flatten()) {
    for (auto& x : a.as<std::uint32_t>())
      x = x * 1664525u + 1013904223u + static_cast<unsigned>(step);
  }
}

std::uint32_t digest(const Tree& t) {
  std::uint32_t crc = 0;
  for (auto& [path, a] : t.flatten()) {
    crc = crc32c(path, crc);
    crc = crc32c(a.data(), a.nbytes(), crc);
  }
  return crc;
}

int run(const Args& a) {
  const std::string& run_dir = a.dir;
  for (const auto& p : clean_run_dir(run_dir))
    std::fprintf(stderr, "removed leftover %s\n", p.c_str());

  RuntimeOptions options;
  options.staging_budget = 16u << 20;
  options.unit_bytes = 512u << 10;
  options.copy_threads = 2;
  Runtime rt(options);

  Tree state = initial_state(a);
  int step = 0;
  if (auto latest = read_latest(run_dir)) {
    boost::json::object md = rt.restore(run_dir + "/" + *latest, state);
    step = static_cast<int>(md.at("step").as_int64());
    std::fprintf(stderr, "resumed from %s (step %d)\n", latest->c_str(), step);
  }
  for (int s = step + 1; s <= a.steps; ++s) {
    advance(state, s);
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
  std::printf("digest %08" PRIx32 " step %d\n", digest(state), step);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (!parse(argc, argv, a)) {
    std::fprintf(stderr, "usage: crash_saver --dir RUN [--steps K] [--leaves L] [--elements N]\n");
    return 3;
  }
  try {
    return run(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crash_saver: %s\n", e.what());
    return 2;
  }
}
