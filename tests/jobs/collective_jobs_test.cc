// Jobs of several processes (ExecutionSpec::process_index/process_count), the processes simulated
// by threads joined by an in-process communicator (LocalGroup), so that the collective job API
// runs under the sanitizers: collective save and register, job.json written once, `latest` and
// `checkpoints` agreed, from_checkpoint under another process count, agreed failures, and specs
// that disagree with their communicator. train_loop_test runs the real thing under mpirun.
#include <doctest/doctest.h>

#include <boost/describe/class.hpp>
#include <filesystem>
#include <fstream>
#include <future>

#include "io/error.h"
#include "jobs/job.h"
#include "runtime/sharding.h"
#include "tests/test_util.h"

using namespace ckpt;
using namespace ckpt::jobs;
using ckpt::test::TempDir;

struct ShardToyConfig {
  std::int64_t rows = 10;
  std::int64_t cols = 3;
};
BOOST_DESCRIBE_STRUCT(ShardToyConfig, (), (rows, cols))

// Its state: "w", a rows x cols float32 array cut by rows across the job's processes (each
// element's value is a function of its global index), and "step", replicated.
class ShardToyJob : public RestoreableJob<ShardToyConfig> {
 public:
  ShardToyJob(ExecutionSpec spec, ShardToyConfig config)
      : RestoreableJob(std::move(spec), std::move(config)) {
    std::tie(start_, shape_) = split_box(global(), 0, this->spec().process_index,
                                         this->spec().process_count);
    values.reserve(1);  // an empty box still needs an address
    values.assign(shape_[0] * shape_[1], 0.0f);
  }
  Shape global() const {
    return {static_cast<std::uint64_t>(args().rows), static_cast<std::uint64_t>(args().cols)};
  }
  static float value(std::uint64_t g) { return static_cast<float>(g) * 0.5f + 1.0f; }
  void fill() {
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = value(start_[0] * global()[1] + i);
  }
  std::size_t wrong() const {
    std::size_t n = 0;
    for (std::size_t i = 0; i < values.size(); ++i) n += values[i] != value(start_[0] * global()[1] + i);
    return n;
  }
  Tree state() {
    Tree t;
    t["w"] = Array::view(DType::f32, shape_, values.data());
    t["step"] = Array::view(DType::i64, {}, &step);
    return t;
  }
  Sharding sharding() const {
    Sharding s;
    s.shard("w", global(), start_);
    return s;
  }
  boost::asio::awaitable<void> run() override { co_return; }
  void restore_from_path(const std::string& rel_path) override {
    auto [tree, metadata] = get_tree_and_metadata_from_path(rel_path, state(), sharding());
    restored_step = metadata.at("step").as_int64();
  }

  std::vector<float> values;
  std::int64_t step = 0;
  std::int64_t restored_step = -1;

 private:
  Shape start_, shape_;
};
CKPT_REGISTER_JOB(ShardToyJob, "shard_toy");

namespace {

RuntimeOptions group_options(std::shared_ptr<Communicator> comm) {
  RuntimeOptions o;
  o.copy_threads = 1;
  o.io_threads = 1;
  o.unit_bytes = 4096;
  o.staging_budget = 4u << 20;
  o.collective_timeout = std::chrono::seconds(10);
  o.communicator = std::move(comm);
  return o;
}

ExecutionSpec process_spec(const TempDir& dir, std::uint32_t index, std::uint32_t count) {
  ExecutionSpec spec = ExecutionSpec::local(dir.path(), "sharded");
  spec.process_index = index;
  spec.process_count = count;
  return spec;
}

// Runs fn(rank) for `count` simulated processes at once; returns each one's error ("" if none).
std::vector<std::string> as_processes(int count, const std::function<void(int)>& fn) {
  std::vector<std::future<void>> running;
  for (int r = 0; r < count; ++r) running.push_back(std::async(std::launch::async, fn, r));
  std::vector<std::string> errors;
  for (auto& f : running) {
    try {
      f.get();
      errors.emplace_back();
    } catch (const std::exception& e) {
      errors.emplace_back(e.what());
    }
  }
  return errors;
}

// `count` processes save the toy state as step/<step> of the run and register it.
void save_as_processes(const TempDir& dir, int count, std::int64_t step) {
  LocalGroup group(count);
  auto errors = as_processes(count, [&](int r) {
    ShardToyJob job(process_spec(dir, static_cast<std::uint32_t>(r), static_cast<std::uint32_t>(count)), {});
    job.set_runtime(std::make_shared<Runtime>(group_options(group.member(r))));
    run_blocking(job);  // on_start: process 0 claims the run directory and cleans it
    job.fill();
    job.step = step;
    SaveOptions options;
    options.sharding = job.sharding();
    boost::json::object metadata;
    metadata["step"] = step;
    const std::string suffix = "step/" + std::to_string(step);
    job.save_tree_and_metadata(suffix, job.state(), metadata, options).wait();
    job.register_latest(suffix).wait();
  });
  for (const auto& e : errors) CHECK_MESSAGE(e.empty(), e);
}

}  // namespace

TEST_CASE("a job of three processes saves and registers collectively, writes job.json once, and "
          "every process sees the same latest and checkpoints") {
  TempDir dir;
  save_as_processes(dir, 3, 5);
  save_as_processes(dir, 3, 7);
  const std::string checkpoint = checkpoint_path(process_spec(dir, 0, 3), "step/7");
  std::size_t job_files = 0, data_files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(checkpoint)) {
    const std::string name = entry.path().filename();
    job_files += name == kJobFile;
    data_files += name.rfind("data-", 0) == 0;
  }
  CHECK(job_files == 1);
  CHECK(data_files == 3);  // each process wrote its own shard file
  auto saved = ckpt::jobs::detail::read_saved_job(checkpoint);
  CHECK(saved.key == "shard_toy");
  CHECK(saved.spec.process_count == 3);
  CHECK(saved.spec.process_index == 0);  // process 0's spec: it wrote job.json

  LocalGroup group(3);
  std::vector<std::optional<std::string>> latest(3);
  std::vector<std::vector<std::string>> lists(3);
  auto errors = as_processes(3, [&](int r) {
    auto spec = process_spec(dir, static_cast<std::uint32_t>(r), 3);
    latest[static_cast<std::size_t>(r)] = ShardToyJob::latest(spec, group.member(r));
    lists[static_cast<std::size_t>(r)] = ShardToyJob::checkpoints(spec, group.member(r));
  });
  for (int r = 0; r < 3; ++r) {
    CHECK(errors[static_cast<std::size_t>(r)].empty());
    CHECK(latest[static_cast<std::size_t>(r)] == std::optional<std::string>("step/7"));
    CHECK(lists[static_cast<std::size_t>(r)] == std::vector<std::string>{"step/5", "step/7"});
  }
}

TEST_CASE("from_checkpoint restores a job saved by three processes under two processes and under "
          "one") {
  TempDir dir;
  save_as_processes(dir, 3, 7);
  LocalGroup group(2);
  std::vector<std::size_t> wrong(2, 99);
  std::vector<std::int64_t> steps(2, -1);
  auto errors = as_processes(2, [&](int r) {
    auto runtime = std::make_shared<Runtime>(group_options(group.member(r)));
    auto [job, config] = from_checkpoint<ShardToyJob>(
        "step/7", process_spec(dir, static_cast<std::uint32_t>(r), 2), std::nullopt, true, runtime);
    wrong[static_cast<std::size_t>(r)] = job->wrong() + (job->values.size() == 15 ? 0 : 1000);
    steps[static_cast<std::size_t>(r)] = job->restored_step;
  });
  for (std::size_t r = 0; r < 2; ++r) {
    CHECK_MESSAGE(errors[r].empty(), errors[r]);
    CHECK(wrong[r] == 0);  // 5 of the 10 rows each, every element as saved
    CHECK(steps[r] == 7);
  }

  auto alone = std::make_shared<Runtime>(group_options(nullptr));
  auto [job, config] =
      from_checkpoint<ShardToyJob>("step/7", process_spec(dir, 0, 1), std::nullopt, true, alone);
  CHECK(job->values.size() == 30);
  CHECK(job->wrong() == 0);
  CHECK(job->restored_step == 7);
}

TEST_CASE("from_checkpoint of several processes fails on every process, naming the one whose "
          "restore failed") {
  TempDir dir;
  save_as_processes(dir, 2, 3);
  LocalGroup group(2);
  auto errors = as_processes(2, [&](int r) {
    auto runtime = std::make_shared<Runtime>(group_options(group.member(r)));
    // Process 1 alone asks for another global shape: its restore fails, the other's does not.
    std::optional<boost::json::value> overlay;
    if (r == 1) overlay = boost::json::object{{"cols", 4}};
    from_checkpoint<ShardToyJob>("step/3", process_spec(dir, static_cast<std::uint32_t>(r), 2),
                                 overlay, true, runtime);
  });
  for (const auto& e : errors) {
    CAPTURE(e);
    CHECK(test::contains(e, "process 1: "));
    CHECK(test::contains(e, "'w': shape [10, 4] in the template, [10, 3] in the checkpoint"));
  }
  CHECK(errors[0] == errors[1]);
}

TEST_CASE("a job whose spec disagrees with its Runtime's communicator is refused, naming both") {
  TempDir dir;
  auto expect_refused = [&](const ExecutionSpec& spec, std::shared_ptr<Communicator> comm,
                            const std::string& part) {
    ShardToyJob job(spec, {});
    job.set_runtime(std::make_shared<Runtime>(group_options(std::move(comm))));
    try {
      job.runtime();
      FAIL("no error for " << part);
    } catch (const Error& e) {
      CHECK(e.code() == Errc::invalid_argument);
      CHECK_MESSAGE(test::contains(e.what(), part), e.what());
    }
  };
  expect_refused(process_spec(dir, 1, 2), nullptr, "process 1 of 2, but the job's Runtime has no communicator");
  LocalGroup group(2);
  expect_refused(process_spec(dir, 0, 3), group.member(0), "is process 0 of 2");
  expect_refused(process_spec(dir, 1, 2), group.member(0), "names process 1 of 2");
  expect_refused(process_spec(dir, 0, 1), group.member(1), "is process 1 of 2");
  try {
    ckpt::jobs::detail::check_processes(process_spec(dir, 2, 2), group.member(0).get());
    FAIL("no error for process_index 2 of 2");
  } catch (const Error& e) {
    CHECK(test::contains(e.what(), "process_index 2 is not below process_count 2"));
  }
  // The single-process forms stay as they were: no communicator, process 0 of 1.
  ShardToyJob alone(process_spec(dir, 0, 1), {});
  alone.set_runtime(std::make_shared<Runtime>(group_options(nullptr)));
  CHECK(alone.communicator() == nullptr);
}
