#pragma once
// The recovery invariant the power-loss explorer checks on every crash state, with ckpt's own
// reader, verifier, cleanup and restore:
//  1. `latest` is absent or names a checkpoint that is listed and verifies;
//  2. every checkpoint list_checkpoints (`ckpt list`) shows verifies;
//  3. what the program was told is durable is: after `ack register X`, latest names X or a
//     suffix registered after X; after `ack save X s`, X is listed (unless renamed away since)
//     and restores one of the seeds saved under X from s on;
//  4. the next start (clean_run_dir) removes every *.tmp-* leftover and nothing listed;
//  5. resuming (restore of latest into a template) gives exactly the state of a seed saved under
//     that suffix; with `parts` > 1, also restored as that many boxes of each array (resharding).
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "io/engine.h"
#include "tests/powerloss/model.h"

namespace ckpt::powerloss {

// What the marks (and the starting state) before a crash point promise.
struct Promises {
  std::map<std::string, std::vector<std::int64_t>> saved;  // suffix → seeds saved, in call order
  std::map<std::string, std::size_t> acked;  // suffix → index into saved[suffix] of the newest ack
  std::set<std::string> renamed_away;        // acked suffixes a removal renamed away since
  std::vector<std::string> registered;       // register calls, in order
  std::optional<std::size_t> register_acked;  // index into `registered` of the newest ack
  void apply(const Op& op);                   // a mark, or a rename that takes a suffix away
};

// The promises of a durable run directory: its checkpoints saved and acked, latest registered.
Promises initial_promises(const std::string& run_dir);

// Checks `run_dir` (a materialized crash state; cleanup modifies it) and returns the violations.
std::vector<std::string> check_state(io::Engine& engine, const std::string& run_dir,
                                     const Promises& promises, int parts = 1);

}  // namespace ckpt::powerloss
