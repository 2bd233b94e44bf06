// FaultEngine's own arming rules (the conformance suite in engine_test.cc runs it unarmed).
#include "io/fault_engine.h"

#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <future>
#include <thread>
#include <vector>

#include "io/file.h"
#include "io/thread_engine.h"
#include "io/tracking_engine.h"
#include "tests/test_util.h"

namespace ckpt::io {
namespace {

using test::TempDir;

std::int64_t submit_and_wait(Engine& engine, const Request& request) {
  std::promise<std::int64_t> p;
  auto f = p.get_future();
  engine.submit(request, [&p](std::int64_t r) { p.set_value(r); });
  REQUIRE(f.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  return f.get();
}

}  // namespace

TEST_CASE("FaultEngine fails only the n-th request of the armed operation, or every one from n") {
  TempDir tmp;
  File f = open_buffered(tmp / "a.bin", OpenMode::write_new);
  FaultEngine engine(std::make_unique<ThreadEngine>(2));
  AlignedBuffer buf(4096);
  Request w{Request::Op::write, f.fd(), buf.data(), 4096, 0};
  Request s{Request::Op::fsync, f.fd(), nullptr, 0, 0};
  engine.arm({Request::Op::write, 2, FaultKind::error, EIO});
  CHECK(submit_and_wait(engine, s) == 0);  // other operations are not counted
  CHECK(submit_and_wait(engine, w) == 4096);
  CHECK(submit_and_wait(engine, w) == -EIO);
  CHECK(submit_and_wait(engine, w) == 4096);
  engine.arm({Request::Op::write, 2, FaultKind::error, ENOSPC, /*sticky=*/true});
  CHECK(submit_and_wait(engine, w) == 4096);
  CHECK(submit_and_wait(engine, w) == -ENOSPC);
  CHECK(submit_and_wait(engine, w) == -ENOSPC);
  engine.disarm();
  CHECK(submit_and_wait(engine, w) == 4096);
  CHECK(engine.injected() == 3);
}

TEST_CASE("FaultEngine short write writes the first half and never the rest") {
  TempDir tmp;
  const std::string path = tmp / "short.bin";
  File f = open_buffered(path, OpenMode::write_new);
  FaultEngine engine(std::make_unique<ThreadEngine>(2));
  AlignedBuffer buf(4 * 4096);
  std::memset(buf.data(), 0xab, buf.size());
  engine.arm({Request::Op::write, 1, FaultKind::short_transfer});
  CHECK(submit_and_wait(engine, {Request::Op::write, f.fd(), buf.data(), buf.size(), 0}) ==
        2 * 4096);
  CHECK(test::file_size(path) == 2 * 4096);
}

TEST_CASE("FaultEngine hang holds a request until release_hung, and destruction cancels it") {
  TempDir tmp;
  File f = open_buffered(tmp / "hang.bin", OpenMode::write_new);
  AlignedBuffer buf(4096);
  Request w{Request::Op::write, f.fd(), buf.data(), 4096, 0};
  std::promise<std::int64_t> released, cancelled;
  {
    FaultEngine engine(std::make_unique<ThreadEngine>(2));
    engine.arm({Request::Op::write, 1, FaultKind::hang, 0, /*sticky=*/true});
    engine.submit(w, [&](std::int64_t r) { released.set_value(r); });
    auto rf = released.get_future();
    CHECK(rf.wait_for(std::chrono::milliseconds(50)) == std::future_status::timeout);
    CHECK(engine.hung() == 1);
    CHECK(engine.release_hung() == 1);
    REQUIRE(rf.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
    CHECK(rf.get() == 4096);  // forwarded to the wrapped engine and run there
    engine.submit(w, [&](std::int64_t r) { cancelled.set_value(r); });
    CHECK(engine.hung() == 1);
  }
  auto cf = cancelled.get_future();
  REQUIRE(cf.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
  CHECK(cf.get() == -ECANCELED);
}

TEST_CASE("a stuck request holds the FaultEngine's destructor until it is released") {
  TempDir tmp;
  File f = open_buffered(tmp / "stuck.bin", OpenMode::write_new);
  auto engine = std::make_unique<FaultEngine>(std::make_unique<ThreadEngine>(1));
  FaultEngine* faults = engine.get();
  AlignedBuffer buf(4096);
  engine->arm({Request::Op::write, 1, FaultKind::stuck});
  std::promise<std::int64_t> result;
  engine->submit({Request::Op::write, f.fd(), buf.data(), 4096, 0},
                 [&result](std::int64_t r) { result.set_value(r); });
  auto destroyed = std::async(std::launch::async, [&engine] { engine.reset(); });
  CHECK(destroyed.wait_for(std::chrono::milliseconds(100)) == std::future_status::timeout);
  CHECK(faults->release_hung() == 1);
  REQUIRE(destroyed.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  CHECK(result.get_future().get() == 4096);  // released: forwarded, not cancelled
}

TEST_CASE("TrackingEngine knows its requests in flight and waits for them with a deadline") {
  TempDir tmp;
  File f = open_buffered(tmp / "tracked.bin", OpenMode::write_new);
  auto inner = std::make_unique<FaultEngine>(std::make_unique<ThreadEngine>(1));
  FaultEngine* faults = inner.get();
  TrackingEngine engine(std::move(inner));
  AlignedBuffer buf(8192);
  CHECK(submit_and_wait(engine, {Request::Op::write, f.fd(), buf.data(), 4096, 0}) == 4096);
  // A request leaves the table once its completion has returned, just after it ran.
  CHECK(engine.wait_idle(std::chrono::steady_clock::now() + std::chrono::seconds(10)));
  CHECK(engine.in_flight() == 0);
  faults->arm({Request::Op::write, 1, FaultKind::hang});
  std::promise<std::int64_t> result;
  engine.submit({Request::Op::write, f.fd(), buf.data(), 8192, 4096},
                [&result](std::int64_t r) { result.set_value(r); });
  CHECK(engine.in_flight() == 1);
  CHECK_FALSE(engine.wait_idle(std::chrono::steady_clock::now() + std::chrono::milliseconds(20)));
  auto lines = engine.describe_in_flight();
  REQUIRE(lines.size() == 1);
  CHECK(test::contains(lines[0], "write of 8192 bytes at offset 4096 of "));
  CHECK(test::contains(lines[0], "tracked.bin, in flight for "));
  faults->release_hung();
  CHECK(engine.wait_idle(std::chrono::steady_clock::now() + std::chrono::seconds(10)));
  CHECK(result.get_future().get() == 8192);
  CHECK(engine.in_flight() == 0);
}

}  // namespace ckpt::io
