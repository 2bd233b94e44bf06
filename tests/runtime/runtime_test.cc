// The asynchronous Runtime: saves from coroutines and threads, completion tokens, fire-and-forget
// under backpressure, failures, register ordering, overlapped snapshots, retention, restore.
#include "runtime/runtime.h"

#include <doctest/doctest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <thread>

#include "io/durable.h"
#include "io/error.h"
#include "io/fault_engine.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "tests/test_util.h"

namespace asio = boost::asio;
using namespace ckpt;
using namespace std::chrono_literals;
using ckpt::test::TempDir;

namespace {

constexpr auto kDeadline = 60s;

using test::make_tree;

RuntimeOptions small_options(std::uint64_t budget = 64u << 20) {
  RuntimeOptions o;
  o.staging_budget = budget;
  o.unit_bytes = 1u << 20;
  o.copy_threads = 2;
  return o;
}

void wait_or_fail(const SaveHandle& h) {
  REQUIRE_MESSAGE(h.wait_for(kDeadline), "save did not finish within the deadline: ", h.path());
  h.wait();
}

// Runs the io_context until `f` is ready or the deadline passes.
template <typename T>
T run_until(asio::io_context& ctx, std::future<T>& f) {
  auto until = std::chrono::steady_clock::now() + kDeadline;
  while (f.wait_for(0s) != std::future_status::ready) {
    REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until, "deadline passed");
    ctx.run_for(10ms);
  }
  return f.get();
}

}  // namespace

TEST_CASE("a sync save returns after the copy and commits a checkpoint that restores") {
  TempDir dir;
  Runtime rt(small_options());
  Tree tree = make_tree(5, 300'000, 1);
  SaveHandle h = rt.save(dir / "run/step/1", tree, {{"step", 1}});
  CHECK(h.valid());
  CHECK(h.state() != SaveState::snapshotting);  // the copy is done when save() returns
  // The caller may mutate at once: the checkpoint holds the values of the call.
  for (auto& [path, a] : tree.flatten()) std::memset(a.mutable_data(), 0xff, a.nbytes());
  wait_or_fail(h);
  CHECK(h.state() == SaveState::committed);
  auto t = h.timings();
  CHECK(t.bytes == 5u * 300'000 * 4);
  CHECK(t.stall.count() > 0);
  CHECK(t.durable >= t.stall);
  Tree back = test::zeros_like(tree);
  auto md = rt.restore(dir / "run/step/1", back);
  CHECK(md.at("step").as_int64() == 1);
  std::size_t i = 0;
  for (auto& [path, a] : back.flatten()) CHECK(test::has_pattern(a, 1 + i++));
  CHECK(verify_checkpoint(rt.engine(), dir / "run/step/1").ok());
  CHECK(rt.drain().ok());
  CHECK(rt.stats().staging_in_use == 0);
}

namespace {

// An engine that, given its first write once armed, overwrites every array of `tree` as the
// training loop's next step would: the checkpoint then shows whether any unit was still to be
// copied when the writes started.
class StepAtFirstWrite final : public test::ForwardingEngine {
 public:
  StepAtFirstWrite(std::unique_ptr<io::Engine> inner, const Tree* tree, std::atomic<bool>* armed)
      : ForwardingEngine(std::move(inner)), tree_(tree), armed_(armed) {}
  void submit(const io::Request& request, io::Completion done) override {
    if (request.op == io::Request::Op::write && armed_->exchange(false)) {
      for (auto& [path, a] : tree_->flatten()) std::memset(a.mutable_data(), 0xff, a.nbytes());
    }
    ForwardingEngine::submit(request, std::move(done));
  }

 private:
  const Tree* tree_;
  std::atomic<bool>* armed_;
};

}  // namespace

TEST_CASE("a sync save without write_during_copy copies every array before its first write") {
  TempDir dir;
  Tree tree = make_tree(4, 700'000, 3);  // 10.7 MiB: units of 1 MiB, two copy threads
  std::atomic<bool> armed{false};
  RuntimeOptions o = small_options();
  o.write_during_copy = false;
  o.wrap_engine = [&tree, &armed](std::unique_ptr<io::Engine> inner) {
    return std::unique_ptr<io::Engine>(
        std::make_unique<StepAtFirstWrite>(std::move(inner), &tree, &armed));
  };
  Runtime rt(o);
  for (int step = 1; step <= 3; ++step) {  // the first save plans, the others reuse the plan
    std::size_t k = 0;
    for (auto& [leaf, a] : tree.flatten()) test::fill_pattern(a, 3 + k++);
    armed = true;
    const std::string path = dir / ("run/step/" + std::to_string(step));
    SaveHandle h = rt.save(path, tree, {{"step", step}});
    wait_or_fail(h);
    REQUIRE(h.state() == SaveState::committed);
    CHECK_FALSE(armed.load());  // the arrays changed, at the save's first write
    Tree back = test::zeros_like(tree);
    rt.restore(path, back);
    std::size_t i = 0;
    for (auto& [leaf, a] : back.flatten()) CHECK_MESSAGE(test::has_pattern(a, 3 + i++), leaf);
    CHECK(verify_checkpoint(rt.engine(), path).ok());
  }
  CHECK(rt.drain().ok());
}

TEST_CASE("paced copy threads (lower priority, fewer for overlapped copies) still commit every save") {
  TempDir dir;
  // Each Runtime renices its copy threads at construction; building and destroying many at once
  // checks that start-up neither hangs nor outlives the latch it waits on.
  for (int r = 0; r < 10; ++r) {
    RuntimeOptions o = small_options();
    o.copy_threads = 3;
    o.overlapped_copy_threads = 1;
    o.copy_nice = 5;
    Runtime rt(o);
    Tree tree = make_tree(4, 50'000, r);
    SaveOptions so;
    so.mode = r % 2 == 0 ? SnapshotMode::overlapped : SnapshotMode::sync;
    SaveHandle h = rt.save(dir / ("run/step/" + std::to_string(r)), tree, {}, so);
    wait_or_fail(h);
    CHECK(h.state() == SaveState::committed);
    Tree back = test::zeros_like(tree);
    rt.restore(dir / ("run/step/" + std::to_string(r)), back);
    std::size_t i = 0;
    for (auto& [path, a] : back.flatten()) CHECK(test::has_pattern(a, r + i++));
  }
}

TEST_CASE("concurrent saves from several coroutines all commit") {
  TempDir dir;
  asio::io_context ctx;
  Runtime rt(ctx.get_executor(), small_options(256u << 20));
  std::vector<Tree> trees;
  for (int c = 0; c < 4; ++c) trees.push_back(make_tree(3, 100'000 + c * 1000, c * 10));
  std::atomic<int> committed{0};
  auto saver = [&](int c) -> asio::awaitable<void> {
    for (int step = 0; step < 3; ++step) {
      // g++ 12 miscompiles braced lists of string literals inside coroutines: build it first.
      boost::json::object md;
      md["step"] = step;
      SaveHandle h =
          co_await rt.async_save(dir / ("run" + std::to_string(c) + "/" + std::to_string(step)),
                                 trees[c], md, asio::use_awaitable);
      co_await h.async_wait(asio::use_awaitable);
      if (h.state() == SaveState::committed) ++committed;
    }
  };
  std::vector<std::future<void>> done;
  for (int c = 0; c < 4; ++c) done.push_back(asio::co_spawn(ctx, saver(c), asio::use_future));
  for (auto& f : done) run_until(ctx, f);
  CHECK(committed == 12);
  for (int c = 0; c < 4; ++c) {
    auto list = list_checkpoints(dir / ("run" + std::to_string(c)));
    CHECK(list.size() == 3);
  }
}

TEST_CASE("async_wait works with use_future, deferred and a plain callback") {
  TempDir dir;
  Runtime rt(small_options());
  Tree tree = make_tree(2, 1000, 5);
  SaveHandle a = rt.save(dir / "a", tree, {});
  std::future<void> fut = a.async_wait(asio::use_future);
  REQUIRE(fut.wait_for(kDeadline) == std::future_status::ready);
  fut.get();

  SaveHandle b = rt.save(dir / "b", tree, {});
  std::promise<bool> called;
  auto op = b.async_wait(asio::deferred);
  std::move(op)([&](std::exception_ptr e) { called.set_value(e == nullptr); });
  auto cf = called.get_future();
  REQUIRE(cf.wait_for(kDeadline) == std::future_status::ready);
  CHECK(cf.get());

  SaveHandle c = rt.save(dir / "c", tree, {});
  std::promise<std::exception_ptr> got;
  c.async_wait([&](std::exception_ptr e) { got.set_value(e); });
  auto gf = got.get_future();
  REQUIRE(gf.wait_for(kDeadline) == std::future_status::ready);
  CHECK(gf.get() == nullptr);
}

TEST_CASE("200 fire-and-forget saves under a small budget with policy block all commit") {
  TempDir dir;
  auto opts = small_options(4u << 20);  // room for two saves of 2 chunks
  Runtime rt(opts);
  Tree tree = make_tree(2, 200'000, 9);  // 2 leaves of 800 KB: 2 chunks of 1 MiB
  for (int i = 0; i < 200; ++i) {
    rt.save(dir / ("run/" + std::to_string(i)), tree, {{"step", i}});  // handle dropped
    CHECK(rt.stats().staging_in_use <= opts.staging_budget);
  }
  DrainReport report = rt.drain();
  CHECK(report.ok());
  auto s = rt.stats();
  CHECK(s.saves_committed == 200);
  CHECK(s.saves_skipped == 0);
  CHECK(s.staging_in_use == 0);
  CHECK(s.staging_mapped <= opts.staging_budget);
  CHECK(list_checkpoints(dir / "run").size() == 200);
}

TEST_CASE("fire-and-forget saves with policy skip skip when staging is full and commit the rest") {
  TempDir dir;
  auto opts = small_options(2u << 20);  // room for one save at a time
  opts.backpressure = Backpressure::skip;
  Runtime rt(opts);
  Tree tree = make_tree(2, 200'000, 3);
  std::vector<SaveHandle> handles;
  for (int i = 0; i < 200; ++i)
    handles.push_back(rt.save(dir / ("run/" + std::to_string(i)), tree, {}));
  CHECK(rt.drain().ok());
  std::size_t committed = 0, skipped = 0;
  for (auto& h : handles) {
    h.wait();  // a skipped save completes without an error
    if (h.state() == SaveState::committed) ++committed;
    if (h.state() == SaveState::skipped) ++skipped;
  }
  CHECK(committed + skipped == 200);
  CHECK(committed >= 1);
  CHECK(rt.stats().saves_skipped == skipped);
  auto list = list_checkpoints(dir / "run");
  CHECK(list.size() == committed);
  for (const auto& c : list) CHECK(verify_checkpoint(rt.engine(), c.path).ok());
}

TEST_CASE("a save larger than the staging budget fails at once with a clear error") {
  TempDir dir;
  Runtime rt(small_options(1u << 20));
  Tree tree = make_tree(1, 1'000'000, 1);  // 4 MB
  CHECK_THROWS_WITH_AS(rt.save(dir / "x", tree, {}), doctest::Contains("staging budget"), Error);
}

TEST_CASE("a failing save is reported through its handle and through drain") {
  TempDir dir;
  Runtime rt(small_options());
  // A regular file where a directory must be: creating the checkpoint fails (even as root).
  io::write_new_file(dir / "file", "x");
  Tree tree = make_tree(1, 1000, 1);
  SaveHandle watched = rt.save(dir / "file/run/1", tree, {});
  REQUIRE(watched.wait_for(kDeadline));
  CHECK(watched.state() == SaveState::failed);
  CHECK_THROWS_WITH_AS(watched.wait(), doctest::Contains("file"), Error);
  rt.save(dir / "file/run/2", tree, {});  // dropped: drain reports it
  DrainReport report = rt.drain();
  CHECK(report.failed == 1);
  REQUIRE(report.errors.size() == 1);
  CHECK(report.errors[0].find("file/run/2") != std::string::npos);
  CHECK(rt.stats().saves_failed == 2);
  CHECK(rt.stats().staging_in_use == 0);
  // Nothing half-written is left, and the runtime keeps working.
  CHECK(list_checkpoints(dir.path()).empty());
  SaveHandle ok = rt.save(dir / "good", tree, {});
  wait_or_fail(ok);
}

TEST_CASE(
    "a full save writes its manifest during its data writes, and a failure after that leaves "
    "nothing") {
  TempDir dir;
  io::FaultEngine* faults = nullptr;
  RuntimeOptions o = small_options();
  o.wrap_engine = test::wrap_in_faults(&faults);
  Runtime rt(o);
  Tree tree = make_tree(8, 100000, 1);  // several units
  const auto find_tmp_manifest = [&] {
    for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
      if (io::is_tmp_name(e.path().filename().string()) &&
          std::filesystem::exists(e.path() / "manifest.ckpt"))
        return true;
    }
    return false;
  };
  // The first data write is held: the manifest and metadata.json still appear, fsynced, in the
  // temporary directory, and the checkpoint is not committed.
  faults->arm({io::Request::Op::write, 1, io::FaultKind::hang});
  SaveHandle held = rt.save(dir / "step_1", tree, {{"step", 1}});
  const auto until = std::chrono::steady_clock::now() + kDeadline;
  while (!find_tmp_manifest()) {
    REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until, "no manifest before the deadline");
    std::this_thread::sleep_for(1ms);
  }
  CHECK_FALSE(held.wait_for(0s));
  CHECK_FALSE(std::filesystem::exists(dir / "step_1"));
  // The data fsync fails: the save fails and its directory, manifest included, is gone.
  faults->arm({io::Request::Op::fsync, 1, io::FaultKind::error, EIO});
  faults->release_hung();
  REQUIRE(held.wait_for(kDeadline));
  CHECK(held.state() == SaveState::failed);
  CHECK_THROWS_WITH_AS(held.wait(), doctest::Contains("fsync"), Error);
  CHECK(std::filesystem::is_empty(dir.path()));
  CHECK(rt.stats().staging_in_use == 0);
  // The next save commits, its manifest naming the checksums of its own blocks.
  SaveHandle ok = rt.save(dir / "step_2", tree, {{"step", 2}});
  wait_or_fail(ok);
  Tree back = test::zeros_like(tree);
  auto meta = rt.restore(dir / "step_2", back);
  CHECK(test::trees_equal(back, tree));
  CHECK(meta.at("step").as_int64() == 2);
  auto engine = io::make_engine();
  CHECK(verify_checkpoint(*engine, dir / "step_2").ok());
}

TEST_CASE(
    "a whole restore that fails after its reads started (a template that does not match, a bad "
    "block) leaves the template as it was and returns every staging chunk") {
  TempDir dir;
  io::FaultEngine* faults = nullptr;
  RuntimeOptions o = small_options(256u << 20);
  o.wrap_engine = test::wrap_in_faults(&faults);
  Runtime rt(o);
  Tree tree = make_tree(16, 200000, 1);  // 12.8 MB: several units
  wait_or_fail(rt.save(dir / "c", tree, {}));
  // The reads start before the tree is decoded; the template's mismatch is found after.
  Tree wrong = make_tree(17, 200000, 2);
  CHECK_THROWS_WITH_AS(rt.restore(dir / "c", wrong), doctest::Contains("layer16"), Error);
  CHECK(test::trees_equal(wrong, make_tree(17, 200000, 2)));
  CHECK(rt.stats().staging_in_use == 0);
  // A read that fails midway: the template keeps its bytes, the staging comes back.
  Tree target = make_tree(16, 200000, 3);
  faults->arm({io::Request::Op::read, 3, io::FaultKind::error, EIO});
  CHECK_THROWS_WITH_AS(rt.restore(dir / "c", target), doctest::Contains("data-00000.bin"), Error);
  CHECK(test::trees_equal(target, make_tree(16, 200000, 3)));
  CHECK(rt.stats().staging_in_use == 0);
  // And the next restore reads everything.
  rt.restore(dir / "c", target);
  CHECK(test::trees_equal(target, tree));
  CHECK(rt.stats().staging_in_use == 0);
}

TEST_CASE("register_latest applies in call order even when saves finish out of order") {
  TempDir dir;
  Runtime rt(small_options(256u << 20));
  std::string run = dir / "run";
  Tree big = make_tree(8, 4'000'000, 1);  // 128 MB: finishes last
  Tree small = make_tree(1, 100, 2);
  SaveHandle a = rt.save(run + "/a", big, {{"step", 1}});
  RegisterHandle ra = rt.register_latest(run, "a");
  SaveHandle b = rt.save(run + "/b", small, {{"step", 2}});
  RegisterHandle rb = rt.register_latest(run, "b");
  REQUIRE(rb.wait_for(kDeadline));
  rb.wait();
  CHECK(ra.done());  // b's registration waited for a's
  ra.wait();
  CHECK(read_latest(run) == "b");
  wait_or_fail(a);
  wait_or_fail(b);
}

TEST_CASE("register_latest of a failed save fails and leaves latest where it was") {
  TempDir dir;
  Runtime rt(small_options());
  std::string run = dir / "run";
  Tree tree = make_tree(1, 1000, 1);
  wait_or_fail(rt.save(run + "/good", tree, {}));
  rt.register_latest(run, "good").wait();
  // Make the next save fail: a file where its directory must go.
  io::make_dirs(run + "/bad");
  io::write_new_file(run + "/bad/x", "x");
  SaveHandle bad = rt.save(run + "/bad/x/ckpt", tree, {});
  RegisterHandle reg = rt.register_latest(run, "bad/x/ckpt");
  REQUIRE(reg.wait_for(kDeadline));
  CHECK_THROWS_AS(reg.wait(), Error);
  CHECK(bad.state() == SaveState::failed);
  CHECK(read_latest(run) == "good");
  CHECK_THROWS_AS(rt.register_latest(run, "../escape"), Error);
  CHECK_THROWS_AS(rt.register_latest(run, "/abs"), Error);
  RegisterHandle missing = rt.register_latest(run, "never-saved");
  REQUIRE(missing.wait_for(kDeadline));
  CHECK_THROWS_WITH_AS(missing.wait(), doctest::Contains("never-saved"), Error);
  CHECK(read_latest(run) == "good");
}

TEST_CASE("overlapped snapshot holds the values of the moment of the save") {
  TempDir dir;
  Runtime rt(small_options(256u << 20));
  Tree tree = make_tree(4, 2'000'000, 7);  // 32 MB
  SaveOptions so;
  so.mode = SnapshotMode::overlapped;
  SaveHandle h = rt.save(dir / "ov", tree, {}, so);
  auto snap = h.async_snapshotted(asio::use_future);
  REQUIRE(snap.wait_for(kDeadline) == std::future_status::ready);
  snap.get();
  // The optimizer update, right after the snapshot: must not reach the checkpoint.
  for (auto& [path, a] : tree.flatten()) std::memset(a.mutable_data(), 0, a.nbytes());
  wait_or_fail(h);
  CHECK(h.timings().snapshot.count() > 0);
  Tree back = test::zeros_like(tree);
  rt.restore(dir / "ov", back);
  std::size_t i = 0;
  for (auto& [path, a] : back.flatten()) CHECK(test::has_pattern(a, 7 + i++));
}

TEST_CASE("retention keeps max_to_keep newest, period multiples and latest") {
  TempDir dir;
  Runtime rt(small_options());
  std::string run = dir / "run";
  Tree tree = make_tree(1, 100, 1);
  SaveOptions so;
  so.run_dir = run;
  so.retention.max_to_keep = 2;
  so.retention.keep_period = 5;
  for (int step = 1; step <= 12; ++step) {
    SaveHandle h = rt.save(run + "/step/" + std::to_string(step), tree, {{"step", step}}, so);
    wait_or_fail(h);
    if (step == 3) rt.register_latest(run, "step/3").wait();
    rt.drain();  // retention runs after the commit
  }
  std::vector<std::string> suffixes;
  for (const auto& c : list_checkpoints(run)) suffixes.push_back(c.suffix);
  CHECK(suffixes == std::vector<std::string>{"step/3", "step/5", "step/10", "step/11", "step/12"});
}

TEST_CASE("retention with keep_best keeps the best checkpoints by a metadata metric") {
  TempDir dir;
  Runtime rt(small_options());
  std::string run = dir / "run";
  Tree tree = make_tree(1, 100, 1);
  SaveOptions so;
  so.run_dir = run;
  so.retention.max_to_keep = 2;
  so.retention.best_metric = "loss";
  const double losses[] = {5.0, 1.0, 4.0, 0.5, 3.0};
  for (int step = 0; step < 5; ++step) {
    wait_or_fail(rt.save(run + "/" + std::to_string(step), tree,
                         {{"step", step}, {"loss", losses[step]}}, so));
    rt.drain();
  }
  std::vector<std::string> suffixes;
  for (const auto& c : list_checkpoints(run)) suffixes.push_back(c.suffix);
  CHECK(suffixes == std::vector<std::string>{"1", "3"});
}

TEST_CASE("async restore reads a checkpoint into the template from a coroutine") {
  TempDir dir;
  asio::io_context ctx;
  Runtime rt(ctx.get_executor(), small_options());
  Tree tree = make_tree(3, 500'000, 11);
  auto flow = [&]() -> asio::awaitable<std::int64_t> {
    boost::json::object md0;
    md0["step"] = 42;
    SaveHandle h = co_await rt.async_save(dir / "r", tree, md0, asio::use_awaitable);
    co_await h.async_wait(asio::use_awaitable);
    Tree back = test::zeros_like(tree);
    auto md = co_await rt.async_restore(dir / "r", back, false, asio::use_awaitable);
    std::size_t i = 0;
    for (auto& [path, a] : back.flatten()) {
      if (!test::has_pattern(a, 11 + i++)) co_return -1;
    }
    co_return md.at("step").as_int64();
  };
  auto f = asio::co_spawn(ctx, flow(), asio::use_future);
  CHECK(run_until(ctx, f) == 42);
}

TEST_CASE("async restore of a corrupt checkpoint fails with an error naming the file") {
  TempDir dir;
  Runtime rt(small_options());
  Tree tree = make_tree(1, 100'000, 1);
  wait_or_fail(rt.save(dir / "c", tree, {}));
  test::flip_byte(dir / "c/data-00000.bin", 1000);
  Tree back = test::zeros_like(tree);
  auto f = rt.async_restore(dir / "c", back, false, asio::use_future);
  REQUIRE(f.wait_for(kDeadline) == std::future_status::ready);
  CHECK_THROWS_WITH_AS(f.get(), doctest::Contains("data-00000.bin"), Error);
}

TEST_CASE("steady-state saves reuse the staging pool without mapping more") {
  TempDir dir;
  Runtime rt(small_options(64u << 20));
  Tree tree = make_tree(4, 1'000'000, 1);
  wait_or_fail(rt.save(dir / "0", tree, {}));
  auto mapped = rt.stats().staging_mapped;
  for (int i = 1; i < 10; ++i) wait_or_fail(rt.save(dir / std::to_string(i), tree, {}));
  CHECK(rt.stats().staging_mapped == mapped);
}

TEST_CASE("two saves of one path commit in call order and register_latest waits for the newest") {
  TempDir dir;
  Runtime rt(small_options(256u << 20));
  std::string run = dir / "run";
  Tree big = make_tree(8, 4'000'000, 1);  // 128 MB: slower than the second save
  Tree small = make_tree(1, 100, 2);
  SaveHandle first = rt.save(run + "/same", big, {{"which", "first"}});
  SaveHandle second = rt.save(run + "/same", small, {{"which", "second"}});
  RegisterHandle reg = rt.register_latest(run, "same");
  REQUIRE(reg.wait_for(kDeadline));
  reg.wait();
  CHECK(second.done());  // the registration waited for the newest save
  wait_or_fail(first);
  wait_or_fail(second);
  CHECK(read_metadata(run + "/same").at("which").as_string() == "second");
  Tree back = test::zeros_like(small);
  rt.restore(run + "/same", back);
  CHECK(test::has_pattern(back.flatten()[0].second, 2));
}

TEST_CASE("a save refuses to replace a directory that is not a checkpoint or to nest in one") {
  TempDir dir;
  Runtime rt(small_options());
  Tree tree = make_tree(1, 100, 1);
  wait_or_fail(rt.save(dir / "run/step/1", tree, {}));
  SaveHandle over_dir = rt.save(dir / "run/step", tree, {});  // would delete step/1
  REQUIRE(over_dir.wait_for(kDeadline));
  CHECK_THROWS_WITH_AS(over_dir.wait(), doctest::Contains("not a checkpoint"), Error);
  SaveHandle nested = rt.save(dir / "run/step/1/inner", tree, {});
  REQUIRE(nested.wait_for(kDeadline));
  CHECK_THROWS_WITH_AS(nested.wait(), doctest::Contains("inside the checkpoint"), Error);
  CHECK(verify_checkpoint(rt.engine(), dir / "run/step/1").ok());
  rt.drain();
}

TEST_CASE("reserve_staging maps the pool up front so the first save maps nothing") {
  TempDir dir;
  Runtime rt(small_options(64u << 20));
  rt.reserve_staging(8u << 20);
  auto mapped = rt.stats().staging_mapped;
  CHECK(mapped >= (8u << 20));
  CHECK(mapped <= (64u << 20));
  wait_or_fail(rt.save(dir / "a", make_tree(2, 1'000'000, 1), {}));
  CHECK(rt.stats().staging_mapped == mapped);
  rt.reserve_staging(1ull << 40);  // capped by the budget
  CHECK(rt.stats().staging_mapped <= (64u << 20));
}
