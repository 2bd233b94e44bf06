#pragma once
// A small sharded state shared by the in-process collective tests (sharded_test.cc) and the MPI
// driver (mpi_shard_driver.cc): every element's value is a function of its leaf and global index,
// so any process can build its boxes, and any restored box can be checked, alone.
//   w      float32 [11, 7]     sharded
//   t      int16   [5, 4, 3]   sharded
//   bias   float64 [6]         replicated
//   step   int64   []          replicated
//   tiny   uint8   [3]         replicated
// Save decompositions cut w along axis 0 and t along axis 2 (3 elements: with 4 processes one
// box is empty); restore decompositions cut w along axis 1 and t along axis 0. Sizes are uneven
// for every process count from 2 to 4.
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/sharding.h"
#include "runtime/tree.h"

namespace ckpt::test {

inline const Shape kW{11, 7};
inline const Shape kT{5, 4, 3};

inline double shard_value(const std::string& leaf, std::uint64_t g) {
  if (leaf == "w") return static_cast<double>(g) * 0.5 + 1.0;
  if (leaf == "t") return static_cast<double>(static_cast<std::int64_t>(g % 300) - 150);
  if (leaf == "bias") return static_cast<double>(g) * 0.25 - 3.0;
  return 0;
}

// Calls fn(local linear index, global linear index) for every element of the box.
template <typename F>
void for_each_in_box(const Shape& global, const Shape& start, const Shape& shape, F&& fn) {
  std::uint64_t n = 1;
  for (auto s : shape) n *= s;
  Shape idx(shape.size(), 0);
  for (std::uint64_t local = 0; local < n; ++local) {
    std::uint64_t g = 0;
    for (std::size_t d = 0; d < shape.size(); ++d) g = g * global[d] + start[d] + idx[d];
    fn(local, g);
    for (std::size_t d = shape.size(); d-- > 0;) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

struct ShardedState {
  Tree tree;
  Sharding sharding;
};

// Process `part` of `parts`: `save_cut` selects the save decomposition (w on axis 0, t on axis 2)
// or the restore one (w on axis 1, t on axis 0). `filled`: values set (a save), else zeros (a
// template).
inline ShardedState make_sharded_state(std::uint64_t part, std::uint64_t parts, bool save_cut,
                                       bool filled) {
  ShardedState s;
  auto [w0, ws] = split_box(kW, save_cut ? 0 : 1, part, parts);
  auto [t0, ts] = split_box(kT, save_cut ? 2 : 0, part, parts);
  Array w = Array::zeros(DType::f32, ws);
  Array t = Array::zeros(DType::i16, ts);
  Array bias = Array::zeros(DType::f64, {6});
  Array step = Array::zeros(DType::i64, {});
  Array tiny = Array::zeros(DType::u8, {3});
  if (filled) {
    for_each_in_box(kW, w0, ws, [&](std::uint64_t l, std::uint64_t g) {
      w.as<float>()[l] = static_cast<float>(shard_value("w", g));
    });
    for_each_in_box(kT, t0, ts, [&](std::uint64_t l, std::uint64_t g) {
      t.as<std::int16_t>()[l] = static_cast<std::int16_t>(shard_value("t", g));
    });
    for (std::uint64_t i = 0; i < 6; ++i) bias.as<double>()[i] = shard_value("bias", i);
    step.as<std::int64_t>()[0] = 4242;
    for (std::uint64_t i = 0; i < 3; ++i) tiny.as<std::uint8_t>()[i] = static_cast<std::uint8_t>(7 + i);
  }
  s.tree["w"] = w;
  s.tree["t"] = t;
  s.tree["bias"] = bias;
  s.tree["step"] = step;
  s.tree["tiny"] = tiny;
  s.sharding.shard("w", kW, w0);
  s.sharding.shard("t", kT, t0);
  return s;
}

// The number of elements of the restored state `s` (made by make_sharded_state(part, parts,
// false, false) and then restored) that differ from the global values; 0 when all match.
inline std::uint64_t count_wrong(const ShardedState& s) {
  std::uint64_t wrong = 0;
  const Box& wb = *s.sharding.find("w");
  const Box& tb = *s.sharding.find("t");
  const Array& w = s.tree.at("w").array();
  const Array& t = s.tree.at("t").array();
  for_each_in_box(kW, wb.start, w.shape(), [&](std::uint64_t l, std::uint64_t g) {
    wrong += w.as<float>()[l] != static_cast<float>(shard_value("w", g));
  });
  for_each_in_box(kT, tb.start, t.shape(), [&](std::uint64_t l, std::uint64_t g) {
    wrong += t.as<std::int16_t>()[l] != static_cast<std::int16_t>(shard_value("t", g));
  });
  const Array& bias = s.tree.at("bias").array();
  for (std::uint64_t i = 0; i < 6; ++i) wrong += bias.as<double>()[i] != shard_value("bias", i);
  wrong += s.tree.at("step").array().as<std::int64_t>()[0] != 4242;
  const Array& tiny = s.tree.at("tiny").array();
  for (std::uint64_t i = 0; i < 3; ++i) wrong += tiny.as<std::uint8_t>()[i] != 7 + i;
  return wrong;
}

}  // namespace ckpt::test
