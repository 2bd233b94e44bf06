#pragma once
// A run directory holds checkpoints under suffixes (possibly nested, "step/100") and the `latest`
// pointer: a text file holding the suffix of the newest registered checkpoint.
#include <boost/json/object.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ckpt {

inline constexpr std::string_view kLatestName = "latest";

struct CheckpointInfo {
  std::string suffix;                // relative to the run directory
  std::string path;                  // run_dir/suffix
  std::optional<std::int64_t> step;  // metadata "step", when it is an integer
  std::uint64_t bytes = 0;           // payload bytes
  std::uint64_t stored_bytes = 0;    // bytes of the data files
  std::size_t leaves = 0;
  std::int64_t created_unix_ns = 0;
  boost::json::object metadata;
  std::string error;  // non-empty when the manifest or metadata could not be read
};

// Throws Error(path_escape | invalid_argument) unless `suffix` is a plain relative path: no
// empty or '.'/'..' parts, not absolute, no temporary marker, not "latest".
void check_suffix(std::string_view suffix);

// Every committed checkpoint below run_dir (directories holding a manifest.ckpt, never *.tmp-*),
// ordered by step, then creation time, then suffix. Symbolic links are not followed.
std::vector<CheckpointInfo> list_checkpoints(const std::string& run_dir);

// The suffix `latest` names, or nullopt when there is no `latest` file.
std::optional<std::string> read_latest(const std::string& run_dir);
// Atomically points `latest` at suffix (which must be a committed checkpoint).
void write_latest(const std::string& run_dir, const std::string& suffix);

// Removes the `*.tmp-*` leftovers of interrupted writers below run_dir (commit protocol, step 5)
// and returns their paths. Call it when a job starts, before any save into run_dir: it would
// also remove the temporary directories of saves in flight.
std::vector<std::string> clean_run_dir(const std::string& run_dir);

}  // namespace ckpt
