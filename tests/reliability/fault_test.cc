// Injected IO faults through the Runtime (io::FaultEngine, CKPT_FAULT_AT) and a real full disk:
// each failed save reports an Error naming the file and the cause, leaves earlier checkpoints
// and `latest` alone and nothing temporary behind, returns its staging, and the next save after
// the fault clears succeeds. Plus the IO deadline (RuntimeOptions::io_timeout).
#include <doctest/doctest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <thread>
#include <utility>

#include "io/crash_point.h"
#include "io/durable.h"
#include "io/error.h"
#include "io/fault_engine.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/runtime.h"
#include "tests/test_util.h"

namespace ckpt {
namespace {

using namespace std::chrono_literals;
using test::contains;
using test::TempDir;

constexpr auto kDeadline = std::chrono::seconds(30);

using test::make_tree;

RuntimeOptions small_options() {
  RuntimeOptions o;
  o.staging_budget = 32u << 20;
  o.unit_bytes = 256u << 10;
  o.copy_threads = 2;
  return o;
}

// Runs the test case once per engine driver (doctest subcases) under the FaultEngine.
RuntimeOptions with_each_engine(RuntimeOptions o) {
  SUBCASE("io_uring engine (or the fallback)") { o.engine = io::EngineKind::automatic; }
  SUBCASE("thread-pool engine") { o.engine = io::EngineKind::threads; }
  return o;
}

// A Runtime whose engine is wrapped in a FaultEngine the test arms.
struct Faulty {
  io::FaultEngine* faults = nullptr;
  std::unique_ptr<Runtime> rt;
  explicit Faulty(RuntimeOptions o = small_options()) {
    o.wrap_engine = test::wrap_in_faults(&faults);
    rt = std::make_unique<Runtime>(o);
  }
};

// Waits (with a deadline) and returns the Error the operation failed with.
template <typename Handle>
Error expect_failure(const Handle& h) {
  REQUIRE_MESSAGE(h.wait_for(kDeadline), "operation did not finish within the deadline");
  auto e = test::catch_error([&] { h.wait(); });
  REQUIRE_MESSAGE(e.has_value(), "the operation did not fail");
  return *e;
}

void save_and_register(Runtime& rt, const std::string& run, const std::string& suffix,
                       const Tree& tree) {
  SaveHandle h = rt.save(run + "/" + suffix, tree, {{"step", std::stoll(suffix.substr(5))}});
  RegisterHandle r = rt.register_latest(run, suffix);
  REQUIRE(r.wait_for(kDeadline));
  h.wait();
  r.wait();
}

// The state after a contained failure of step/2: step/1 intact and latest, nothing else.
void check_contained(Runtime& rt, const std::string& run) {
  CHECK(rt.drain().failed <= 2);  // the failed save and registration nobody else observed
  CHECK(read_latest(run) == "step/1");
  auto list = list_checkpoints(run);
  REQUIRE(list.size() == 1);
  CHECK(list[0].suffix == "step/1");
  CHECK(verify_checkpoint(rt.engine(), list[0].path).ok());
  CHECK(test::find_tmp_entries(run).empty());
  CHECK(rt.stats().staging_in_use == 0);
}

// After the fault clears, the next save commits and moves latest.
void check_recovers(Runtime& rt, const std::string& run, const Tree& tree) {
  save_and_register(rt, run, "step/3", tree);
  CHECK(read_latest(run) == "step/3");
  CHECK(verify_checkpoint(rt.engine(), run + "/step/3").ok());
  CHECK(test::find_tmp_entries(run).empty());
  CHECK(rt.stats().staging_in_use == 0);
}

// Saves step/1, arms `arm`, saves step/2 (which must fail), disarms with `disarm`.
Error run_faulty_save(Faulty& f, const std::string& run, const Tree& tree,
                      const std::function<void()>& arm, const std::function<void()>& disarm) {
  save_and_register(*f.rt, run, "step/1", tree);
  arm();
  SaveHandle h = f.rt->save(run + "/step/2", tree, {{"step", 2}});
  RegisterHandle r = f.rt->register_latest(run, "step/2");
  Error e = expect_failure(h);
  Error re = expect_failure(r);
  CHECK(h.state() == SaveState::failed);
  CHECK(std::string(re.what()) == std::string(e.what()));  // the register reports the cause
  disarm();
  return e;
}

// Points CKPT_FAULT_AT at `value` for the scope, in this process.
struct FaultAt {
  explicit FaultAt(const std::string& value) {
    ::setenv("CKPT_FAULT_AT", value.c_str(), 1);
    io::reload_crash_points();
  }
  ~FaultAt() { clear(); }
  static void clear() {
    ::unsetenv("CKPT_FAULT_AT");
    io::reload_crash_points();
  }
};

}  // namespace

TEST_CASE("a data write failing with EIO fails the save naming the data file and the cause") {
  TempDir dir;
  Faulty f(with_each_engine(small_options()));
  std::string run = dir / "run";
  Tree tree = make_tree(3, 300'000, 1);  // 3.6 MB: 15 writes of 256 KiB
  Error e = run_faulty_save(
      f, run, tree,
      [&] {
        f.faults->arm({io::Request::Op::write, 2, io::FaultKind::error, EIO});
      },
      [&] { f.faults->disarm(); });
  CHECK(e.code() == Errc::io);
  CHECK(e.sys_errno() == EIO);
  CHECK(contains(e.what(), "step/2.tmp-"));
  CHECK(contains(e.what(), "data-00000.bin"));
  CHECK(contains(e.what(), "Input/output error"));
  CHECK(f.faults->injected() == 1);
  check_contained(*f.rt, run);
  check_recovers(*f.rt, run, tree);
}

TEST_CASE("a data fsync failing with EIO fails the save and is not retried") {
  TempDir dir;
  Faulty f(with_each_engine(small_options()));
  std::string run = dir / "run";
  Tree tree = make_tree(2, 100'000, 2);
  Error e = run_faulty_save(
      f, run, tree,
      [&] {
        f.faults->arm({io::Request::Op::fsync, 1, io::FaultKind::error, EIO});
      },
      [&] { f.faults->disarm(); });
  CHECK(e.code() == Errc::io);
  CHECK(contains(e.what(), "fsync"));
  CHECK(contains(e.what(), "data-00000.bin"));
  CHECK(contains(e.what(), "Input/output error"));
  CHECK(f.faults->injected() == 1);  // one fsync fault, and no second fsync of that file
  check_contained(*f.rt, run);
  check_recovers(*f.rt, run, tree);
}

TEST_CASE("a short data write fails the save instead of committing a hole") {
  TempDir dir;
  Faulty f(with_each_engine(small_options()));
  std::string run = dir / "run";
  Tree tree = make_tree(2, 300'000, 3);
  Error e = run_faulty_save(
      f, run, tree,
      [&] {
        f.faults->arm({io::Request::Op::write, 3, io::FaultKind::short_transfer});
      },
      [&] { f.faults->disarm(); });
  CHECK(e.code() == Errc::io);
  CHECK(contains(e.what(), "short write at offset"));
  CHECK(contains(e.what(), "data-00000.bin"));
  check_contained(*f.rt, run);
  check_recovers(*f.rt, run, tree);
}

TEST_CASE("ENOSPC on data writes fails the save with Errc::no_space naming the data file") {
  TempDir dir;
  Faulty f(with_each_engine(small_options()));
  std::string run = dir / "run";
  Tree tree = make_tree(3, 300'000, 4);
  Error e = run_faulty_save(
      f, run, tree,
      [&] {
        f.faults->arm({io::Request::Op::write, 4, io::FaultKind::error, ENOSPC, /*sticky=*/true});
      },
      [&] { f.faults->disarm(); });
  CHECK(e.code() == Errc::no_space);
  CHECK(contains(e.what(), "data-00000.bin"));
  CHECK(contains(e.what(), "No space left on device"));
  CHECK(f.faults->injected() >= 1);
  check_contained(*f.rt, run);
  check_recovers(*f.rt, run, tree);
}

TEST_CASE("a failing directory rename fails the save and leaves no temporary directory") {
  if (!io::crash_points_compiled_in()) {
    MESSAGE("skipped: built with CKPT_CRASH_POINTS=OFF");
    return;
  }
  TempDir dir;
  Faulty f(with_each_engine(small_options()));
  std::string run = dir / "run";
  Tree tree = make_tree(2, 100'000, 5);
  std::optional<FaultAt> fault;
  Error e = run_faulty_save(
      f, run, tree, [&] { fault.emplace("before_dir_rename:EIO"); }, [&] { fault.reset(); });
  CHECK(e.code() == Errc::io);
  CHECK(contains(e.what(), "before_dir_rename"));
  CHECK(contains(e.what(), run + "/step/2"));
  CHECK(contains(e.what(), "Input/output error"));
  check_contained(*f.rt, run);
  check_recovers(*f.rt, run, tree);
}

TEST_CASE("a failing rename of latest fails the registration and keeps the old latest") {
  if (!io::crash_points_compiled_in()) {
    MESSAGE("skipped: built with CKPT_CRASH_POINTS=OFF");
    return;
  }
  TempDir dir;
  Faulty f(with_each_engine(small_options()));
  std::string run = dir / "run";
  Tree tree = make_tree(2, 100'000, 6);
  save_and_register(*f.rt, run, "step/1", tree);
  {
    FaultAt fault("before_latest_rename:ENOSPC");
    SaveHandle h = f.rt->save(run + "/step/2", tree, {{"step", 2}});
    RegisterHandle r = f.rt->register_latest(run, "step/2");
    Error e = expect_failure(r);
    h.wait();  // the save itself commits
    CHECK(e.code() == Errc::no_space);
    CHECK(contains(e.what(), run + "/latest"));
    CHECK(contains(e.what(), "No space left on device"));
  }
  CHECK(read_latest(run) == "step/1");
  CHECK(test::find_tmp_entries(run).empty());  // no latest.tmp-* left
  CHECK(list_checkpoints(run).size() == 2);
  CHECK(f.rt->stats().staging_in_use == 0);
  f.rt->register_latest(run, "step/2").wait();
  CHECK(read_latest(run) == "step/2");
}

TEST_CASE("a hung data write fails the save with Errc::timeout and keeps its chunk until it ends") {
  TempDir dir;
  auto o = small_options();
  o.io_timeout = 300ms;
  Faulty f(with_each_engine(o));
  std::string run = dir / "run";
  Tree tree = make_tree(3, 300'000, 7);
  save_and_register(*f.rt, run, "step/1", tree);
  f.faults->arm({io::Request::Op::write, 2, io::FaultKind::hang});
  auto t0 = std::chrono::steady_clock::now();
  SaveHandle h = f.rt->save(run + "/step/2", tree, {{"step", 2}});
  RegisterHandle r = f.rt->register_latest(run, "step/2");
  Error e = expect_failure(h);
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(e.code() == Errc::timeout);
  CHECK(contains(e.what(), "data write did not complete within the IO timeout of 300 ms"));
  CHECK(contains(e.what(), "data-00000.bin"));
  CHECK(took >= 300ms);
  CHECK(took < 10s);
  CHECK(expect_failure(r).code() == Errc::timeout);
  CHECK(f.faults->hung() == 1);
  f.faults->disarm();
  // The chunk of the hung write stays out of the pool: the kernel may still read it.
  CHECK(f.rt->stats().staging_in_use == f.rt->options().unit_bytes);
  CHECK(read_latest(run) == "step/1");
  CHECK(list_checkpoints(run).size() == 1);
  CHECK(test::find_tmp_entries(run).empty());
  // The runtime keeps working while the request hangs.
  save_and_register(*f.rt, run, "step/3", tree);
  CHECK(read_latest(run) == "step/3");
  // Once the request ends, its chunk returns.
  CHECK(f.faults->release_hung() == 1);
  auto until = std::chrono::steady_clock::now() + kDeadline;
  while (f.rt->stats().staging_in_use != 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(1ms);
  CHECK(f.rt->stats().staging_in_use == 0);
  CHECK(test::find_tmp_entries(run).empty());
}

TEST_CASE("a hung data fsync fails the save with Errc::timeout") {
  TempDir dir;
  auto o = small_options();
  o.io_timeout = 200ms;
  Faulty f(with_each_engine(o));
  std::string run = dir / "run";
  Tree tree = make_tree(2, 100'000, 8);
  Error e = run_faulty_save(
      f, run, tree,
      [&] {
        f.faults->arm({io::Request::Op::fsync, 1, io::FaultKind::hang});
      },
      [&] { f.faults->disarm(); });
  CHECK(e.code() == Errc::timeout);
  CHECK(contains(e.what(), "data fsync did not complete"));
  CHECK(contains(e.what(), "data-00000.bin"));
  check_contained(*f.rt, run);
  check_recovers(*f.rt, run, tree);
  CHECK(f.faults->hung() == 1);  // still hung: destroying the Runtime abandons it
}

TEST_CASE("destroying the Runtime with a timed-out write still hung returns without touching freed memory") {
  TempDir dir;
  auto o = small_options();
  o.io_timeout = 100ms;
  Faulty f(with_each_engine(o));
  Tree tree = make_tree(2, 300'000, 9);
  f.faults->arm({io::Request::Op::write, 1, io::FaultKind::hang, 0, /*sticky=*/true});
  SaveHandle h = f.rt->save(dir / "x", tree, {});
  CHECK(expect_failure(h).code() == Errc::timeout);
  CHECK(f.faults->hung() >= 1);
  f.rt.reset();  // must neither hang nor touch freed staging (see ASan builds): it abandons them
  CHECK(list_checkpoints(dir.path()).empty());
  CHECK(test::find_tmp_entries(dir.path()).empty());
}

TEST_CASE("destroying a Runtime whose device is stuck returns within the IO timeout and logs "
          "what it abandoned") {
  TempDir dir;
  auto o = small_options();
  o.io_timeout = 200ms;
  Faulty f(with_each_engine(o));
  Tree tree = make_tree(2, 300'000, 21);
  // A device that never answers: the FaultEngine's destructor would wait for these forever.
  f.faults->arm({io::Request::Op::write, 1, io::FaultKind::stuck, 0, /*sticky=*/true});
  test::LogCapture log;
  SaveHandle h = f.rt->save(dir / "x", tree, {});  // fire and forget
  io::FaultEngine* faults = f.faults;
  const auto t0 = std::chrono::steady_clock::now();
  f.rt.reset();
  const auto took = std::chrono::steady_clock::now() - t0;
  MESSAGE("destroyed in ", std::chrono::duration_cast<std::chrono::milliseconds>(took).count(),
          " ms with an IO timeout of 200 ms");
  CHECK(took < o.io_timeout + 1s);
  CHECK(expect_failure(h).code() == Errc::timeout);
  const std::string text = log.text();
  CHECK(contains(text, "stuck past the IO timeout of 200 ms"));
  CHECK(contains(text, "abandoned: write of 262144 bytes at offset"));
  CHECK(contains(text, "data-00000.bin"));
  CHECK(list_checkpoints(dir.path()).empty());
  // The abandoned engine lives on: the stuck writes may still complete, into memory that is
  // still mapped and state their completions own (see the ASan build).
  REQUIRE(faults->hung() >= 1);
  CHECK(faults->release_hung() >= 1);
  std::this_thread::sleep_for(50ms);
}

// ---- async_saves queued for staging that only a timed-out write holds ------------------------

// A Runtime with an IO timeout of 200 ms; a save of 20 MB (of a 32 MiB budget: one save at a
// time) whose every write hangs, failed by the timeout: its staging stays held by the hung
// writes. Then an async_save of the same tree, queued for staging; `queued` gets its outcome.
struct QueuedBehindHungWrites {
  using Outcome = std::pair<std::exception_ptr, SaveHandle>;
  static RuntimeOptions options() {
    auto o = small_options();
    o.io_timeout = 200ms;
    return o;
  }
  // Before the Runtime, which they outlive: it may still complete the queued save as it goes.
  std::promise<Outcome> promise;
  std::future<Outcome> queued = promise.get_future();
  Faulty f;
  Tree tree;

  // `o`: options() through with_each_engine, in the test case (its subcases).
  QueuedBehindHungWrites(const RuntimeOptions& o, const std::string& dir, std::uint64_t seed)
      : f(o), tree(make_tree(2, 2'500'000, seed)) {
    f.faults->arm({io::Request::Op::write, 1, io::FaultKind::hang, 0, /*sticky=*/true});
    SaveHandle held = f.rt->save(dir + "/held", tree, {});
    CHECK(expect_failure(held).code() == Errc::timeout);
    f.faults->disarm();
    f.rt->async_save(dir + "/queued", tree, {}, SaveOptions(),
                     [this](std::exception_ptr e, SaveHandle h) { promise.set_value({e, h}); });
    CHECK(queued.wait_for(100ms) == std::future_status::timeout);  // no staging for it yet
  }
};

TEST_CASE("drain() waits for an async_save queued for staging that a timed-out write holds, and "
          "the save commits once the write ends") {
  TempDir dir;
  QueuedBehindHungWrites q(with_each_engine(QueuedBehindHungWrites::options()), dir.path(), 31);
  Faulty& f = q.f;
  auto drained = std::async(std::launch::async, [&] { return f.rt->drain(); });
  // The timed-out save has ended; the queued one has not even started.
  CHECK(drained.wait_for(300ms) == std::future_status::timeout);
  CHECK(f.faults->release_hung() >= 1);
  REQUIRE(drained.wait_for(kDeadline) == std::future_status::ready);
  CHECK(drained.get().failed == 0);  // the held save's failure was observed above
  REQUIRE(q.queued.wait_for(0s) == std::future_status::ready);
  auto [e, h] = q.queued.get();
  REQUIRE(e == nullptr);
  CHECK(h.state() == SaveState::committed);
  CHECK(verify_checkpoint(f.rt->engine(), dir / "queued").ok());
  CHECK(f.rt->stats().staging_in_use == 0);
}

TEST_CASE("destroying the Runtime refuses with Errc::cancelled an async_save still queued for "
          "staging that a timed-out write holds") {
  TempDir dir;
  const RuntimeOptions o = with_each_engine(QueuedBehindHungWrites::options());
  QueuedBehindHungWrites q(o, dir.path(), 32);
  Faulty& f = q.f;
  test::LogCapture log;
  io::FaultEngine* faults = f.faults;
  const auto t0 = std::chrono::steady_clock::now();
  f.rt.reset();
  CHECK(std::chrono::steady_clock::now() - t0 < o.io_timeout + 1s);
  REQUIRE(q.queued.wait_for(kDeadline) == std::future_status::ready);
  auto [e, h] = q.queued.get();
  REQUIRE(e != nullptr);
  auto err = test::catch_error([&] { std::rethrow_exception(e); });
  REQUIRE(err);
  CHECK(err->code() == Errc::cancelled);
  CHECK(contains(err->what(), "waited for staging"));
  CHECK(contains(err->what(), dir / "queued"));
  CHECK(contains(log.text(), "refusing 1 save(s) waiting for staging"));
  CHECK(list_checkpoints(dir.path()).empty());
  CHECK(test::find_tmp_entries(dir.path()).empty());
  // The abandoned engine lives on with the hung writes; let them end into its kept memory.
  CHECK(faults->release_hung() >= 1);
  std::this_thread::sleep_for(50ms);
}

TEST_CASE("the IO timeout also fires when the Runtime runs on the caller's io_context") {
  TempDir dir;
  boost::asio::io_context ctx;
  auto guard = boost::asio::make_work_guard(ctx);
  std::thread runner([&] { ctx.run(); });
  {
    auto o = small_options();
    o.io_timeout = 100ms;
    io::FaultEngine* faults = nullptr;
    o.wrap_engine = test::wrap_in_faults(&faults);
    Runtime rt(ctx.get_executor(), o);
    faults->arm({io::Request::Op::write, 1, io::FaultKind::hang});
    Tree tree = make_tree(2, 100'000, 12);
    SaveHandle h = rt.save(dir / "x", tree, {});
    CHECK(expect_failure(h).code() == Errc::timeout);
    faults->disarm();
    SaveHandle ok = rt.save(dir / "y", tree, {});
    REQUIRE(ok.wait_for(kDeadline));
    ok.wait();
  }  // the Runtime goes first and abandons the hung write with its engine (bounded shutdown)
  guard.reset();
  runner.join();
  CHECK(list_checkpoints(dir.path()).size() == 1);
}

TEST_CASE("saves that keep making progress do not time out") {
  TempDir dir;
  auto o = small_options();
  o.io_timeout = 2s;
  Runtime rt(o);
  Tree tree = make_tree(4, 1'000'000, 10);  // 16 MB
  for (int i = 0; i < 3; ++i) {
    SaveHandle h = rt.save(dir / ("s" + std::to_string(i)), tree, {});
    REQUIRE(h.wait_for(kDeadline));
    h.wait();
  }
}

namespace {
// Mounts a tmpfs of `size` on `dir` for the scope; unmounts even when the test fails.
struct TmpfsMount {
  std::string dir;
  bool mounted = false;
  std::string why;
  TmpfsMount(std::string d, const char* size) : dir(std::move(d)) {
    std::filesystem::create_directories(dir);
    if (::geteuid() != 0) {
      why = "not running as root";
      return;
    }
    std::string opts = std::string("size=") + size;
    if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, opts.c_str()) != 0) {
      why = std::string("mount failed: ") + std::strerror(errno);
      return;
    }
    mounted = true;
  }
  ~TmpfsMount() {
    if (mounted && ::umount2(dir.c_str(), 0) != 0) ::umount2(dir.c_str(), MNT_DETACH);
  }
};
}  // namespace

TEST_CASE("a real full disk fails the save with Errc::no_space and keeps earlier checkpoints") {
  TempDir dir;
  TmpfsMount mnt(dir / "small", "8m");
  if (!mnt.mounted) {
    MESSAGE("skipped: cannot mount a small tmpfs (" << mnt.why << ")");
    return;
  }
  std::string run = mnt.dir + "/run";
  Runtime rt(small_options());
  Tree tree = make_tree(2, 160'000, 11);  // 1.28 MB per checkpoint
  std::size_t saved = 0;
  std::optional<std::string> expected_latest;
  std::optional<Error> failure;
  int step = 1;
  for (; step <= 20; ++step) {
    std::string suffix = "step/" + std::to_string(step);
    SaveHandle h = rt.save(run + "/" + suffix, tree, {{"step", step}});
    RegisterHandle r = rt.register_latest(run, suffix);
    REQUIRE(r.wait_for(kDeadline));
    auto save_error = test::catch_error([&] { h.wait(); });
    auto register_error = test::catch_error([&] { r.wait(); });
    if (!save_error) ++saved;
    if (!register_error) expected_latest = suffix;
    failure = save_error ? save_error : register_error;  // the save's error, else latest's own
    if (failure) break;
  }
  REQUIRE_MESSAGE(failure.has_value(), "8 MiB never filled up");
  MESSAGE("full at step " << step << ": " << std::string(failure->what()));
  CHECK(saved >= 2);
  CHECK(failure->code() == Errc::no_space);
  CHECK(contains(failure->what(), run + "/"));
  CHECK(contains(failure->what(), "No space left on device"));
  rt.drain();
  CHECK(read_latest(run) == expected_latest);
  auto list = list_checkpoints(run);
  CHECK(list.size() == saved);
  for (const auto& c : list) CHECK(verify_checkpoint(rt.engine(), c.path).ok());
  CHECK(test::find_tmp_entries(run).empty());
  CHECK(rt.stats().staging_in_use == 0);
  // Space freed: the next save succeeds.
  io::remove_tree(run + "/step/1");
  io::remove_tree(run + "/step/2");
  std::string next = "step/" + std::to_string(step + 1);
  SaveHandle ok = rt.save(run + "/" + next, tree, {{"step", step + 1}});
  REQUIRE(ok.wait_for(kDeadline));
  ok.wait();
  rt.register_latest(run, next).wait();
  CHECK(read_latest(run) == next);
}

}  // namespace ckpt
