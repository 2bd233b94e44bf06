// Sharing a run directory: the writer lease and mutation lock (runtime/run_lock.h), gc beside a
// live writer, the one checkpoint-name rule, retention that holds once saves drain, and leftover
// cleanup that spares this process's saves in flight.
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "io/durable.h"
#include "io/engine.h"
#include "io/fault_engine.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/retention.h"
#include "runtime/run_lock.h"
#include "runtime/runtime.h"
#include "tests/test_util.h"

using namespace ckpt;
using ckpt::test::catch_error;
using ckpt::test::contains;
using ckpt::test::in_child;
using ckpt::test::TempDir;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

void save_step(const std::string& run_dir, const std::string& suffix, std::int64_t step) {
  auto engine = io::make_engine({io::EngineKind::threads});
  boost::json::object md;
  md["step"] = step;
  save_checkpoint(*engine, run_dir + "/" + suffix, test::make_tree(2, 64, 7), md);
}

std::vector<std::string> suffixes(const std::string& run_dir) {
  std::vector<std::string> out;
  for (const auto& c : list_checkpoints(run_dir)) out.push_back(c.suffix);
  return out;
}

RetentionPolicy keep(std::size_t n, std::string prefix = "") {
  RetentionPolicy p;
  p.max_to_keep = n;
  p.prefix = std::move(prefix);
  return p;
}

RuntimeOptions small_options() {
  RuntimeOptions o;
  o.engine = io::EngineKind::threads;
  o.staging_budget = 64u << 20;
  o.unit_bytes = 1u << 20;
  o.lock_wait = 2000ms;
  return o;
}

}  // namespace

TEST_CASE(
    "a second process cannot take a run directory's writer lease and learns the holder's pid") {
  TempDir dir;
  const std::string run = dir / "run";
  auto lease = RunLease::acquire(run, 100ms);
  // A forked child shares this process's open file description (and lease registry): it opens
  // the lock file anew, as another process would.
  int status = in_child([&] {
    try {
      RunLockFile file(run);
      file.lock(RunLockFile::Byte::lease, 200ms, "writer lease");
      return 0;
    } catch (const Error& e) {
      bool named = e.code() == Errc::busy &&
                   contains(e.what(), "pid " + std::to_string(::getppid())) &&
                   contains(e.what(), "writer lease");
      return named ? 3 : 4;
    }
  });
  CHECK(status == 3);
  lease.reset();  // released: the next writer gets it
  CHECK(in_child([&] {
          RunLockFile file(run);
          return file.try_lock(RunLockFile::Byte::lease) ? 0 : 5;
        }) == 0);
}

TEST_CASE("Runtimes of one process share the run directory's writer lease") {
  TempDir dir;
  Runtime a(small_options());
  Runtime b(small_options());
  a.claim_run_dir(dir / "run");
  CHECK_NOTHROW(b.claim_run_dir(dir / "run"));
  RunLockFile other(dir / "run");
  CHECK(other.held_elsewhere(RunLockFile::Byte::lease));
}

TEST_CASE(
    "gc spares what a live writer protects and what latest names, then removes it once released") {
  TempDir dir;
  const std::string run = dir / "run";
  for (int s = 1; s <= 4; ++s) save_step(run, "step/" + std::to_string(s), s);
  write_latest(run, "step/1");
  auto lease = RunLease::acquire(run, 100ms);
  lease->protect("step/2");  // e.g. a registration not applied yet
  GcOptions options;
  GcReport report = collect_garbage(run, keep(1), options);
  CHECK(report.writer_pid == static_cast<long>(::getpid()));
  CHECK(report.writer_protected == std::set<std::string>{"step/2"});
  CHECK(report.removed == std::vector<std::string>{"step/3"});
  CHECK(suffixes(run) == std::vector<std::string>{"step/1", "step/2", "step/4"});
  lease->release("step/2");
  report = collect_garbage(run, keep(1), options);
  CHECK(report.removed == std::vector<std::string>{"step/2"});
  CHECK(suffixes(run) == std::vector<std::string>{"step/1", "step/4"});
}

TEST_CASE("gc leaves leftovers alone while a writer is live and removes them when none is") {
  TempDir dir;
  const std::string run = dir / "run";
  save_step(run, "step/1", 1);
  fs::create_directories(run + "/step/2.tmp-999-1-1");
  GcOptions options;
  options.leftovers = true;
  {
    auto lease = RunLease::acquire(run, 100ms);
    GcReport report = collect_garbage(run, keep(1), options);
    CHECK(report.leftovers_removed.empty());
    CHECK(contains(report.leftovers_refused, "pid " + std::to_string(::getpid())));
    CHECK(fs::exists(run + "/step/2.tmp-999-1-1"));
  }
  GcReport report = collect_garbage(run, keep(1), options);
  CHECK(report.leftovers_refused.empty());
  CHECK(report.leftovers_removed.size() == 1);
  CHECK_FALSE(fs::exists(run + "/step/2.tmp-999-1-1"));
}

TEST_CASE("gc waits for the mutation lock and then fails saying it is busy") {
  TempDir dir;
  const std::string run = dir / "run";
  save_step(run, "step/1", 1);
  auto lease = RunLease::acquire(run, 100ms);
  auto mutation = lease->lock_mutations(100ms);
  GcOptions options;
  options.wait = 150ms;
  auto start = std::chrono::steady_clock::now();
  auto e = catch_error([&] { collect_garbage(run, keep(1), options); });
  REQUIRE(e);
  CHECK(e->code() == Errc::busy);
  CHECK(contains(e->what(), "mutation lock"));
  CHECK(std::chrono::steady_clock::now() - start >= 150ms);
}

TEST_CASE("gc with an unreadable latest removes nothing and says why") {
  TempDir dir;
  const std::string run = dir / "run";
  for (int s = 1; s <= 3; ++s) save_step(run, "step/" + std::to_string(s), s);
  test::write_file(run + "/latest", "../elsewhere\n");
  auto e = catch_error([&] { collect_garbage(run, keep(1), GcOptions()); });
  REQUIRE(e);
  CHECK(e->code() == Errc::corrupt);
  CHECK(contains(e->what(), "nothing removed"));
  CHECK(suffixes(run).size() == 3);
}

TEST_CASE("latest holding control characters or a NUL is corrupt and reported escaped") {
  TempDir dir;
  const std::string run = dir / "run";
  save_step(run, "step/1", 1);
  test::write_file(run + "/latest", std::string("step/1\0evil\n", 12));
  auto e = catch_error([&] { read_latest(run); });
  REQUIRE(e);
  CHECK(e->code() == Errc::corrupt);
  CHECK(contains(e->what(), "step/1\\x00evil"));
  test::write_file(run + "/latest", "step/1\r\n");
  e = catch_error([&] { read_latest(run); });
  REQUIRE(e);
  CHECK(contains(e->what(), "\\x0d"));
  test::write_file(run + "/latest", "step/1\n");
  CHECK(read_latest(run) == "step/1");
}

TEST_CASE(
    "one rule for checkpoint names: reserved, temporary, hidden and control names are refused "
    "everywhere") {
  TempDir dir;
  const std::string run = dir / "run";
  Runtime rt(small_options());
  Tree tree = test::make_tree(1, 16, 1);
  for (const std::string& bad : std::vector<std::string>{"latest", "a.tmp-x", ".hidden", "a\x01"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(check_suffix(bad), Error);
    CHECK_THROWS_AS(check_suffix("step/" + bad), Error);
    auto e = catch_error([&] { rt.save(run + "/" + bad, tree, {}); });
    REQUIRE(e);
    CHECK(e->code() == Errc::invalid_argument);
    CHECK_THROWS_AS(rt.register_latest(run, bad), Error);
    auto engine = io::make_engine({io::EngineKind::threads});
    CHECK_THROWS_AS(save_checkpoint(*engine, run + "/" + bad, tree, {}), Error);
  }
  CHECK_FALSE(fs::exists(run + "/latest"));
  CHECK(test::find_tmp_entries(dir.path()).empty());
  // A save given its run directory checks the whole suffix.
  SaveOptions options;
  options.run_dir = run;
  auto e = catch_error([&] { rt.save(run + "/latest/x", tree, {}, options); });
  REQUIRE(e);
  CHECK(e->code() == Errc::invalid_argument);
  e = catch_error([&] { rt.save(dir / "elsewhere/x", tree, {}, options); });
  REQUIRE(e);
  CHECK(contains(e->what(), "not inside its run directory"));
  // Directories that break the rule are never listed (a hand-made one, say).
  save_step(run, "step/1", 1);
  fs::create_directories(run + "/.hidden");
  fs::copy(run + "/step/1", run + "/.hidden/x", fs::copy_options::recursive);
  CHECK(suffixes(run) == std::vector<std::string>{"step/1"});
}

TEST_CASE("retention with a prefix keeps eval/best while step checkpoints rotate") {
  TempDir dir;
  const std::string run = dir / "run";
  Runtime rt(small_options());
  Tree tree = test::make_tree(2, 256, 3);
  SaveOptions options;
  options.run_dir = run;
  options.retention = keep(2, "step/");
  boost::json::object md;
  md["step"] = 0;
  rt.save(run + "/eval/best", tree, md, options).wait();
  for (int s = 1; s <= 6; ++s) {
    md["step"] = s;
    rt.save(run + "/step/" + std::to_string(s), tree, md, options);
    rt.register_latest(run, "step/" + std::to_string(s));
  }
  REQUIRE(rt.drain().ok());
  CHECK(suffixes(run) == std::vector<std::string>{"eval/best", "step/5", "step/6"});
}

TEST_CASE("retention holds once fire-and-forget saves and registrations drain") {
  TempDir dir;
  const std::string run = dir / "run";
  Runtime rt(small_options());
  Tree tree = test::make_tree(2, 1024, 5);
  SaveOptions options;
  options.run_dir = run;
  options.retention = keep(2);
  boost::json::object md;
  for (int s = 1; s <= 120; ++s) {
    md["step"] = s;
    rt.save(run + "/step/" + std::to_string(s), tree, md, options);
    rt.register_latest(run, "step/" + std::to_string(s));
  }
  REQUIRE(rt.drain().ok());
  CHECK(read_latest(run) == "step/120");
  CHECK(suffixes(run) == std::vector<std::string>{"step/119", "step/120"});
}

TEST_CASE("cleaning the run directory again never removes this process's saves in flight") {
  TempDir dir;
  const std::string run = dir / "run";
  io::FaultEngine* faults = nullptr;
  RuntimeOptions o = small_options();
  o.wrap_engine = test::wrap_in_faults(&faults);
  Runtime rt(o);
  REQUIRE(faults != nullptr);
  io::FaultSpec hang;
  hang.op = io::Request::Op::fsync;
  hang.kind = io::FaultKind::hang;
  faults->arm(hang);
  SaveOptions options;
  options.run_dir = run;
  fs::create_directories(run);
  fs::create_directories(run + "/old.tmp-1-2-3");  // a dead writer's leftover
  SaveHandle h = rt.save(run + "/step/1", test::make_tree(1, 256, 9), {}, options);
  for (int i = 0; i < 500 && test::find_tmp_entries(run).size() < 2; ++i)
    std::this_thread::sleep_for(2ms);
  auto removed = clean_run_dir(run);
  CHECK(removed == std::vector<std::string>{run + "/old.tmp-1-2-3"});
  CHECK(test::find_tmp_entries(run).size() == 1);  // the save's own temporary survived
  faults->disarm();  // an fsync not submitted yet goes through
  faults->release_hung();
  REQUIRE(h.wait_for(10s));
  h.wait();
  CHECK(suffixes(run) == std::vector<std::string>{"step/1"});
}

TEST_CASE("a writer waiting for a lease that gc holds is told so") {
  TempDir dir;
  const std::string run = dir / "run";
  fs::create_directories(run);
  RunLockFile gc_file(run);
  REQUIRE(gc_file.try_lock(RunLockFile::Byte::lease));
  publish_writer_state(run, {}, "ckpt gc");
  int status = in_child([&] {
    try {
      RunLockFile file(run);
      file.lock(RunLockFile::Byte::lease, 100ms, "writer lease");
      return 0;
    } catch (const Error& e) {
      return contains(e.what(), "ckpt gc") ? 3 : 4;
    }
  });
  CHECK(status == 3);
}

TEST_CASE("a checkpoint path through a temporary's directory is refused even without a run directory") {
  TempDir dir;
  Runtime rt(small_options());
  auto e = catch_error([&] { rt.save(dir / "run/a.tmp-x/step1", test::make_tree(1, 16, 1), {}); });
  REQUIRE(e);
  CHECK(e->code() == Errc::invalid_argument);
  CHECK(test::find_tmp_entries(dir.path()).empty());
}
