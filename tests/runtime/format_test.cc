// The on-disk format: version 2's packed layout, version 1 still read (a fixture written by the
// version 1 writer), and transactional restore (a failed restore leaves the template as it was).
#include <doctest/doctest.h>

#include <boost/asio/use_future.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "io/engine.h"
#include "io/error.h"
#include "io/fault_engine.h"
#include "runtime/checkpoint.h"
#include "runtime/layout.h"
#include "runtime/runtime.h"
#include "tests/test_util.h"

namespace ckpt {
namespace {

namespace json = boost::json;
using test::catch_error;
using test::contains;

const std::string kFixture = std::string(CKPT_FIXTURES) + "/format_v1";

// What tests/fixtures/make_v1_fixture.cc wrote into leaf k.
bool has_fixture_bytes(const Array& a, int k, bool boolean = false) {
  for (std::uint64_t i = 0; i < a.nbytes(); ++i) {
    auto want = static_cast<unsigned>((k * 31 + i * 7 + 3) & 0xff);
    if (boolean) want &= 1;
    if (static_cast<unsigned>(a.data()[i]) != want) return false;
  }
  return true;
}

std::unique_ptr<io::Engine> engine() { return io::make_engine({io::EngineKind::threads}); }

// A small Runtime on the thread engine: 64 KiB units, 16 MiB of staging.
RuntimeOptions small_options() {
  RuntimeOptions o;
  o.unit_bytes = 64 << 10;
  o.staging_budget = 16 << 20;
  o.engine = io::EngineKind::threads;
  return o;
}

TEST_CASE("a format version 1 checkpoint written by the version 1 writer restores and verifies") {
  auto e = engine();
  Manifest m = read_manifest(kFixture);
  CHECK(m.format_version == 1);
  CHECK(m.leaves.size() == 10);
  VerifyReport report = verify_checkpoint(*e, kFixture);
  CHECK(report.ok());
  Tree t = make_template(m);
  json::object meta = restore_checkpoint(*e, kFixture, t);
  CHECK(meta.at("step").as_int64() == 42);
  CHECK(std::isnan(meta.at("nan").as_double()));
  CHECK(has_fixture_bytes(t.find("params/layers/0/w")->array(), 1));
  CHECK(has_fixture_bytes(t.find("params/layers/0/b")->array(), 2));
  CHECK(has_fixture_bytes(t.find("params/layers/1/w")->array(), 11));
  CHECK(has_fixture_bytes(t.find("params/layers/1/b")->array(), 12));
  CHECK(has_fixture_bytes(t.find("params/emb")->array(), 3));
  CHECK(has_fixture_bytes(t.find("opt/step")->array(), 4));
  CHECK(has_fixture_bytes(t.find("opt/mask")->array(), 5, true));
  CHECK(has_fixture_bytes(t.find("opt/m")->array(), 6));  // three extents on an 8 KiB grid
  CHECK(has_fixture_bytes(t.find("opt/h")->array(), 7));
  CHECK(t.find("opt/none")->array().nbytes() == 0);
  CHECK(t.find("empty_list")->is_list());

  // A partial restore reads the blocks of its leaves only, through the two-pass read too.
  Tree part;
  part["opt"]["m"] = Array::zeros(DType::f64, {1100});
  ReadOptions small;
  small.staging_bytes = 0;
  restore_checkpoint(*e, kFixture, part, true, small);
  CHECK(has_fixture_bytes(part.find("opt/m")->array(), 6));
}

TEST_CASE("packed leaves of any size mix take at most 2% more than the state on disk") {
  std::mt19937_64 rng(7);
  const DType dtypes[] = {DType::u8, DType::f16, DType::f32, DType::f64, DType::boolean};
  std::vector<std::byte> memory(70000 * 8);  // every leaf views it: only the layout is planned
  for (int round = 0; round < 10; ++round) {
    FlatTree leaves;
    std::uint64_t total = 0;
    int n = 1 + static_cast<int>(rng() % 1500);
    for (int i = 0; i < n; ++i) {
      DType d = dtypes[rng() % 5];
      std::uint64_t numel = rng() % 4 == 0 ? rng() % 70000 : rng() % 300;
      Array a = Array::view(d, {numel}, static_cast<const void*>(memory.data()));
      total += a.nbytes();
      leaves.emplace_back("l" + std::to_string(i), a);
    }
    Manifest m;
    plan_extents(leaves, 4u << 20, m);
    CHECK(m.format_version == 2);
    CHECK(m.total_bytes == total);
    CHECK(m.stored_bytes() <= total + total / 50 + m.alignment);
    std::size_t misaligned = 0;
    for (const auto& leaf : m.leaves) {
      for (const auto& e : leaf.extents) {
        if (e.offset % dtype_size(leaf.dtype) != 0) ++misaligned;
        if (leaf.nbytes % 64 == 0 && e.offset % 64 != 0) ++misaligned;
      }
    }
    CHECK(misaligned == 0);
  }
}

TEST_CASE("a checkpoint of many small leaves round-trips packed, through the two-pass read too") {
  auto e = engine();
  test::TempDir tmp;
  Tree t;
  for (int i = 0; i < 3000; ++i) {
    t["s" + std::to_string(i / 100)][std::to_string(i % 100)] =
        Array::zeros(i % 3 == 0 ? DType::f64 : DType::u8, {static_cast<std::uint64_t>(1 + i % 37)});
  }
  for (int i = 0; i < 3; ++i) t["big" + std::to_string(i)] = Array::zeros(DType::f32, {300000});
  std::uint64_t seed = 1;
  t.for_each_leaf([&](const std::string&, const Array& a) { test::fill_pattern(a, seed++); });
  WriteOptions w;
  w.extent_bytes = 256 << 10;
  save_checkpoint(*e, tmp / "c", t, {}, w);
  Manifest m = read_manifest(tmp / "c");
  CHECK(m.format_version == kFormatVersion);
  CHECK(m.stored_bytes() <= m.total_bytes + m.total_bytes / 50 + m.alignment);
  for (std::uint64_t staging : {std::uint64_t{1} << 30, std::uint64_t{0}}) {
    ReadOptions r;
    r.unit_bytes = 64 << 10;
    r.staging_bytes = staging;
    Tree back = test::zeros_like(t);
    restore_checkpoint(*e, tmp / "c", back, false, r);
    CHECK(test::trees_equal(t, back));
  }
  CHECK(verify_checkpoint(*e, tmp / "c").ok());
}

// A saved tree, and a template holding other bytes that must survive a failed restore.
struct Saved {
  test::TempDir tmp;
  Tree tree = test::make_tree(24, 20000, 1);
  Tree templ = test::make_tree(24, 20000, 500);
  std::string dir = tmp / "c";
  Saved(io::Engine& e) {
    WriteOptions w;
    w.extent_bytes = 64 << 10;
    save_checkpoint(e, dir, tree, {}, w);
  }
  bool template_untouched() const {
    return test::trees_equal(templ, test::make_tree(24, 20000, 500));
  }
  std::string data() const { return dir + "/" + data_file_name(0); }
};

TEST_CASE("a restore that finds a corrupt block leaves the template as it was") {
  auto e = engine();
  Saved s(*e);
  std::uint64_t size = test::file_size(s.data());
  // Early, middle and last blocks: a mismatch found late must not leave earlier leaves written.
  for (std::uint64_t at : {std::uint64_t{10}, size / 2, size - 1}) {
    CAPTURE(at);
    test::flip_byte(s.data(), at);
    for (std::uint64_t staging : {std::uint64_t{1} << 30, std::uint64_t{0}}) {
      ReadOptions r;
      r.unit_bytes = 64 << 10;
      r.staging_bytes = staging;  // 0: the two-pass read
      auto err = catch_error([&] { restore_checkpoint(*e, s.dir, s.templ, false, r); });
      REQUIRE(err);
      CHECK(err->code() == Errc::corrupt);
      CHECK(contains(err->what(), "checksum mismatch"));
      CHECK(s.template_untouched());
    }
    test::flip_byte(s.data(), at);  // back to the saved bytes
  }
  restore_checkpoint(*e, s.dir, s.templ);
  CHECK(test::trees_equal(s.templ, s.tree));
}

TEST_CASE("a restore hands what it decoded to ReadOptions::dispose once it succeeded, never when "
          "it fails") {
  auto e = engine();
  Saved s(*e);
  std::vector<std::function<void()>> handed;
  ReadOptions r;
  r.unit_bytes = 64 << 10;
  r.dispose = [&handed](std::function<void()> fn) { handed.push_back(std::move(fn)); };
  // Whole (its reads start before the decode) and partial (planned after the match).
  for (bool partial : {false, true}) {
    CAPTURE(partial);
    handed.clear();
    Tree back = test::zeros_like(s.tree);
    restore_checkpoint(*e, s.dir, back, partial, r);
    CHECK(test::trees_equal(back, s.tree));  // restored before the task runs
    REQUIRE(handed.size() == 1);
    REQUIRE(handed[0]);
    handed[0]();
    handed.clear();  // the manifest is freed with the task
  }
  Tree wrong = test::make_tree(3, 100, 1);
  CHECK_THROWS_AS(restore_checkpoint(*e, s.dir, wrong, false, r), Error);
  CHECK(handed.empty());
  test::flip_byte(s.data(), 10);
  CHECK_THROWS_AS(restore_checkpoint(*e, s.dir, s.templ, false, r), Error);
  CHECK(handed.empty());
  CHECK(s.template_untouched());
}

TEST_CASE("a restore that is not transactional reads every block once, with staging or without") {
  auto e = engine();
  Saved s(*e);
  const std::uint64_t size = test::file_size(s.data());
  for (bool transactional : {true, false}) {
    for (std::uint64_t staging : {std::uint64_t{1} << 30, std::uint64_t{0}}) {
      CAPTURE(transactional);
      CAPTURE(staging);
      test::CountingEngine counting;
      ReadHow how = ReadHow::nothing;
      ReadOptions r;
      r.unit_bytes = 64 << 10;
      r.staging_bytes = staging;  // 0: transactional, the two-pass read
      r.transactional = transactional;
      r.read_how = &how;
      Tree back = test::zeros_like(s.tree);
      restore_checkpoint(counting, s.dir, back, false, r);
      CHECK(test::trees_equal(back, s.tree));
      // Every block once; only a transactional restore without staging reads them twice.
      CHECK(counting.read_bytes() == (transactional && staging == 0 ? 2 * size : size));
      if (staging == 0) {
        CHECK(how == (transactional ? ReadHow::two_passes : ReadHow::one_pass));
      } else if (transactional) {  // which of the two depends on how far the reads got
        CHECK((how == ReadHow::swapped || how == ReadHow::copied));
      } else {
        CHECK(how == ReadHow::placed);
      }
    }
  }
}

TEST_CASE("a restore in one pass verifies a block split over several reads before it returns") {
  auto e = engine();
  test::TempDir tmp;
  Tree tree = test::make_tree(6, 200000, 1);
  WriteOptions w;
  w.extent_bytes = 1 << 20;  // blocks of up to 1 MiB, read in pieces of 64 KiB below
  save_checkpoint(*e, tmp / "c", tree, {}, w);
  const std::string data = tmp / ("c/" + data_file_name(0));
  ReadOptions r;
  r.unit_bytes = 64 << 10;
  r.staging_bytes = 0;
  r.transactional = false;
  ReadHow how = ReadHow::nothing;
  r.read_how = &how;
  Tree back = test::zeros_like(tree);
  test::CountingEngine counting;
  restore_checkpoint(counting, tmp / "c", back, false, r);
  CHECK(test::trees_equal(back, tree));
  CHECK(how == ReadHow::one_pass);
  CHECK(counting.read_bytes() == test::file_size(data));  // once, in pieces of 64 KiB
  CHECK(counting.reads() >= test::file_size(data) / r.unit_bytes);
  // A byte in the first piece of a block, and in its last: either way the restore fails.
  Manifest m = read_manifest(tmp / "c");
  const BlockInfo& big = *std::max_element(
      m.blocks.begin(), m.blocks.end(),
      [](const BlockInfo& a, const BlockInfo& b) { return a.length < b.length; });
  REQUIRE(big.length > 4 * r.unit_bytes);
  for (std::uint64_t at : {big.offset + 1, big.offset + big.length - 1}) {
    CAPTURE(at);
    test::flip_byte(data, at);
    auto err = catch_error([&] { restore_checkpoint(*e, tmp / "c", back, false, r); });
    REQUIRE(err);
    CHECK(err->code() == Errc::corrupt);
    CHECK(contains(err->what(), fmt::format("block at offset {}", big.offset)));
    test::flip_byte(data, at);
  }
}

TEST_CASE("a restore that is not transactional still refuses a corrupt block, naming it") {
  auto e = engine();
  Saved s(*e);
  const std::uint64_t size = test::file_size(s.data());
  for (std::uint64_t at : {std::uint64_t{10}, size / 2, size - 1}) {
    CAPTURE(at);
    test::flip_byte(s.data(), at);
    for (std::uint64_t staging : {std::uint64_t{1} << 30, std::uint64_t{0}}) {
      CAPTURE(staging);
      ReadOptions r;
      r.unit_bytes = 64 << 10;
      r.staging_bytes = staging;
      r.transactional = false;
      Tree back = test::zeros_like(s.tree);
      auto err = catch_error([&] { restore_checkpoint(*e, s.dir, back, false, r); });
      REQUIRE(err);
      CHECK(err->code() == Errc::corrupt);
      CHECK(contains(err->what(), "checksum mismatch"));
      CHECK(contains(err->what(), "data-00000.bin"));
      CHECK(contains(err->what(), "holding"));
    }
    test::flip_byte(s.data(), at);
  }
}

TEST_CASE("a restore whose read fails with EIO leaves the template as it was") {
  io::FaultEngine* faults = nullptr;
  auto e = test::wrap_in_faults(&faults)(engine());
  Saved s(*e);
  for (std::uint64_t nth : {1, 3, 7}) {
    CAPTURE(nth);
    faults->arm({io::Request::Op::read, nth, io::FaultKind::error, EIO, false});
    ReadOptions r;
    r.unit_bytes = 64 << 10;
    auto err = catch_error([&] { restore_checkpoint(*e, s.dir, s.templ, false, r); });
    REQUIRE(err);
    CHECK(contains(err->what(), "data-00000.bin"));
    CHECK(s.template_untouched());
  }
  faults->disarm();
}

TEST_CASE("a Runtime restore that fails late leaves the template as it was, sync and async") {
  io::FaultEngine* faults = nullptr;
  RuntimeOptions o;
  o.unit_bytes = 64 << 10;
  o.staging_budget = 8 << 20;
  o.engine = io::EngineKind::threads;
  o.wrap_engine = test::wrap_in_faults(&faults);
  Runtime rt(o);
  Saved s(rt.engine());
  // The last read fails, after every other block verified.
  std::uint64_t reads = (test::file_size(s.data()) + (64 << 10) - 1) / (64 << 10);
  faults->arm({io::Request::Op::read, reads, io::FaultKind::error, EIO, false});
  CHECK(catch_error([&] { rt.restore(s.dir, s.templ); }));
  CHECK(s.template_untouched());
  faults->disarm();
  test::flip_byte(s.data(), test::file_size(s.data()) - 5);
  auto fut = rt.async_restore(s.dir, s.templ, false, boost::asio::use_future);
  CHECK_THROWS_AS(fut.get(), Error);
  CHECK(s.template_untouched());
  test::flip_byte(s.data(), test::file_size(s.data()) - 5);
  rt.restore(s.dir, s.templ);
  CHECK(test::trees_equal(s.templ, s.tree));
}

TEST_CASE("a Runtime restore that is not transactional fills a new template, sync and async") {
  RuntimeOptions o;
  o.unit_bytes = 64 << 10;
  o.engine = io::EngineKind::threads;
  for (std::uint64_t budget : {std::uint64_t{64} << 20, std::uint64_t{1} << 20}) {
    CAPTURE(budget);  // staging for every block, or too little: one pass, not two
    o.staging_budget = budget;
    Runtime rt(o);
    Saved s(rt.engine());
    const RestoreOptions how{false, false};
    Tree back = test::zeros_like(s.tree);
    rt.restore(s.dir, back, how);
    CHECK(test::trees_equal(back, s.tree));
    Tree async_back = test::zeros_like(s.tree);
    rt.async_restore(s.dir, async_back, how, boost::asio::use_future).get();
    CHECK(test::trees_equal(async_back, s.tree));
    const RuntimeStats stats = rt.stats();
    CHECK(stats.restores_swapped + stats.restores_copied + stats.restores_two_passes == 0);
    CHECK((budget > (1 << 20) ? stats.restores_placed : stats.restores_one_pass) == 2);
    rt.restore(s.dir, back);  // transactional: staged, or in two passes
    CHECK(rt.stats().restores_two_passes == (budget > (1 << 20) ? 0 : 1));
    test::flip_byte(s.data(), test::file_size(s.data()) / 2);
    auto err = catch_error([&] { rt.restore(s.dir, back, how); });
    REQUIRE(err);
    CHECK(err->code() == Errc::corrupt);
    CHECK(contains(err->what(), "data-00000.bin"));
    auto fut = rt.async_restore(s.dir, async_back, how, boost::asio::use_future);
    CHECK_THROWS_AS(fut.get(), Error);
  }
}

TEST_CASE("a save reuses the plan while the structure stays, and plans again when it changes") {
  test::TempDir tmp;
  Runtime rt(small_options());
  Tree t = test::make_tree(40, 3000, 1);
  rt.save(tmp / "a", t, {}).wait();
  test::fill_pattern(t.find("layer3/w")->array(), 77);  // new values, same structure
  rt.save(tmp / "b", t, {}).wait();
  CHECK(rt.stats().plans_built == 1);
  CHECK(rt.stats().plans_reused == 1);
  Tree back = test::zeros_like(t);
  rt.restore(tmp / "b", back);
  CHECK(test::trees_equal(t, back));  // the reused plan copied the new values
  // A shape, a dtype, a key: each is a new structure.
  Tree shape = test::make_tree(40, 3000, 1);
  shape["layer3"]["w"] = Array::zeros(DType::f32, {3001});
  Tree dtype = test::make_tree(40, 3000, 1);
  dtype["layer3"]["w"] = Array::zeros(DType::i32, {3000});
  Tree key = test::make_tree(40, 3000, 1);
  key["layer3"]["v"] = Array::zeros(DType::f32, {1});
  int k = 0;
  for (Tree* changed : {&shape, &dtype, &key, &t}) {
    std::string dir = tmp / ("c" + std::to_string(k++));
    rt.save(dir, *changed, {}).wait();
    Tree again = test::zeros_like(*changed);
    rt.restore(dir, again);
    CHECK(test::trees_equal(*changed, again));
  }
  CHECK(rt.stats().plans_built == 5);
  CHECK(rt.stats().plans_reused == 1);
}

TEST_CASE("a save of a large tree checks its structure in parts on the copy threads and "
          "restores what it saved") {
  test::TempDir tmp;
  RuntimeOptions o = small_options();
  o.unit_bytes = RuntimeOptions().unit_bytes;
  o.copy_threads = 2;
  Runtime rt(o);
  Tree t = test::make_tree(20000, 3, 1);  // 20,000 leaves: over the 16,384 that split the check
  rt.save(tmp / "a", t, {}).wait();
  for (int i : {0, 7777, 19999}) test::fill_pattern(t.find("layer" + std::to_string(i) + "/w")->array(), 5);
  rt.save(tmp / "b", t, {}).wait();
  CHECK(rt.stats().plans_built == 1);
  CHECK(rt.stats().plans_reused == 1);
  CHECK(rt.stats().plans_checked_in_parts == 1);
  Tree back = test::zeros_like(t);
  rt.restore(tmp / "b", back);
  CHECK(test::trees_equal(t, back));
  // A shape changed deep in one part: planned again, and saved as it is now.
  t["layer12345"]["w"] = Array::zeros(DType::f32, {4});
  test::fill_pattern(t.find("layer12345/w")->array(), 9);
  rt.save(tmp / "c", t, {}).wait();
  CHECK(rt.stats().plans_built == 2);
  CHECK(rt.stats().plans_checked_in_parts == 1);
  Tree changed = test::zeros_like(t);
  rt.restore(tmp / "c", changed);
  CHECK(test::trees_equal(t, changed));
}

TEST_CASE("a restore of a hostile manifest whose two leaves share file bytes copies both instead "
          "of swapping") {
  // decode_manifest does not refuse leaves that overlap in the file (only what would read out of
  // bounds): the restore must see that their segments share staging bytes and copy, not swap
  // (a second swap of the same bytes would hand b the template's old bytes of a).
  test::TempDir tmp;
  Runtime rt(small_options());
  Tree t;
  t["a"] = Array::zeros(DType::f32, {1024});
  t["b"] = Array::zeros(DType::f32, {1024});
  test::fill_pattern(t["a"].array(), 1);
  test::fill_pattern(t["b"].array(), 2);
  const std::string dir = tmp / "c";
  rt.save(dir, t, {}).wait();
  Manifest m = read_manifest(dir);
  REQUIRE(m.leaves.size() == 2);
  m.leaves[1].extents.at(0).offset = m.leaves[0].extents.at(0).offset;  // b reads a's bytes
  test::write_file(dir + "/manifest.ckpt", encode_manifest(m));
  Tree back;
  back["a"] = Array::zeros(DType::f32, {1024});
  back["b"] = Array::zeros(DType::f32, {1024});
  test::fill_pattern(back["a"].array(), 7);
  test::fill_pattern(back["b"].array(), 8);
  rt.restore(dir, back);
  CHECK(std::memcmp(back["a"].array().data(), t["a"].array().data(), 4096) == 0);
  CHECK(std::memcmp(back["b"].array().data(), t["a"].array().data(), 4096) == 0);
}

}  // namespace
}  // namespace ckpt
