// One conformance suite for every storage engine driver (io/engine.h states the contract),
// the unarmed fault-injecting engine included.
#include "io/engine.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <vector>

#include "io/error.h"
#include "io/fault_engine.h"
#include "io/file.h"
#include "tests/test_util.h"

namespace ckpt::io {
namespace {

using test::catch_error;
using test::contains;
using test::TempDir;

constexpr auto kDeadline = std::chrono::seconds(10);

struct UringDriver {
  static constexpr EngineKind kind = EngineKind::uring;
  static constexpr bool faulty = false;
};
struct ThreadDriver {
  static constexpr EngineKind kind = EngineKind::threads;
  static constexpr bool faulty = false;
};
// The fault-injecting engine, unarmed, over io_uring: it must keep the contract it wraps.
struct FaultDriver {
  static constexpr EngineKind kind = EngineKind::uring;
  static constexpr bool faulty = true;
};

// The driver under test, or nullptr (with a message) when this machine cannot run it.
std::unique_ptr<Engine> make_driver(EngineKind kind, unsigned queue_depth = 64) {
  EngineOptions options;
  options.kind = kind;
  options.queue_depth = queue_depth;
  try {
    return make_engine(options);
  } catch (const Error& e) {
    MESSAGE("skipping the " << to_string(kind) << " engine: " << e.what());
    return nullptr;
  }
}

template <typename Driver>
std::unique_ptr<Engine> make_driver(unsigned queue_depth = 64) {
  auto engine = make_driver(Driver::kind, queue_depth);
  if (Driver::faulty && engine) engine = std::make_unique<FaultEngine>(std::move(engine));
  return engine;
}

void fill_bytes(std::byte* p, std::size_t n, std::uint32_t seed) {
  std::uint32_t x = seed * 2654435761u + 1;
  for (std::size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    p[i] = static_cast<std::byte>(x >> 24);
  }
}

// Writes `len` bytes of pattern `seed` into a new file, buffered.
void make_file(const std::string& path, std::size_t len, std::uint32_t seed) {
  std::string bytes(len, '\0');
  fill_bytes(reinterpret_cast<std::byte*>(bytes.data()), len, seed);
  test::write_file(path, bytes);
}

// Submits one request and waits (with a deadline) for its result.
std::int64_t submit_and_wait(Engine& engine, const Request& request) {
  auto promise = std::make_shared<std::promise<std::int64_t>>();
  auto result = promise->get_future();
  engine.submit(request, [promise](std::int64_t r) { promise->set_value(r); });
  REQUIRE(result.wait_for(kDeadline) == std::future_status::ready);
  return result.get();
}

TEST_CASE_TEMPLATE("engine writes O_DIRECT data with many requests in flight and reads it back",
                   Driver, UringDriver, ThreadDriver, FaultDriver) {
  auto engine = make_driver<Driver>();
  if (!engine) return;
  TempDir tmp;
  const std::string path = tmp / "data.bin";
  constexpr std::size_t kRequests = 64;
  constexpr std::size_t kChunk = 64 << 10;
  AlignedBuffer out(kRequests * kChunk);
  fill_bytes(out.data(), out.size(), 7);

  File file = open_direct(path, OpenMode::write_new);
  MESSAGE(engine->name() << ": O_DIRECT "
                         << std::string(file.direct() ? "in use" : "refused by the fs"));
  std::vector<Request> writes;
  for (std::size_t i = 0; i < kRequests; ++i) {
    writes.push_back({Request::Op::write, file.fd(), out.data() + i * kChunk, kChunk, i * kChunk});
  }
  run_batch(*engine, writes, 16, path);
  sync_file(*engine, file.fd(), path);
  file.close();
  CHECK(test::file_size(path) == kRequests * kChunk);

  File in = open_direct(path, OpenMode::read);
  AlignedBuffer back(kRequests * kChunk);
  std::vector<Request> reads;
  for (std::size_t i = 0; i < kRequests; ++i) {
    // Reverse order: requests in flight may complete in any order.
    std::size_t k = kRequests - 1 - i;
    reads.push_back({Request::Op::read, in.fd(), back.data() + k * kChunk, kChunk, k * kChunk});
  }
  run_batch(*engine, reads, 16, path);
  CHECK(std::memcmp(out.data(), back.data(), out.size()) == 0);
}

TEST_CASE_TEMPLATE("engine completions report the bytes each request transferred", Driver,
                   UringDriver, ThreadDriver, FaultDriver) {
  auto engine = make_driver<Driver>(8);
  if (!engine) return;
  TempDir tmp;
  const std::string path = tmp / "data.bin";
  constexpr std::size_t kRequests = 40;  // more than the queue depth: the engine queues the rest
  constexpr std::size_t kChunk = 4096;
  make_file(path, kRequests * kChunk, 3);
  File in = open_direct(path, OpenMode::read);
  AlignedBuffer back(kRequests * kChunk);

  struct State {
    std::mutex mu;
    std::vector<std::int64_t> results;
    std::promise<void> all_done;
  };
  auto state = std::make_shared<State>();
  state->results.assign(kRequests, -1);
  auto remaining = std::make_shared<std::atomic<std::size_t>>(kRequests);
  auto done = state->all_done.get_future();
  for (std::size_t i = 0; i < kRequests; ++i) {
    Request r{Request::Op::read, in.fd(), back.data() + i * kChunk, kChunk, i * kChunk};
    engine->submit(r, [state, remaining, i](std::int64_t result) {
      {
        std::lock_guard g(state->mu);
        state->results[i] = result;
      }
      if (remaining->fetch_sub(1) == 1) state->all_done.set_value();
    });
  }
  REQUIRE(done.wait_for(kDeadline) == std::future_status::ready);
  for (std::size_t i = 0; i < kRequests; ++i) {
    CAPTURE(i);
    CHECK(state->results[i] == static_cast<std::int64_t>(kChunk));
  }
  std::string expect(kRequests * kChunk, '\0');
  fill_bytes(reinterpret_cast<std::byte*>(expect.data()), expect.size(), 3);
  CHECK(std::memcmp(expect.data(), back.data(), expect.size()) == 0);
}

TEST_CASE_TEMPLATE("engine fsync succeeds", Driver, UringDriver, ThreadDriver, FaultDriver) {
  auto engine = make_driver<Driver>();
  if (!engine) return;
  TempDir tmp;
  const std::string path = tmp / "f.bin";
  File file = open_buffered(path, OpenMode::write_new);
  std::string text = "hello";
  Request w{Request::Op::write, file.fd(), text.data(), text.size(), 0};
  CHECK(submit_and_wait(*engine, w) == static_cast<std::int64_t>(text.size()));
  CHECK(submit_and_wait(*engine, Request{Request::Op::fsync, file.fd(), nullptr, 0, 0}) == 0);
  CHECK_NOTHROW(sync_file(*engine, file.fd(), path));
  file.close();
  CHECK(test::read_file(path) == text);
}

TEST_CASE_TEMPLATE("engine read past end of file completes short", Driver, UringDriver,
                   ThreadDriver, FaultDriver) {
  auto engine = make_driver<Driver>();
  if (!engine) return;
  TempDir tmp;
  const std::string path = tmp / "short.bin";
  make_file(path, 4096, 11);
  File in = open_direct(path, OpenMode::read);
  AlignedBuffer buf(3 * 4096);

  // Straddling the end: the bytes that exist.
  CHECK(submit_and_wait(*engine, {Request::Op::read, in.fd(), buf.data(), 3 * 4096, 0}) == 4096);
  // Wholly past the end: nothing.
  CHECK(submit_and_wait(*engine, {Request::Op::read, in.fd(), buf.data(), 4096, 8192}) == 0);

  Request r{Request::Op::read, in.fd(), buf.data(), 2 * 4096, 0};
  auto e = catch_error([&] { run_batch(*engine, {&r, 1}, 4, path); });
  REQUIRE(e);
  CHECK(e->code() == Errc::corrupt);
  CHECK(e->path() == path);
  CHECK(contains(e->what(), path));
}

TEST_CASE_TEMPLATE(
    "engine write to a read-only descriptor fails with an errno error naming the path", Driver,
    UringDriver, ThreadDriver, FaultDriver) {
  auto engine = make_driver<Driver>();
  if (!engine) return;
  TempDir tmp;
  const std::string path = tmp / "ro.bin";
  make_file(path, 4096, 1);
  File ro = open_buffered(path, OpenMode::read);
  AlignedBuffer buf(4096);

  CHECK(submit_and_wait(*engine, {Request::Op::write, ro.fd(), buf.data(), 4096, 0}) == -EBADF);

  std::vector<Request> writes(8, Request{Request::Op::write, ro.fd(), buf.data(), 4096, 0});
  auto e = catch_error([&] { run_batch(*engine, writes, 4, path); });
  REQUIRE(e);
  CHECK(e->code() == Errc::io);
  CHECK(e->sys_errno() == EBADF);
  CHECK(contains(e->what(), path));
  CHECK(contains(e->what(), "write"));
}

TEST_CASE_TEMPLATE("engine registered buffers round-trip data", Driver, UringDriver, ThreadDriver,
                   FaultDriver) {
  auto engine = make_driver<Driver>();
  if (!engine) return;
  TempDir tmp;
  const std::string path = tmp / "fixed.bin";
  constexpr std::size_t kBytes = 1 << 20;
  AlignedBuffer region(2 * kBytes);  // first half written from, second half read into
  iovec iov{region.data(), region.size()};
  bool registered = engine->register_buffers({&iov, 1});
  if (Driver::kind == EngineKind::threads) {
    CHECK_FALSE(registered);
  } else if (::geteuid() == 0) {
    CHECK(registered);  // root has no memlock limit to hit
  } else {
    MESSAGE("register_buffers returned " << registered << " (not root: memlock may refuse)");
  }

  fill_bytes(region.data(), kBytes, 5);
  File out = open_direct(path, OpenMode::write_new);
  std::vector<Request> writes;
  for (std::size_t off = 0; off < kBytes; off += 128 << 10) {
    writes.push_back({Request::Op::write, out.fd(), region.data() + off, 128 << 10, off});
  }
  run_batch(*engine, writes, 4, path);
  sync_file(*engine, out.fd(), path);
  out.close();

  File in = open_direct(path, OpenMode::read);
  std::vector<Request> reads;
  for (std::size_t off = 0; off < kBytes; off += 128 << 10) {
    reads.push_back({Request::Op::read, in.fd(), region.data() + kBytes + off, 128 << 10, off});
  }
  run_batch(*engine, reads, 4, path);
  CHECK(std::memcmp(region.data(), region.data() + kBytes, kBytes) == 0);

  // A buffer outside the registered region still works.
  AlignedBuffer other(4096);
  CHECK(submit_and_wait(*engine, {Request::Op::read, in.fd(), other.data(), 4096, 0}) == 4096);
  CHECK(std::memcmp(other.data(), region.data(), 4096) == 0);
  engine->unregister_buffers();
  CHECK(submit_and_wait(*engine, {Request::Op::read, in.fd(), other.data(), 4096, 4096}) == 4096);
}

TEST_CASE_TEMPLATE("engine destructor waits for every request in flight", Driver, UringDriver,
                   ThreadDriver, FaultDriver) {
  auto engine = make_driver<Driver>(4);
  if (!engine) return;
  TempDir tmp;
  const std::string path = tmp / "many.bin";
  constexpr std::size_t kRequests = 256;
  File out = open_buffered(path, OpenMode::write_new);
  std::vector<char> bytes(kRequests * 512, 'x');
  std::atomic<std::size_t> completed{0};
  std::atomic<std::size_t> bytes_done{0};
  for (std::size_t i = 0; i < kRequests; ++i) {
    Request r{Request::Op::write, out.fd(), bytes.data() + i * 512, 512, i * 512};
    engine->submit(r, [&](std::int64_t res) {
      if (res > 0) bytes_done += static_cast<std::size_t>(res);
      ++completed;
    });
  }
  engine.reset();  // must not return before every completion above has run
  CHECK(completed.load() == kRequests);
  CHECK(bytes_done.load() == kRequests * 512);
  CHECK(test::file_size(path) == kRequests * 512);
}

// Each completion submits the next read of its chain, from the driver's own thread.
struct Chains {
  Engine* engine = nullptr;
  int fd = -1;
  std::byte* buf = nullptr;
  std::atomic<int> chains_left{0};
  std::atomic<int> failures{0};
  std::promise<void> done;
};

void chain_step(const std::shared_ptr<Chains>& c, int chain, int steps_left) {
  Request r{Request::Op::read, c->fd, c->buf + static_cast<std::size_t>(chain) * 4096, 4096, 0};
  c->engine->submit(r, [c, chain, steps_left](std::int64_t res) {
    if (res != 4096) ++c->failures;
    if (steps_left > 1) {
      chain_step(c, chain, steps_left - 1);
    } else if (c->chains_left.fetch_sub(1) == 1) {
      c->done.set_value();
    }
  });
}

TEST_CASE_TEMPLATE("engine accepts submissions from inside a completion", Driver, UringDriver,
                   ThreadDriver, FaultDriver) {
  // A small queue depth so that completions submit while the engine is full.
  auto engine = make_driver<Driver>(2);
  if (!engine) return;
  TempDir tmp;
  const std::string path = tmp / "chain.bin";
  make_file(path, 4096, 9);
  File in = open_direct(path, OpenMode::read);
  constexpr int kChains = 8;
  constexpr int kSteps = 100;
  AlignedBuffer buf(kChains * 4096);
  auto c = std::make_shared<Chains>();
  c->engine = engine.get();
  c->fd = in.fd();
  c->buf = buf.data();
  c->chains_left = kChains;
  auto done = c->done.get_future();
  for (int i = 0; i < kChains; ++i) chain_step(c, i, kSteps);
  if (done.wait_for(kDeadline) != std::future_status::ready) {
    // Deadlocked: leak the engine (its destructor would wait forever) and the buffers it uses.
    (void)engine.release();
    (void)new AlignedBuffer(std::move(buf));
    FAIL("completion-submitted requests did not finish within 10 s");
  }
  CHECK(c->failures.load() == 0);
}

TEST_CASE("parse_engine_kind accepts auto, uring and threads and rejects anything else") {
  CHECK(parse_engine_kind("auto") == EngineKind::automatic);
  CHECK(parse_engine_kind("uring") == EngineKind::uring);
  CHECK(parse_engine_kind("threads") == EngineKind::threads);
  for (EngineKind k : {EngineKind::automatic, EngineKind::uring, EngineKind::threads}) {
    CHECK(parse_engine_kind(to_string(k)) == k);
  }
  for (const char* bad : {"", "Uring", "io_uring", "thread", "auto "}) {
    CAPTURE(bad);
    auto e = catch_error([&] { parse_engine_kind(bad); });
    REQUIRE(e);
    CHECK(e->code() == Errc::invalid_argument);
  }
}

TEST_CASE("make_engine with automatic selection gives a working engine") {
  auto engine = make_engine(EngineOptions{});
  REQUIRE(engine);
  CHECK((engine->name() == "uring" || engine->name() == "threads"));
  MESSAGE("automatic engine: " << engine->name());
  TempDir tmp;
  File file = open_buffered(tmp / "x", OpenMode::write_new);
  CHECK_NOTHROW(sync_file(*engine, file.fd(), file.path()));
}

}  // namespace
}  // namespace ckpt::io
