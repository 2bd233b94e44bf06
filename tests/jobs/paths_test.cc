// Path rules of the jobs layer (jobs/paths.h): absolute results, one checkpoint-name rule.
#include "jobs/paths.h"

#include <doctest/doctest.h>

#include <boost/describe/class.hpp>
#include <filesystem>

#include "io/error.h"
#include "jobs/job.h"
#include "tests/test_util.h"

using namespace ckpt;
using namespace ckpt::jobs;
using ckpt::test::catch_error;
using ckpt::test::TempDir;
namespace fs = std::filesystem;

namespace {

struct EmptyConfig {
  int unused = 0;
};
BOOST_DESCRIBE_STRUCT(EmptyConfig, (), (unused))

class PathJob : public CheckpointedJob<EmptyConfig> {
 public:
  using CheckpointedJob::CheckpointedJob;
  boost::asio::awaitable<void> run() override { co_return; }
};

// Runs the test from `dir`, and goes back to where it was, whatever happens.
class InDirectory {
 public:
  explicit InDirectory(const std::string& dir) : previous_(fs::current_path()) {
    fs::current_path(dir);
  }
  ~InDirectory() {
    std::error_code ec;
    fs::current_path(previous_, ec);
  }
  InDirectory(const InDirectory&) = delete;
  InDirectory& operator=(const InDirectory&) = delete;

 private:
  fs::path previous_;
};

ExecutionSpec spec_in(const std::string& checkpoints_dir) {
  ExecutionSpec spec;
  spec.name = "r";
  spec.cluster.checkpoints_dir = checkpoints_dir;
  return spec;
}

}  // namespace

TEST_CASE(
    "get_checkpoint_path is absolute and normal when checkpoints_dir is the relative default") {
  TempDir dir;
  InDirectory here(dir.path());
  const std::string cwd = fs::current_path().string();
  ExecutionSpec spec;
  spec.name = "r";
  REQUIRE(spec.cluster.checkpoints_dir == "./checkpoints");
  const std::string path = PathJob::get_checkpoint_path(spec, "step/1");
  CHECK(fs::path(path).is_absolute());
  CHECK(path == cwd + "/checkpoints/general/default/r/step/1");
  CHECK(checkpoint_path(spec, "step/1") == path);
}

TEST_CASE("checkpoint_path and run_dir normalize a relative checkpoints_dir with dot parts") {
  TempDir dir;
  fs::create_directories(dir / "a/b");
  InDirectory here(dir.path());
  const std::string cwd = fs::current_path().string();
  ExecutionSpec spec = spec_in("a/./b/../b/");
  CHECK(run_dir(spec) == cwd + "/a/b/general/default/r");
  CHECK(checkpoint_path(spec, "s") == cwd + "/a/b/general/default/r/s");
  CHECK(resolve_rel_path("a/b", "x/y") == cwd + "/a/b/x/y");
}

TEST_CASE("checkpoint_path and run_dir keep an absolute checkpoints_dir as it is") {
  TempDir dir;
  ExecutionSpec spec = spec_in(dir.path() + "//");
  CHECK(run_dir(spec) == dir.path() + "/general/default/r");
  CHECK(checkpoint_path(spec, "step/7") == dir.path() + "/general/default/r/step/7");
}

TEST_CASE("rel_path applies the checkpoint-name rule to the suffix") {
  ExecutionSpec spec = spec_in("/ck");
  CHECK(rel_path(spec, "step/5") == "general/default/r/step/5");
  for (const char* bad : {"latest", "", "a//b", "./x", "x/.", "s.tmp-1"}) {
    CAPTURE(bad);
    auto e = catch_error([&] { (void)rel_path(spec, bad); });
    REQUIRE(e);
    CHECK(e->code() == Errc::invalid_argument);
  }
  for (const char* escape : {"..", "x/../..", "/abs"}) {
    CAPTURE(escape);
    auto e = catch_error([&] { (void)rel_path(spec, escape); });
    REQUIRE(e);
    CHECK(e->code() == Errc::path_escape);
  }
}

TEST_CASE("saving with suffix latest fails with invalid_argument before anything is written") {
  TempDir dir;
  PathJob job(ExecutionSpec::local(dir.path(), "r"), EmptyConfig{});
  std::vector<float> values(4, 1.0f);
  Tree tree;
  tree["v"] = Array::view(DType::f32, {values.size()}, values.data());
  auto e = catch_error([&] { (void)job.save_tree_and_metadata("latest", tree, {}); });
  REQUIRE(e);
  CHECK(e->code() == Errc::invalid_argument);
  CHECK(ckpt::test::list_dir(dir.path()).empty());
  // The same name is refused by the other suffix-taking methods and the legacy helper.
  CHECK(catch_error([&] { (void)PathJob::get_checkpoint_path(job.spec(), "latest"); }));
  CHECK(catch_error([&] { (void)job.get_metadata("latest"); }));
}
