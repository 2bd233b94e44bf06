#pragma once
// The subcommands of the `ckpt` tool. Each prints its report (a table for people, or one JSON
// document on stdout with `json`) and returns the process exit code. ckpt::Error escapes to main,
// which turns it into one line on stderr and exit code 1.
#include <cstdint>
#include <string>

#include "io/engine.h"

namespace ckpt::tools {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;  // something corrupt, missing or failed
inline constexpr int kExitUsage = 2;   // the command line could not be parsed

// Committed checkpoints of a run directory, `latest` marked. Exits 0 whenever the directory could
// be listed, also when some rows show an unreadable checkpoint: `verify` is the integrity check.
int run_list(const std::string& run_dir, bool json);

// Everything the manifest of one checkpoint says, its metadata, files and leaves. Exits 1 when
// the metadata cannot be read (the rest is still printed).
int run_inspect(const std::string& dir, bool json);

// Checks every checksum of one checkpoint, or of every checkpoint of a run directory (and that
// `latest` names one of them).
int run_verify(const std::string& path, bool json, io::EngineKind engine);

// Prints the suffix `latest` names; exits 1 when there is none or it does not name a readable
// checkpoint.
int run_latest(const std::string& run_dir);

struct GcOptions {
  std::size_t keep = 0;          // checkpoints to keep besides latest and period multiples
  std::int64_t keep_period = 0;  // keep steps that are multiples of this
  std::string best_metric;       // keep the best by this metadata key instead of the newest
  std::string best_mode = "min"; // min | max
  std::string prefix;            // only suffixes starting with this count and may go
  double wait_seconds = 30;      // for a live writer's mutation lock
  bool dry_run = false;
  bool leftovers = false;        // also remove *.tmp-* leftovers (only when no writer runs)
};

// Removes the checkpoints the retention policy does not keep.
int run_gc(const std::string& run_dir, const GcOptions& options, bool json);

// Writes a self-contained copy of the checkpoint src at dst: every file copied (none shared with
// another checkpoint), every block's checksum checked on the way, committed atomically.
int run_export(const std::string& src, const std::string& dst, bool json);

// Throws Error(not_found) unless `path` is an existing directory.
void require_directory(const std::string& path, const char* what);

}  // namespace ckpt::tools
