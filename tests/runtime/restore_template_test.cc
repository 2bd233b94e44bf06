// Restore matches the template's shape of tree against the checkpoint's, node by node: kinds at
// every level, empty subtrees, leaves against subtrees, and template leaves that alias memory.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <boost/json.hpp>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "io/engine.h"
#include "io/error.h"
#include "runtime/checkpoint.h"
#include "tests/test_util.h"

namespace ckpt {
namespace {

namespace json = boost::json;
using test::catch_error;
using test::contains;
using test::TempDir;

Array leaf(std::uint64_t n = 4) { return Array::zeros(DType::f32, {n}); }

// Saves `tree` with every leaf filled by its own pattern (seed + flattening index).
void save_filled(io::Engine& engine, const std::string& dir, const Tree& tree,
                 std::uint64_t seed = 1) {
  tree.for_each_leaf([&](const std::string&, const Array& a) {
    if (a.nbytes() != 0) test::fill_pattern(a, seed++);
  });
  save_checkpoint(engine, dir, tree, {{"step", 1}});
}

// Restores and returns the mismatch error's message; fails the test unless it is one.
std::string mismatch_of(io::Engine& engine, const std::string& dir, Tree& templ, bool partial) {
  auto e = catch_error([&] { restore_checkpoint(engine, dir, templ, partial); });
  REQUIRE_MESSAGE(e, "restore accepted the template");
  CHECK(e->code() == Errc::mismatch);
  return e->what();
}

bool untouched(const Tree& t) { return test::trees_equal(t, test::zeros_like(t)); }

TEST_CASE("restore rejects a dict template for a list checkpoint with the same leaf paths") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree saved;
  saved["a"] = Tree::list();
  saved["a"].push_back(leaf());
  save_filled(*engine, tmp / "c", saved);

  Tree templ;
  templ["a"]["0"] = leaf();  // flattens to "a/0" as well
  for (bool partial : {false, true}) {
    CAPTURE(partial);
    std::string what = mismatch_of(*engine, tmp / "c", templ, partial);
    CAPTURE(what);
    CHECK(contains(what, "1 difference)"));
    CHECK(
        contains(what, "'a': a dict of 1 key in the template, a list of 1 item in the checkpoint"));
    CHECK(untouched(templ));
  }
}

TEST_CASE("restore rejects a list template for a dict checkpoint") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree saved;
  saved["a"]["0"] = leaf();
  saved["a"]["1"] = leaf();
  save_filled(*engine, tmp / "c", saved);

  Tree templ;
  templ["a"] = Tree::list();
  templ["a"].push_back(leaf());
  templ["a"].push_back(leaf());
  for (bool partial : {false, true}) {
    CAPTURE(partial);
    std::string what = mismatch_of(*engine, tmp / "c", templ, partial);
    CAPTURE(what);
    CHECK(contains(what,
                   "'a': a list of 2 items in the template, a dict of 2 keys in the checkpoint"));
    // The leaves below the differing node are not listed again.
    CHECK_FALSE(contains(what, "'a/0'"));
    CHECK(untouched(templ));
  }
}

TEST_CASE("restore compares the kinds of the roots") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree saved = Tree::list();
  saved.push_back(leaf());
  saved.push_back(leaf(2));
  save_filled(*engine, tmp / "list", saved);

  Tree as_dict;
  as_dict["0"] = leaf();
  as_dict["1"] = leaf(2);
  std::string what = mismatch_of(*engine, tmp / "list", as_dict, false);
  CHECK(contains(what,
                 "(root): a dict of 2 keys in the template, a list of 2 items in the checkpoint"));
  // An empty dict template names the root as a dict: partial does not excuse that.
  Tree empty;
  what = mismatch_of(*engine, tmp / "list", empty, true);
  CHECK(
      contains(what, "(root): an empty dict in the template, a list of 2 items in the checkpoint"));
  // The right kind, empty, with partial: reads nothing and succeeds.
  Tree empty_list = Tree::list();
  CHECK(restore_checkpoint(*engine, tmp / "list", empty_list, true) == json::object{{"step", 1}});

  Tree root_leaf(leaf());
  save_filled(*engine, tmp / "leaf", root_leaf);
  what = mismatch_of(*engine, tmp / "leaf", empty, true);
  CHECK(contains(what,
                 "(root): an empty dict in the template, a leaf (float32 [4]) in the checkpoint"));
  Tree back(leaf());
  restore_checkpoint(*engine, tmp / "leaf", back);
  CHECK(test::has_pattern(back.array(), 1));
}

TEST_CASE("restore rejects a template leaf where the checkpoint has a subtree, and the reverse") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree saved;
  saved["a"]["x"] = leaf();
  saved["b"] = leaf();
  save_filled(*engine, tmp / "c", saved);

  Tree templ;
  templ["a"] = leaf();       // a leaf where the checkpoint has a dict
  templ["b"]["x"] = leaf();  // a dict where the checkpoint has a leaf
  for (bool partial : {false, true}) {
    CAPTURE(partial);
    std::string what = mismatch_of(*engine, tmp / "c", templ, partial);
    CAPTURE(what);
    CHECK(contains(what, "2 differences"));
    CHECK(contains(what,
                   "'a': a leaf (float32 [4]) in the template, a dict of 1 key in the checkpoint"));
    CHECK(contains(what,
                   "'b': a dict of 1 key in the template, a leaf (float32 [4]) in the checkpoint"));
  }
}

TEST_CASE(
    "restore rejects an empty template subtree where the checkpoint has one with leaves, unless "
    "partial") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree saved;
  saved["a"]["b"] = leaf();
  saved["w"] = leaf();
  save_filled(*engine, tmp / "c", saved);

  Tree templ;
  templ["a"] = Tree::dict();
  templ["w"] = leaf();
  std::string what = mismatch_of(*engine, tmp / "c", templ, false);
  CHECK(contains(what, "'a/b': in the checkpoint (float32 [4]), not in the template"));
  CHECK(untouched(templ));
  // partial: the empty dict names "a" as a dict, and it is one.
  CHECK(restore_checkpoint(*engine, tmp / "c", templ, true) == json::object{{"step", 1}});
  CHECK(test::has_pattern(templ.find("w")->array(), 2));
  // An empty list is not an empty dict, partial or not.
  Tree as_list;
  as_list["a"] = Tree::list();
  as_list["w"] = leaf();
  what = mismatch_of(*engine, tmp / "c", as_list, true);
  CHECK(contains(what, "'a': an empty list in the template, a dict of 1 key in the checkpoint"));
}

TEST_CASE("restore rejects an empty checkpoint subtree the template lacks or shapes differently") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree saved;
  saved["empty"] = Tree::list();
  saved["w"] = leaf();
  save_filled(*engine, tmp / "c", saved);

  Tree lacks;
  lacks["w"] = leaf();
  std::string what = mismatch_of(*engine, tmp / "c", lacks, false);
  CHECK(contains(what, "1 difference)"));
  CHECK(contains(what, "'empty': an empty list in the checkpoint, not in the template"));
  CHECK(restore_checkpoint(*engine, tmp / "c", lacks, true) == json::object{{"step", 1}});

  Tree as_dict;
  as_dict["empty"] = Tree::dict();
  as_dict["w"] = leaf();
  for (bool partial : {false, true}) {
    what = mismatch_of(*engine, tmp / "c", as_dict, partial);
    CHECK(
        contains(what, "'empty': an empty dict in the template, an empty list in the checkpoint"));
  }
  Tree with_items;
  with_items["empty"] = Tree::list();
  with_items["empty"].push_back(leaf());
  with_items["w"] = leaf();
  for (bool partial : {false, true}) {
    what = mismatch_of(*engine, tmp / "c", with_items, partial);
    CHECK(contains(what, "'empty/0': not in the checkpoint"));
  }

  Tree same;
  same["empty"] = Tree::list();
  same["w"] = leaf();
  CHECK(restore_checkpoint(*engine, tmp / "c", same) == json::object{{"step", 1}});
  CHECK(test::has_pattern(same.find("w")->array(), 1));
}

TEST_CASE("restore rejects an empty template subtree the checkpoint lacks, even with partial") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree saved;
  saved["w"] = leaf();
  save_filled(*engine, tmp / "c", saved);

  Tree templ;
  templ["extra"]["deeper"] = Tree::list();
  templ["w"] = leaf();
  for (bool partial : {false, true}) {
    std::string what = mismatch_of(*engine, tmp / "c", templ, partial);
    CHECK(contains(what, "'extra/deeper': an empty list in the template, not in the checkpoint"));
  }
}

TEST_CASE("partial restore of a list reads the items the template names") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree saved;
  saved["l"] = Tree::list();
  for (int i = 0; i < 3; ++i) saved["l"].push_back(leaf());
  save_filled(*engine, tmp / "c", saved);

  Tree templ;
  templ["l"] = Tree::list();
  templ["l"].push_back(leaf());
  CHECK(restore_checkpoint(*engine, tmp / "c", templ, true) == json::object{{"step", 1}});
  CHECK(test::has_pattern(templ.find("l/0")->array(), 1));

  Tree again = test::zeros_like(templ);
  std::string what = mismatch_of(*engine, tmp / "c", again, false);
  CHECK(contains(what, "2 differences"));
  CHECK(contains(what, "'l/1': in the checkpoint (float32 [4]), not in the template"));
  CHECK(contains(what, "'l/2': in the checkpoint"));

  Tree longer = test::zeros_like(saved);
  longer["l"].push_back(leaf());
  what = mismatch_of(*engine, tmp / "c", longer, true);
  CHECK(contains(what, "'l/3': not in the checkpoint"));
}

TEST_CASE("restore lists every structural and leaf difference in one error") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree saved;
  saved["a"] = Tree::list();
  saved["a"].push_back(leaf());
  saved["b"]["x"] = leaf();
  saved["c"] = Array::zeros(DType::i32, {2});
  saved["d"] = Tree::dict();
  save_filled(*engine, tmp / "c", saved);

  Tree templ;
  templ["a"]["0"] = leaf();                                          // dict for list
  templ["b"] = leaf();                                               // leaf for dict
  templ["c"] = Array::zeros(DType::f32, {2});                        // dtype
  templ["e"] = Tree::list();                                         // empty, not in the checkpoint
  std::string what = mismatch_of(*engine, tmp / "c", templ, false);  // and 'd' is missing
  CAPTURE(what);
  CHECK(contains(what, "5 differences"));
  CHECK(contains(what, "'a': a dict of 1 key in the template, a list of 1 item in the checkpoint"));
  CHECK(contains(what,
                 "'b': a leaf (float32 [4]) in the template, a dict of 1 key in the checkpoint"));
  CHECK(contains(what, "'c': dtype float32 in the template, int32 in the checkpoint"));
  CHECK(contains(what, "'d': an empty dict in the checkpoint, not in the template"));
  CHECK(contains(what, "'e': an empty list in the template, not in the checkpoint"));
  CHECK(contains(what, tmp / "c"));
}

TEST_CASE("restore rejects two template leaves aliasing one buffer, naming both") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree saved;
  saved["a"] = leaf(8);
  saved["b"] = leaf(4);
  saved["c"] = leaf(4);
  save_filled(*engine, tmp / "c", saved);

  SUBCASE("overlapping views") {
    std::vector<float> buffer(16, 0.0f);
    Tree templ;
    templ["a"] = Array::view(DType::f32, {8}, buffer.data());
    templ["b"] = Array::view(DType::f32, {4}, buffer.data() + 6);   // overlaps a's last two
    templ["c"] = Array::view(DType::f32, {4}, buffer.data() + 10);  // adjacent to b: fine
    for (bool partial : {false, true}) {
      std::string what = mismatch_of(*engine, tmp / "c", templ, partial);
      CAPTURE(what);
      CHECK(contains(what, "1 difference)"));
      CHECK(contains(what, "'a' and 'b': template arrays share memory"));
      CHECK(std::all_of(buffer.begin(), buffer.end(), [](float v) { return v == 0.0f; }));
    }
  }
  SUBCASE("overlapping views in descending address order") {
    // The spans come unsorted (the check sorts them only then): the overlap is still found.
    std::vector<float> buffer(16, 0.0f);
    Tree templ;
    templ["a"] = Array::view(DType::f32, {8}, buffer.data() + 6);
    templ["b"] = Array::view(DType::f32, {4}, buffer.data() + 2);  // adjacent to a: fine
    templ["c"] = Array::view(DType::f32, {4}, buffer.data());      // overlaps b's first two
    std::string what = mismatch_of(*engine, tmp / "c", templ, false);
    CAPTURE(what);
    CHECK(contains(what, "1 difference)"));
    CHECK(contains(what, "'b' and 'c': template arrays share memory"));
    CHECK(std::all_of(buffer.begin(), buffer.end(), [](float v) { return v == 0.0f; }));
  }
  SUBCASE("one array placed twice") {
    Tree templ;
    templ["a"] = leaf(8);
    Array shared = leaf(4);
    templ["b"] = shared;
    templ["c"] = shared;
    std::string what = mismatch_of(*engine, tmp / "c", templ, false);
    CHECK(contains(what, "'b' and 'c': template arrays share memory"));
  }
  SUBCASE("adjacent views of one buffer restore") {
    std::vector<float> buffer(16, 0.0f);
    Tree templ;
    templ["a"] = Array::view(DType::f32, {8}, buffer.data());
    templ["b"] = Array::view(DType::f32, {4}, buffer.data() + 8);
    templ["c"] = Array::view(DType::f32, {4}, buffer.data() + 12);
    restore_checkpoint(*engine, tmp / "c", templ);
    CHECK(test::trees_equal(templ, saved));
  }
}

TEST_CASE("a restore of a large manifest finds aliased template leaves as a small one does") {
  // 10,000 leaves make a manifest over 1 MiB: the aliasing check then runs on a thread beside
  // the decode (runtime/reader.cc). Same problems, same order, nothing written.
  auto engine = io::make_engine();
  TempDir tmp;
  constexpr std::size_t kLeaves = 10000;
  Tree saved;
  for (std::size_t i = 0; i < kLeaves; ++i) saved[fmt::format("l{:05}", i)] = leaf(4);
  save_filled(*engine, tmp / "c", saved);
  REQUIRE(std::filesystem::file_size(tmp / "c/manifest.ckpt") >= (1u << 20));

  std::vector<float> buffer(4 * kLeaves, 0.0f);
  Tree templ;
  for (std::size_t i = 0; i < kLeaves; ++i) {
    // Leaf 5001 starts two floats early, inside leaf 5000; leaf 2 is missing its dtype.
    const std::size_t at = i == 5001 ? 4 * i - 2 : 4 * i;
    templ[fmt::format("l{:05}", i)] =
        Array::view(i == 2 ? DType::i32 : DType::f32, {4}, buffer.data() + at);
  }
  for (bool partial : {false, true}) {
    std::string what = mismatch_of(*engine, tmp / "c", templ, partial);
    CAPTURE(what);
    CHECK(contains(what, "(2 differences)"));
    // The match's problems first, then the aliasing check's.
    const auto dtype =
        what.find("'l00002': dtype int32 in the template, float32 in the checkpoint");
    const auto shared = what.find("'l05000' and 'l05001': template arrays share memory");
    CHECK(dtype != std::string::npos);
    CHECK(shared != std::string::npos);
    CHECK(dtype < shared);
    CHECK(std::all_of(buffer.begin(), buffer.end(), [](float v) { return v == 0.0f; }));
  }
}

TEST_CASE("make_template and verify keep working on trees with lists and empty subtrees") {
  auto engine = io::make_engine();
  TempDir tmp;
  Tree saved;
  saved["layers"] = Tree::list();
  saved["layers"].push_back(Tree::dict());
  saved["layers"].at(0)["w"] = leaf(3);
  saved["layers"].push_back(Tree::list());
  saved["opt"]["state"] = Tree::dict();
  saved["step"] = Array::zeros(DType::i64, {});
  save_filled(*engine, tmp / "c", saved);

  CHECK(verify_checkpoint(*engine, tmp / "c").ok());
  Tree templ = make_template(read_manifest(tmp / "c"));
  CHECK(templ.at("layers").is_list());
  CHECK(templ.at("layers").at(1).is_list());
  CHECK(templ.at("opt").at("state").is_dict());
  CHECK(restore_checkpoint(*engine, tmp / "c", templ) == json::object{{"step", 1}});
  CHECK(test::trees_equal(templ, saved));
}

}  // namespace
}  // namespace ckpt
