#pragma once
// Named crash and fault points in the commit paths (RocksDB's TEST_KILL_RANDOM/TEST_SYNC_POINT).
//
// Compiled in only with the CMake option CKPT_CRASH_POINTS, which defines
// CKPT_CRASH_POINTS_ENABLED for ckpt_io and everything that links it; otherwise the macros are
// empty. The option defaults to CKPT_TESTS (ON), so the plain `make test` build from a clean clone
// runs the crash tests without a second, instrumented copy of the libraries; configure with
// -DCKPT_CRASH_POINTS=OFF (or -DCKPT_TESTS=OFF) for a library without them. Compiled in but
// unarmed, a point costs one relaxed load of a flag cached at start-up and one branch.
//
// Armed from the environment, read once at start-up (reload_crash_points() re-reads it):
//   CKPT_CRASH_AT=name[:n]        the n-th time (default 1) the process reaches point `name`, it
//                                 sends itself SIGKILL: no destructor, no flush, like a crash.
//   CKPT_FAULT_AT=name:errno[:n]  a fault point (CKPT_FAULT_POINT) named `name` throws
//                                 sys_error with that errno (EIO, ENOSPC, ... or a number): every
//                                 time it is reached, or only the n-th time when n is given.
// Points and where they are:
//   after_snapshot      runtime/runtime.cc, the save's arrays are copied into staging
//   mid_write           runtime/runtime.cc, the first data write of a save has completed
//   after_data_fsync    runtime/runtime.cc, the data file is fsynced, nothing else written yet
//   before_dir_rename   io::commit_directory, the temporary directory is complete and fsynced
//   after_dir_rename    io::commit_directory, renamed (the commit), parent not yet fsynced
//   before_removal_rename, after_removal_rename   runtime/retention.cc (retention, ckpt gc):
//                       a checkpoint about to be / just renamed to <suffix>.tmp-del-<tag>
//   removal_unlink      runtime/retention.cc, before each file of a removed checkpoint is unlinked
//   before_shard_report runtime/collective_commit.cc, a collective save: this process's data file is
//                       durable (or failed), its report to process 0 not yet sent
//   before_global_manifest  runtime/collective_commit.cc, process 0: every report in and merged,
//                       finish_checkpoint (metadata, manifest, fsync, rename) not yet begun
//   before_<tag>_rename io::atomic_replace_file, the temporary file is written and fsynced
//   after_<tag>_rename  io::atomic_replace_file, renamed, parent not yet fsynced
// atomic_replace_file's tag is "latest" for the latest pointer (write_latest), else "replace".
// A SIGKILL tests consistency after a process crash; data already in the page cache survives it.
//
// Fsync sites (CKPT_FSYNC_DROP, on where crash points are; the power-loss explorer's proof that
// it can fail, tests/powerloss/): CKPT_DROP_FSYNC=site, read once at start-up, makes the fsync
// of that site a successful no-op, so the explorer must then report violations. kFsyncSites
// lists them: data_file (the data file, engine fsync), new_file (metadata.json, extra JSON files,
// manifest.ckpt), checkpoint_dir (the temporary directory before its rename), commit_parent (the
// parent after the commit rename), latest_file / latest_parent (write_latest's temporary file and
// the run directory after its rename), removal_parent (the parent after a retention or gc
// removal renamed a checkpoint away), make_dirs_parent (the parent of a directory make_dirs
// created).
#include <atomic>
#include <string>
#include <string_view>

namespace ckpt::io {

namespace detail {
extern std::atomic<bool> crash_points_armed_flag;
}

constexpr bool crash_points_compiled_in() noexcept {
#if defined(CKPT_CRASH_POINTS_ENABLED)
  return true;
#else
  return false;
#endif
}

inline bool crash_points_armed() noexcept {
  return detail::crash_points_armed_flag.load(std::memory_order_relaxed);
}

// Called by the macros when armed: kills the process if `name` is the armed crash point.
void crash_point_reached(std::string_view name);
// As crash_point_reached, and throws Error (sys_error naming `path`) if `name` is the armed fault.
void fault_point_reached(std::string_view name, const std::string& path);

// Re-reads CKPT_CRASH_AT and CKPT_FAULT_AT (for tests that setenv in-process) and resets the hit
// counts. Throws Error(invalid_argument) for a malformed value.
void reload_crash_points();

inline constexpr std::string_view kFsyncSites[] = {
    "data_file",     "new_file",       "checkpoint_dir", "commit_parent",
    "latest_file",   "latest_parent",  "removal_parent", "make_dirs_parent"};

// True when CKPT_DROP_FSYNC names `site` (logs a warning the first time it drops one). Always
// false unless compiled with CKPT_FSYNC_DROP.
bool fsync_dropped(std::string_view site);

}  // namespace ckpt::io

#if defined(CKPT_CRASH_POINTS_ENABLED)
// A point where the process may be killed. Safe anywhere, including IO completions.
#define CKPT_CRASH_POINT(name)                                                   \
  do {                                                                           \
    if (::ckpt::io::crash_points_armed()) ::ckpt::io::crash_point_reached(name); \
  } while (0)
// A point where the process may be killed or an injected error thrown; `name` and `path` are
// evaluated only when armed. Only where an exception is handled like a failed system call.
#define CKPT_FAULT_POINT(name, path)                                                   \
  do {                                                                                 \
    if (::ckpt::io::crash_points_armed()) ::ckpt::io::fault_point_reached(name, path); \
  } while (0)
#else
#define CKPT_CRASH_POINT(name) \
  do {                         \
  } while (0)
#define CKPT_FAULT_POINT(name, path) \
  do {                               \
  } while (0)
#endif
