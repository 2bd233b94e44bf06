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
  // Of those, bytes in files no other name shares, and bytes in files other checkpoints share
  // (incremental saves link unchanged data, runtime/incremental.h).
  std::uint64_t owned_bytes = 0;
  std::uint64_t shared_bytes = 0;
  std::size_t leaves = 0;
  std::int64_t created_unix_ns = 0;
  boost::json::object metadata;
  std::string error;  // non-empty when the manifest or metadata could not be read
};

// The one rule for checkpoint names, used by save, register, list, gc and leftover cleanup.
// A suffix is a relative path of '/'-separated parts; each part is non-empty, is not "." or "..",
// does not start with '.' (reserved: .ckpt-lock, .ckpt-writer), does not contain the temporary
// marker ".tmp-" (reserved for unfinished writes and removals), is not "latest" (the pointer),
// and holds no control character (bytes below 0x20, 0x7f). Throws Error(path_escape) for an
// absolute suffix or a ".." part, Error(invalid_argument) for the rest; the message shows the
// name escaped.
void check_suffix(std::string_view suffix);
// True when `part` (one path component) may be part of a checkpoint name.
bool is_valid_name_part(std::string_view part) noexcept;
// Throws Error(invalid_argument) unless the last component of the checkpoint directory `dir` may
// name a checkpoint and no component above it holds the temporary marker or a control
// character (a save without a run directory knows no more of its suffix than that).
void check_checkpoint_dir_name(const std::string& dir);
// The suffix of checkpoint directory `dir` (absolute, normal) in `run_dir` (absolute, normal);
// throws Error(invalid_argument) when dir is not below run_dir or the suffix breaks the rule.
std::string suffix_in_run_dir(const std::string& run_dir, const std::string& dir);
// Throws unless run_dir/suffix is a committed checkpoint reached without following a symbolic
// link: Error(invalid_argument | path_escape) for a bad suffix or a link, Error(not_found) when
// there is no manifest.
void require_committed_checkpoint(const std::string& run_dir, const std::string& suffix);
// A name for messages: printable ASCII as is, anything else as \xNN (a NUL in a `latest` file
// must not end or garble the line that reports it).
std::string escape_name(std::string_view name);

// Every committed checkpoint below run_dir (directories holding a manifest.ckpt, never *.tmp-*),
// ordered by step, then creation time, then suffix. Symbolic links are not followed.
std::vector<CheckpointInfo> list_checkpoints(const std::string& run_dir);

// The suffix `latest` names, or nullopt when there is no `latest` file. The file holds the suffix
// and one newline; anything else (a suffix that breaks the rule, control characters, a NUL) is
// Error(corrupt).
std::optional<std::string> read_latest(const std::string& run_dir);
// Atomically points `latest` at suffix (which must be a committed checkpoint).
void write_latest(const std::string& run_dir, const std::string& suffix);

// Removes the `*.tmp-*` leftovers of interrupted writers below run_dir (commit protocol, step 5)
// and returns their paths. This process's own temporaries in use are never removed
// (io::is_live_tmp); another process's are, so call it holding the run directory's writer lease
// (Runtime::claim_run_dir), which no other writer can hold at the same time.
std::vector<std::string> clean_run_dir(const std::string& run_dir);

}  // namespace ckpt
