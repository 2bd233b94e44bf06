#pragma once
// What the power-loss driver saves and the explorer checks against (tests/powerloss/): the state
// a seed stands for, the Runtime options of the driver, and the scenarios.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/runtime.h"
#include "runtime/tree.h"

namespace ckpt::powerloss {

// Three small leaves (two spanning several 4 KiB blocks, one ending off the block grid), every
// element a function of the seed: a restored tree names the save it came from.
inline Tree make_state(std::int64_t seed) {
  Tree t;
  const std::uint64_t sizes[] = {3000, 2200, 1001};  // u32 elements
  const char* names[] = {"w0", "w1", "bias"};
  for (int l = 0; l < 3; ++l) {
    Array a = Array::zeros(DType::u32, {sizes[l]});
    auto v = a.as<std::uint32_t>();
    for (std::size_t i = 0; i < v.size(); ++i)
      v[i] = static_cast<std::uint32_t>(seed * 1000003 + l * 7919 + static_cast<std::int64_t>(i));
    t["params"][names[l]] = a;
  }
  return t;
}

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
};

inline constexpr Scenario kScenarios[] = {
    {"sync", "sync save of step/1 into an empty run, register, overwrite step/1, register"},
    {"overlapped", "two overlapped saves in flight, both registered"},
    {"register", "register_latest moves latest from step/1 to step/2"},
    {"retention", "a save with max_to_keep 2 removes the two oldest of three checkpoints"},
    {"gc", "ckpt gc --keep 1 --leftovers removes three checkpoints and a leftover"},
    {"sync_api", "the synchronous writer (save_checkpoint) and write_latest, no Runtime"},
};

}  // namespace ckpt::powerloss
