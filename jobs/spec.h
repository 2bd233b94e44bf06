#pragma once
// Where a job runs and where its checkpoints live.
#include <boost/describe/class.hpp>
#include <cstdint>
#include <string>

namespace ckpt::jobs {

struct ClusterConfig {
  std::string checkpoints_dir = "./checkpoints";  // root of every rel_path
  std::string name = "local";
};
BOOST_DESCRIBE_STRUCT(ClusterConfig, (), (checkpoints_dir, name))

struct ExecutionSpec {
  std::string project = "general";
  std::string group = "default";
  std::string name;
  ClusterConfig cluster;
  std::uint32_t process_index = 0;
  std::uint32_t process_count = 1;

  // A single-process spec rooted at root_dir; empty project and group become "general" and
  // "default".
  static ExecutionSpec local(const std::string& root_dir, const std::string& name,
                             const std::string& project = "", const std::string& group = "");

  // project/group/name: the run directory relative to checkpoints_dir.
  std::string run_rel_path() const;
};
BOOST_DESCRIBE_STRUCT(ExecutionSpec, (), (project, group, name, cluster, process_index, process_count))

}  // namespace ckpt::jobs
