// Synchronous save, restore and verify (runtime/checkpoint.h) and the run-directory catalog
// (runtime/catalog.h), against real files.
#include "runtime/checkpoint.h"

#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "io/engine.h"
#include "io/error.h"
#include "runtime/catalog.h"
#include "tests/test_util.h"

namespace ckpt {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using test::catch_error;
using test::contains;
using test::TempDir;

struct UringDriver {
  static constexpr io::EngineKind kind = io::EngineKind::uring;
};
struct ThreadDriver {
  static constexpr io::EngineKind kind = io::EngineKind::threads;
};

std::unique_ptr<io::Engine> make_driver(io::EngineKind kind) {
  try {
    return io::make_engine(io::EngineOptions{kind});
  } catch (const Error& e) {
    MESSAGE("skipping the " << io::to_string(kind) << " engine: " << e.what());
    return nullptr;
  }
}

// Fills every leaf with its own deterministic pattern.
void fill_tree(const Tree& t, std::uint64_t seed) {
  t.for_each_leaf([&](const std::string&, const Array& a) {
    if (a.nbytes() != 0) test::fill_pattern(a, seed++);
  });
}

// Saves `tree`, restores it into zeros, compares, verifies, and checks nothing temporary is left.
void check_round_trip(io::Engine& engine, const Tree& tree, const WriteOptions& write = {},
                      const ReadOptions& read = {}) {
  TempDir tmp;
  const std::string dir = tmp / "run/ckpt";
  const json::object meta{{"step", 3}, {"note", "round trip"}};
  save_checkpoint(engine, dir, tree, meta, write);
  Tree back = test::zeros_like(tree);
  json::object got = restore_checkpoint(engine, dir, back, false, read);
  CHECK(test::trees_equal(tree, back));
  CHECK(got == meta);
  VerifyReport report = verify_checkpoint(engine, dir, read);
  CHECK_MESSAGE(report.ok(), (report.ok() ? "" : report.problems.front()));
  CHECK(report.leaves == tree.leaf_count());
  CHECK(test::find_tmp_entries(tmp.path()).empty());
}

// A small checkpoint for the corruption and catalog tests: params/w spans two 4096-byte blocks.
Tree small_tree() {
  Tree t;
  t["params"]["w"] = Array::zeros(DType::f32, {2000});
  t["params"]["b"] = Array::zeros(DType::f32, {10});
  t["step"] = Array::zeros(DType::i64, {});
  fill_tree(t, 100);
  return t;
}

TEST_CASE_TEMPLATE("checkpoint round trips every dtype", Driver, UringDriver, ThreadDriver) {
  auto engine = make_driver(Driver::kind);
  if (!engine) return;
  Tree t;
  for (int i = 0; i < kDTypeCount; ++i) {
    auto d = static_cast<DType>(i);
    t[std::string(to_string(d))] = Array::zeros(d, {3, 5});
  }
  REQUIRE(t.leaf_count() == kDTypeCount);
  fill_tree(t, 1);
  check_round_trip(*engine, t);
}

TEST_CASE_TEMPLATE("checkpoint round trips empty arrays, scalars and a tree without leaves", Driver,
                   UringDriver, ThreadDriver) {
  auto engine = make_driver(Driver::kind);
  if (!engine) return;
  Tree t;
  t["empty"] = Array::zeros(DType::f32, {0});
  t["empty2d"] = Array::zeros(DType::i16, {3, 0});
  t["scalar"] = Array::zeros(DType::f64, {});
  t["after"] = Array::zeros(DType::u8, {7});
  fill_tree(t, 2);
  check_round_trip(*engine, t);

  check_round_trip(*engine, Tree());
  Tree nested_empty;
  nested_empty["a"]["b"] = Tree::list();
  check_round_trip(*engine, nested_empty);

  TempDir tmp;
  save_checkpoint(*engine, tmp / "c", Tree(), {});
  CHECK(test::file_size(tmp / "c/data-00000.bin") == 0);
}

TEST_CASE_TEMPLATE("checkpoint round trips a large leaf spanning several blocks", Driver,
                   UringDriver, ThreadDriver) {
  auto engine = make_driver(Driver::kind);
  if (!engine) return;
  Tree t;
  t["big"] = Array::zeros(DType::u8, {(40u << 20) + 123});  // not a multiple of 4096
  t["small"] = Array::zeros(DType::f32, {3});
  fill_tree(t, 3);
  check_round_trip(*engine, t);

  TempDir tmp;
  save_checkpoint(*engine, tmp / "c", t, {});
  Manifest m = read_manifest(tmp / "c");
  REQUIRE(m.leaves.size() == 2);
  CHECK(m.leaves[0].path == "big");
  CHECK(m.leaves[0].extents.size() == 1);
  CHECK(m.blocks.size() == 3);  // 16 + 16 + 8 MiB (+135 bytes)
  CHECK(test::file_size(tmp / "c/data-00000.bin") == (40u << 20) + 4096);  // packed
}

TEST_CASE_TEMPLATE("checkpoint round trips with small extents and IO units", Driver, UringDriver,
                   ThreadDriver) {
  auto engine = make_driver(Driver::kind);
  if (!engine) return;
  Tree t;
  t["a"] = Array::zeros(DType::u8, {100005});
  t["b"] = Array::zeros(DType::f32, {2048});  // exactly one block
  t["c"] = Array::zeros(DType::u8, {1});
  t["d"] = Array::zeros(DType::u8, {0});
  t["e"] = Array::zeros(DType::i32, {5000});
  fill_tree(t, 4);
  WriteOptions write;
  write.extent_bytes = 8192;
  write.unit_bytes = 16384;
  write.queue_depth = 3;
  // Units smaller than a block (chained CRC), equal to two blocks, and spanning many.
  for (std::uint64_t unit : {4096u, 16384u, 1u << 20}) {
    for (unsigned depth : {1u, 4u}) {
      CAPTURE(unit);
      CAPTURE(depth);
      ReadOptions read;
      read.unit_bytes = unit;
      read.queue_depth = depth;
      check_round_trip(*engine, t, write, read);
    }
  }
  TempDir tmp;
  save_checkpoint(*engine, tmp / "c", t, {}, write);
  Manifest m = read_manifest(tmp / "c");
  // Packed: 8192 + 20000 + 100005 + 1 bytes in 131072, cut into 16 blocks of 8192.
  CHECK(test::file_size(tmp / "c/data-00000.bin") == 131072);
  CHECK(m.blocks.size() == 16);
  for (const auto& b : m.blocks) CHECK(b.length == write.extent_bytes);
}

TEST_CASE_TEMPLATE("checkpoint round trips 10,000 small leaves", Driver, UringDriver,
                   ThreadDriver) {
  auto engine = make_driver(Driver::kind);
  if (!engine) return;
  Tree t;
  Tree& layers = t["layers"] = Tree::list();
  for (int i = 0; i < 100; ++i) {
    Tree layer;
    for (int k = 0; k < 100; ++k) {
      layer["k" + std::to_string(k)] =
          Array::zeros(DType::f32, {static_cast<std::uint64_t>((i + k) % 7 + 1)});
    }
    layers.push_back(std::move(layer));
  }
  REQUIRE(t.leaf_count() == 10000);
  fill_tree(t, 5);
  check_round_trip(*engine, t);
}

TEST_CASE_TEMPLATE("checkpoint round trips nested lists and dicts and rebuilds them as a template",
                   Driver, UringDriver, ThreadDriver) {
  auto engine = make_driver(Driver::kind);
  if (!engine) return;
  Tree t;
  Tree& layers = t["params"]["layers"] = Tree::list();
  for (int i = 0; i < 3; ++i) {
    Tree layer;
    layer["w"] = Array::zeros(DType::bf16, {4, 4});
    layer["b"] = Array::zeros(DType::f32, {4});
    Tree& extra = layer["extra"] = Tree::list();
    extra.push_back(Tree::list()).push_back(Array::zeros(DType::i8, {2}));
    extra.push_back(Tree());
    layers.push_back(std::move(layer));
  }
  t["opt"]["mu"] = Tree::list();
  t["opt"]["count"] = Array::zeros(DType::u64, {});
  fill_tree(t, 6);
  check_round_trip(*engine, t);

  TempDir tmp;
  save_checkpoint(*engine, tmp / "c", t, {});
  Tree templ = make_template(read_manifest(tmp / "c"));
  CHECK(templ.find("params/layers/2/extra/0/0") != nullptr);
  CHECK(templ.find("params/layers/2/extra/1")->is_dict());
  CHECK(templ.find("opt/mu")->is_list());
  restore_checkpoint(*engine, tmp / "c", templ);
  CHECK(test::trees_equal(t, templ));
}

TEST_CASE("checkpoint metadata round trips through restore and read_metadata") {
  auto engine = io::make_engine();
  TempDir tmp;
  json::object meta = json::parse(R"({
      "step": 1200, "loss": 0.125, "name": "run \"α\"", "done": false, "none": null,
      "tags": ["a", "b", 3], "nested": {"lr": [1e-4, 2e-5], "big": 18446744073709551615}})")
                          .as_object();
  save_checkpoint(*engine, tmp / "c", small_tree(), meta);
  CHECK(read_metadata(tmp / "c") == meta);
  Tree back = test::zeros_like(small_tree());
  CHECK(restore_checkpoint(*engine, tmp / "c", back) == meta);
  CHECK(json::parse(test::read_file(tmp / "c/metadata.json")) == meta);
}

TEST_CASE("checkpoint stores extra files beside the metadata, under the manifest's checksum") {
  auto engine = io::make_engine();
  TempDir tmp;
  WriteOptions write;
  write.extra_files = {{"job.json", R"({"key": "train"})"}, {"config.json", R"({"lr": 0.1})"}};
  save_checkpoint(*engine, tmp / "c", small_tree(), {}, write);
  CHECK(test::read_file(tmp / "c/job.json") == R"({"key": "train"})");
  CHECK(test::read_file(tmp / "c/config.json") == R"({"lr": 0.1})");
  Manifest m = read_manifest(tmp / "c");
  CHECK(m.json_file("job.json") != nullptr);
  CHECK(m.json_file("config.json") != nullptr);
  CHECK(read_checked_file(tmp / "c", m, "config.json") == R"({"lr": 0.1})");
  CHECK(verify_checkpoint(*engine, tmp / "c").ok());

  test::flip_byte(tmp / "c/job.json", 3);
  auto e = catch_error([&] { read_checked_file(tmp / "c", m, "job.json"); });
  REQUIRE(e);
  CHECK(e->code() == Errc::corrupt);
  CHECK(contains(e->what(), tmp / "c/job.json"));
  VerifyReport report = verify_checkpoint(*engine, tmp / "c");
  REQUIRE_FALSE(report.ok());
  CHECK(contains(report.problems.front(), tmp / "c/job.json"));
}

TEST_CASE("save rejects extra file names that collide with checkpoint files or escape") {
  auto engine = io::make_engine();
  TempDir tmp;
  for (const char* bad : {"manifest.ckpt", "metadata.json", "data-00001.bin", "a/b.json", "../x",
                          ".hidden", "", "x.tmp-1"}) {
    CAPTURE(bad);
    WriteOptions write;
    write.extra_files = {{bad, "{}"}};
    auto e = catch_error([&] { save_checkpoint(*engine, tmp / "c", small_tree(), {}, write); });
    REQUIRE(e);
    CHECK(e->code() == Errc::invalid_argument);
  }
  CHECK(test::list_dir(tmp.path()).empty());
}

TEST_CASE("save accepts read-only views as its source") {
  auto engine = io::make_engine();
  const std::vector<std::int32_t> values{1, -2, 3, -4};
  Tree t;
  t["v"] = Array::view(std::span<const std::int32_t>(values), {2, 2});
  check_round_trip(*engine, t);
}

TEST_CASE("save over an existing checkpoint replaces it completely") {
  auto engine = io::make_engine();
  TempDir tmp;
  const std::string dir = tmp / "run/ckpt";
  Tree a;
  a["x"] = Array::zeros(DType::f32, {50000});
  a["y"] = Array::zeros(DType::u8, {10});
  fill_tree(a, 7);
  save_checkpoint(*engine, dir, a, {{"step", 1}});
  Tree b;
  b["z"] = Array::zeros(DType::i16, {7});
  fill_tree(b, 8);
  WriteOptions write;
  write.extra_files = {{"job.json", "{}"}};
  save_checkpoint(*engine, dir, b, {{"step", 2}}, write);

  Tree back = test::zeros_like(b);
  CHECK(restore_checkpoint(*engine, dir, back) == json::object{{"step", 2}});
  CHECK(test::trees_equal(b, back));
  CHECK(test::file_size(dir + "/data-00000.bin") == 4096);
  CHECK(test::list_dir(tmp / "run") == std::vector<std::string>{"ckpt"});
  CHECK(test::list_dir(dir) ==
        std::vector<std::string>{"data-00000.bin", "job.json", "manifest.ckpt", "metadata.json"});
  Tree old_template = test::zeros_like(a);
  auto e = catch_error([&] { restore_checkpoint(*engine, dir, old_template); });
  REQUIRE(e);
  CHECK(e->code() == Errc::mismatch);
  CHECK(verify_checkpoint(*engine, dir).ok());
}

TEST_CASE("restore rejects a template that differs, listing every difference") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree saved;
  saved["a"] = Array::zeros(DType::f32, {4});
  saved["b"] = Array::zeros(DType::i32, {2, 3});
  saved["c"]["only_in_checkpoint"] = Array::zeros(DType::u8, {5});
  saved["d"] = Array::zeros(DType::f64, {1});
  fill_tree(saved, 9);
  save_checkpoint(*engine, tmp / "c", saved, {});

  Tree templ;
  templ["a"] = Array::zeros(DType::f64, {4});                     // dtype differs
  templ["b"] = Array::zeros(DType::i32, {3, 2});                  // shape differs
  templ["d"] = Array::zeros(DType::f64, {1});                     // matches
  templ["e"]["only_in_template"] = Array::zeros(DType::u8, {1});  // not in the checkpoint
  auto e = catch_error([&] { restore_checkpoint(*engine, tmp / "c", templ); });
  REQUIRE(e);
  CHECK(e->code() == Errc::mismatch);
  const std::string what = e->what();
  CAPTURE(what);
  CHECK(contains(what, tmp / "c"));
  CHECK(contains(what, "4 differences"));
  CHECK(contains(what, "'a': dtype float64 in the template, float32 in the checkpoint"));
  CHECK(contains(what, "'b': shape [3, 2] in the template, [2, 3] in the checkpoint"));
  CHECK(contains(what, "'c/only_in_checkpoint'"));
  CHECK(contains(what, "'e/only_in_template'"));
  CHECK_FALSE(contains(what, "'d'"));
  // Nothing was read into the template.
  CHECK(test::trees_equal(templ, test::zeros_like(templ)));
  CHECK(templ.find("d")->array().as<double>()[0] == 0.0);
}

TEST_CASE("restore with partial reads only the template's leaves and ignores the rest") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree saved;
  saved["a"] = Array::zeros(DType::f32, {1000});
  saved["b"] = Array::zeros(DType::u8, {20000});
  saved["c"]["d"] = Array::zeros(DType::i64, {3});
  fill_tree(saved, 10);
  save_checkpoint(*engine, tmp / "c", saved, {{"step", 5}});

  Tree templ;
  templ["c"]["d"] = Array::zeros(DType::i64, {3});
  CHECK(restore_checkpoint(*engine, tmp / "c", templ, true) == json::object{{"step", 5}});
  CHECK(test::has_pattern(templ.find("c/d")->array(), 12));  // seeds follow flattening order

  // Without partial the same template is a mismatch naming what it lacks.
  Tree again = test::zeros_like(templ);
  auto e = catch_error([&] { restore_checkpoint(*engine, tmp / "c", again, false); });
  REQUIRE(e);
  CHECK(e->code() == Errc::mismatch);
  CHECK(contains(e->what(), "'a'"));
  CHECK(contains(e->what(), "'b'"));
  // partial does not excuse a template leaf the checkpoint lacks.
  templ["x"] = Array::zeros(DType::u8, {1});
  auto e2 = catch_error([&] { restore_checkpoint(*engine, tmp / "c", templ, true); });
  REQUIRE(e2);
  CHECK(e2->code() == Errc::mismatch);
  CHECK(contains(e2->what(), "'x'"));
}

TEST_CASE("restore rejects a read-only template view") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree saved;
  saved["v"] = Array::zeros(DType::i32, {4});
  save_checkpoint(*engine, tmp / "c", saved, {});
  const std::vector<std::int32_t> values(4, 7);
  Tree templ;
  templ["v"] = Array::view(std::span<const std::int32_t>(values), {4});
  auto e = catch_error([&] { restore_checkpoint(*engine, tmp / "c", templ); });
  REQUIRE(e);
  CHECK(e->code() == Errc::mismatch);
  CHECK(contains(e->what(), "'v': template array is read-only"));
  CHECK(values[0] == 7);
}

// Corruption: every damaged file is reported by restore (an Error naming it) and by verify (a
// problem naming it, and the leaf for data).
struct Damaged {
  TempDir tmp;
  std::string dir;
  Tree tree;
  Manifest manifest;
  explicit Damaged(io::Engine& engine) : dir(tmp / "run/c"), tree(small_tree()) {
    save_checkpoint(engine, dir, tree, {{"step", 1}, {"note", "intact"}});
    manifest = read_manifest(dir);
    REQUIRE(verify_checkpoint(engine, dir).ok());
  }
  const ExtentInfo& extent(const std::string& path) const {
    for (const auto& l : manifest.leaves) {
      if (l.path == path) return l.extents.at(0);
    }
    FAIL("no leaf " << path);
    throw;
  }
  // restore must fail with `code`, naming `file` (and `leaf` when given); so must verify.
  void check_detected(io::Engine& engine, Errc code, const std::string& file,
                      const std::string& leaf = {}) {
    Tree back = test::zeros_like(tree);
    auto e = catch_error([&] { restore_checkpoint(engine, dir, back); });
    REQUIRE(e);
    CHECK(e->code() == code);
    CHECK_MESSAGE(contains(e->what(), file), e->what());
    if (!leaf.empty()) CHECK_MESSAGE(contains(e->what(), "'" + leaf + "'"), e->what());
    VerifyReport report = verify_checkpoint(engine, dir);
    REQUIRE_FALSE(report.ok());
    bool named = false;
    for (const auto& p : report.problems) {
      named = named || (contains(p, file) && (leaf.empty() || contains(p, "'" + leaf + "'")));
    }
    CHECK_MESSAGE(named, report.problems.front());
  }
};

TEST_CASE_TEMPLATE("restore and verify detect a flipped byte in the data file", Driver, UringDriver,
                   ThreadDriver) {
  auto engine = make_driver(Driver::kind);
  if (!engine) return;
  Damaged d(*engine);
  const std::string data = d.dir + "/data-00000.bin";
  test::flip_byte(data, d.extent("params/w").offset + 5000);  // in its second 4096-byte block
  d.check_detected(*engine, Errc::corrupt, data, "params/w");
}

TEST_CASE_TEMPLATE("restore and verify detect a flipped byte in the padding at the end of the file",
                   Driver, UringDriver, ThreadDriver) {
  auto engine = make_driver(Driver::kind);
  if (!engine) return;
  Damaged d(*engine);
  const std::string data = d.dir + "/data-00000.bin";
  // 8000 + 40 + 8 bytes of leaves, packed, then zeros up to 8192, all in one block.
  REQUIRE(test::file_size(data) == 8192);
  test::flip_byte(data, 8191);
  d.check_detected(*engine, Errc::corrupt, data, "params/w");
}

TEST_CASE_TEMPLATE("restore and verify detect a truncated or extended data file", Driver,
                   UringDriver, ThreadDriver) {
  auto engine = make_driver(Driver::kind);
  if (!engine) return;
  Damaged d(*engine);
  const std::string data = d.dir + "/data-00000.bin";
  const std::uint64_t size = test::file_size(data);
  for (std::uint64_t new_size : {size - 4096, size - 1, std::uint64_t{0}, size + 4096}) {
    CAPTURE(new_size);
    test::truncate_file(data, new_size);
    d.check_detected(*engine, Errc::corrupt, data);
  }
}

TEST_CASE("restore and verify detect a missing data file") {
  auto engine = io::make_engine();
  Damaged d(*engine);
  fs::remove(d.dir + "/data-00000.bin");
  d.check_detected(*engine, Errc::not_found, d.dir + "/data-00000.bin");
}

TEST_CASE("restore and verify detect a flipped byte in manifest.ckpt") {
  auto engine = io::make_engine();
  Damaged d(*engine);
  const std::string manifest = d.dir + "/manifest.ckpt";
  test::flip_byte(manifest, test::file_size(manifest) / 2);
  d.check_detected(*engine, Errc::corrupt, manifest);
  CHECK(catch_error([&] { read_metadata(d.dir); }).has_value());
}

TEST_CASE("restore and verify detect a flipped byte in metadata.json") {
  auto engine = io::make_engine();
  Damaged d(*engine);
  const std::string metadata = d.dir + "/metadata.json";
  test::flip_byte(metadata, 3);
  d.check_detected(*engine, Errc::corrupt, metadata);
  auto e = catch_error([&] { read_metadata(d.dir); });
  REQUIRE(e);
  CHECK(contains(e->what(), metadata));
}

TEST_CASE("restore of a missing directory or one without a manifest is not_found naming it") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree templ;
  for (const std::string& dir : {tmp / "nope", tmp.path()}) {
    CAPTURE(dir);
    auto e = catch_error([&] { restore_checkpoint(*engine, dir, templ); });
    REQUIRE(e);
    CHECK(e->code() == Errc::not_found);
    CHECK(contains(e->what(), dir));
    auto m = catch_error([&] { read_metadata(dir); });
    REQUIRE(m);
    CHECK(m->code() == Errc::not_found);
    VerifyReport report = verify_checkpoint(*engine, dir);
    REQUIRE_FALSE(report.ok());
    CHECK(contains(report.problems.front(), dir));
  }
}

TEST_CASE("a leftover temporary directory is never listed and cannot be restored") {
  auto engine = io::make_engine();
  TempDir tmp;
  const std::string run = tmp / "run";
  save_checkpoint(*engine, run + "/step_1", small_tree(), {{"step", 1}});
  // The worst case: a complete copy that a crash left just before its rename.
  fs::copy(run + "/step_1", run + "/step_2.tmp-123-0-1", fs::copy_options::recursive);
  // And an unfinished one: a data file, no manifest.
  fs::create_directories(run + "/step_3.tmp-9");
  test::write_file(run + "/step_3.tmp-9/data-00000.bin", std::string(4096, 'x'));

  auto list = list_checkpoints(run);
  REQUIRE(list.size() == 1);
  CHECK(list[0].suffix == "step_1");

  for (const std::string& leftover :
       {run + "/step_2.tmp-123-0-1", run + "/step_3.tmp-9", run + "/step_2.tmp-123-0-1/"}) {
    CAPTURE(leftover);
    Tree back = test::zeros_like(small_tree());
    auto e = catch_error([&] { restore_checkpoint(*engine, leftover, back); });
    REQUIRE(e);
    CHECK(e->code() == Errc::not_found);
    std::string named = leftover;
    if (named.back() == '/') named.pop_back();
    CHECK(contains(e->what(), named));
    CHECK_FALSE(verify_checkpoint(*engine, leftover).ok());
  }
}

TEST_CASE("list_checkpoints finds nested suffixes ordered by step from metadata") {
  auto engine = io::make_engine();
  TempDir tmp;
  const std::string run = tmp / "run";
  CHECK(list_checkpoints(run).empty());  // no directory yet
  save_checkpoint(*engine, run + "/step/100", small_tree(), {{"step", 100}});
  save_checkpoint(*engine, run + "/step/20", small_tree(), {{"step", 20}});
  save_checkpoint(*engine, run + "/best", small_tree(), {{"note", "no step"}});
  fs::create_directories(run + "/empty/dir");
  fs::create_directory_symlink(run + "/step/100", run + "/link");
  write_latest(run, "step/100");

  auto list = list_checkpoints(run);
  REQUIRE(list.size() == 3);
  CHECK(list[0].suffix == "best");
  CHECK_FALSE(list[0].step.has_value());
  CHECK(list[1].suffix == "step/20");
  CHECK(list[1].step == 20);
  CHECK(list[2].suffix == "step/100");
  CHECK(list[2].step == 100);
  CHECK(list[2].path == run + "/step/100");
  Manifest m = read_manifest(run + "/step/100");
  for (const auto& info : list) {
    CAPTURE(info.suffix);
    CHECK(info.error.empty());
    CHECK(info.leaves == 3);
    CHECK(info.bytes == m.total_bytes);
    CHECK(info.stored_bytes == m.stored_bytes());
    CHECK(info.created_unix_ns > 0);
  }
}

TEST_CASE("list_checkpoints flags a checkpoint whose manifest cannot be read") {
  auto engine = io::make_engine();
  TempDir tmp;
  save_checkpoint(*engine, tmp / "run/good", small_tree(), {{"step", 1}});
  fs::create_directories(tmp / "run/bad");
  test::write_file(tmp / "run/bad/manifest.ckpt", "not a manifest");
  auto list = list_checkpoints(tmp / "run");
  REQUIRE(list.size() == 2);
  for (const auto& info : list) {
    CAPTURE(info.suffix);
    CHECK(info.error.empty() == (info.suffix == "good"));
  }
}

TEST_CASE("write_latest and read_latest round trip the suffix atomically") {
  TempDir tmp;
  const std::string run = tmp.path();
  CHECK_FALSE(read_latest(run).has_value());
  write_latest(run, "step/100");
  CHECK(read_latest(run) == "step/100");
  CHECK(test::read_file(run + "/latest") == "step/100\n");
  write_latest(run, "step/200");
  CHECK(read_latest(run) == "step/200");
  CHECK(test::list_dir(run) == std::vector<std::string>{"latest"});

  auto e = catch_error([&] { write_latest(run, "../elsewhere"); });
  REQUIRE(e);
  CHECK(e->code() == Errc::path_escape);
  CHECK(read_latest(run) == "step/200");

  test::write_file(run + "/latest", "/etc/passwd\n");
  auto bad = catch_error([&] { (void)read_latest(run); });
  REQUIRE(bad);
  CHECK(bad->code() == Errc::corrupt);
  CHECK(contains(bad->what(), run + "/latest"));
}

TEST_CASE("check_suffix accepts plain relative paths and rejects everything else") {
  for (const char* good : {"a", "step/100", "a.b", "step_1/x-y", "latest2"}) {
    CAPTURE(good);
    CHECK_NOTHROW(check_suffix(good));
  }
  struct Bad {
    const char* suffix;
    Errc code;
  };
  for (const Bad& bad :
       {Bad{"/abs", Errc::path_escape}, Bad{"a/../b", Errc::path_escape},
        Bad{"..", Errc::path_escape}, Bad{"../a", Errc::path_escape},
        Bad{"", Errc::invalid_argument}, Bad{"x.tmp-1", Errc::invalid_argument},
        Bad{"step/x.tmp-1", Errc::invalid_argument}, Bad{"latest", Errc::invalid_argument},
        Bad{".", Errc::invalid_argument}, Bad{"a//b", Errc::invalid_argument},
        Bad{"a/", Errc::invalid_argument}, Bad{"./a", Errc::invalid_argument}}) {
    CAPTURE(bad.suffix);
    auto e = catch_error([&] { check_suffix(bad.suffix); });
    REQUIRE(e);
    CHECK(e->code() == bad.code);
  }
}

TEST_CASE("save under a regular file fails and leaves nothing behind") {
  auto engine = io::make_engine();
  TempDir tmp;
  test::write_file(tmp / "file", "content");
  for (const std::string& dir : {tmp / "file/ckpt", tmp / "file/deeper/ckpt"}) {
    CAPTURE(dir);
    auto e = catch_error([&] { save_checkpoint(*engine, dir, small_tree(), {}); });
    REQUIRE(e);
    CHECK(contains(e->what(), tmp / "file"));
  }
  CHECK(test::list_dir(tmp.path()) == std::vector<std::string>{"file"});
  CHECK(test::read_file(tmp / "file") == "content");
}

TEST_CASE("save into a read-only parent directory fails and leaves nothing behind") {
  if (::geteuid() == 0) {
    MESSAGE("skipped: root ignores directory permissions (the regular-file case covers this)");
    return;
  }
  auto engine = io::make_engine();
  TempDir tmp;
  fs::create_directories(tmp / "ro");
  fs::permissions(tmp / "ro", fs::perms::owner_read | fs::perms::owner_exec);
  auto e = catch_error([&] { save_checkpoint(*engine, tmp / "ro/ckpt", small_tree(), {}); });
  fs::permissions(tmp / "ro", fs::perms::owner_all);
  REQUIRE(e);
  CHECK(contains(e->what(), tmp / "ro"));
  CHECK(test::list_dir(tmp / "ro").empty());
}

TEST_CASE("save rejects a directory path that names no checkpoint") {
  auto engine = io::make_engine();
  for (const char* dir : {"", "/", "."}) {
    CAPTURE(dir);
    auto e = catch_error([&] { save_checkpoint(*engine, dir, small_tree(), {}); });
    REQUIRE(e);
    CHECK(e->code() == Errc::invalid_argument);
  }
}

}  // namespace
}  // namespace ckpt
