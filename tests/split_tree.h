#pragma once
// One process's part of a global tree for the sharded tests that run whole programs
// (tests/reliability/crash_state.h, tests/powerloss/scenario.h): each leaf `sharded` selects is
// cut along its first axis (split_box: sizes differ by at most one) and this process gets its box;
// every other leaf is replicated (copied whole). Leaves are dicts' children, paths "a/b/c".
#include <cstdint>
#include <cstring>
#include <functional>
#include <sstream>
#include <string>
#include <utility>

#include "runtime/sharding.h"
#include "runtime/tree.h"

namespace ckpt::test {

inline std::pair<Tree, Sharding> split_tree(
    const Tree& global, int rank, int ranks,
    const std::function<bool(const std::string&)>& sharded) {
  Tree t;
  Sharding sharding;
  for (auto& [path, a] : global.flatten()) {
    Tree* node = &t;
    std::stringstream parts(path);
    for (std::string key; std::getline(parts, key, '/');) node = &(*node)[key];
    std::uint64_t skip = 0;  // bytes before the box
    Shape shape = a.shape();
    if (sharded(path)) {
      auto [start, box] = split_box(a.shape(), 0, static_cast<std::uint64_t>(rank),
                                    static_cast<std::uint64_t>(ranks));
      skip = start[0] * (box[0] == 0 ? 0 : array_nbytes(a.dtype(), box) / box[0]);
      shape = box;
      sharding.shard(path, a.shape(), start);
    }
    Array part = Array::zeros(a.dtype(), shape);
    std::memcpy(part.mutable_data(), a.data() + skip, part.nbytes());
    *node = part;
  }
  return {std::move(t), std::move(sharding)};
}

}  // namespace ckpt::test
