// The transactional restore's read driven by hand (runtime/staged_read.h): blocks checked ahead
// of the manifest's decode, then copied once all verified or swapped in while reads are to come;
// a corrupt block and a layout that differs from the manifest; the reads in flight halving once
// finished, and in a UnitPipe's read, on a disk that completes its queue at once. Copies and
// placements with cached and with streaming stores. Run under ThreadSanitizer too.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <functional>
#include <future>
#include <numeric>
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
#include "runtime/unit_pipe.h"
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
  Stores stores = Stores::cached;  // the checkpoint is small: streaming only when asked
  // Starts the reads (queue_depth in flight) and checks them ahead; when `all_read`, waits until
  // every unit was read and checked ahead; then finishes into the template's targets.
  StagedRead::Placement run(io::Engine& e, unsigned queue_depth, bool all_read,
                            std::function<void(ReadPlacement)> on_placed = {}) {
    StagedReadOptions o;
    o.queue_depth = queue_depth;
    o.threads = 2;
    o.targets_disjoint = true;
    o.transactional = transactional;
    o.stores = stores;
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

TEST_CASE("a read whose blocks all arrived before the leaves were known checks them ahead, then copies") {
  auto e = engine();
  for (Stores stores : {Stores::cached, Stores::streaming}) {
    CAPTURE(static_cast<int>(stores));
    HandRead h(*e);
    h.stores = stores;
    REQUIRE(h.units.size() > 4);
    CHECK(h.run(*e, 4, true) == StagedRead::Placement::copied);
    CHECK(h.ahead.checked == h.units.size());  // every unit verified before the leaves were known
    CHECK(h.ahead.passed == h.units.size());
    CHECK(test::trees_equal(h.templ, h.tree));
  }
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
  for (Stores stores : {Stores::cached, Stores::streaming}) {
    for (bool all_read : {true, false}) {
      CAPTURE(static_cast<int>(stores));
      CAPTURE(all_read);
      HandRead h(*e);
      h.transactional = false;
      h.stores = stores;
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
}

// The bursts in which a BurstEngine released `total` reads: each at most `depth`, each from
// burst `from` on at most half (rounded up) of the reads not yet done, the last a single read.
// Not reads_toward_the_end: the test states the rule it checks.
void check_halving(const std::vector<std::size_t>& bursts, std::size_t total, std::size_t depth,
                   std::size_t from) {
  std::size_t unread = total;
  for (std::size_t k = 0; k < bursts.size(); ++k) {
    CAPTURE(k);
    CAPTURE(unread);
    CHECK(bursts[k] <= depth);
    if (k >= from) CHECK(bursts[k] <= (unread + 1) / 2);
    unread -= bursts[k];
  }
  CHECK(unread == 0);
  CHECK(bursts.back() == 1);
}

TEST_CASE("a finished read keeps at most half the units not yet read in flight, the last alone") {
  test::BurstEngine e(engine());
  HandRead h(e);
  h.transactional = false;
  constexpr unsigned kDepth = 8;
  REQUIRE(h.units.size() > 3 * kDepth);
  std::promise<void> armed;
  std::vector<std::size_t> bursts;
  std::jthread disk([&] {
    // Nothing completes until finish() chose how to place the units.
    if (armed.get_future().wait_for(std::chrono::seconds(30)) != std::future_status::ready) return;
    bursts = e.release_until(h.units.size(), std::chrono::seconds(30));
  });
  const auto placed = h.run(e, kDepth, false, [&](ReadPlacement) { armed.set_value(); });
  disk.join();
  CHECK(placed == StagedRead::Placement::placed);
  CHECK(test::trees_equal(h.templ, h.tree));
  REQUIRE(bursts.size() > 2);
  CHECK(bursts.front() == kDepth);  // submitted before finish(): the whole depth
  check_halving(bursts, h.units.size(), kDepth, 1);
}

TEST_CASE("a unit pipe keeps at most half its units not yet read in flight, the last alone") {
  test::TempDir tmp;
  const std::string path = tmp / "data";
  constexpr std::size_t kUnits = 30;
  constexpr std::uint64_t kUnit = 64 << 10;
  std::string bytes(kUnits * kUnit, '\0');
  for (std::size_t i = 0; i < kUnits; ++i) {
    std::fill_n(bytes.data() + i * kUnit, kUnit, static_cast<char>(i));
  }
  test::write_file(path, bytes);
  io::File file = io::open_direct(path, io::OpenMode::read, true);
  std::vector<io::File*> files{&file};
  std::vector<Unit> units;
  for (std::size_t i = 0; i < kUnits; ++i) units.push_back(Unit{0, i * kUnit, kUnit, {}, {}});
  test::BurstEngine e(engine());
  std::vector<std::size_t> bursts;
  std::jthread disk([&] { bursts = e.release_until(kUnits, std::chrono::seconds(30)); });
  std::vector<std::size_t> consumed;  // each unit's bytes, by their value
  UnitPipe pipe(e, kUnit, 8);
  pipe.read_all(units, files, [&](const Unit& u, const std::byte* b) {
    const bool same = std::all_of(b, b + u.length, [&](std::byte x) { return x == b[0]; });
    consumed.push_back(same ? std::to_integer<std::size_t>(b[0]) : kUnits);
  });
  disk.join();
  std::vector<std::size_t> in_order(kUnits);
  std::iota(in_order.begin(), in_order.end(), 0);
  CHECK(consumed == in_order);
  REQUIRE(bursts.size() > 2);
  check_halving(bursts, kUnits, 8, 0);
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
