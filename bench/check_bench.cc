// check_bench: what a save's structure check costs at many leaves (runtime/plan_cache.h), next to
// the leaf memcpy of the same state measured in the same run. The check is the part of a reused
// plan's stall that is not the copy: it walks the tree, compares its structure with the cached
// plan's and collects each leaf's address.
//
//   build/bench/check_bench --leaves 1000000 --state-mb 153
//   build/bench/check_bench --leaves 100000 --state-mb 256 --runs 21
//
// The tree is ckpt_bench's (bench/state.h: blocks of 16 leaves under one dict). Four series, each
// --runs checks of an unchanged tree after one that plans: on the calling thread alone (one
// walk), and in parts on two threads (the calling one and a helper started per check, as a
// save runs it on the caller and the copy threads); each warm (the tree just walked) and cold
// (after streaming 1 GiB through the caches, as a training step evicts the tree's nodes).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "bench/baselines.h"
#include "bench/state.h"
#include "io/file.h"
#include "runtime/plan_cache.h"

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Runs task(0..n-1) on this thread and one helper thread, which take the next index in turn.
void two_threads(std::size_t n, const std::function<void(std::size_t)>& task) {
  std::atomic<std::size_t> next{0};
  auto run = [&] {
    for (std::size_t i; (i = next.fetch_add(1)) < n;) task(i);
  };
  std::thread helper(run);
  run();
  helper.join();
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t leaves = 1000000;
  std::uint64_t state_mb = 153;
  int runs = 11;
  CLI::App app{"check_bench: the structure check of a reused plan, next to the leaf memcpy"};
  app.add_option("--leaves", leaves, "number of arrays in the state")->check(CLI::PositiveNumber);
  app.add_option("--state-mb", state_mb, "state size in MiB")->check(CLI::PositiveNumber);
  app.add_option("--runs", runs, "timed checks per series")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  std::fprintf(stderr, "check_bench: building a %llu MiB state of %zu leaves\n",
               static_cast<unsigned long long>(state_mb), leaves);
  ckpt::bench::SyntheticState state(state_mb << 20, leaves);
  const std::uint64_t unit = 4u << 20;

  ckpt::io::AlignedBuffer dst(ckpt::io::align_up(state.bytes()));
  const double memcpy_1t = ckpt::bench::memcpy_best_ms(state.spans(), dst.data(), 1, 3);
  const double memcpy_2t = ckpt::bench::memcpy_best_ms(state.spans(), dst.data(), 2, 3);

  ckpt::PlanCache cache;
  if (cache.plan(state.tree(), unit, two_threads).reused) {
    std::fprintf(stderr, "check_bench: the first plan was reused\n");
    return 1;
  }
  std::vector<char> evict_src(1u << 30, 1), evict_dst(evict_src.size());

  std::printf("check_bench: %zu leaves, %llu MiB, %d checks a series (ms)\n", leaves,
              static_cast<unsigned long long>(state_mb), runs);
  std::printf("  leaf memcpy (every leaf into one buffer): 1 thread %.1f, 2 threads %.1f\n",
              memcpy_1t, memcpy_2t);
  std::printf("  %-22s %8s %8s %8s %18s\n", "check", "p50", "min", "max", "p50 / memcpy 2 thr");
  for (const bool parts : {false, true}) {
    for (const bool cold : {false, true}) {
      std::vector<double> t;
      std::size_t split = 0;
      for (int r = 0; r < runs; ++r) {
        if (cold) {
          std::memcpy(evict_dst.data(), evict_src.data(), evict_src.size());
          asm volatile("" : : "r"(evict_dst.data()) : "memory");  // the copy must happen
        }
        const auto t0 = Clock::now();
        ckpt::PlannedSave p = parts ? cache.plan(state.tree(), unit, two_threads)
                                    : cache.plan(state.tree(), unit);
        t.push_back(ms_since(t0));
        if (!p.reused || p.sources.size() != leaves) {
          std::fprintf(stderr, "check_bench: the plan was not reused\n");
          return 1;
        }
        split = p.parts;
      }
      std::sort(t.begin(), t.end());
      const std::string name = fmt::format("{}, {}", parts ? fmt::format("{} parts", split)
                                                           : std::string("one walk"),
                                           cold ? "cold" : "warm");
      std::printf("  %-22s %8.1f %8.1f %8.1f %18.2f\n", name.c_str(), t[t.size() / 2], t.front(),
                  t.back(), t[t.size() / 2] / memcpy_2t);
    }
  }
  return 0;
}
