#pragma once
// Path rules of the jobs layer. Every rel_path is relative to the cluster's checkpoints_dir and
// must stay inside it: an absolute path, a '..' or '.' part, an empty part, a '.tmp-' part, or a
// path that resolves through a symbolic link to outside checkpoints_dir is rejected with
// Error(path_escape | invalid_argument) before anything is read or written.
#include <string>

#include "jobs/spec.h"

namespace ckpt::jobs {

// Validates rel_path lexically and against the file system; returns checkpoints_dir/rel_path,
// absolute and lexically normal (a relative checkpoints_dir is taken from the current directory
// at call time; symbolic links are kept as spelled).
std::string resolve_rel_path(const std::string& checkpoints_dir, const std::string& rel_path);

std::string checkpoints_dir(const ExecutionSpec& spec);
// project/group/name/suffix. The suffix must be a checkpoint name (check_suffix: relative, no
// '.', '..', empty or temporary parts, not "latest"), else Error(invalid_argument | path_escape).
std::string rel_path(const ExecutionSpec& spec, const std::string& suffix);
// checkpoints_dir/project/group/name/suffix, validated, absolute and normal (the seed's
// _get_checkpoint_path).
std::string checkpoint_path(const ExecutionSpec& spec, const std::string& suffix);
// checkpoints_dir/project/group/name, validated, absolute and normal.
std::string run_dir(const ExecutionSpec& spec);

}  // namespace ckpt::jobs
