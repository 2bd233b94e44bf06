#pragma once
// What the power-loss driver saves and the explorer checks against (tests/powerloss/): the state
// a seed stands for, the Runtime options of the driver, and the scenarios.
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/runtime.h"
#include "runtime/sharding.h"
#include "runtime/tree.h"
#include "tests/split_tree.h"

namespace ckpt::powerloss {

// The seed a leaf's elements derive from. Seeds from 100 on form incremental chains: within one
// hundred only w0 (leaf 0) differs, so an incremental save shares the other leaves' bytes with
// its base; below 100 every leaf differs with the seed.
inline std::int64_t leaf_seed(std::int64_t seed, int leaf) {
  return seed >= 100 && leaf > 0 ? seed / 100 * 100 : seed;
}

// Three small leaves (two spanning several 4 KiB blocks, one ending off the block grid), every
// element a function of the seed: a restored tree names the save it came from.
inline Tree make_state(std::int64_t seed) {
  Tree t;
  const std::uint64_t sizes[] = {3000, 2200, 1001};  // u32 elements
  const char* names[] = {"w0", "w1", "bias"};
  for (int l = 0; l < 3; ++l) {
    Array a = Array::zeros(DType::u32, {sizes[l]});
    auto v = a.as<std::uint32_t>();
    const std::int64_t s = leaf_seed(seed, l);
    for (std::size_t i = 0; i < v.size(); ++i)
      v[i] = static_cast<std::uint32_t>(s * 1000003 + l * 7919 + static_cast<std::int64_t>(i));
    t["params"][names[l]] = a;
  }
  return t;
}

// Process `rank` of `ranks` of a sharded save of make_state(seed), or of a restore template when
// `state` holds zeros: w0 and w1 cut along their axis (split_box), bias replicated.
inline std::pair<Tree, Sharding> shard_of(const Tree& state, int rank, int ranks) {
  return test::split_tree(state, rank, ranks,
                          [](const std::string& path) { return path != "params/bias"; });
}

// The simulated processes (LocalGroup) of the sharded scenario.
inline constexpr int kShardedRanks = 3;

// The thread-pool engine, so that every data write and fsync is a pwrite/fsync system call the
// trace shim sees (io_uring requests bypass libc); 8 KiB units, so a data file takes 2 writes.
inline RuntimeOptions driver_options() {
  RuntimeOptions o;
  o.engine = io::EngineKind::threads;
  o.io_threads = 2;
  o.copy_threads = 2;
  o.unit_bytes = 8192;
  o.staging_budget = 1u << 20;
  o.lock_wait = std::chrono::milliseconds(2000);
  return o;
}

struct Scenario {
  std::string_view name;
  std::string_view what;
  // Run only when named or with --all (`make powerloss-explore-all`), not by `make test`.
  bool extended = false;
};

inline constexpr Scenario kScenarios[] = {
    {"sync", "sync save of step/1 into an empty run, register, overwrite step/1, register"},
    {"overlapped", "two overlapped saves in flight, both registered"},
    {"register", "register_latest moves latest from step/1 to step/2"},
    {"retention", "a save with max_to_keep 2 removes the two oldest of three checkpoints"},
    {"gc", "ckpt gc --keep 1 --leftovers removes three checkpoints and a leftover"},
    {"sync_api", "the synchronous writer (save_checkpoint) and write_latest, no Runtime"},
    {"incremental", "incremental saves step/2, step/3 sharing step/1's data file by hard links, "
                    "each registered; step/3's max_to_keep 2 removes step/1, their first base"},
    {"sharded", "a collective save of step/2 by 3 simulated processes (LocalGroup), registered"},
    {"sharded_overwrite",
     "the sharded scenario, then step/2 saved again collectively (the exchange path) with "
     "max_to_keep 1, which removes step/1, and registered",
     true},
    {"incremental_overlapped",
     "two overlapped incremental saves in flight after step/1, both registered, max_to_keep 2", true},
};

}  // namespace ckpt::powerloss
