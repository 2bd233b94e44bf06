// "A save that succeeds can always be read back", as a property of the writer. A deterministic
// generator (fixed seeds) makes trees (dict and list nesting up to and beyond kMaxTreeDepth, every
// dtype, ranks 0 to beyond kMaxRank, empty arrays, odd keys) and metadata (nested objects and
// arrays up to and beyond kMaxJsonDepth, non-finite and awkward doubles, uint64 above 2^63,
// unicode and invalid UTF-8, user data that looks like the non-finite encoding). For each case:
// save_checkpoint succeeded => verify_checkpoint passes and restore gives back the structure, the
// bytes and the metadata (doubles bit for bit); save refused => Error(invalid_argument) and
// nothing was written. An oracle written from the limits, with Boost's own parser as the judge of
// UTF-8, says which cases must be refused, so the writer refuses no more than it must either.
// The focused cases below the property are the reported reproductions.
#include <doctest/doctest.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "io/engine.h"
#include "io/error.h"
#include "runtime/checkpoint.h"
#include "runtime/commit.h"
#include "runtime/limits.h"
#include "runtime/runtime.h"
#include "tests/test_util.h"

namespace ckpt {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using test::catch_error;
using test::contains;
using test::TempDir;

// ---- comparison ------------------------------------------------------------------------------

// JSON equality with doubles compared bit for bit (NaN by sign only: its payload is not kept) and
// int64/uint64 compared by value (Boost reads a uint64 below 2^63 back as an int64).
bool same_json(const json::value& a, const json::value& b) {
  if (a.is_double() || b.is_double()) {
    if (!a.is_double() || !b.is_double()) return false;
    double x = a.get_double(), y = b.get_double();
    if (std::isnan(x) || std::isnan(y)) {
      return std::isnan(x) && std::isnan(y) && std::signbit(x) == std::signbit(y);
    }
    return std::memcmp(&x, &y, sizeof x) == 0;
  }
  if (a.is_array() && b.is_array()) {
    const auto &x = a.get_array(), &y = b.get_array();
    if (x.size() != y.size()) return false;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (!same_json(x[i], y[i])) return false;
    }
    return true;
  }
  if (a.is_object() && b.is_object()) {
    const auto &x = a.get_object(), &y = b.get_object();
    if (x.size() != y.size()) return false;
    for (const auto& [k, v] : x) {
      const json::value* w = y.if_contains(k);
      if (w == nullptr || !same_json(v, *w)) return false;
    }
    return true;
  }
  return a == b;
}

bool same_structure(const Tree& a, const Manifest& read) {
  Manifest m;
  describe_structure(a, m);
  if (m.nodes.size() != read.nodes.size()) return false;
  for (std::size_t i = 0; i < m.nodes.size(); ++i) {
    const NodeInfo &x = m.nodes[i], &y = read.nodes[i];
    if (x.kind != y.kind || x.keys != y.keys || x.children != y.children || x.leaf != y.leaf) {
      return false;
    }
  }
  return true;
}

bool same_leaves(const Tree& a, const Tree& b) {
  auto x = a.flatten(), y = b.flatten();
  if (x.size() != y.size()) return false;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const Array &p = x[i].second, &q = y[i].second;
    if (x[i].first != y[i].first || p.dtype() != q.dtype() || p.shape() != q.shape()) return false;
    if (p.nbytes() != 0 && std::memcmp(p.data(), q.data(), p.nbytes()) != 0) return false;
  }
  return true;
}

// ---- the oracle ------------------------------------------------------------------------------

// Whether Boost's parser (the strictest reader there is) accepts `s` as a string.
bool boost_reads_string(std::string_view s) {
  boost::system::error_code ec;
  json::parse(json::serialize(json::value(json::string_view(s.data(), s.size()))), ec);
  return !ec;
}

// Whether metadata.json can hold `v`, `depth` arrays and objects around it, once non-finite
// doubles are tagged objects and objects with the key "$ckpt" are wrapped (docs/design.md).
bool metadata_ok(const json::value& v, std::size_t depth) {
  switch (v.kind()) {
    case json::kind::double_:
      return std::isfinite(v.get_double()) || depth + 1 <= kMaxJsonDepth;
    case json::kind::string:
      return boost_reads_string(v.get_string());
    case json::kind::array:
      if (depth + 1 > kMaxJsonDepth) return false;
      for (const auto& e : v.get_array()) {
        if (!metadata_ok(e, depth + 1)) return false;
      }
      return true;
    case json::kind::object: {
      std::size_t inner = depth + (v.get_object().contains("$ckpt") ? 2 : 1);
      if (inner > kMaxJsonDepth) return false;
      for (const auto& [k, e] : v.get_object()) {
        if (!boost_reads_string(k) || !metadata_ok(e, inner)) return false;
      }
      return true;
    }
    default:
      return true;
  }
}

// Whether readers accept `tree`: no node deeper than kMaxTreeDepth, no array of rank above
// kMaxRank. `about` gets what breaks a limit, for failure messages.
bool tree_ok(const Tree& tree, std::string& about) {
  bool ok = true;
  std::vector<std::pair<const Tree*, std::size_t>> stack{{&tree, 0}};
  std::size_t deepest = 0;
  while (!stack.empty()) {
    auto [node, depth] = stack.back();
    stack.pop_back();
    deepest = std::max(deepest, depth);
    if (node->is_leaf() && node->array().shape().size() > kMaxRank) {
      ok = false;
      about += " rank " + std::to_string(node->array().shape().size());
    }
    for (const Tree& c : node->children()) stack.emplace_back(&c, depth + 1);
  }
  if (deepest > kMaxTreeDepth) ok = false;
  if (deepest >= kMaxTreeDepth - 1) about += " depth " + std::to_string(deepest);
  return ok;
}

// ---- the generator ---------------------------------------------------------------------------

class Gen {
 public:
  explicit Gen(std::uint64_t seed) : rng_(seed) {}

  std::uint64_t below(std::uint64_t n) { return rng_() % n; }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

  struct Case {
    Tree tree;
    json::object metadata;
  };

  Case make() {
    Case c;
    std::size_t nodes = 0;
    c.tree = node(0, nodes);
    if (chance(0.08)) {
      // A chain to a depth around the limit, somewhere in a dict root.
      static constexpr std::size_t kDepths[] = {kMaxTreeDepth - 1, kMaxTreeDepth, kMaxTreeDepth,
                                                kMaxTreeDepth + 1, kMaxTreeDepth + 40};
      std::size_t depth = kDepths[below(std::size(kDepths))];
      if (!c.tree.is_dict()) {
        Tree root;
        root["root"] = std::move(c.tree);
        c.tree = std::move(root);
      }
      Tree* at = &c.tree["chain"];
      for (std::size_t d = 1; d < depth; ++d) {
        if (chance(0.5)) {
          at = &(*at)[key()];
        } else {
          *at = Tree::list();
          at = &at->push_back(Tree());
        }
      }
      // The last node sits at `depth`: a leaf, or an empty dict or list.
      if (chance(0.6)) {
        *at = array();
      } else if (chance(0.5)) {
        *at = Tree::list();
      }
    }
    c.metadata = object(0, 0);
    return c;
  }

 private:
  std::string key() {
    static const std::string kKeys[] = {"a",        "w",      "layer",   "0",
                                        "10",       "-1",     "é",       "日本語",
                                        "a b",      "a.b",    "..",      ".",
                                        "$ckpt",    "NaN",    "\x01ctl", std::string("nul\0x", 5),
                                        "\xff\xfe", "emoji😀", "tab\t",   std::string(300, 'k')};
    if (chance(0.3)) return "k" + std::to_string(below(1000));
    return kKeys[below(std::size(kKeys))];
  }

  Tree array() {
    auto dtype = static_cast<DType>(below(kDTypeCount));
    Shape shape;
    std::uint64_t r = below(1000);
    std::size_t rank = r < 970 ? below(5) : r < 992 ? kMaxRank : r < 997 ? kMaxRank + 1 : 100;
    std::uint64_t numel = 1;
    for (std::size_t i = 0; i < rank; ++i) {
      std::uint64_t d = rank > 8 ? (below(rank) == 0 ? 2 : 1) : below(6);
      if (chance(0.03)) d = 0;  // an empty array
      if (numel * std::max<std::uint64_t>(d, 1) > 4096) d = 1;
      numel *= std::max<std::uint64_t>(d, 1);
      shape.push_back(d);
    }
    Array a = Array::zeros(dtype, shape);
    if (a.nbytes() != 0) test::fill_pattern(a, rng_());
    return a;
  }

  Tree node(std::size_t depth, std::size_t& nodes) {
    ++nodes;
    std::uint64_t r = below(100);
    if (depth == 0 ? r < 5 : (r < 45 || depth >= 6 || nodes > 40)) return array();
    std::size_t n = below(5);
    if (r % 2 == 0) {
      Tree t = Tree::list();
      for (std::size_t i = 0; i < n; ++i) t.push_back(node(depth + 1, nodes));
      return t;
    }
    Tree t;
    for (std::size_t i = 0; i < n; ++i) t[key()] = node(depth + 1, nodes);
    return t;
  }

  std::string text() {
    static const std::string kTexts[] = {
        "",      "plain",    "NaN",           "Infinity", "-Infinity",
        "$ckpt", "é日本語😀", "quote\"back\\", "\x01\x1f", std::string("nul\0", 4)};
    // Not UTF-8 (a surrogate, a stray byte, an overlong NUL, above U+10FFFF), now and then.
    static const std::string kBad[] = {"\xed\xa0\x80", "\xff", "\xc0\x80", "\xf4\x90\x80\x80"};
    if (chance(0.01)) return kBad[below(std::size(kBad))];
    return kTexts[below(std::size(kTexts))];
  }

  double number() {
    static const double kDoubles[] = {std::numeric_limits<double>::quiet_NaN(),
                                      -std::numeric_limits<double>::quiet_NaN(),
                                      std::numeric_limits<double>::infinity(),
                                      -std::numeric_limits<double>::infinity(),
                                      -0.0,
                                      0.1,
                                      0.30000000000000004,
                                      1.3927926388013963e-143,
                                      std::numeric_limits<double>::denorm_min(),
                                      std::numeric_limits<double>::max(),
                                      std::numeric_limits<double>::lowest(),
                                      std::numeric_limits<double>::min()};
    if (chance(0.5)) return kDoubles[below(std::size(kDoubles))];
    std::uint64_t bits = rng_();
    double d = 0;
    std::memcpy(&d, &bits, sizeof d);
    return d;  // any bit pattern, NaNs and infinities included
  }

  json::value value(std::size_t depth, std::size_t budget) {
    std::uint64_t r = below(100);
    if (depth < budget && r < 25)
      return r < 12 ? json::value(object(depth + 1, budget)) : array(depth + 1, budget);
    if (r < 40) return number();
    if (r < 50) return static_cast<std::int64_t>(rng_());
    if (r < 60) return rng_() | (std::uint64_t{1} << 63);  // above 2^63
    if (r < 63) return std::numeric_limits<std::int64_t>::min();
    if (r < 80) return json::string(text());
    if (r < 85) return json::object{{"$ckpt", chance(0.5) ? "NaN" : "object"}};  // looks like a tag
    if (r < 90) return nullptr;
    return chance(0.5);
  }

  json::array array(std::size_t depth, std::size_t budget) {
    json::array a;
    for (std::size_t i = below(4); i > 0; --i) a.push_back(value(depth, budget));
    return a;
  }

  // `depth`: this object's own depth (1 for the metadata object).
  json::object object(std::size_t depth, std::size_t budget) {
    if (depth == 0) {
      // The metadata object: mostly shallow, sometimes nested to around the limit.
      std::uint64_t r = below(100);
      budget = r < 85 ? 4 : r < 97 ? kMaxJsonDepth - 2 + below(4) : kMaxJsonDepth + 4;
      depth = 1;
      json::object o;
      if (r >= 85) o["deep"] = deep(2, budget);
      for (std::size_t i = below(5); i > 0; --i)
        o[chance(0.9) ? json_key() : "$ckpt"] = value(depth, budget);
      return o;
    }
    json::object o;
    for (std::size_t i = below(4); i > 0; --i) o[json_key()] = value(depth, budget);
    return o;
  }

  // A chain of arrays and objects from `depth` down to `budget`, ending in a random scalar.
  json::value deep(std::size_t depth, std::size_t budget) {
    json::value leaf = number();
    for (std::size_t d = budget; d >= depth; --d) {
      if (chance(0.5)) {
        leaf = json::array{std::move(leaf)};
      } else {
        leaf = json::object{{json_key(), std::move(leaf)}};
      }
    }
    return leaf;
  }

  std::string json_key() {
    static const std::string kKeys[] = {"loss", "step", "é", "", "a.b", "NaN", "value", "日本"};
    if (chance(0.003)) return "\xff";  // not UTF-8
    if (chance(0.5)) return "m" + std::to_string(below(100));
    return kKeys[below(std::size(kKeys))];
  }

  std::mt19937_64 rng_;
};

std::unique_ptr<io::Engine> threads_engine() {
  return io::make_engine(io::EngineOptions{io::EngineKind::threads});
}

WriteOptions small_writes() {
  WriteOptions o;
  o.extent_bytes = 8192;  // several extents per leaf now and then
  o.unit_bytes = 16384;
  return o;
}

// The property is about what is written, not about durability: on tmpfs (/dev/shm) an fsync
// costs nothing and thousands of saves take seconds. Elsewhere $TMPDIR serves, more slowly.
std::unique_ptr<TempDir> scratch_dir() {
  const char* old = std::getenv("TMPDIR");
  const std::string saved = old != nullptr ? old : "";
  if (::access("/dev/shm", W_OK) == 0) ::setenv("TMPDIR", "/dev/shm", 1);
  auto dir = std::make_unique<TempDir>();
  if (old != nullptr) {
    ::setenv("TMPDIR", saved.c_str(), 1);
  } else {
    ::unsetenv("TMPDIR");
  }
  return dir;
}

// ---- the property ----------------------------------------------------------------------------

TEST_CASE("every save that succeeds reads back, and every refused save writes nothing") {
  auto engine = threads_engine();
  RuntimeOptions ro;
  ro.engine = io::EngineKind::threads;
  ro.unit_bytes = 1u << 20;
  ro.staging_budget = 16u << 20;
  Runtime runtime(ro);
  auto scratch = scratch_dir();
  const TempDir& tmp = *scratch;
  const auto start = std::chrono::steady_clock::now();
  constexpr std::uint64_t kSeeds = 6;
  constexpr std::size_t kCasesPerSeed = 1000;
  std::size_t cases = 0, saved = 0, refused_tree = 0, refused_metadata = 0, async_cases = 0;
  std::vector<std::string> failures;
  auto fail = [&](std::size_t id, const std::string& about, const std::string& what) {
    if (failures.size() < 20)
      failures.push_back("case " + std::to_string(id) + about + ": " + what);
  };
  for (std::uint64_t seed = 1; seed <= kSeeds; ++seed) {
    Gen gen(seed);
    for (std::size_t i = 0; i < kCasesPerSeed; ++i, ++cases) {
      Gen::Case c = gen.make();
      std::string about;
      const bool tree_good = tree_ok(c.tree, about);
      const bool meta_ok = metadata_ok(c.metadata, 0);
      const bool expect_ok = tree_good && meta_ok;
      // Every eighth case also goes through the asynchronous Runtime::save.
      const bool async = cases % 8 == 0;
      async_cases += async;
      const std::string dir = tmp / ("c" + std::to_string(cases));
      auto err = catch_error([&] {
        if (async) {
          runtime.save(dir, c.tree, c.metadata).wait();
        } else {
          save_checkpoint(*engine, dir, c.tree, c.metadata, small_writes());
        }
      });
      if (err) {
        if (err->code() != Errc::invalid_argument) fail(cases, about, err->what());
        if (expect_ok) fail(cases, about, std::string("refused a readable save: ") + err->what());
        const bool names_leaf =
            contains(err->what(), "leaf '") || contains(err->what(), "tree node '");
        const bool names_key = contains(err->what(), "metadata key '");
        if (!(names_leaf && !tree_good) && !(names_key && !meta_ok)) {
          fail(cases, about, std::string("refusal names no culprit: ") + err->what());
        }
        if (fs::exists(dir) || !test::find_tmp_entries(tmp.path()).empty()) {
          fail(cases, about, "a refused save left files behind");
        }
        (names_leaf ? refused_tree : refused_metadata)++;
        continue;
      }
      ++saved;
      if (!expect_ok) fail(cases, about, "saved what the oracle says no reader accepts");
      VerifyReport report = verify_checkpoint(*engine, dir);
      if (!report.ok()) {
        fail(cases, about, "verify: " + report.problems.front());
        continue;
      }
      auto read = catch_error([&] {
        Manifest m = read_manifest(dir);
        if (!same_structure(c.tree, m)) fail(cases, about, "structure differs");
        if (test::file_size(dir + "/manifest.ckpt") > manifest_size_bound(m)) {
          fail(cases, about, "manifest larger than manifest_size_bound");
        }
        Tree back = make_template(m);
        json::object metadata = restore_checkpoint(*engine, dir, back);
        if (!same_leaves(c.tree, back)) fail(cases, about, "leaves differ");
        if (!same_json(metadata, c.metadata) || !same_json(read_metadata(dir), c.metadata)) {
          fail(cases, about, "metadata differs: " + json::serialize(c.metadata));
        }
      });
      if (read) fail(cases, about, std::string("read back: ") + read->what());
      fs::remove_all(dir);
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  MESSAGE("writer property: " << cases << " generated cases (" << async_cases
                              << " through Runtime::save): " << saved << " saved and read back, "
                              << refused_tree << " refused for the tree, " << refused_metadata
                              << " for the metadata, in " << seconds << " s");
  std::string report;
  for (const auto& f : failures) report += "\n  " + f;
  CHECK_MESSAGE(failures.empty(), "first failures:" << report);
  // The generator must reach both sides of each limit.
  CHECK(saved > cases / 2);
  CHECK(refused_tree > 0);
  CHECK(refused_metadata > 0);
}

// ---- the reported reproductions --------------------------------------------------------------

TEST_CASE(
    "metadata with NaN and infinities round-trips, and user data that looks like the tag stays "
    "data") {
  auto engine = threads_engine();
  TempDir tmp;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  json::object meta{{"loss", nan},
                    {"x", -inf},
                    {"y", inf},
                    {"lr", 1.3927926388013963e-143},  // Boost 1.81's parser reads it 1 ulp off
                    {"seed", std::uint64_t{1} << 63},
                    {"fake", json::object{{"$ckpt", "NaN"}}},
                    {"word", "NaN"}};
  save_checkpoint(*engine, tmp / "c", Tree(), meta);
  CHECK(verify_checkpoint(*engine, tmp / "c").ok());
  json::object back = read_metadata(tmp / "c");
  CHECK(std::isnan(back.at("loss").as_double()));
  CHECK(back.at("x").as_double() == -inf);
  CHECK(back.at("y").as_double() == inf);
  CHECK(back.at("lr").as_double() == 1.3927926388013963e-143);
  CHECK(back.at("seed").as_uint64() == std::uint64_t{1} << 63);
  CHECK(back.at("fake") == json::object{{"$ckpt", "NaN"}});
  CHECK(back.at("word") == "NaN");
  CHECK(contains(test::read_file(tmp / "c/metadata.json"), R"("loss":{"$ckpt":"NaN"})"));
}

TEST_CASE("a tree at the depth limit saves, one level deeper is refused naming the node") {
  auto engine = threads_engine();
  TempDir tmp;
  auto chain = [](std::size_t depth) {
    Tree root;
    Tree* at = &root;
    for (std::size_t d = 1; d < depth; ++d) at = &(*at)["a"];
    (*at)["w"] = Array::zeros(DType::f32, {2});
    return root;
  };
  save_checkpoint(*engine, tmp / "ok", chain(kMaxTreeDepth), {});
  CHECK(verify_checkpoint(*engine, tmp / "ok").ok());
  auto err =
      catch_error([&] { save_checkpoint(*engine, tmp / "deep", chain(kMaxTreeDepth + 1), {}); });
  REQUIRE(err);
  CHECK(err->code() == Errc::invalid_argument);
  CHECK(contains(err->what(), "tree node 'a/a/a/"));
  CHECK(contains(err->what(), "512"));
  CHECK_FALSE(fs::exists(tmp / "deep"));
}

TEST_CASE("an array of rank 65 is refused naming the leaf, rank 64 saves") {
  auto engine = threads_engine();
  TempDir tmp;
  Tree t;
  t["ok"] = Array::zeros(DType::u8, Shape(kMaxRank, 1));
  save_checkpoint(*engine, tmp / "ok", t, {});
  CHECK(verify_checkpoint(*engine, tmp / "ok").ok());
  t["params"]["big"] = Array::zeros(DType::u8, Shape(kMaxRank + 1, 1));
  auto err = catch_error([&] { save_checkpoint(*engine, tmp / "bad", t, {}); });
  REQUIRE(err);
  CHECK(err->code() == Errc::invalid_argument);
  CHECK(contains(err->what(), "leaf 'params/big': rank 65"));
  CHECK(test::find_tmp_entries(tmp.path()).empty());
}

TEST_CASE("a tree 100,000 levels deep is copied, walked, refused and destroyed without a crash") {
  auto engine = threads_engine();
  TempDir tmp;
  Tree root;
  Tree* at = &root;
  for (int d = 0; d < 100'000; ++d) {
    if (d % 2 == 0) {
      at = &(*at)["k"];  // dicts and lists alternate
    } else {
      *at = Tree::list();
      at = &at->push_back(Tree());
    }
  }
  *at = Array::zeros(DType::f32, {1});
  Tree copy = root;
  CHECK(copy.leaf_count() == 1);
  CHECK(copy.flatten().size() == 1);
  auto err = catch_error([&] { save_checkpoint(*engine, tmp / "c", root, {}); });
  REQUIRE(err);
  CHECK(err->code() == Errc::invalid_argument);
  CHECK(contains(err->what(), "deeper than the readers' limit"));
  RuntimeOptions ro;
  ro.engine = io::EngineKind::threads;
  Runtime runtime(ro);
  auto async = catch_error([&] { runtime.save(tmp / "d", root, {}).wait(); });
  REQUIRE(async);
  CHECK(async->code() == Errc::invalid_argument);
  CHECK(test::list_dir(tmp.path()).empty());
  copy = Tree();  // move-assigning over a deep tree takes it apart iteratively too
}

TEST_CASE(
    "metadata nested too deep or not UTF-8 is refused at save() naming the key, sync and async") {
  auto engine = threads_engine();
  TempDir tmp;
  json::value deep = 1;
  for (std::size_t d = 0; d < kMaxJsonDepth; ++d) deep = json::array{deep};
  json::object too_deep{{"hist", deep}};
  json::object bad_utf8{{"run", json::object{{"name", "\xff"}}}};
  RuntimeOptions ro;
  ro.engine = io::EngineKind::threads;
  Runtime runtime(ro);
  for (const auto& [meta, key] : {std::pair{too_deep, "metadata key 'hist"},
                                  std::pair{bad_utf8, "metadata key 'run.name'"}}) {
    auto err = catch_error([&] { save_checkpoint(*engine, tmp / "c", Tree(), meta); });
    REQUIRE(err);
    CHECK(err->code() == Errc::invalid_argument);
    CHECK(contains(err->what(), key));
    auto async = catch_error([&] { runtime.save(tmp / "d", Tree(), meta).wait(); });
    REQUIRE(async);
    CHECK(contains(async->what(), key));
  }
  CHECK(test::list_dir(tmp.path()).empty());
}

}  // namespace
}  // namespace ckpt
