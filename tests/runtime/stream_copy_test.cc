// Copies around the cache (runtime/stream_copy.h): byte for byte what memcpy gives, at every
// length and alignment, and the saves and restores large enough to use them.
#include "runtime/stream_copy.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "runtime/checkpoint.h"
#include "runtime/runtime.h"
#include "tests/test_util.h"

namespace ckpt {
namespace {

TEST_CASE("stream_copy copies every length and alignment as memcpy does, and nothing beside") {
  constexpr std::size_t kGuard = 128;
  std::vector<std::size_t> lengths;
  for (std::size_t n = 0; n <= 600; ++n) lengths.push_back(n);
  for (std::size_t n : {1000u, 4096u + 37u, 65536u + 5u}) lengths.push_back(n);
  const std::size_t most = lengths.back();
  // Room for the alignment (up to 64), the offsets (up to 63) and a guard on either side.
  std::vector<std::byte> src_buf(most + 2 * kGuard + 128), dst_buf(most + 2 * kGuard + 128);
  // 64-byte aligned, so that the offsets below give every alignment that matters to a line.
  auto line_aligned = [](std::vector<std::byte>& b) {
    return b.data() + (64 - reinterpret_cast<std::uintptr_t>(b.data()) % 64);
  };
  std::byte* src_base = line_aligned(src_buf);
  std::byte* dst_base = line_aligned(dst_buf);
  for (std::size_t i = 0; i < most + 2 * kGuard + 64; ++i) {
    src_base[i] = static_cast<std::byte>(i * 131 + 7);
  }
  const std::vector<std::byte> guard(kGuard, std::byte{0xEE});
  for (std::size_t dst_off : {0u, 1u, 8u, 16u, 33u, 48u, 63u}) {
    for (std::size_t src_off : {0u, 5u, 16u, 63u}) {
      for (std::size_t n : lengths) {
        CAPTURE(dst_off);
        CAPTURE(src_off);
        CAPTURE(n);
        std::byte* dst = dst_base + kGuard + dst_off;
        const std::byte* src = src_base + kGuard + src_off;
        std::memset(dst - kGuard, 0xEE, n + 2 * kGuard);
        stream_copy(dst, src, n);
        stream_fence();
        REQUIRE(std::memcmp(dst, src, n) == 0);
        REQUIRE(std::memcmp(dst - kGuard, guard.data(), kGuard) == 0);
        REQUIRE(std::memcmp(dst + n, guard.data(), kGuard) == 0);
      }
    }
  }
}

TEST_CASE("an operation streams its copies from twice the shared L3 on, at least 64 MiB") {
  const std::uint64_t from = streaming_bytes();
  CHECK(from >= kStreamingBytes);
  CHECK(streaming_bytes() == from);  // read once
  // Where sysfs lists cpu0's L3, the threshold is twice it (or the floor).
  std::ifstream level("/sys/devices/system/cpu/cpu0/cache/index3/level");
  std::ifstream size("/sys/devices/system/cpu/cpu0/cache/index3/size");
  int n = 0;
  std::string text;
  if ((level >> n) && n == 3 && std::getline(size, text)) {
    CAPTURE(text);
    CHECK(from == std::max(kStreamingBytes, 2 * parse_cache_size(text)));
  }
  CHECK(stores_for(0) == Stores::cached);
  CHECK(stores_for(from - 1) == Stores::cached);
  CHECK(stores_for(from) == Stores::streaming);
  CHECK(stores_for(std::uint64_t{1} << 40) == Stores::streaming);
}

TEST_CASE("a sysfs cache size reads as bytes, and anything else as none") {
  CHECK(parse_cache_size("32768K\n") == (std::uint64_t{32} << 20));
  CHECK(parse_cache_size("96M") == (std::uint64_t{96} << 20));
  CHECK(parse_cache_size("1G") == (std::uint64_t{1} << 30));
  CHECK(parse_cache_size("1048576") == (std::uint64_t{1} << 20));
  CHECK(parse_cache_size("") == 0);
  CHECK(parse_cache_size("\n") == 0);
  CHECK(parse_cache_size("K") == 0);
  CHECK(parse_cache_size("-5K") == 0);
  CHECK(parse_cache_size("12X") == 0);
  CHECK(parse_cache_size("12KB") == 0);
  CHECK(parse_cache_size("99999999999999999999K") == 0);   // beyond 64 bits
  CHECK(parse_cache_size("18014398509481984K") == 0);      // 2^54 KiB: overflows when scaled
}

// Leaves of lengths that end and begin mid-line, below kStreamingMin, and across many units,
// streaming_bytes() and 1 MiB in all (65 MiB here; the last leaf takes up the rest on a machine
// with a larger L3): the save's copy streams, and so does every restore below
// that copies (placed, two passes, one pass; a transactional staged restore most likely swaps,
// which does not stream; runtime_staged_read_test streams each placement by hand).
std::uint64_t streaming_tree_bytes() { return streaming_bytes() + (1u << 20); }

Tree streaming_tree() {
  Tree t;
  std::vector<std::uint64_t> sizes = {1,         63,   255,  256,       257,
                                      4095,      4097, 65537, 1'000'003, (33u << 20) + 5,
                                      (31u << 20) + 17};
  const std::uint64_t want = streaming_tree_bytes();
  const std::uint64_t have = std::accumulate(sizes.begin(), sizes.end(), std::uint64_t{0});
  if (have < want) sizes.back() += want - have;
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    Array a = Array::zeros(DType::u8, {sizes[i]});
    test::fill_pattern(a, 100 + i);
    t["leaf" + std::to_string(i)] = a;
    total += sizes[i];
  }
  REQUIRE(total >= streaming_bytes());
  return t;
}

// Every leaf of `back` holds what streaming_tree() put in the leaf of its name.
void check_streaming_tree(const Tree& back) {
  for (auto& [path, a] : back.flatten()) {
    CAPTURE(path);
    CHECK(test::has_pattern(a, 100 + std::stoul(path.substr(4))));
  }
}

TEST_CASE("a save and restores large enough to stream give back every byte of every leaf") {
  test::TempDir dir;
  Tree tree = streaming_tree();
  RuntimeOptions o;
  o.staging_budget = 3 * streaming_tree_bytes();  // the save and a staged restore
  o.unit_bytes = 1u << 20;
  o.copy_threads = 2;
  Runtime rt(o);
  SaveHandle h = rt.save(dir / "ck", tree, {});
  REQUIRE(h.wait_for(std::chrono::seconds(120)));
  h.wait();
  for (bool transactional : {true, false}) {
    CAPTURE(transactional);
    Tree back = test::zeros_like(tree);
    rt.restore(dir / "ck", back, RestoreOptions{false, transactional});
    check_streaming_tree(back);
  }
  CHECK(rt.stats().restores_placed == 1);  // the one not transactional
  // Beyond a small staging budget: the two passes (transactional) and the one pass.
  o.staging_budget = 8u << 20;
  Runtime small(o);
  for (bool transactional : {true, false}) {
    CAPTURE(transactional);
    Tree back = test::zeros_like(tree);
    small.restore(dir / "ck", back, RestoreOptions{false, transactional});
    check_streaming_tree(back);
  }
  CHECK(small.stats().restores_two_passes == 1);
  CHECK(small.stats().restores_one_pass == 1);
  CHECK(verify_checkpoint(rt.engine(), dir / "ck").ok());
}

}  // namespace
}  // namespace ckpt
