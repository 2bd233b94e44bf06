#include "runtime/sharding.h"

#include <fmt/format.h>

#include <algorithm>

#include "io/error.h"

namespace ckpt {

Sharding& Sharding::shard(std::string path, Shape global_shape, Shape start) {
  if (global_shape.size() != start.size()) {
    throw Error(Errc::invalid_argument,
                fmt::format("leaf '{}': global shape {} and start {} differ in rank", path,
                            shape_to_string(global_shape), shape_to_string(start)));
  }
  boxes_[std::move(path)] = Box{std::move(global_shape), std::move(start)};
  return *this;
}

const Box* Sharding::find(std::string_view path) const {
  auto it = boxes_.find(path);
  return it == boxes_.end() ? nullptr : &it->second;
}

std::pair<Shape, Shape> split_box(const Shape& global_shape, std::size_t axis, std::uint64_t index,
                                  std::uint64_t parts) {
  if (axis >= global_shape.size() || parts == 0 || index >= parts) {
    throw Error(Errc::invalid_argument,
                fmt::format("cannot cut part {} of {} along axis {} of {}", index, parts, axis,
                            shape_to_string(global_shape)));
  }
  Shape start(global_shape.size(), 0);
  Shape shape = global_shape;
  std::uint64_t n = global_shape[axis];
  std::uint64_t base = n / parts;
  std::uint64_t extra = n % parts;
  start[axis] = index * base + std::min(index, extra);
  shape[axis] = base + (index < extra ? 1 : 0);
  return {start, shape};
}

void check_box(const std::string& path, const Shape& shape, const Box& box) {
  if (shape.size() != box.global_shape.size()) {
    throw Error(Errc::invalid_argument,
                fmt::format("leaf '{}': the array's shape {} and the global shape {} differ in rank",
                            path, shape_to_string(shape), shape_to_string(box.global_shape)));
  }
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (box.start[d] > box.global_shape[d] || shape[d] > box.global_shape[d] - box.start[d]) {
      throw Error(Errc::invalid_argument,
                  fmt::format("leaf '{}': the box at {} of shape {} leaves the global shape {}",
                              path, shape_to_string(box.start), shape_to_string(shape),
                              shape_to_string(box.global_shape)));
    }
  }
}

}  // namespace ckpt
