#pragma once
// Sharded leaves (docs/design.md, section 14). In a multi-process job a leaf of the tree is either
//  - a shard: this process holds one box of a global array (the box's offsets `start` and the
//    array's global shape are in the Sharding; the leaf's Array is the box itself, its shape the
//    box's shape, row-major), or
//  - replicated (the default: a leaf the Sharding does not name): every process holds the same
//    whole array. A collective save writes it once, on the process chosen to balance bytes.
// A restore template uses the same description: its leaves are boxes of the global arrays, in
// any decomposition and any process count (runtime/sharded_read.h).
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "runtime/array.h"

namespace ckpt {

struct Box {
  Shape global_shape;  // the whole array
  Shape start;         // where the box begins, per dimension
};

class Sharding {
 public:
  // Declares the leaf at `path` a box of a global array of `global_shape` starting at `start`.
  // Throws Error(invalid_argument) when the ranks differ.
  Sharding& shard(std::string path, Shape global_shape, Shape start);
  const Box* find(std::string_view path) const;
  bool empty() const noexcept { return boxes_.empty(); }
  const std::map<std::string, Box, std::less<>>& boxes() const noexcept { return boxes_; }

 private:
  std::map<std::string, Box, std::less<>> boxes_;
};

// The box of part `index` of `parts` of `global_shape` cut along `axis`: sizes differ by at most
// one, the larger parts first (10 in 4 parts: 3, 3, 2, 2). Returns {start, shape}.
std::pair<Shape, Shape> split_box(const Shape& global_shape, std::size_t axis, std::uint64_t index,
                                  std::uint64_t parts);

// Checks that an array of `shape` fits `box` (same rank, start + shape within the global shape);
// throws Error(invalid_argument) naming `path`.
void check_box(const std::string& path, const Shape& shape, const Box& box);

}  // namespace ckpt
