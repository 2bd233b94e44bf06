// Plan reuse (runtime/plan_cache.h): a large tree's structure compared in parts on several
// threads must decide exactly as the plain walk, and give every leaf's memory in flattening order.
#include "runtime/plan_cache.h"

#include <doctest/doctest.h>

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace ckpt {
namespace {

constexpr std::uint64_t kUnit = 1 << 20;

// Runs the tasks on the calling thread and one more, as the Runtime's copy threads do.
void two_threads(std::size_t n, const std::function<void(std::size_t)>& task) {
  std::atomic<std::size_t> next{0};
  auto work = [&] {
    for (std::size_t i = next++; i < n; i = next++) task(i);
  };
  std::thread helper(work);
  work();
  helper.join();
}

// A state of 29,204 leaves that the parts cut at several levels: a list of large dicts (split
// into groups of small blocks), a large dict of single leaves (grouped), and single leaves
// beside large siblings. Owned arrays (`owned`), or views into one arena shifted by `shift`.
struct State {
  std::vector<float> arena;
  Tree tree;
  std::size_t owned_leaves = 0;

  explicit State(bool owned, std::size_t shift = 0) : arena(40000) {
    std::size_t next = 0;
    auto leaf = [&](std::uint64_t n) -> Tree {
      if (owned) {
        ++owned_leaves;
        return Array::zeros(DType::f32, {n});
      }
      Array a = Array::view(DType::f32, {n}, arena.data() + next++ + shift);  // distinct per leaf
      return a;
    };
    Tree layers = Tree::list();
    for (int l = 0; l < 3; ++l) {
      Tree layer;
      for (int b = 0; b < 400; ++b) {  // 400 blocks of 16 leaves: 6,400 leaves per layer
        Tree block;
        for (int p = 0; p < 16; ++p) block["p" + std::to_string(100 + p)] = leaf(1 + (p % 3));
        layer["block" + std::to_string(1000 + b)] = std::move(block);
      }
      layer["norm"] = leaf(8);
      layers.push_back(std::move(layer));
    }
    tree["layers"] = std::move(layers);
    Tree opt;
    for (int i = 0; i < 10000; ++i) opt["m" + std::to_string(10000 + i)] = leaf(2);
    tree["opt"] = std::move(opt);
    tree["step"] = leaf(1);
  }
};

// What the plain walk would give: every leaf's memory in flattening order.
std::vector<const std::byte*> flat_sources(const Tree& t) {
  std::vector<const std::byte*> out;
  for (const auto& [path, a] : t.flatten()) out.push_back(a.data());
  return out;
}

TEST_CASE("a large tree's structure checked in parts on two threads reuses the plan and finds "
          "every leaf") {
  PlanCache cache;
  State first(false);
  PlannedSave built = cache.plan(first.tree, kUnit, two_threads);
  CHECK_FALSE(built.reused);
  CHECK(built.sources == flat_sources(first.tree));

  // The same structure over other memory: reused, every leaf's new address in order.
  State moved(false, 2000);
  PlannedSave p = cache.plan(moved.tree, kUnit, two_threads);
  CHECK(p.reused);
  CHECK(p.parts > 8);  // checked in parts, not by the plain walk after a difference
  CHECK(p.plan == built.plan);
  CHECK(p.sources == flat_sources(moved.tree));
  CHECK(p.owners.empty());

  // Owned arrays: each part's owners are kept.
  State owned(true);
  PlannedSave o = cache.plan(owned.tree, kUnit, two_threads);
  CHECK(o.reused);
  CHECK(o.parts > 8);
  CHECK(o.sources == flat_sources(owned.tree));
  CHECK(o.owners.size() == owned.owned_leaves);

  // Without threads the plain walk agrees.
  PlannedSave plain = cache.plan(moved.tree, kUnit);
  CHECK(plain.reused);
  CHECK(plain.parts == 0);
  CHECK(plain.sources == p.sources);
}

TEST_CASE("a difference in any part of a large tree, or in a split node's keys or size, plans "
          "again") {
  using Change = std::function<void(Tree&)>;
  const std::vector<std::pair<std::string, Change>> changes = {
      {"a shape deep in a grouped part",
       [](Tree& t) { t["layers"].at(1)["block1200"]["p105"] = Array::zeros(DType::f32, {9}); }},
      {"a dtype in the last part",
       [](Tree& t) { t["step"] = Array::zeros(DType::i32, {1}); }},
      {"a key of a split node",
       [](Tree& t) {
         Tree renamed;
         renamed["layers"] = t.at("layers");
         renamed["opt2"] = t.at("opt");
         renamed["step"] = t.at("step");
         t = std::move(renamed);
       }},
      {"one more child of a split node",
       [](Tree& t) { t["layers"].push_back(Array::zeros(DType::f32, {1})); }},
      {"a leaf where a large subtree was",
       [](Tree& t) { t["layers"].at(2) = Array::zeros(DType::f32, {1}); }},
      {"one leaf fewer in a grouped part",
       [](Tree& t) {
         Tree block;
         for (int p = 0; p < 15; ++p) block["p" + std::to_string(100 + p)] = Array::zeros(DType::f32, {1});
         t["layers"].at(0)["block1003"] = std::move(block);
       }},
  };
  for (const auto& [what, change] : changes) {
    CAPTURE(what);
    PlanCache cache;
    State base(false);
    cache.plan(base.tree, kUnit, two_threads);
    State other(false);
    change(other.tree);
    PlannedSave p = cache.plan(other.tree, kUnit, two_threads);
    CHECK_FALSE(p.reused);
    CHECK(p.sources == flat_sources(other.tree));
    CHECK(p.plan->manifest.leaves.size() == p.sources.size());
    // The changed structure is now the cached one, checked in parts in its turn.
    PlannedSave again = cache.plan(other.tree, kUnit, two_threads);
    CHECK(again.reused);
    CHECK(again.parts > 1);
    CHECK(again.sources == p.sources);
    // And the first structure is a difference from it.
    CHECK_FALSE(cache.plan(base.tree, kUnit, two_threads).reused);
  }
}

}  // namespace
}  // namespace ckpt
