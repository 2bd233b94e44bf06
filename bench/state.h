#pragma once
// A synthetic training state: `leaves` float32 arrays of equal size totalling about
// `total_bytes`, carved at 64-byte alignment out of one pre-faulted arena (as a framework's
// allocator would hand them out), named "block_00000/p00" ... in groups of 16. The simulated
// training step reads every array (forward and backward) and then writes every element (the
// optimizer update), so a checkpoint that did not really snapshot the arrays is caught by the
// checksum taken at save time.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "runtime/tree.h"

namespace ckpt::bench {

class SyntheticState {
 public:
  SyntheticState(std::uint64_t total_bytes, std::size_t leaves);
  ~SyntheticState();
  SyntheticState(const SyntheticState&) = delete;
  SyntheticState& operator=(const SyntheticState&) = delete;

  const Tree& tree() const { return tree_; }
  Tree& tree() { return tree_; }
  std::uint64_t bytes() const { return leaf_bytes_ * leaves_.size(); }
  std::size_t leaf_count() const { return leaves_.size(); }
  std::vector<std::span<const std::byte>> spans() const;
  std::vector<std::span<std::byte>> mutable_spans();  // the same, writable

  double forward() const;  // reads every element; the result keeps the reads from being elided
  // Writes every element of round(fraction x leaves) leaves (all by default): the same leaves
  // at every call, a fixed pseudo-random choice, as a frozen base with trained adapters or a
  // model with an EMA copy updated elsewhere changes the same arrays each step.
  void update(double fraction = 1.0);
  std::uint32_t checksum() const;  // CRC32C over every leaf in order

 private:
  template <typename B>
  std::vector<std::span<B>> leaf_spans() const;  // B: std::byte or const std::byte

  std::byte* arena_ = nullptr;
  std::size_t arena_bytes_ = 0;
  std::uint64_t leaf_bytes_ = 0;
  std::vector<float*> leaves_;
  std::vector<std::size_t> update_order_;  // a fixed permutation of the leaves
  Tree tree_;
};

}  // namespace ckpt::bench
