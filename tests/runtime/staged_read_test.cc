// The transactional restore's read driven by hand (runtime/staged_read.h): blocks checked ahead
// of the manifest's decode, then copied once all verified or swapped in while reads are to come;
// a corrupt block and a layout that differs from the manifest; the reads in flight halving once
// finished, on a disk that completes its queue at once. Run under ThreadSanitizer too.
#include <doctest/doctest.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "io/engine.h"
#include "io/error.h"
#include "io/fault_engine.h"
#include "io/file.h"
#include "runtime/checkpoint.h"
#include "runtime/layout.h"
#include "runtime/manifest.h"
#include "runtime/staged_read.h"
#include "runtime/template_match.h"
#include "tests/test_util.h"

namespace ckpt {
namespace {

using test::catch_error;
using test::contains;

std::unique_ptr<io::Engine> engine() { return io::make_engine({io::EngineKind::threads}); }

// The pieces of a restore's read driven by hand: the layout and the units of every block, as
// restore_checkpoint's prefetch plans them, and the manifest's units with the template's targets.
struct HandRead {
  test::TempDir tmp;
  Tree tree = test::make_tree(24, 20000, 1);
  Tree templ = test::make_tree(24, 20000, 500);
  std::string dir = tmp / "c";
  Manifest m;
  Manifest layout;
  std::vector<Unit> layout_units, units;
  TemplateMatch match;
  io::File file;
  std::vector<io::File*> files;
  io::AlignedBuffer staging;
  std::vector<std::byte*> buffers;
  static constexpr std::uint64_t kUnit = 64 << 10;
  // Saves `tree` in blocks of 64 KiB, then plans its read into `templ`.
  explicit HandRead(io::Engine& e, std::function<void(const std::string&)> before_plan = {}) {
    WriteOptions w;
    w.extent_bytes = 64 << 10;
    save_checkpoint(e, dir, tree, {}, w);
    if (before_plan) before_plan(data());
    m = read_manifest(dir);
    match = match_template(m, templ, false);
    file = io::open_direct(data(), io::OpenMode::read, true);
    const std::string path = dir + "/" + std::string(kManifestName);
    layout = decode_layout(io::read_file_bytes(path, 1 << 30).view(), path);
    layout_units = plan_units(layout, kUnit);
    units = plan_units(m, kUnit);
    files.push_back(&file);
    staging = io::AlignedBuffer(units.size() * kUnit);
    for (std::size_t i = 0; i < units.size(); ++i) buffers.push_back(staging.data() + i * kUnit);
  }
  std::string data() const { return dir + "/" + data_file_name(0); }
  bool template_untouched() const {
    return test::trees_equal(templ, test::make_tree(24, 20000, 500));
  }
  StagedRead::Ahead ahead;  // what the check ahead had done when finish() was called
  bool transactional = true;
  // Starts the reads (queue_depth in flight) and checks them ahead; when `all_read`, waits until
  // every unit was read and checked ahead; then finishes into the template's targets.
  StagedRead::Placement run(io::Engine& e, unsigned queue_depth, bool all_read,
                            std::function<void(ReadPlacement)> on_placed = {}) {
    StagedReadOptions o;
    o.queue_depth = queue_depth;
    o.threads = 2;
    o.targets_disjoint = true;
    o.transactional = transactional;
    o.on_placed = std::move(on_placed);
    StagedRead read(e, layout_units, files, buffers, queue_depth);
    read.start();
    read.check_ahead(layout, layout_units, o);
    if (all_read) {
      REQUIRE(read.wait_read(std::chrono::seconds(30)));
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (read.ahead().checked < units.size() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    ahead = read.ahead();
    return read.finish(m, units, match.targets, o);
  }
};

// Holds every read until release_burst(), then passes them all on together: a disk that
// completes its whole queue at once, as this VM's virtio disk does. Other requests pass.
class BurstEngine final : public test::ForwardingEngine {
 public:
  BurstEngine() : ForwardingEngine(engine()) {}
  void submit(const io::Request& r, io::Completion done) override {
    if (r.op != io::Request::Op::read) return ForwardingEngine::submit(r, std::move(done));
    std::lock_guard lock(mu_);
    held_.push_back({r, std::move(done)});
    cv_.notify_all();
  }
  // Waits up to `timeout` until a request is held and every one released before has completed
  // (so that what their completions submitted is held too), then releases what is held. Returns
  // how many it released: 0 on timeout.
  std::size_t release_burst(std::chrono::milliseconds timeout) {
    std::vector<Held> burst;
    {
      std::unique_lock lock(mu_);
      if (!cv_.wait_for(lock, timeout, [&] { return !held_.empty() && outstanding_ == 0; })) {
        return 0;
      }
      burst.swap(held_);
      outstanding_ = burst.size();
    }
    for (Held& h : burst) {
      ForwardingEngine::submit(h.request, [this, done = std::move(h.done)](std::int64_t res) {
        done(res);
        std::lock_guard lock(mu_);
        --outstanding_;
        cv_.notify_all();
      });
    }
    return burst.size();
  }

 private:
  struct Held {
    io::Request request;
    io::Completion done;
  };
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Held> held_;
  std::size_t outstanding_ = 0;
};

TEST_CASE("a read whose blocks all arrived before the leaves were known checks them ahead, then copies") {
  auto e = engine();
  HandRead h(*e);
  REQUIRE(h.units.size() > 4);
  CHECK(h.run(*e, 4, true) == StagedRead::Placement::copied);
  CHECK(h.ahead.checked == h.units.size());  // every unit verified before the leaves were known
  CHECK(h.ahead.passed == h.units.size());
  CHECK(test::trees_equal(h.templ, h.tree));
}

TEST_CASE("a read finished while most of its reads are still to come swaps each unit in") {
  io::FaultEngine* faults = nullptr;
  auto e = test::wrap_in_faults(&faults)(engine());
  HandRead h(*e);
  REQUIRE(h.units.size() > 8);
  // One read in flight, the first, held (from start()) until finish() chose how to place them.
  faults->arm({io::Request::Op::read, 1, io::FaultKind::hang, 0, false});
  std::size_t released = 0;
  CHECK(h.run(*e, 1, false, [&](ReadPlacement) { released = faults->release_hung(); }) ==
        StagedRead::Placement::swapped);
  CHECK(released == 1);
  CHECK(test::trees_equal(h.templ, h.tree));
}

TEST_CASE("a read that is not transactional copies each unit in as it verifies, read or to come") {
  io::FaultEngine* faults = nullptr;
  auto e = test::wrap_in_faults(&faults)(engine());
  for (bool all_read : {true, false}) {
    CAPTURE(all_read);
    HandRead h(*e);
    h.transactional = false;
    REQUIRE(h.units.size() > 8);
    std::size_t released = 0;
    // Finished either once every unit was read and checked ahead, or with the first read held.
    if (!all_read) faults->arm({io::Request::Op::read, 1, io::FaultKind::hang, 0, false});
    CHECK(h.run(*e, all_read ? 4 : 1, all_read, [&](ReadPlacement) {
      if (!all_read) released = faults->release_hung();
    }) == StagedRead::Placement::placed);
    CHECK(released == (all_read ? 0 : 1));
    if (all_read) CHECK(h.ahead.passed == h.units.size());  // placed without verifying again
    CHECK(test::trees_equal(h.templ, h.tree));
    faults->disarm();
  }
}

TEST_CASE("a finished read keeps at most half the units not yet read in flight, the last alone") {
  BurstEngine e;
  HandRead h(e);
  h.transactional = false;
  constexpr unsigned kDepth = 8;
  REQUIRE(h.units.size() > 3 * kDepth);
  std::promise<void> armed;
  std::vector<std::size_t> bursts;
  std::thread disk([&] {
    // Nothing completes until finish() chose how to place the units.
    if (armed.get_future().wait_for(std::chrono::seconds(30)) != std::future_status::ready) return;
    std::size_t released = 0;
    while (released < h.units.size()) {
      const std::size_t n = e.release_burst(std::chrono::seconds(30));
      if (n == 0) return;
      bursts.push_back(n);
      released += n;
    }
  });
  const auto placed = h.run(e, kDepth, false, [&](ReadPlacement) { armed.set_value(); });
  disk.join();
  CHECK(placed == StagedRead::Placement::placed);
  CHECK(test::trees_equal(h.templ, h.tree));
  REQUIRE(bursts.size() > 2);
  CHECK(bursts.front() == kDepth);  // submitted before finish(): the whole depth
  std::size_t unread = h.units.size();
  for (std::size_t n : bursts) {
    CAPTURE(unread);
    CHECK(n <= kDepth);
    if (n != bursts.front()) CHECK(n <= std::max<std::size_t>((unread + 1) / 2, 1));
    unread -= n;
  }
  CHECK(unread == 0);
  CHECK(bursts.back() == 1);
}

TEST_CASE("a read that is not transactional names a block that fails its check ahead") {
  auto e = engine();
  HandRead h(*e, [](const std::string& data) { test::flip_byte(data, test::file_size(data) / 2); });
  h.transactional = false;
  auto err = catch_error([&] { h.run(*e, 4, true); });
  REQUIRE(err);
  CHECK(err->code() == Errc::corrupt);
  CHECK(contains(err->what(), "checksum mismatch"));
  CHECK(contains(err->what(), "'layer"));
  CHECK(h.ahead.passed == h.units.size() - 1);
}

TEST_CASE("a block that fails its check ahead is verified again and named, and nothing is copied") {
  auto e = engine();
  HandRead h(*e, [](const std::string& data) { test::flip_byte(data, test::file_size(data) / 2); });
  auto err = catch_error([&] { h.run(*e, 4, true); });
  REQUIRE(err);
  CHECK(err->code() == Errc::corrupt);
  CHECK(contains(err->what(), "checksum mismatch"));
  // Named from the manifest, which knows the block's leaves (the layout does not).
  CHECK(contains(err->what(), "holding"));
  CHECK(contains(err->what(), "'layer"));
  CHECK_FALSE(contains(err->what(), "no leaf"));
  CHECK(h.ahead.checked == h.units.size());
  CHECK(h.ahead.passed == h.units.size() - 1);  // the corrupt block's unit failed ahead
  CHECK(h.template_untouched());
}

TEST_CASE("a check ahead against a layout whose blocks differ from the manifest's is not trusted") {
  auto e = engine();
  HandRead h(*e);
  // The manifest claims another checksum for one block; the layout has the file's own. Every
  // unit passes its check ahead, but the manifest's verification must still refuse that block.
  h.m.blocks[h.m.blocks.size() / 2].crc32c ^= 1;
  auto err = catch_error([&] { h.run(*e, 4, true); });
  REQUIRE(err);
  CHECK(contains(err->what(), "checksum mismatch"));
  CHECK(h.template_untouched());
}

}  // namespace
}  // namespace ckpt
