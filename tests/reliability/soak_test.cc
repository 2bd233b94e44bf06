// Load: thousands of small and a few large saves from several coroutines under a tight staging
// budget with retention on; afterwards every committed checkpoint verifies, staging is back in
// the pool, memory is back to its level after warm-up and no file descriptor leaked.
#include <doctest/doctest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/retention.h"
#include "runtime/runtime.h"
#include "tests/test_util.h"

namespace asio = boost::asio;
using namespace ckpt;
using namespace std::chrono_literals;
using ckpt::test::TempDir;

namespace {

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

std::uint64_t rss_bytes() {
  std::ifstream in("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * 4096;
}

Tree tree_of(std::size_t leaves, std::size_t floats, std::uint64_t seed) {
  Tree t;
  for (std::size_t i = 0; i < leaves; ++i) {
    Array a = Array::zeros(DType::f32, {floats});
    test::fill_pattern(a, seed + i);
    t["p"][std::to_string(i)] = a;
  }
  return t;
}

// One writer: `count` saves of `tree` into run/<name>/<i>, registering each as latest.
asio::awaitable<void> writer(Runtime& rt, std::string run, Tree tree, int count, int* committed) {
  for (int i = 0; i < count; ++i) {
    SaveOptions options;
    options.run_dir = run;
    options.retention.max_to_keep = 3;
    boost::json::object md;
    md["step"] = i;
    SaveHandle h = co_await rt.async_save(run + "/" + std::to_string(i), tree, md, options,
                                          asio::use_awaitable);
    rt.register_latest(run, std::to_string(i));
    if (i % 8 == 7) {  // mostly fire-and-forget; wait now and then
      co_await h.async_wait(asio::use_awaitable);
      if (h.state() == SaveState::committed) ++*committed;
    }
  }
}

}  // namespace

TEST_CASE("soak: thousands of concurrent saves under a tight budget keep every checkpoint valid") {
  TempDir dir;
  RuntimeOptions o;
  o.staging_budget = 24u << 20;
  o.unit_bytes = 1u << 20;
  o.copy_threads = 2;
  // The Runtime runs on this io_context, driven by its own thread: drain() blocks the caller.
  asio::io_context ctx;
  auto guard = asio::make_work_guard(ctx);
  std::thread io_thread([&] { ctx.run(); });
  std::size_t fds_before = open_fds();
  std::uint64_t rss_after_warmup = 0;
  {
    Runtime rt(ctx.get_executor(), o);
    {  // warm-up: the staging pool maps its memory once
      int warm_committed = 0;
      auto f = asio::co_spawn(ctx, writer(rt, dir / "warm", tree_of(4, 1'000'000, 1), 4, &warm_committed),
                              asio::use_future);
      REQUIRE(f.wait_for(120s) == std::future_status::ready);
      f.get();
      rt.drain();
    }
    rss_after_warmup = rss_bytes();
    int committed[4] = {0, 0, 0, 0};
    std::vector<std::future<void>> done;
    const int small_saves = 600;
    for (int w = 0; w < 3; ++w) {
      done.push_back(asio::co_spawn(ctx, writer(rt, dir / ("small" + std::to_string(w)),
                                                tree_of(8, 64, 100 + w), small_saves, &committed[w]),
                                    asio::use_future));
    }
    done.push_back(asio::co_spawn(ctx, writer(rt, dir / "large", tree_of(4, 1'500'000, 7), 8, &committed[3]),
                                  asio::use_future));
    auto deadline = std::chrono::steady_clock::now() + 300s;
    for (auto& f : done) {
      REQUIRE_MESSAGE(f.wait_until(deadline) == std::future_status::ready, "soak did not finish in time");
      f.get();
    }
    DrainReport report = rt.drain();
    CHECK(report.ok());
    auto stats = rt.stats();
    CHECK(stats.saves_failed == 0);
    CHECK(stats.saves_committed == 3 * small_saves + 8 + 4);
    CHECK(stats.staging_in_use == 0);
    CHECK(stats.staging_mapped <= o.staging_budget);
    for (const char* run : {"small0", "small1", "small2", "large"}) {
      // Retention runs after each commit and once more when the run drained: the policy holds.
      auto list = list_checkpoints(dir / run);
      CHECK(list.size() <= 4);  // 3 kept + latest
      for (const auto& c : list) CHECK_MESSAGE(verify_checkpoint(rt.engine(), c.path).ok(), c.path);
      auto latest = read_latest(dir / run);
      REQUIRE(latest.has_value());
      CHECK(verify_checkpoint(rt.engine(), dir / run + "/" + *latest).ok());
    }
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    // (Sanitizers keep freed memory in quarantine and shadow it: RSS says nothing there, and
    // LeakSanitizer checks what matters.)
    CHECK(rss_bytes() <= rss_after_warmup + (32u << 20));
#else
    (void)rss_after_warmup;
#endif
  }
  guard.reset();
  io_thread.join();
  CHECK(open_fds() == fds_before);
}
