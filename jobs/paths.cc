#include "jobs/paths.h"

#include <filesystem>

#include "io/error.h"
#include "runtime/catalog.h"

namespace ckpt::jobs {

namespace fs = std::filesystem;

std::string resolve_rel_path(const std::string& root, const std::string& rel_path) {
  check_suffix(rel_path);  // lexical rules: relative, no '..', '.', empty or '.tmp-' parts
  if (root.empty()) throw Error(Errc::invalid_argument, "empty checkpoints_dir");
  fs::path full = fs::path(root) / rel_path;
  // Symbolic links: the deepest existing ancestor must resolve to inside the root.
  std::error_code ec;
  fs::path real_root = fs::weakly_canonical(root, ec);
  if (ec) throw Error(Errc::io, "cannot resolve checkpoints_dir: " + ec.message(), root);
  fs::path real_full = fs::weakly_canonical(full, ec);
  if (ec) throw Error(Errc::io, "cannot resolve path: " + ec.message(), full.string());
  auto [root_end, full_it] = std::mismatch(real_root.begin(), real_root.end(), real_full.begin(),
                                           real_full.end());
  if (root_end != real_root.end() || real_full == real_root) {
    throw Error(Errc::path_escape,
                "path resolves outside checkpoints_dir (" + real_root.string() + ")",
                full.string());
  }
  // Absolute (against the current directory, at call time) and normal: the seed's
  // _get_checkpoint_path promises an absolute path, and a relative checkpoints_dir
  // ("./checkpoints", the default) would otherwise change meaning when the process changes
  // directory.
  fs::path abs = fs::absolute(full, ec);
  if (ec) throw Error(Errc::io, "cannot make the path absolute: " + ec.message(), full.string());
  return abs.lexically_normal().string();
}

std::string checkpoints_dir(const ExecutionSpec& spec) { return spec.cluster.checkpoints_dir; }

std::string rel_path(const ExecutionSpec& spec, const std::string& suffix) {
  // The suffix on its own: inside project/group/name, a reserved name such as "latest" would
  // pass as the last part of an ordinary path.
  check_suffix(suffix);
  return spec.run_rel_path() + "/" + suffix;
}

std::string checkpoint_path(const ExecutionSpec& spec, const std::string& suffix) {
  return resolve_rel_path(checkpoints_dir(spec), rel_path(spec, suffix));
}

std::string run_dir(const ExecutionSpec& spec) {
  return resolve_rel_path(checkpoints_dir(spec), spec.run_rel_path());
}

}  // namespace ckpt::jobs
