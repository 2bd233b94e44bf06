#include "jobs/spec.h"

namespace ckpt::jobs {

ExecutionSpec ExecutionSpec::local(const std::string& root_dir, const std::string& name,
                                   const std::string& project, const std::string& group) {
  ExecutionSpec spec;
  spec.name = name;
  if (!project.empty()) spec.project = project;
  if (!group.empty()) spec.group = group;
  spec.cluster.checkpoints_dir = root_dir;
  return spec;
}

std::string ExecutionSpec::run_rel_path() const { return project + "/" + group + "/" + name; }

}  // namespace ckpt::jobs
