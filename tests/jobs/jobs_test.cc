// The jobs API: every method of the seed, configs and merge patches, the registry, path safety.
#include <doctest/doctest.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/describe/class.hpp>
#include <filesystem>
#include <thread>

#include "io/durable.h"
#include "io/error.h"
#include "io/fault_engine.h"
#include "jobs/job.h"
#include "runtime/checkpoint.h"
#include "tests/test_util.h"

using namespace ckpt;
using namespace ckpt::jobs;
using ckpt::test::TempDir;
namespace fs = std::filesystem;

struct OptimConfig {
  double lr = 0.1;
  std::vector<std::int64_t> milestones;
};
BOOST_DESCRIBE_STRUCT(OptimConfig, (), (lr, milestones))

struct ToyConfig {
  std::int64_t width = 4;
  std::string name = "toy";
  bool flag = false;
  std::optional<double> clip;
  OptimConfig optim;
};
BOOST_DESCRIBE_STRUCT(ToyConfig, (), (width, name, flag, clip, optim))

// A job whose state is one array of `width` floats.
class ToyJob : public RestoreableJob<ToyConfig> {
 public:
  ToyJob(ExecutionSpec spec, ToyConfig config)
      : RestoreableJob(std::move(spec), std::move(config)), values(static_cast<std::size_t>(args().width), 0.0f) {}
  Tree state() {
    Tree t;
    t["values"] = Array::view(DType::f32, {values.size()}, values.data());
    return t;
  }
  boost::asio::awaitable<void> run() override {
    for (auto& v : values) v += 1.0f;
    ++runs;
    co_return;
  }
  void restore_from_path(const std::string& rel_path) override {
    auto [tree, metadata] = get_tree_and_metadata_from_path(rel_path, state());
    restored_from = rel_path;
    restored_step = metadata.at("step").as_int64();
  }
  std::vector<float> values;
  int runs = 0;
  std::string restored_from;
  std::int64_t restored_step = -1;
};
CKPT_REGISTER_JOB(ToyJob, "toy");

// Derived from ToyJob and registered: from_checkpoint_path<ToyJob> must build this class.
class FancyToyJob : public ToyJob {
 public:
  using ToyJob::ToyJob;
};
CKPT_REGISTER_JOB(FancyToyJob, "fancy_toy");

// Not registered at all.
class UnregisteredToyJob : public ToyJob {
 public:
  using ToyJob::ToyJob;
};

namespace {
std::shared_ptr<Runtime> test_runtime() {
  RuntimeOptions o;
  o.staging_budget = 64u << 20;
  o.unit_bytes = 1u << 20;
  static auto rt = std::make_shared<Runtime>(o);
  return rt;
}

template <typename J = ToyJob>
std::unique_ptr<J> make_job(const TempDir& dir, const std::string& name, ToyConfig cfg = {}) {
  auto job = std::make_unique<J>(ExecutionSpec::local(dir.path(), name), cfg);
  job->set_runtime(test_runtime());
  return job;
}

boost::json::object step_md(std::int64_t step) {
  boost::json::object md;
  md["step"] = step;
  return md;
}
}  // namespace

TEST_CASE("ExecutionSpec::local defaults project and group and builds paths") {
  auto spec = ExecutionSpec::local("/ck", "run1");
  CHECK(spec.project == "general");
  CHECK(spec.group == "default");
  CHECK(rel_path(spec, "step/5") == "general/default/run1/step/5");
  auto custom = ExecutionSpec::local("/ck", "n", "p", "g");
  CHECK(custom.run_rel_path() == "p/g/n");
  TempDir dir;
  auto s = ExecutionSpec::local(dir.path(), "r");
  CHECK(ToyJob::get_checkpoint_path(s, "step/1") == dir.path() + "/general/default/r/step/1");
}

TEST_CASE("BasicJob runs through its call operator and skips a done job") {
  TempDir dir;
  auto job = make_job(dir, "basic");
  CHECK_FALSE(job->done());
  run_blocking(*job);
  CHECK(job->runs == 1);
  job->finish();
  CHECK(job->done());
  run_blocking(*job);
  CHECK(job->runs == 1);
  CHECK(job->args().width == 4);
}

TEST_CASE("save_tree_and_metadata and get_tree_and_metadata round trip a job's state") {
  TempDir dir;
  auto job = make_job(dir, "rt");
  job->values = {1, 2, 3, 4};
  SaveHandle h = job->save_tree_and_metadata("step/1", job->state(), step_md(1));
  h.wait();
  CHECK(fs::exists(dir / "general/default/rt/step/1/job.json"));
  CHECK(fs::exists(dir / "general/default/rt/step/1/config.json"));
  auto other = make_job(dir, "rt");
  auto [tree, md] = other->get_tree_and_metadata("step/1", other->state());
  CHECK(md.at("step").as_int64() == 1);
  CHECK(other->values == std::vector<float>{1, 2, 3, 4});
  CHECK(other->get_metadata("step/1").at("step").as_int64() == 1);
}

TEST_CASE("a job with incremental saves shares what did not change and restores it") {
  TempDir dir;
  auto job = make_job(dir, "inc", ToyConfig{4096});
  job->set_incremental(true);
  std::fill(job->values.begin(), job->values.end(), 1.0f);
  job->save_tree_and_metadata("step/1", job->state(), step_md(1)).wait();
  SaveHandle h = job->save_tree_and_metadata("step/2", job->state(), step_md(2));
  h.wait();
  CHECK(h.timings().written_bytes == 0);  // nothing changed
  CHECK(h.timings().stored_bytes == 4096 * 4);
  auto other = make_job(dir, "inc", ToyConfig{4096});
  other->get_tree_and_metadata("step/2", other->state());
  CHECK(other->values == job->values);
}

TEST_CASE("a job loads another job's checkpoint through the _from_path methods") {
  TempDir dir;
  auto writer = make_job(dir, "writer");
  writer->values = {5, 6, 7, 8};
  writer->save_tree_and_metadata("step/3", writer->state(), step_md(3)).wait();
  auto reader = make_job(dir, "reader");
  auto [tree, md] = reader->get_tree_and_metadata_from_path("general/default/writer/step/3", reader->state());
  CHECK(reader->values == std::vector<float>{5, 6, 7, 8});
  CHECK(reader->get_metadata_from_path("general/default/writer/step/3").at("step").as_int64() == 3);
  // And saves into another run's directory.
  reader->save_tree_and_metadata_from_path("shared/x/y/final", reader->state(), step_md(9)).wait();
  CHECK(read_metadata(dir / "shared/x/y/final").at("step").as_int64() == 9);
}

TEST_CASE("partial restore through the jobs API restores only the template's leaves") {
  TempDir dir;
  auto job = make_job(dir, "partial");
  job->values = {1, 1, 1, 1};
  Tree full = job->state();
  std::vector<float> extra(3, 2.0f);
  full["extra"] = Array::view(DType::f32, {3}, extra.data());
  job->save_tree_and_metadata("step/1", full, step_md(1)).wait();
  auto other = make_job(dir, "partial");
  CHECK_THROWS_AS(other->get_tree_and_metadata("step/1", other->state()), Error);
  other->get_tree_and_metadata("step/1", other->state(), true);
  CHECK(other->values == std::vector<float>{1, 1, 1, 1});
}

TEST_CASE("register_latest, latest and checkpoints list the run's committed checkpoints") {
  TempDir dir;
  auto job = make_job(dir, "reg");
  CHECK_FALSE(ToyJob::latest(job->spec()).has_value());
  CHECK(ToyJob::checkpoints(job->spec()).empty());
  for (int s : {100, 200, 300}) {
    job->save_tree_and_metadata("step/" + std::to_string(s), job->state(), step_md(s));
    job->register_latest("step/" + std::to_string(s));
  }
  test_runtime()->drain();
  CHECK(ToyJob::latest(job->spec()) == "step/300");
  CHECK(ToyJob::checkpoints(job->spec()) == std::vector<std::string>{"step/100", "step/200", "step/300"});
  // A leftover of an interrupted save is never listed.
  io::make_dirs(dir / "general/default/reg/step/400.tmp-1-2-3");
  CHECK(ToyJob::checkpoints(job->spec()).size() == 3);
}

TEST_CASE("restore and from_checkpoint rebuild the registered class with the saved config") {
  TempDir dir;
  ToyConfig cfg;
  cfg.width = 3;
  cfg.name = "saved";
  auto fancy = make_job<FancyToyJob>(dir, "fancy", cfg);
  fancy->values = {9, 8, 7};
  fancy->save_tree_and_metadata("step/2", fancy->state(), step_md(2)).wait();
  auto spec = ExecutionSpec::local(dir.path(), "fancy");
  auto [job, config] = from_checkpoint<ToyJob>("step/2", spec);
  CHECK(dynamic_cast<FancyToyJob*>(job.get()) != nullptr);
  CHECK(config.name == "saved");
  CHECK(job->values == std::vector<float>{9, 8, 7});
  CHECK(job->restored_step == 2);
  job->restore("step/2");
  CHECK(job->restored_from == "general/default/fancy/step/2");
}

TEST_CASE("from_checkpoint_path applies runtime_cfg as a JSON merge patch") {
  TempDir dir;
  ToyConfig cfg;
  cfg.width = 2;
  cfg.optim.lr = 0.5;
  cfg.optim.milestones = {10, 20};
  cfg.clip = 1.0;
  auto job = make_job(dir, "merge", cfg);
  job->save_tree_and_metadata("s", job->state(), step_md(0)).wait();
  auto spec = ExecutionSpec::local(dir.path(), "merge");
  auto patch = boost::json::parse(R"({"name": "patched", "optim": {"lr": 0.01}, "clip": null})");
  auto [restored, merged] = from_checkpoint_path<ToyJob>("general/default/merge/s", spec, patch);
  CHECK(merged.name == "patched");
  CHECK(merged.optim.lr == doctest::Approx(0.01));
  CHECK(merged.optim.milestones == std::vector<std::int64_t>{10, 20});  // kept
  CHECK(merged.width == 2);
  CHECK_FALSE(merged.clip.has_value());  // null empties an optional
  CHECK(restored->args().name == "patched");
}

TEST_CASE("config merge errors name the unknown key or the key of the wrong type") {
  TempDir dir;
  auto job = make_job(dir, "bad");
  job->save_tree_and_metadata("s", job->state(), step_md(0)).wait();
  auto spec = ExecutionSpec::local(dir.path(), "bad");
  CHECK_THROWS_WITH_AS(from_checkpoint<ToyJob>("s", spec, boost::json::parse(R"({"optim": {"lrr": 1}})")),
                       doctest::Contains("optim.lrr"), Error);
  CHECK_THROWS_WITH_AS(from_checkpoint<ToyJob>("s", spec, boost::json::parse(R"({"width": "wide"})")),
                       doctest::Contains("'width'"), Error);
  CHECK_THROWS_WITH_AS(from_checkpoint<ToyJob>("s", spec, boost::json::parse(R"({"optim": {"milestones": [1, "x"]}})")),
                       doctest::Contains("optim.milestones[1]"), Error);
  CHECK_THROWS_WITH_AS(config_from_json<ToyConfig>(boost::json::parse(R"({"flag": 1})")),
                       doctest::Contains("'flag'"), Error);
}

TEST_CASE("merge_patch follows RFC 7386") {
  auto j = [](const char* s) { return boost::json::parse(s); };
  CHECK(merge_patch(j(R"({"a":"b"})"), j(R"({"a":"c"})")) == j(R"({"a":"c"})"));
  CHECK(merge_patch(j(R"({"a":"b"})"), j(R"({"b":"c"})")) == j(R"({"a":"b","b":"c"})"));
  CHECK(merge_patch(j(R"({"a":"b"})"), j(R"({"a":null})")) == j(R"({})"));
  CHECK(merge_patch(j(R"({"a":["b"]})"), j(R"({"a":"c"})")) == j(R"({"a":"c"})"));
  CHECK(merge_patch(j(R"({"a":{"b":"c"}})"), j(R"({"a":{"b":"d","c":null}})")) == j(R"({"a":{"b":"d"}})"));
  CHECK(merge_patch(j(R"(["a","b"])"), j(R"(["c","d"])")) == j(R"(["c","d"])"));
  CHECK(merge_patch(j(R"({"e":null})"), j(R"({"a":1})")) == j(R"({"e":null,"a":1})"));
  CHECK(merge_patch(j(R"({})"), j(R"({"a":{"bb":{"ccc":null}}})")) == j(R"({"a":{"bb":{}}})"));
}

TEST_CASE("from_checkpoint with resume continues the saved run, without it starts a new one") {
  TempDir dir;
  auto job = make_job(dir, "original");
  job->save_tree_and_metadata("step/1", job->state(), step_md(1)).wait();
  auto other_spec = ExecutionSpec::local(dir.path(), "fresh");
  auto [resumed, c1] = from_checkpoint_path<ToyJob>("general/default/original/step/1", other_spec, std::nullopt, true);
  CHECK(resumed->spec().name == "original");
  auto [forked, c2] = from_checkpoint_path<ToyJob>("general/default/original/step/1", other_spec, std::nullopt, false);
  CHECK(forked->spec().name == "fresh");
  forked->set_runtime(test_runtime());
  forked->save_tree_and_metadata("step/2", forked->state(), step_md(2)).wait();
  CHECK(fs::exists(dir / "general/default/fresh/step/2/manifest.ckpt"));
}

TEST_CASE("registry falls back to the calling class when the saved key is unknown") {
  TempDir dir;
  auto job = make_job<UnregisteredToyJob>(dir, "unreg");
  CHECK(job->job_key().empty());
  job->save_tree_and_metadata("s", job->state(), step_md(4)).wait();
  auto [rebuilt, cfg] = from_checkpoint<ToyJob>("s", ExecutionSpec::local(dir.path(), "unreg"));
  CHECK(dynamic_cast<FancyToyJob*>(rebuilt.get()) == nullptr);
  CHECK(rebuilt->restored_step == 4);
}

TEST_CASE("registry falls back when the saved class is not derived from the calling class") {
  TempDir dir;
  auto job = make_job(dir, "base");  // saved as "toy"
  CHECK(job->job_key() == "toy");
  job->save_tree_and_metadata("s", job->state(), step_md(5)).wait();
  auto [rebuilt, cfg] = from_checkpoint<FancyToyJob>("s", ExecutionSpec::local(dir.path(), "base"));
  CHECK(rebuilt->restored_step == 5);
  CHECK_THROWS_AS(register_job_class<ToyJob>("toy-again"), Error);
}

TEST_CASE("path safety rejects absolute paths, dot-dot and symlinks out of the root") {
  TempDir dir;
  TempDir outside;
  auto job = make_job(dir, "safe");
  Tree t = job->state();
  CHECK_THROWS_AS(job->save_tree_and_metadata_from_path("/etc/ckpt", t, step_md(0)), Error);
  CHECK_THROWS_AS(job->save_tree_and_metadata_from_path("a/../../b", t, step_md(0)), Error);
  CHECK_THROWS_AS(job->save_tree_and_metadata("../escape", t, step_md(0)), Error);
  CHECK_THROWS_AS(job->get_tree_and_metadata_from_path("..", t), Error);
  fs::create_symlink(outside.path(), dir / "link");
  try {
    job->save_tree_and_metadata_from_path("link/x", t, step_md(0));
    FAIL("a symlink out of the root was followed");
  } catch (const Error& e) {
    CHECK(e.code() == Errc::path_escape);
  }
  CHECK(fs::is_empty(outside.path()));  // nothing was written outside
  // A symlink that stays inside the root is fine.
  io::make_dirs(dir / "real");
  fs::create_symlink(dir / "real", dir / "inner");
  job->save_tree_and_metadata_from_path("inner/ok", t, step_md(0)).wait();
  CHECK(fs::exists(dir / "real/ok/manifest.ckpt"));
}

TEST_CASE("a checkpointed job removes leftovers of interrupted saves when it starts") {
  TempDir dir;
  auto job = make_job(dir, "leftovers");
  io::make_dirs(dir / "general/default/leftovers/step/7.tmp-1-2-3");
  io::make_dirs(dir / "general/default/leftovers/keep");
  run_blocking(*job);
  CHECK_FALSE(fs::exists(dir / "general/default/leftovers/step/7.tmp-1-2-3"));
  CHECK(fs::exists(dir / "general/default/leftovers/keep"));
}

// Saves fire-and-forget, then fails: the caller catches and runs the job again.
class FlakyJob : public ToyJob {
 public:
  using ToyJob::ToyJob;
  boost::asio::awaitable<void> run() override {
    if (++attempts == 1) {
      in_flight = save_tree_and_metadata("step/1", state(), step_md(1));
      throw std::runtime_error("a transient failure after the save started");
    }
    co_return;
  }
  int attempts = 0;
  SaveHandle in_flight;
};

TEST_CASE("running a job again after a failure never deletes its own saves in flight") {
  TempDir dir;
  io::FaultEngine* faults = nullptr;
  RuntimeOptions o;
  o.engine = io::EngineKind::threads;
  o.staging_budget = 16u << 20;
  o.unit_bytes = 1u << 20;
  o.wrap_engine = test::wrap_in_faults(&faults);
  auto rt = std::make_shared<Runtime>(o);
  io::FaultSpec hang;
  hang.op = io::Request::Op::fsync;
  hang.kind = io::FaultKind::hang;
  faults->arm(hang);  // the save stays in flight, its temporary directory on disk
  struct Release {  // a failed check must not leave the Runtime's shutdown waiting forever
    io::FaultEngine* f;
    ~Release() {
      f->disarm();
      f->release_hung();
    }
  } release{faults};
  FlakyJob job(ExecutionSpec::local(dir.path(), "flaky"), ToyConfig{});
  job.set_runtime(rt);
  CHECK_THROWS_AS(run_blocking(job), std::runtime_error);
  REQUIRE(job.in_flight.valid());
  const std::string run = dir / "general/default/flaky";
  for (int i = 0; i < 2000 && test::find_tmp_entries(run).empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  INFO("save state: ", to_string(job.in_flight.state()));
  CHECK(test::find_tmp_entries(run).size() == 1);
  run_blocking(job);  // on_start cleans the run directory again
  CHECK(job.attempts == 2);
  CHECK(test::find_tmp_entries(run).size() == 1);
  faults->disarm();  // an fsync not submitted yet goes through
  faults->release_hung();
  REQUIRE(job.in_flight.wait_for(std::chrono::seconds(10)));
  CHECK_NOTHROW(job.in_flight.wait());
  CHECK(FlakyJob::checkpoints(job.spec()) == std::vector<std::string>{"step/1"});
}

struct ClipConfig {
  std::optional<double> clip = 1.0;  // a default that is not none
  std::int64_t width = 2;
};
BOOST_DESCRIBE_STRUCT(ClipConfig, (), (clip, width))

class ClipJob : public RestoreableJob<ClipConfig> {
 public:
  using RestoreableJob::RestoreableJob;
  boost::asio::awaitable<void> run() override { co_return; }
  void restore_from_path(const std::string&) override {}
};
CKPT_REGISTER_JOB(ClipJob, "clip_job");

TEST_CASE("from_checkpoint_path: null in runtime_cfg empties an optional and is an error for any other member") {
  TempDir dir;
  auto spec = ExecutionSpec::local(dir.path(), "clip");
  ClipJob job(spec, ClipConfig{});
  job.set_runtime(test_runtime());
  Tree state;
  float x = 1.0f;
  state["x"] = Array::view(DType::f32, {}, &x);
  job.save_tree_and_metadata("s", state, step_md(0)).wait();
  auto none = boost::json::parse(R"({"clip": null})");
  auto [a, cleared] = from_checkpoint_path<ClipJob>("general/default/clip/s", spec, none);
  CHECK_FALSE(cleared.clip.has_value());  // None, not the struct default 1.0
  auto bad = boost::json::parse(R"({"width": null})");
  auto e = test::catch_error([&] { from_checkpoint_path<ClipJob>("general/default/clip/s", spec, bad); });
  REQUIRE(e);
  CHECK(e->code() == Errc::invalid_argument);
  CHECK(test::contains(e->what(), "width"));
}

namespace {

// Saves from its run() coroutine; its Runtime runs on the job's own io_context (one thread).
class AsyncSaverJob : public ToyJob {
 public:
  using ToyJob::ToyJob;
  static constexpr int kSaves = 8;
  boost::asio::awaitable<void> run() override {
    namespace asio = boost::asio;
    // The blocking form would wait for staging that only this thread can free: refused at once.
    const Tree first = state();
    auto refused = test::catch_error([&] { save_tree_and_metadata("blocking", first, step_md(0)); });
    blocking_refused = refused && refused->code() == Errc::invalid_argument;
    for (int s = 1; s <= kSaves; ++s) {
      for (auto& v : values) v = static_cast<float>(s);
      const Tree t = state();
      const boost::json::object md = step_md(s);
      const std::string suffix = "step/" + std::to_string(s);
      auto save = async_save_tree_and_metadata(suffix, t, md, SaveOptions(), asio::use_awaitable);
      handles.push_back(co_await std::move(save));
    }
    auto drain = runtime().async_drain(asio::use_awaitable);
    DrainReport report = co_await std::move(drain);
    drained_ok = report.ok();
  }
  bool blocking_refused = false;
  bool drained_ok = false;
  std::vector<SaveHandle> handles;
};

// Counts 1 ms timer ticks on its executor until *stop.
boost::asio::awaitable<void> tick(const bool* stop, int* ticks) {
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor);
  while (!*stop) {
    timer.expires_after(std::chrono::milliseconds(1));
    co_await timer.async_wait(boost::asio::use_awaitable);
    ++*ticks;
  }
}

}  // namespace

TEST_CASE("async_save_tree_and_metadata never blocks the thread that runs the Runtime under "
          "Backpressure::block") {
  TempDir dir;
  boost::asio::io_context ctx;  // run by this thread only
  RuntimeOptions o;
  o.unit_bytes = 64u << 10;
  o.staging_budget = 128u << 10;  // one save at a time: each waits for the last one's writes
  o.backpressure = Backpressure::block;
  o.copy_threads = 2;
  ToyConfig cfg;
  cfg.width = 32768;  // 128 KiB of f32: the whole budget
  AsyncSaverJob job(ExecutionSpec::local(dir.path(), "async"), cfg);
  job.set_runtime(std::make_shared<Runtime>(ctx.get_executor(), o));
  bool done = false;
  int ticks = 0;
  auto finished = boost::asio::co_spawn(ctx, job(), boost::asio::use_future);
  auto ticker = boost::asio::co_spawn(ctx, tick(&done, &ticks), boost::asio::use_future);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (finished.wait_for(std::chrono::seconds(0)) != std::future_status::ready &&
         std::chrono::steady_clock::now() < deadline) {
    ctx.run_for(std::chrono::milliseconds(10));
  }
  REQUIRE_MESSAGE(finished.wait_for(std::chrono::seconds(0)) == std::future_status::ready,
                  "the job did not finish within 30 s: admission blocked its thread");
  finished.get();
  done = true;
  while (ticker.wait_for(std::chrono::seconds(0)) != std::future_status::ready &&
         std::chrono::steady_clock::now() < deadline) {
    ctx.run_for(std::chrono::milliseconds(10));
  }
  REQUIRE(ticker.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
  CHECK(job.blocking_refused);
  CHECK(job.drained_ok);
  CHECK(ticks > 0);  // the thread kept serving other work while saves waited for staging
  REQUIRE(job.handles.size() == static_cast<std::size_t>(AsyncSaverJob::kSaves));
  for (auto& h : job.handles) CHECK(h.state() == SaveState::committed);
  auto spec = ExecutionSpec::local(dir.path(), "async");
  CHECK(AsyncSaverJob::checkpoints(spec).size() == static_cast<std::size_t>(AsyncSaverJob::kSaves));
  auto check = make_job(dir, "async", cfg);
  auto [tree, md] = check->get_tree_and_metadata("step/8", check->state());
  CHECK(md.at("step").as_int64() == 8);
  CHECK(check->values.front() == 8.0f);
}
