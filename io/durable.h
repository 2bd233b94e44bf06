#pragma once
// Durable file-system operations: the building blocks of the commit protocol.
//
// Protocol (docs/design.md, "Commit protocol"):
//  1. A checkpoint is written into `<final>.tmp-<tag>/` beside its final place.
//  2. Every file in it is fsynced, then the directory itself.
//  3. commit_directory renames the temporary directory to `<final>` (RENAME_NOREPLACE, or
//     RENAME_EXCHANGE + removal of the old one when `<final>` exists) and fsyncs the parent.
//     The rename is the commit point.
//  4. Small files such as `latest` are replaced with atomic_replace_file: write
//     `<path>.tmp-<tag>`, fsync, rename over `<path>`, fsync the parent.
//  5. Anything named `*.tmp-*` is garbage from an interrupted writer: remove_leftovers deletes it.
// A directory entry becomes durable only when its parent is fsynced; make_dirs fsyncs the parent
// of every directory it creates. A failed fsync is never retried (the kernel may have dropped the
// dirty pages); the operation fails instead.
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace ckpt::io {

inline constexpr std::string_view kTmpMarker = ".tmp-";

// A tag unique across processes and calls: "<pid>-<counter>-<random>".
std::string unique_tag();

bool is_tmp_name(std::string_view name) noexcept;

// `path` made absolute (against the current directory; left relative if that fails) and
// lexically normal, without a trailing '/': one spelling per path, for comparing paths as keys.
std::string absolute_normal(const std::string& path);

void fsync_dir(const std::string& dir);
// The same at a named fsync site (io/crash_point.h: CKPT_DROP_FSYNC can skip it in test builds).
void fsync_dir(const std::string& dir, std::string_view site);

// Creates `dir` and missing parents, durably. Existing directories are fine.
void make_dirs(const std::string& dir);

// `point_tag` names its crash/fault points before_<tag>_rename and after_<tag>_rename
// (io/crash_point.h).
void atomic_replace_file(const std::string& path, std::string_view content,
                         std::string_view point_tag = "replace");

// Writes a new file (which must not exist) and fsyncs it; the caller fsyncs the directory.
void write_new_file(const std::string& path, std::string_view content);
// The same with the content given as pieces, written in order.
void write_new_file(const std::string& path, std::initializer_list<std::string_view> pieces);

void commit_directory(const std::string& tmp_dir, const std::string& final_dir);

// The temporaries this process is using right now (a save's `<dir>.tmp-<tag>/`, a
// `latest.tmp-<tag>`, a removal's `<dir>.tmp-del-<tag>/`). remove_leftovers never removes them, so
// a job that cleans its run directory again while its own saves are in flight keeps them. Paths
// are compared absolute and normalized. Every note is matched by one forget.
void note_live_tmp(const std::string& path);
void forget_live_tmp(const std::string& path);
bool is_live_tmp(const std::string& path);

// Removes every `*.tmp-*` entry below `root` (not descending into directories that hold a
// manifest), except this process's live temporaries, and returns the removed paths.
std::vector<std::string> remove_leftovers(const std::string& root);

// Removes a directory tree; the caller fsyncs the parent if it must be durable.
void remove_tree(const std::string& path);

}  // namespace ckpt::io
