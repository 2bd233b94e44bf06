// The tree model: dicts, lists, leaves, flattening and paths; and Array.
#include "runtime/tree.h"

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "io/error.h"
#include "runtime/array.h"
#include "runtime/dtype.h"
#include "tests/test_util.h"

namespace ckpt {
namespace {

using test::catch_error;

std::vector<std::string> paths_of(const Tree& t) {
  std::vector<std::string> out;
  for (const auto& [path, array] : t.flatten()) out.push_back(path);
  return out;
}

TEST_CASE("tree dict keys are kept sorted whatever the insertion order") {
  Tree t;
  t["zeta"] = Array::zeros(DType::f32, {1});
  t["alpha"] = Array::zeros(DType::f32, {1});
  t["mid"] = Array::zeros(DType::f32, {1});
  t["Beta"] = Array::zeros(DType::f32, {1});
  CHECK(t.keys() == std::vector<std::string>{"Beta", "alpha", "mid", "zeta"});
  CHECK(paths_of(t) == std::vector<std::string>{"Beta", "alpha", "mid", "zeta"});
  // operator[] on an existing key returns the same child.
  t["mid"] = Array::zeros(DType::i8, {2});
  CHECK(t.size() == 4);
  CHECK(t.at("mid").array().dtype() == DType::i8);
}

TEST_CASE("tree flattens depth-first in key and index order with slash-joined paths") {
  Tree t;
  Tree& layers = t["params"]["layers"] = Tree::list();
  for (int i = 0; i < 4; ++i) {
    Tree layer;
    layer["w"] = Array::zeros(DType::f32, {2, 2});
    layer["b"] = Array::zeros(DType::f32, {2});
    layers.push_back(std::move(layer));
  }
  t["params"]["embed"] = Array::zeros(DType::bf16, {8, 4});
  t["opt"]["step"] = Array::zeros(DType::i64, {});
  Tree& nested = t["opt"]["mu"] = Tree::list();
  nested.push_back(Tree::list()).push_back(Array::zeros(DType::f32, {3}));
  nested.push_back(Array::zeros(DType::u8, {1}));

  std::vector<std::string> want{
      "opt/mu/0/0",        "opt/mu/1",          "opt/step",          "params/embed",
      "params/layers/0/b", "params/layers/0/w", "params/layers/1/b", "params/layers/1/w",
      "params/layers/2/b", "params/layers/2/w", "params/layers/3/b", "params/layers/3/w",
  };
  CHECK(paths_of(t) == want);
  CHECK(t.leaf_count() == want.size());

  std::vector<std::string> visited;
  t.for_each_leaf([&](const std::string& p, const Array&) { visited.push_back(p); });
  CHECK(visited == want);

  const Tree* w3 = t.find("params/layers/3/w");
  REQUIRE(w3 != nullptr);
  CHECK(w3->is_leaf());
  CHECK(w3->array().shape() == Shape{2, 2});
  CHECK(t.find("params/layers/3") != nullptr);
  CHECK(t.find("params/layers/3")->is_dict());
  CHECK(t.find("") == &t);
  CHECK(t.find("params/layers/4/w") == nullptr);
  CHECK(t.find("params/layers/x/w") == nullptr);
  CHECK(t.find("params/layers/-1/w") == nullptr);
  CHECK(t.find("params/layers/3/w/extra") == nullptr);
  CHECK(t.find("params/nothing") == nullptr);
  CHECK(t.find("opt/mu/0/0") != nullptr);
}

TEST_CASE("tree lists keep insertion order and index access checks bounds") {
  Tree l = Tree::list();
  CHECK(l.is_list());
  for (int i = 0; i < 12; ++i)
    l.push_back(Array::zeros(DType::i32, {static_cast<std::uint64_t>(i)}));
  auto paths = paths_of(l);
  REQUIRE(paths.size() == 12);
  CHECK(paths[0] == "0");
  CHECK(paths[2] == "2");
  CHECK(paths[10] == "10");  // numeric order, not string order
  CHECK(l.at(std::size_t{5}).array().shape() == Shape{5});
  auto e = catch_error([&] { (void)l.at(std::size_t{12}); });
  REQUIRE(e);
  CHECK(e->code() == Errc::not_found);
  CHECK(catch_error([&] { l["key"]; }).has_value());  // not a dict
  Tree d;
  CHECK(catch_error([&] { d.push_back(Tree()); }).has_value());  // not a list
}

TEST_CASE("tree rejects empty keys and keys containing a slash") {
  Tree t;
  for (const char* bad : {"", "a/b", "/", "a/"}) {
    CAPTURE(bad);
    auto e = catch_error([&] { t[bad]; });
    REQUIRE(e);
    CHECK(e->code() == Errc::invalid_argument);
  }
  CHECK(t.size() == 0);
}

TEST_CASE("tree at() and array() report missing keys and non-leaves") {
  Tree t;
  t["a"] = Array::zeros(DType::u8, {1});
  CHECK(t.contains("a"));
  CHECK_FALSE(t.contains("b"));
  auto e = catch_error([&] { (void)t.at("b"); });
  REQUIRE(e);
  CHECK(e->code() == Errc::not_found);
  CHECK(catch_error([&] { (void)t.array(); }).has_value());
  CHECK_NOTHROW((void)t.at("a").array());
}

TEST_CASE("an empty tree has no leaves and a single leaf flattens to the empty path") {
  Tree empty;
  CHECK(empty.is_dict());
  CHECK(empty.leaf_count() == 0);
  CHECK(empty.flatten().empty());
  Tree leaf(Array::zeros(DType::f64, {2}));
  CHECK(leaf.is_leaf());
  CHECK(paths_of(leaf) == std::vector<std::string>{""});
}

TEST_CASE("array views share the caller's memory") {
  std::vector<float> values{1, 2, 3, 4, 5, 6};
  Array a = Array::view(std::span<float>(values), {2, 3});
  CHECK(a.dtype() == DType::f32);
  CHECK(a.shape() == Shape{2, 3});
  CHECK(a.numel() == 6);
  CHECK(a.nbytes() == 24);
  CHECK_FALSE(a.read_only());
  CHECK_FALSE(a.owns_memory());
  CHECK(a.data() == reinterpret_cast<const std::byte*>(values.data()));
  a.as<float>()[4] = 50;
  CHECK(values[4] == 50);
  Array copy = a;  // copies share the memory too
  copy.as<float>()[0] = -1;
  CHECK(values[0] == -1);
}

TEST_CASE("array zeros owns zero-filled memory that its copies share") {
  Array a = Array::zeros(DType::i64, {3, 4});
  CHECK(a.owns_memory());
  CHECK(a.nbytes() == 96);
  for (std::int64_t v : a.as<std::int64_t>()) CHECK(v == 0);
  Array b = a;
  b.as<std::int64_t>()[7] = 42;
  CHECK(a.as<std::int64_t>()[7] == 42);
}

TEST_CASE("a read-only array view can be read but not written") {
  const std::vector<std::int32_t> values{1, 2, 3};
  Array a = Array::view(std::span<const std::int32_t>(values), {3});
  CHECK(a.read_only());
  CHECK(a.dtype() == DType::i32);
  CHECK(std::memcmp(a.data(), values.data(), 12) == 0);
  auto e = catch_error([&] { (void)a.mutable_data(); });
  REQUIRE(e);
  CHECK(e->code() == Errc::invalid_argument);
  CHECK(catch_error([&] { (void)a.as<std::int32_t>(); }).has_value());
}

TEST_CASE("array scalar and empty shapes have the right sizes") {
  Array scalar = Array::zeros(DType::f16, {});
  CHECK(scalar.numel() == 1);
  CHECK(scalar.nbytes() == 2);
  Array empty = Array::zeros(DType::f32, {3, 0});
  CHECK(empty.numel() == 0);
  CHECK(empty.nbytes() == 0);
  CHECK(Array::zeros(DType::u8, {0}).nbytes() == 0);
  // A zero-sized view of null memory is fine; a non-empty one is not.
  CHECK_NOTHROW(Array::view(DType::f32, {0}, static_cast<void*>(nullptr)));
  CHECK(catch_error([] { Array::view(DType::f32, {1}, static_cast<void*>(nullptr)); }).has_value());
}

TEST_CASE("array shapes whose size overflows are rejected") {
  const std::uint64_t big = std::uint64_t{1} << 40;
  for (const Shape& shape : {Shape{big, big}, Shape{std::uint64_t{1} << 32, std::uint64_t{1} << 32},
                             Shape{std::numeric_limits<std::uint64_t>::max(), 2}}) {
    CAPTURE(shape_to_string(shape));
    auto e = catch_error([&] { (void)shape_numel(shape); });
    REQUIRE(e);
    CHECK(e->code() == Errc::invalid_argument);
    CHECK(catch_error([&] { Array::zeros(DType::u8, shape); }).has_value());
  }
  // numel fits in 64 bits, the byte count does not fit in an off_t.
  auto e = catch_error([&] { (void)array_nbytes(DType::f64, {std::uint64_t{1} << 61}); });
  REQUIRE(e);
  CHECK(e->code() == Errc::invalid_argument);
  // A zero dimension makes any shape empty, without overflow.
  CHECK(shape_numel({big, big, 0}) == 0);
  CHECK(shape_to_string({2, 3}) == "[2, 3]");
  CHECK(shape_to_string({}) == "[]");
}

TEST_CASE("every dtype has a size and a name that parses back") {
  const std::size_t sizes[kDTypeCount] = {8, 4, 2, 2, 1, 1, 8, 4, 2, 1, 8, 4, 2, 1, 1};
  for (int i = 0; i < kDTypeCount; ++i) {
    auto d = static_cast<DType>(i);
    CAPTURE(to_string(d));
    CHECK(dtype_size(d) == sizes[i]);
    REQUIRE(parse_dtype(to_string(d)).has_value());
    CHECK(*parse_dtype(to_string(d)) == d);
  }
  CHECK(to_string(DType::f32) == "float32");
  CHECK(to_string(DType::bf16) == "bfloat16");
  CHECK(to_string(DType::boolean) == "bool");
  CHECK_FALSE(parse_dtype("float128").has_value());
  CHECK(dtype_size(static_cast<DType>(kDTypeCount)) == 0);
}

}  // namespace
}  // namespace ckpt
