#pragma once
// The "training state" of crash_saver and the crash test (tests/reliability/): `leaves` large u32
// arrays plus a small one that ends off the 4 KiB grid, advanced by one deterministic step at a
// time. Every element's update depends only on its old value and the step, so a box of a global
// array evolves exactly as that part of the whole array does: a sharded run (any process count,
// resumed under any other) ends with the digest of a single-process one.
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "runtime/crc32c.h"
#include "runtime/sharding.h"
#include "runtime/tree.h"
#include "tests/split_tree.h"

namespace ckpt::crash {

// crash_saver's defaults: the state the crash test expects of its checkpoints.
inline constexpr int kLeaves = 3;
inline constexpr std::uint64_t kElements = 200'000;

// The initial global state: params/layer<l> (u32 [elements]) and opt/bias (u32 [1001]).
inline Tree initial_state(int leaves, std::uint64_t elements) {
  Tree t;
  for (int l = 0; l < leaves; ++l) {
    Array x = Array::zeros(DType::u32, {elements});
    auto v = x.as<std::uint32_t>();
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::uint32_t>(l * 7919 + i);
    t["params"]["layer" + std::to_string(l)] = x;
  }
  Array bias = Array::zeros(DType::u32, {1001});
  auto b = bias.as<std::uint32_t>();
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::uint32_t>(i * 31);
  t["opt"]["bias"] = bias;
  return t;
}

// One "training step": every element depends on its old value and the step.
inline void advance(const Tree& t, int step) {
  for (auto& [path, a] : t.flatten()) {
    for (auto& x : a.as<std::uint32_t>())
      x = x * 1664525u + 1013904223u + static_cast<unsigned>(step);
  }
}

// The global state after `step` steps.
inline Tree state_at(int leaves, std::uint64_t elements, int step) {
  Tree t = initial_state(leaves, elements);
  for (int s = 1; s <= step; ++s) advance(t, s);
  return t;
}

// The sharded decomposition of `rank` of `ranks`: every params/ leaf cut along its only axis,
// opt/bias replicated. Returns the process's tree (its boxes, copied from `global`) and the
// sharding naming them.
inline std::pair<Tree, Sharding> box_of(const Tree& global, int rank, int ranks) {
  return test::split_tree(global, rank, ranks,
                          [](const std::string& path) { return path.rfind("params/", 0) == 0; });
}

// A checksum of a global state given as its boxes in rank order (one tree: a single process):
// the boxes of a leaf cut along its first axis are its bytes in order, so every decomposition of
// one state has one digest. Replicated leaves count once (rank 0's).
inline std::uint32_t digest(const std::vector<const Tree*>& boxes) {
  std::uint32_t crc = 0;
  for (auto& [path, a] : boxes.front()->flatten()) {
    crc = crc32c(path, crc);
    if (path.rfind("params/", 0) != 0) {
      crc = crc32c(a.data(), a.nbytes(), crc);
      continue;
    }
    for (const Tree* b : boxes) {
      const Array& part = b->find(path)->array();
      crc = crc32c(part.data(), part.nbytes(), crc);
    }
  }
  return crc;
}

}  // namespace ckpt::crash
