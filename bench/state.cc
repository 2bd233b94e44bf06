#include "bench/state.h"

#include <fmt/format.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "io/file.h"
#include "runtime/crc32c.h"

namespace ckpt::bench {

SyntheticState::SyntheticState(std::uint64_t total_bytes, std::size_t leaves) {
  leaves = std::max<std::size_t>(leaves, 1);
  std::uint64_t numel = std::max<std::uint64_t>(total_bytes / sizeof(float) / leaves, 1);
  leaf_bytes_ = numel * sizeof(float);
  std::uint64_t stride = io::align_up(leaf_bytes_, 64);
  arena_bytes_ = static_cast<std::size_t>(io::align_up(stride * leaves));
  void* p =
      ::mmap(nullptr, arena_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    throw std::runtime_error(
        fmt::format("mmap of the state ({} bytes): {}", arena_bytes_, std::strerror(errno)));
  }
  arena_ = static_cast<std::byte*>(p);
  for (std::size_t i = 0; i < leaves; ++i) {
    auto* f = reinterpret_cast<float*>(arena_ + i * stride);
    // Values in [0, 1): the update (+1e-3) changes every one of them. Writing them faults the
    // arena in, so the arrays are warm, resident memory like a live training state's.
    std::uint32_t x = static_cast<std::uint32_t>(i) * 2654435761u + 1;
    for (std::uint64_t k = 0; k < numel; ++k) {
      x = x * 1664525u + 1013904223u;
      f[k] = static_cast<float>(x >> 8) * (1.0f / 16777216.0f);
    }
    leaves_.push_back(f);
    tree_[fmt::format("block_{:05}", i / 16)][fmt::format("p{:02}", i % 16)] =
        Array::view(DType::f32, Shape{numel}, static_cast<void*>(f));
  }
}

SyntheticState::~SyntheticState() {
  tree_ = Tree();
  if (arena_ != nullptr) ::munmap(arena_, arena_bytes_);
}

template <typename B>
std::vector<std::span<B>> SyntheticState::leaf_spans() const {
  std::vector<std::span<B>> out;
  out.reserve(leaves_.size());
  for (float* f : leaves_) out.emplace_back(reinterpret_cast<B*>(f), leaf_bytes_);
  return out;
}

std::vector<std::span<const std::byte>> SyntheticState::spans() const {
  return leaf_spans<const std::byte>();
}

std::vector<std::span<std::byte>> SyntheticState::mutable_spans() {
  return leaf_spans<std::byte>();
}

double SyntheticState::forward() const {
  std::uint64_t numel = leaf_bytes_ / sizeof(float);
  double total = 0;
  for (const float* f : leaves_) {
    // Eight partial sums so the loop runs at memory speed, not at the latency of one adder.
    float acc[8] = {};
    std::uint64_t k = 0;
    for (; k + 8 <= numel; k += 8) {
      for (int j = 0; j < 8; ++j) acc[j] += f[k + static_cast<std::uint64_t>(j)];
    }
    for (; k < numel; ++k) acc[0] += f[k];
    for (float a : acc) total += a;
  }
  return total;
}

void SyntheticState::update(double fraction) {
  if (update_order_.size() != leaves_.size()) {
    update_order_.resize(leaves_.size());
    for (std::size_t i = 0; i < update_order_.size(); ++i) update_order_[i] = i;
    std::uint32_t x = 12345;
    for (std::size_t i = update_order_.size(); i > 1; --i) {  // Fisher-Yates, fixed seed
      x = x * 1664525u + 1013904223u;
      std::swap(update_order_[i - 1], update_order_[(x >> 8) % i]);
    }
  }
  fraction = std::clamp(fraction, 0.0, 1.0);
  auto n = static_cast<std::size_t>(std::lround(fraction * static_cast<double>(leaves_.size())));
  std::uint64_t numel = leaf_bytes_ / sizeof(float);
  for (std::size_t j = 0; j < n; ++j) {
    float* f = leaves_[update_order_[j]];
    for (std::uint64_t k = 0; k < numel; ++k) f[k] += 1e-3f;
  }
}

std::uint32_t SyntheticState::checksum() const {
  std::uint32_t crc = 0;
  for (const float* f : leaves_) crc = crc32c(f, leaf_bytes_, crc);
  return crc;
}

}  // namespace ckpt::bench
