// Handles and waiting: handles that outlive their Runtime (every handle kind and completion token),
// what drain() counts as observed, the destructor's report, and blocking calls refused on the
// Runtime's own thread instead of deadlocking. Every wait has a deadline.
#include <doctest/doctest.h>
#include <spdlog/sinks/ostream_sink.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <thread>

#include "io/durable.h"
#include "io/error.h"
#include "io/fault_engine.h"
#include "io/log.h"
#include "runtime/runtime.h"
#include "tests/test_util.h"

namespace asio = boost::asio;
using namespace ckpt;
using namespace std::chrono_literals;
using ckpt::test::TempDir;

namespace {

constexpr auto kDeadline = 60s;

RuntimeOptions small_options() {
  RuntimeOptions o;
  o.staging_budget = 16u << 20;
  o.unit_bytes = 1u << 20;
  o.copy_threads = 2;
  return o;
}

Tree small_tree() { return test::make_tree(1, 1000, 3); }

template <typename T>
T get_within_deadline(std::future<T>& f) {
  REQUIRE_MESSAGE(f.wait_for(kDeadline) == std::future_status::ready, "no completion in time");
  return f.get();
}

// Runs the io_context until `f` is ready or the deadline passes.
template <typename T>
T run_until(asio::io_context& ctx, std::future<T>& f) {
  auto until = std::chrono::steady_clock::now() + kDeadline;
  while (f.wait_for(0s) != std::future_status::ready) {
    REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until, "deadline passed");
    ctx.restart();
    ctx.run_for(10ms);
  }
  return f.get();
}

// A path whose save fails at once, even as root: a regular file where a directory must go.
std::string failing_path(const TempDir& dir, const std::string& name) {
  if (!std::filesystem::exists(dir / "file")) io::write_new_file(dir / "file", "x");
  return dir / ("file/" + name);
}

// A Runtime over io::FaultEngine, for saves that stay running until the test lets them fail.
struct Faulty {
  io::FaultEngine* faults = nullptr;
  std::unique_ptr<Runtime> rt;
  Faulty() {
    RuntimeOptions o = small_options();
    o.wrap_engine = test::wrap_in_faults(&faults);
    rt = std::make_unique<Runtime>(o);
  }
  // The save's write is held: it cannot end before fail_held_save().
  SaveHandle start_held_save(const std::string& path, const Tree& tree) {
    faults->arm({io::Request::Op::write, 1, io::FaultKind::hang});
    return rt->save(path, tree, {});
  }
  // Lets the held write through and fails the data fsync: the save fails with EIO.
  void fail_held_save() {
    faults->arm({io::Request::Op::fsync, 1, io::FaultKind::error});
    faults->release_hung();
  }
};

// Forwards to the real engine and says when it is destroyed: the end of a Runtime's teardown.
class WatchedEngine final : public test::ForwardingEngine {
 public:
  WatchedEngine(std::unique_ptr<io::Engine> inner, std::promise<void>* gone)
      : ForwardingEngine(std::move(inner)), gone_(gone) {}
  ~WatchedEngine() override {
    inner_.reset();
    gone_->set_value();
  }

 private:
  std::promise<void>* gone_;
};

RuntimeOptions watched_options(std::promise<void>* gone) {
  RuntimeOptions o = small_options();
  o.wrap_engine = [gone](std::unique_ptr<io::Engine> inner) {
    return std::unique_ptr<io::Engine>(std::make_unique<WatchedEngine>(std::move(inner), gone));
  };
  return o;
}

using test::LogCapture;

// Waits for `h` with a plain callback; returns the error it was given.
template <typename Handle>
std::exception_ptr callback_wait(const Handle& h) {
  std::promise<std::exception_ptr> got;
  h.async_wait([&got](std::exception_ptr e) { got.set_value(e); });
  auto f = got.get_future();
  return get_within_deadline(f);
}

template <typename Handle>
std::exception_ptr future_wait(const Handle& h) {
  std::future<void> f = h.async_wait(asio::use_future);
  REQUIRE_MESSAGE(f.wait_for(kDeadline) == std::future_status::ready, "no completion in time");
  try {
    f.get();
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

// Waits with use_awaitable in a coroutine on an io_context of the test's own.
template <typename Handle>
std::exception_ptr awaitable_wait(const Handle& h) {
  asio::io_context other;
  auto flow = [h]() -> asio::awaitable<bool> {
    try {
      co_await h.async_wait(asio::use_awaitable);
    } catch (...) {
      co_return false;
    }
    co_return true;
  };
  auto f = asio::co_spawn(other, flow(), asio::use_future);
  bool ok = run_until(other, f);
  return ok ? nullptr : std::make_exception_ptr(Error(Errc::io, "failed"));
}

}  // namespace

// ---- handles outliving their Runtime ----------------------------------------------------------

TEST_CASE("a SaveHandle outliving its Runtime completes waits with every token kind") {
  TempDir dir;
  Tree tree = small_tree();
  SaveHandle ok, failed;
  std::optional<decltype(SaveHandle().async_wait(asio::deferred))> deferred_wait;
  {
    Runtime rt(small_options());
    ok = rt.save(dir / "ok", tree, {});
    failed = rt.save(failing_path(dir, "x"), tree, {});
    deferred_wait.emplace(ok.async_wait(asio::deferred));  // built now, launched later
    REQUIRE(ok.wait_for(kDeadline));
    REQUIRE(failed.wait_for(kDeadline));
  }
  CHECK(callback_wait(ok) == nullptr);
  CHECK(callback_wait(failed) != nullptr);
  CHECK(future_wait(ok) == nullptr);
  CHECK(future_wait(failed) != nullptr);
  CHECK(awaitable_wait(ok) == nullptr);
  CHECK(awaitable_wait(failed) != nullptr);

  std::promise<std::exception_ptr> got;
  std::move(*deferred_wait)([&got](std::exception_ptr e) { got.set_value(e); });
  auto gf = got.get_future();
  CHECK(get_within_deadline(gf) == nullptr);

  std::promise<std::exception_ptr> snap;
  ok.async_snapshotted([&snap](std::exception_ptr e) { snap.set_value(e); });
  auto sf = snap.get_future();
  CHECK(get_within_deadline(sf) == nullptr);
  std::future<void> snap_future = failed.async_snapshotted(asio::use_future);
  REQUIRE(snap_future.wait_for(kDeadline) == std::future_status::ready);
  snap_future.get();  // the copy succeeded: the failure came later, with the directory

  // The blocking and querying members work too.
  ok.wait();
  ok.wait_snapshotted();
  CHECK(ok.wait_for(0s));
  CHECK(ok.error() == nullptr);
  CHECK(ok.state() == SaveState::committed);
  CHECK(ok.timings().bytes == 4000);
  CHECK_THROWS_AS(failed.wait(), Error);
  CHECK(failed.error() != nullptr);
  CHECK(failed.state() == SaveState::failed);
  // A copy made after the Runtime is gone is as good.
  SaveHandle copy = ok;
  CHECK(callback_wait(copy) == nullptr);
}

TEST_CASE("a RegisterHandle outliving its Runtime completes waits with every token kind") {
  TempDir dir;
  Tree tree = small_tree();
  RegisterHandle ok, failed;
  std::optional<decltype(RegisterHandle().async_wait(asio::deferred))> deferred_wait;
  {
    Runtime rt(small_options());
    rt.save(dir / "run/a", tree, {});
    ok = rt.register_latest(dir / "run", "a");
    failed = rt.register_latest(dir / "run", "never-saved");
    deferred_wait.emplace(failed.async_wait(asio::deferred));
    REQUIRE(ok.wait_for(kDeadline));
    REQUIRE(failed.wait_for(kDeadline));
  }
  CHECK(callback_wait(ok) == nullptr);
  CHECK(callback_wait(failed) != nullptr);
  CHECK(future_wait(ok) == nullptr);
  CHECK(future_wait(failed) != nullptr);
  CHECK(awaitable_wait(ok) == nullptr);
  CHECK(awaitable_wait(failed) != nullptr);
  std::promise<std::exception_ptr> got;
  std::move(*deferred_wait)([&got](std::exception_ptr e) { got.set_value(e); });
  auto gf = got.get_future();
  CHECK(get_within_deadline(gf) != nullptr);
  ok.wait();
  CHECK(ok.error() == nullptr);
  CHECK_THROWS_WITH_AS(failed.wait(), doctest::Contains("never-saved"), Error);
  CHECK(failed.done());
}

TEST_CASE("a handle outliving a Runtime and the io_context it ran on completes a callback wait") {
  TempDir dir;
  Tree tree = small_tree();
  SaveHandle h;
  RegisterHandle r;
  {
    asio::io_context ctx;
    auto guard = asio::make_work_guard(ctx);
    std::thread runner([&ctx] { ctx.run(); });
    {
      Runtime rt(ctx.get_executor(), small_options());
      h = rt.save(dir / "run/a", tree, {});
      r = rt.register_latest(dir / "run", "a");
      REQUIRE(r.wait_for(kDeadline));
    }
    guard.reset();
    runner.join();
  }  // the strand the Runtime ran on is gone with its io_context
  CHECK(callback_wait(h) == nullptr);
  CHECK(callback_wait(r) == nullptr);
  std::promise<std::exception_ptr> snap;
  h.async_snapshotted([&snap](std::exception_ptr e) { snap.set_value(e); });
  auto sf = snap.get_future();
  CHECK(get_within_deadline(sf) == nullptr);
}

TEST_CASE("a skipped save's handle outliving its Runtime completes a callback wait") {
  TempDir dir;
  Tree big = test::make_tree(1, 3'000'000, 1);  // 12 MB of a 16 MB budget
  SaveHandle skipped;
  {
    Faulty f;
    // Every write held: the first save keeps all its staging chunks.
    f.faults->arm({io::Request::Op::write, 1, io::FaultKind::hang, EIO, true});
    SaveHandle held = f.rt->save(dir / "held", big, {});
    SaveOptions so;
    so.backpressure = Backpressure::skip;
    skipped = f.rt->save(dir / "skipped", big, {}, so);
    CHECK(skipped.state() == SaveState::skipped);
    f.faults->disarm();
    f.faults->release_hung();
    REQUIRE(held.wait_for(kDeadline));
  }
  CHECK(callback_wait(skipped) == nullptr);
  CHECK(skipped.state() == SaveState::skipped);
}

// ---- what drain() counts -----------------------------------------------------------------------

TEST_CASE("error() while a save runs does not hide its later failure from drain") {
  TempDir dir;
  Faulty f;
  SaveHandle h = f.start_held_save(dir / "x", small_tree());
  CHECK(h.error() == nullptr);  // still running: nothing delivered
  f.fail_held_save();
  REQUIRE(h.wait_for(kDeadline));
  CHECK(h.state() == SaveState::failed);
  DrainReport report = f.rt->drain();
  CHECK(report.failed == 1);
}

TEST_CASE("a wait_for that times out does not hide the failure from drain") {
  TempDir dir;
  Faulty f;
  SaveHandle h = f.start_held_save(dir / "x", small_tree());
  CHECK_FALSE(h.wait_for(10ms));
  f.fail_held_save();
  CHECK(f.rt->drain().failed == 1);
}

TEST_CASE("wait_for returning true delivers no failure: drain still reports it") {
  TempDir dir;
  Runtime rt(small_options());
  SaveHandle h = rt.save(failing_path(dir, "x"), small_tree(), {});
  REQUIRE(h.wait_for(kDeadline));
  CHECK(rt.drain().failed == 1);
}

TEST_CASE("a deferred async_wait never launched does not hide the failure from drain") {
  TempDir dir;
  Runtime rt(small_options());
  SaveHandle h = rt.save(failing_path(dir, "x"), small_tree(), {});
  RegisterHandle r = rt.register_latest(dir.path(), "never-saved");
  [[maybe_unused]] auto op = h.async_wait(asio::deferred);
  [[maybe_unused]] auto rop = r.async_wait(asio::deferred);
  [[maybe_unused]] auto sop = h.async_snapshotted(asio::deferred);
  DrainReport report = rt.drain();
  CHECK(report.failed == 2);
  CHECK(h.error() != nullptr);
}

TEST_CASE("a failure delivered by error(), wait(), or an async_wait handler is not reported again") {
  TempDir dir;
  Runtime rt(small_options());
  Tree tree = small_tree();
  SaveHandle by_error = rt.save(failing_path(dir, "a"), tree, {});
  SaveHandle by_wait = rt.save(failing_path(dir, "b"), tree, {});
  SaveHandle by_callback = rt.save(failing_path(dir, "c"), tree, {});
  SaveHandle by_deferred = rt.save(failing_path(dir, "d"), tree, {});
  RegisterHandle reg = rt.register_latest(dir.path(), "never-saved");
  REQUIRE(by_error.wait_for(kDeadline));
  CHECK(by_error.error() != nullptr);
  CHECK_THROWS_AS(by_wait.wait(), Error);
  CHECK(callback_wait(by_callback) != nullptr);
  std::promise<std::exception_ptr> got;
  auto op = by_deferred.async_wait(asio::deferred);
  std::move(op)([&got](std::exception_ptr e) { got.set_value(e); });
  auto gf = got.get_future();
  CHECK(get_within_deadline(gf) != nullptr);
  CHECK(future_wait(reg) != nullptr);
  CHECK(rt.drain().ok());
}

TEST_CASE("async_drain reports like drain and completes from a callback or a coroutine") {
  TempDir dir;
  asio::io_context ctx;
  Runtime rt(ctx.get_executor(), small_options());
  Tree tree = small_tree();
  auto flow = [&]() -> asio::awaitable<std::size_t> {
    co_await rt.async_save(failing_path(dir, "x"), tree, boost::json::object(),
                           asio::use_awaitable);
    DrainReport report = co_await rt.async_drain(asio::use_awaitable);
    co_return report.failed;
  };
  auto f = asio::co_spawn(ctx, flow(), asio::use_future);
  CHECK(run_until(ctx, f) == 1);
  std::promise<std::size_t> second;
  rt.async_drain([&second](DrainReport r) { second.set_value(r.failed); });
  auto sf = second.get_future();
  CHECK(run_until(ctx, sf) == 0);  // already reported
}

TEST_CASE("the destructor reports only failures no drain() reported") {
  TempDir dir;
  Tree tree = small_tree();
  {
    LogCapture capture;
    {
      Runtime rt(small_options());
      rt.save(failing_path(dir, "a"), tree, {});
      CHECK(rt.drain().failed == 1);
    }
    CHECK_FALSE(test::contains(capture.text(), "nobody waited for"));
  }
  {
    LogCapture capture;
    {
      Runtime rt(small_options());
      rt.save(failing_path(dir, "b"), tree, {});
      CHECK(rt.drain().failed == 1);
      rt.save(failing_path(dir, "c"), tree, {});
      rt.save(failing_path(dir, "d"), tree, {});
    }
    std::string text = capture.text();
    CHECK(test::contains(text, "runtime shut down with 2 failed operation(s) nobody waited for"));
  }
}

// ---- blocking calls on the Runtime's own thread ----------------------------------------------

TEST_CASE("save with policy block from a plain async_wait callback throws instead of deadlocking") {
  TempDir dir;
  Runtime rt(small_options());
  Tree tree = small_tree();
  SaveHandle first = rt.save(dir / "a", tree, {});
  std::promise<std::string> result;
  first.async_wait([&](std::exception_ptr) {
    // Plain callbacks run on the Runtime's own thread.
    try {
      rt.save(dir / "b", tree, {});
      result.set_value("no error");
    } catch (const Error& e) {
      result.set_value(std::string(to_string(e.code())) + ": " + e.what());
    }
  });
  auto f = result.get_future();
  std::string message = get_within_deadline(f);
  CHECK(test::contains(message, to_string(Errc::invalid_argument)));
  CHECK(test::contains(message, "async_save"));
}

TEST_CASE("drain, wait and save with skip behave on the Runtime's own thread") {
  TempDir dir;
  Runtime rt(small_options());
  Tree tree = small_tree();
  SaveHandle first = rt.save(dir / "a", tree, {});
  struct Seen {
    std::string drain;
    bool skip_saved = false;
    bool wait_refused = false;
    bool wait_on_done_ok = false;
  };
  std::promise<Seen> result;
  first.async_wait([&](std::exception_ptr) {
    Seen seen;
    try {
      rt.drain();
    } catch (const Error& e) {
      seen.drain = e.what();
    }
    SaveOptions so;
    so.backpressure = Backpressure::skip;  // never blocks: allowed
    SaveHandle next = rt.save(dir / "b", tree, {}, so);
    seen.skip_saved = next.valid();
    try {
      next.wait();  // the save needs this thread to finish: it cannot be done yet
    } catch (const Error& e) {
      seen.wait_refused = e.code() == Errc::invalid_argument;
    }
    try {
      first.wait();  // done already: returns
      seen.wait_on_done_ok = true;
    } catch (...) {
    }
    result.set_value(seen);
  });
  auto f = result.get_future();
  Seen seen = get_within_deadline(f);
  CHECK(test::contains(seen.drain, "async_drain"));
  CHECK(seen.skip_saved);
  CHECK(seen.wait_refused);
  CHECK(seen.wait_on_done_ok);
  CHECK(rt.drain().ok());
}

TEST_CASE("drain from a coroutine on the Runtime's external executor throws at once") {
  TempDir dir;
  asio::io_context ctx;
  Runtime rt(ctx.get_executor(), small_options());
  Tree tree = small_tree();
  auto flow = [&]() -> asio::awaitable<std::string> {
    SaveHandle h = co_await rt.async_save(dir / "a", tree, boost::json::object(),
                                          asio::use_awaitable);
    std::string message;
    try {
      rt.drain();
    } catch (const Error& e) {
      message = e.what();
    }
    try {
      rt.save(dir / "b", tree, boost::json::object());
    } catch (const Error& e) {
      message += " | ";
      message += e.what();
    }
    co_await h.async_wait(asio::use_awaitable);
    co_return message;
  };
  auto f = asio::co_spawn(ctx, flow(), asio::use_future);
  std::string message = run_until(ctx, f);
  CHECK(test::contains(message, "async_drain"));
  CHECK(test::contains(message, "async_save"));
}

TEST_CASE("destroying the Runtime from a callback on its own thread does not hang") {
  TempDir dir;
  std::promise<void> torn_down;
  auto rt = std::make_unique<Runtime>(watched_options(&torn_down));
  Tree tree = small_tree();
  Tree big = test::make_tree(2, 1'000'000, 9);
  SaveHandle first = rt->save(dir / "a", tree, {});
  REQUIRE(first.wait_for(kDeadline));
  SaveHandle in_flight = rt->save(dir / "b", big, {});
  std::promise<void> destroyed;
  first.async_wait([&](std::exception_ptr) {
    rt.reset();
    destroyed.set_value();
  });
  auto f = destroyed.get_future();
  get_within_deadline(f);
  REQUIRE(in_flight.wait_for(kDeadline));  // a helper thread finished it
  in_flight.wait();
  CHECK(in_flight.state() == SaveState::committed);
  auto gone = torn_down.get_future();
  get_within_deadline(gone);  // the helper thread finished the teardown
}

TEST_CASE("destroying the Runtime from a coroutine on its external executor does not hang") {
  TempDir dir;
  asio::io_context ctx;
  std::promise<void> torn_down;
  auto rt = std::make_unique<Runtime>(ctx.get_executor(), watched_options(&torn_down));
  Tree tree = small_tree();
  auto flow = [&]() -> asio::awaitable<bool> {
    SaveHandle h = co_await rt->async_save(dir / "a", tree, boost::json::object(),
                                           asio::use_awaitable);
    co_await h.async_wait(asio::use_awaitable);
    co_await rt->async_drain(asio::use_awaitable);
    rt.reset();
    co_return h.state() == SaveState::committed;
  };
  auto f = asio::co_spawn(ctx, flow(), asio::use_future);
  CHECK(run_until(ctx, f));
  auto gone = torn_down.get_future();
  CHECK(gone.wait_for(0s) == std::future_status::ready);  // torn down in place
}
