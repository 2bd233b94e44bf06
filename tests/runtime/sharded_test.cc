// Collective (sharded) saves and resharding restores, with the processes of a job simulated by
// threads joined by an in-process communicator (LocalGroup): the protocol of
// runtime/collective_commit.h runs as under MPI, but cheaply, deterministically and under the
// sanitizers. tests/runtime/mpi_shard_test.cc runs the same state under mpirun.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <latch>
#include <thread>

#include "io/fault_engine.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/incremental.h"
#include "runtime/manifest.h"
#include "runtime/retention.h"
#include "runtime/run_lock.h"
#include "runtime/runtime.h"
#include "tests/runtime/shard_fixture.h"
#include "tests/test_util.h"

namespace ckpt {
namespace {

using test::ShardedState;
using Clock = std::chrono::steady_clock;

RuntimeOptions small_options() {
  RuntimeOptions o;
  o.copy_threads = 1;
  o.io_threads = 1;
  o.queue_depth = 4;
  o.unit_bytes = 4096;  // several blocks per data file even for this small state
  o.staging_budget = 4u << 20;
  o.collective_timeout = std::chrono::seconds(10);
  return o;
}

// small_options for process r of `group`.
RuntimeOptions rank_options(const LocalGroup& group, int r) {
  RuntimeOptions o = small_options();
  o.communicator = group.member(r);
  return o;
}

// Runs fn(rank) on `count` threads; returns each one's error message ("" when it succeeded).
std::vector<std::string> on_ranks(int count, const std::function<void(int)>& fn) {
  std::vector<std::string> errors(static_cast<std::size_t>(count));
  std::vector<std::thread> threads;
  for (int r = 0; r < count; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
        if (errors[static_cast<std::size_t>(r)].empty()) errors[static_cast<std::size_t>(r)] = "?";
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

ShardedState fixture_state(std::uint64_t part, std::uint64_t parts) {
  return test::make_sharded_state(part, parts, true, true);
}

// Saves the state `make(part, parts)` (default: the fixture's) from `parts` simulated processes
// as run_dir/suffix and registers it.
void collective_save(int parts, const std::string& run_dir, const std::string& suffix,
                     ShardedState (*make)(std::uint64_t, std::uint64_t) = fixture_state) {
  LocalGroup group(parts);
  auto errors = on_ranks(parts, [&](int r) {
    RuntimeOptions o = rank_options(group, r);
    Runtime rt(o);
    ShardedState s = make(static_cast<std::uint64_t>(r), static_cast<std::uint64_t>(parts));
    SaveOptions so;
    so.sharding = s.sharding;
    so.run_dir = run_dir;
    boost::json::object meta;
    meta["step"] = 1;
    rt.save(run_dir + "/" + suffix, s.tree, meta, so).wait();
    rt.register_latest(run_dir, suffix).wait();
  });
  for (int r = 0; r < parts; ++r) CHECK_MESSAGE(errors[static_cast<std::size_t>(r)].empty(), errors[static_cast<std::size_t>(r)]);
}

// Restores run_dir/suffix as `parts` processes would (each its own box: restores are not
// collective) and returns the number of wrong elements over all of them.
std::uint64_t resharded_restore(int parts, const std::string& dir) {
  Runtime rt(small_options());
  std::uint64_t wrong = 0;
  for (int r = 0; r < parts; ++r) {
    ShardedState s = test::make_sharded_state(static_cast<std::uint64_t>(r),
                                              static_cast<std::uint64_t>(parts), false, false);
    rt.restore(dir, s.tree, s.sharding);
    wrong += test::count_wrong(s);
  }
  return wrong;
}

// The sync API's options for a resharding restore in 4 KiB units (one block each).
ReadOptions read_options(unsigned depth, unsigned threads, std::uint64_t staging,
                         const Sharding& sharding) {
  ReadOptions ro;
  ro.unit_bytes = 4096;
  ro.queue_depth = depth;
  ro.threads = threads;
  ro.staging_bytes = staging;
  ro.sharding = &sharding;
  return ro;
}

// Restores `dir` through the sync API as `parts` processes would (4 KiB units: one block each)
// with the given staging; returns the wrong elements and counts the reads into *reads.
std::uint64_t sync_resharded_restore(int parts, const std::string& dir, std::uint64_t staging,
                                     std::uint64_t* reads) {
  test::CountingEngine engine;
  std::uint64_t wrong = 0;
  for (int r = 0; r < parts; ++r) {
    ShardedState s = test::make_sharded_state(static_cast<std::uint64_t>(r),
                                              static_cast<std::uint64_t>(parts), false, false);
    restore_checkpoint(engine, dir, s.tree, false, read_options(2, 2, staging, s.sharding));
    wrong += test::count_wrong(s);
  }
  *reads = engine.reads();
  return wrong;
}

// A float32 [96, 64] leaf "m" (24 KiB: six 4 KiB blocks) cut by rows, whose elements are their
// global indices; the restore templates cut it by columns.
const Shape kM{96, 64};

ShardedState matrix_state(std::uint64_t part, std::uint64_t parts) {
  ShardedState s;
  auto [start, shape] = split_box(kM, 0, part, parts);
  Array a = Array::zeros(DType::f32, shape);
  test::for_each_in_box(kM, start, shape, [&](std::uint64_t l, std::uint64_t g) {
    a.as<float>()[l] = static_cast<float>(g);
  });
  s.tree["m"] = a;
  s.sharding.shard("m", kM, start);
  return s;
}


// Incremental collective saves: six float32 leaves of global shape [3, 4096], process r of 3
// holding row r (16 KiB, four 4 KiB units: a box spans units), and a replicated step. Each leaf
// has a version; its values are a function of (leaf, version, global index).
constexpr std::size_t kIncLeaves = 6;
const Shape kIncShape{3, 4096};
using Versions = std::vector<std::uint64_t>;

float inc_value(std::size_t leaf, std::uint64_t version, std::uint64_t g) {
  return static_cast<float>(leaf * 1000003 + version * 7919 + g) * 0.5f;
}

// Process `part` of `parts`: saves cut by rows, restores by columns (filled: the values).
ShardedState inc_state(std::uint64_t part, std::uint64_t parts, bool save_cut,
                       const Versions* filled, std::int64_t step) {
  ShardedState s;
  for (std::size_t i = 0; i < kIncLeaves; ++i) {
    auto [start, shape] = split_box(kIncShape, save_cut ? 0 : 1, part, parts);
    Array a = Array::zeros(DType::f32, shape);
    if (filled != nullptr) {
      test::for_each_in_box(kIncShape, start, shape, [&](std::uint64_t l, std::uint64_t g) {
        a.as<float>()[l] = inc_value(i, (*filled)[i], g);
      });
    }
    const std::string name = "l" + std::to_string(i);
    s.tree[name] = a;
    s.sharding.shard(name, kIncShape, start);
  }
  Array st = Array::zeros(DType::i64, {});
  if (filled != nullptr) st.as<std::int64_t>()[0] = step;
  s.tree["step"] = st;
  return s;
}

// Restores dir into `parts` column boxes; the number of elements that differ from `v`.
std::uint64_t inc_wrong(Runtime& rt, const std::string& dir, int parts, const Versions& v,
                        std::int64_t step) {
  std::uint64_t wrong = 0;
  for (int r = 0; r < parts; ++r) {
    ShardedState s = inc_state(static_cast<std::uint64_t>(r), static_cast<std::uint64_t>(parts),
                               false, nullptr, 0);
    rt.restore(dir, s.tree, s.sharding);
    for (std::size_t i = 0; i < kIncLeaves; ++i) {
      const Box& b = *s.sharding.find("l" + std::to_string(i));
      const Array& a = s.tree.at("l" + std::to_string(i)).array();
      test::for_each_in_box(kIncShape, b.start, a.shape(), [&](std::uint64_t l, std::uint64_t g) {
        wrong += a.as<float>()[l] != inc_value(i, v[i], g);
      });
    }
    wrong += s.tree.at("step").array().as<std::int64_t>()[0] != step;
  }
  return wrong;
}

// Restores exactly, resharded to 2 processes (and to 1 when `to_one`), and verifies.
bool inc_restores(Runtime& rt, const std::string& dir, const Versions& v, std::int64_t step,
                  bool to_one = true) {
  if (test::catch_error([&] {
        if (inc_wrong(rt, dir, 2, v, step) + (to_one ? inc_wrong(rt, dir, 1, v, step) : 0) != 0)
          throw Error(Errc::corrupt, "wrong values");
      })) {
    return false;
  }
  return verify_checkpoint(*io::make_engine(), dir).ok();
}
}  // namespace

TEST_CASE("communicator collectives agree across an in-process group and time out naming the "
          "silent process") {
  LocalGroup group(3);
  const auto deadline = [] { return Clock::now() + std::chrono::seconds(5); };
  std::vector<std::vector<std::string>> gathered(3);
  std::vector<Agreement> agreed(3);
  std::vector<std::string> broadcast(3);
  auto errors = on_ranks(3, [&](int r) {
    auto c = group.member(r);
    gathered[static_cast<std::size_t>(r)] = c->allgather(7, "p" + std::to_string(r), deadline());
    broadcast[static_cast<std::size_t>(r)] = c->broadcast(8, r == 1 ? "from 1" : "", 1, deadline());
    agreed[static_cast<std::size_t>(r)] =
        c->agree(9, r == 2 ? Status::failure("disk full") : Status(), deadline());
  });
  for (int r = 0; r < 3; ++r) {
    CHECK(errors[static_cast<std::size_t>(r)].empty());
    CHECK(gathered[static_cast<std::size_t>(r)] == std::vector<std::string>{"p0", "p1", "p2"});
    CHECK(broadcast[static_cast<std::size_t>(r)] == "from 1");
    CHECK_FALSE(agreed[static_cast<std::size_t>(r)].ok);
    CHECK(agreed[static_cast<std::size_t>(r)].failed_rank == 2);
    CHECK(agreed[static_cast<std::size_t>(r)].message == "process 2: disk full");
  }
  group.silence(1);
  auto start = Clock::now();
  auto late = on_ranks(3, [&](int r) {
    group.member(r)->barrier(10, Clock::now() + std::chrono::milliseconds(200));
  });
  CHECK(Clock::now() - start < std::chrono::seconds(3));
  CHECK(test::contains(late[0], "process 1 did not answer"));
  CHECK_FALSE(late[2].empty());  // its broadcast never came: process 0 failed first
  SingleProcessCommunicator one;
  CHECK(one.allgather(1, "x", deadline()) == std::vector<std::string>{"x"});
  CHECK(one.agree(2, Status(), deadline()).ok);
}

TEST_CASE("a sharded save restores into other decompositions: 4 to 2, 2 to 3, 3 to 1, 1 to 4") {
  test::TempDir tmp;
  const std::pair<int, int> matrix[] = {{4, 2}, {2, 3}, {3, 1}, {1, 4}};
  for (auto [n, m] : matrix) {
    CAPTURE(n);
    CAPTURE(m);
    const std::string run = tmp / ("run" + std::to_string(n));
    collective_save(n, run, "step/1");
    const std::string dir = run + "/step/1";
    CHECK(read_latest(run) == std::optional<std::string>("step/1"));
    CHECK(resharded_restore(m, dir) == 0);
    // Beyond its staging (here none at all) the restore reads in two passes: every block twice.
    std::uint64_t staged_reads = 0, pass_reads = 0;
    CHECK(sync_resharded_restore(m, dir, std::uint64_t{1} << 30, &staged_reads) == 0);
    CHECK(sync_resharded_restore(m, dir, 0, &pass_reads) == 0);
    CHECK(staged_reads > 0);
    CHECK(pass_reads == 2 * staged_reads);
    Manifest man = read_manifest(dir);
    CHECK(man.process_count == static_cast<std::uint32_t>(n));
    CHECK(man.data_files.size() == static_cast<std::size_t>(n));
    for (const auto& leaf : man.leaves) {
      CAPTURE(leaf.path);
      if (leaf.path == "w" || leaf.path == "t") {
        // One box per process that holds any of the leaf (t's third axis has 3 elements).
        CHECK(leaf.extents.size() == static_cast<std::size_t>(leaf.path == "t" ? std::min(n, 3) : n));
      } else {
        CHECK(leaf.extents.size() == 1);  // a replicated leaf is written once
        CHECK(leaf.extents[0].slice_shape.empty());
      }
    }
    CHECK(test::find_tmp_entries(run).empty());
    auto report = verify_checkpoint(*io::make_engine(), dir);
    CHECK_MESSAGE(report.ok(), (report.problems.empty() ? "" : report.problems[0]));
    // The whole arrays, through a plain template.
    Tree whole = make_template(man);
    Runtime rt(small_options());
    rt.restore(dir, whole);
    ShardedState one = test::make_sharded_state(0, 1, false, false);
    one.tree = whole;
    CHECK(test::count_wrong(one) == 0);
  }
}

TEST_CASE("replicated leaves are spread over the processes by bytes") {
  test::TempDir tmp;
  LocalGroup group(2);
  auto errors = on_ranks(2, [&](int r) {
    RuntimeOptions o = rank_options(group, r);
    Runtime rt(o);
    Tree t;
    for (int i = 0; i < 4; ++i) t["r" + std::to_string(i)] = Array::zeros(DType::u8, {4096});
    rt.save(tmp / "c", t, {}, SaveOptions()).wait();
  });
  CHECK(errors[0].empty());
  CHECK(errors[1].empty());
  Manifest man = read_manifest(tmp / "c");
  std::vector<int> per_process(2, 0);
  for (const auto& leaf : man.leaves) {
    REQUIRE(leaf.extents.size() == 1);
    ++per_process[leaf.extents[0].process_index];
  }
  CHECK(per_process == std::vector<int>{2, 2});
  CHECK(man.data_files[0].size == 8192);
  CHECK(man.data_files[1].size == 8192);
}

TEST_CASE("processes whose trees differ fail save() on every process, naming the path and the "
          "processes, and write nothing") {
  test::TempDir tmp;
  LocalGroup group(3);
  auto errors = on_ranks(3, [&](int r) {
    RuntimeOptions o = rank_options(group, r);
    Runtime rt(o);
    ShardedState s = test::make_sharded_state(static_cast<std::uint64_t>(r), 3, true, true);
    if (r == 2) s.tree["bias"] = Array::zeros(DType::f32, {6});
    SaveOptions so;
    so.sharding = s.sharding;
    rt.save(tmp / "c", s.tree, {}, so).wait();
  });
  for (const auto& e : errors) {
    CHECK(test::contains(e, "process 2 has leaf 'bias': float32 [6], replicated where process 0 "
                            "has leaf 'bias': float64 [6], replicated"));
  }
  CHECK(test::list_dir(tmp.path()).empty());
}

TEST_CASE("one process's write error (EIO, ENOSPC) fails the save on every process, naming it and "
          "the cause, and commits nothing") {
  struct Fault {
    int error;
    const char* cause;
  };
  for (const Fault fault :
       {Fault{EIO, "Input/output error"}, Fault{ENOSPC, "No space left on device"}}) {
    CAPTURE(fault.cause);
    test::TempDir tmp;
    collective_save(3, tmp / "run", "step/1");
    LocalGroup group(3);
    std::vector<std::string> save_errors(3), register_errors(3);
    auto errors = on_ranks(3, [&](int r) {
      RuntimeOptions o = rank_options(group, r);
      io::FaultEngine* faults = nullptr;
      o.wrap_engine = test::wrap_in_faults(&faults);
      Runtime rt(o);
      if (r == 1) faults->arm({io::Request::Op::write, 1, io::FaultKind::error, fault.error, false});
      ShardedState s = test::make_sharded_state(static_cast<std::uint64_t>(r), 3, true, true);
      SaveOptions so;
      so.sharding = s.sharding;
      so.run_dir = tmp / "run";
      auto h = rt.save(tmp / "run/step/2", s.tree, {}, so);
      auto reg = rt.register_latest(tmp / "run", "step/2");
      if (auto e = test::catch_error([&] { h.wait(); })) save_errors[static_cast<std::size_t>(r)] = e->what();
      if (auto e = test::catch_error([&] { reg.wait(); })) register_errors[static_cast<std::size_t>(r)] = e->what();
      rt.drain();
    });
    for (int r = 0; r < 3; ++r) {
      CAPTURE(r);
      CHECK(errors[static_cast<std::size_t>(r)].empty());
      CHECK(test::contains(save_errors[static_cast<std::size_t>(r)], "process 1: "));
      CHECK(test::contains(save_errors[static_cast<std::size_t>(r)], fault.cause));
      CHECK(test::contains(register_errors[static_cast<std::size_t>(r)], "process 1: "));
    }
    CHECK_FALSE(std::filesystem::exists(tmp / "run/step/2"));
    CHECK(test::find_tmp_entries(tmp / "run").empty());
    CHECK(read_latest(tmp / "run") == std::optional<std::string>("step/1"));
  }
}

TEST_CASE("a save one process refuses after the check (over its staging budget) fails on every "
          "process at once, naming it, and commits nothing") {
  test::TempDir tmp;
  collective_save(3, tmp / "run", "step/1");
  LocalGroup group(3);
  std::vector<std::string> save_errors(3);
  std::vector<double> seconds(3, 0.0);
  auto errors = on_ranks(3, [&](int r) {
    RuntimeOptions o = rank_options(group, r);
    if (r == 2) o.staging_budget = o.unit_bytes;  // one unit: this process's part cannot fit
    Runtime rt(o);
    ShardedState s = test::make_sharded_state(static_cast<std::uint64_t>(r), 3, true, true);
    // Two units' worth of shard per process.
    const std::uint64_t big = 2 * o.unit_bytes;
    s.tree["big"] = Array::zeros(DType::u8, {big});
    s.sharding.shard("big", {3 * big}, {static_cast<std::uint64_t>(r) * big});
    SaveOptions so;
    so.sharding = s.sharding;
    so.run_dir = tmp / "run";
    const auto start = Clock::now();
    auto e = test::catch_error([&] { rt.save(tmp / "run/step/2", s.tree, {}, so).wait(); });
    seconds[static_cast<std::size_t>(r)] = std::chrono::duration<double>(Clock::now() - start).count();
    if (e) save_errors[static_cast<std::size_t>(r)] = e->what();
    rt.drain();
  });
  for (int r = 0; r < 3; ++r) {
    CAPTURE(r);
    CAPTURE(save_errors[static_cast<std::size_t>(r)]);
    CHECK(errors[static_cast<std::size_t>(r)].empty());
    CHECK(test::contains(save_errors[static_cast<std::size_t>(r)], "staging"));
    if (r != 2) CHECK(test::contains(save_errors[static_cast<std::size_t>(r)], "process 2: "));
    // Well before the 10 s collective deadline the others would otherwise wait for.
    CHECK(seconds[static_cast<std::size_t>(r)] < 5.0);
  }
  CHECK_FALSE(std::filesystem::exists(tmp / "run/step/2"));
  CHECK(test::find_tmp_entries(tmp / "run").empty());
  CHECK(read_latest(tmp / "run") == std::optional<std::string>("step/1"));
}

TEST_CASE("collective saves and registrations refused after their number is taken (a leaf of rank "
          "65, process 0's lease held) fail on every process, and the next ones commit") {
  test::TempDir tmp;
  const std::string run = tmp / "run";
  LocalGroup group(3);
  std::latch lease_held(1), lease_released(1), done_with_busy(3);
  std::thread holder([&] {
    std::filesystem::create_directories(run);
    RunLockFile other(run);  // another writer of the run directory holds its lease
    other.lock(RunLockFile::Byte::lease, std::chrono::seconds(10), "test");
    lease_held.count_down();
    done_with_busy.wait();
    lease_released.count_down();
  });
  std::vector<std::string> deep(3), busy(3), busy_register(3);
  std::vector<double> register_seconds(3, 0.0);
  auto errors = on_ranks(3, [&](int r) {
    RuntimeOptions o = rank_options(group, r);
    o.lock_wait = std::chrono::milliseconds(100);
    Runtime rt(o);
    ShardedState s = test::make_sharded_state(static_cast<std::uint64_t>(r), 3, true, true);
    SaveOptions so;
    so.sharding = s.sharding;
    // Every process's tree has it, so the trees agree, but none can be written.
    Tree deep_tree = s.tree;
    deep_tree["deep"] = Array::zeros(DType::u8, Shape(65, 1));
    if (auto e = test::catch_error([&] { rt.save(tmp / "deep", deep_tree, {}, so).wait(); })) {
      deep[static_cast<std::size_t>(r)] = e->what();
    }
    lease_held.wait();
    so.run_dir = run;
    if (auto e = test::catch_error([&] { rt.save(run + "/step/1", s.tree, {}, so); })) {
      busy[static_cast<std::size_t>(r)] = e->what();
    }
    const auto start = Clock::now();
    if (auto e = test::catch_error([&] { rt.register_latest(run, "step/0").wait(); })) {
      busy_register[static_cast<std::size_t>(r)] = e->what();
    }
    register_seconds[static_cast<std::size_t>(r)] =
        std::chrono::duration<double>(Clock::now() - start).count();
    done_with_busy.count_down();
    lease_released.wait();
    // The queue of collective steps moved on past every refused number.
    rt.save(run + "/step/2", s.tree, {}, so).wait();
    rt.register_latest(run, "step/2").wait();
  });
  holder.join();
  for (int r = 0; r < 3; ++r) {
    CAPTURE(r);
    const auto i = static_cast<std::size_t>(r);
    CHECK_MESSAGE(errors[i].empty(), errors[i]);
    CHECK(test::contains(deep[i], "rank"));
    CHECK(test::contains(busy[i], "process 0"));
    CHECK_FALSE(busy_register[i].empty());
    CHECK(busy_register[i] == busy_register[0]);  // process 0's error, everywhere
    CHECK(register_seconds[i] < 5.0);  // not the 2 x 10 s outcome deadline
  }
  CHECK(read_latest(run) == std::optional<std::string>("step/2"));
  CHECK(resharded_restore(2, run + "/step/2") == 0);
}

TEST_CASE("a process whose IO hangs fails every process's save within the IO timeout") {
  test::TempDir tmp;
  LocalGroup group(3);
  std::vector<std::string> save_errors(3);
  std::vector<double> seconds(3);
  io::FaultEngine* stuck = nullptr;
  auto errors = on_ranks(3, [&](int r) {
    RuntimeOptions o = rank_options(group, r);
    o.io_timeout = std::chrono::milliseconds(300);
    io::FaultEngine* faults = nullptr;
    o.wrap_engine = test::wrap_in_faults(&faults);
    Runtime rt(o);
    if (r == 2) {
      faults->arm({io::Request::Op::write, 1, io::FaultKind::hang, 0, false});
      stuck = faults;
    }
    ShardedState s = test::make_sharded_state(static_cast<std::uint64_t>(r), 3, true, true);
    SaveOptions so;
    so.sharding = s.sharding;
    auto start = Clock::now();
    auto h = rt.save(tmp / "c", s.tree, {}, so);
    if (auto e = test::catch_error([&] { h.wait(); })) save_errors[static_cast<std::size_t>(r)] = e->what();
    seconds[static_cast<std::size_t>(r)] = std::chrono::duration<double>(Clock::now() - start).count();
    if (r == 2) faults->release_hung();
    rt.drain();
  });
  for (int r = 0; r < 3; ++r) {
    CAPTURE(r);
    CHECK(errors[static_cast<std::size_t>(r)].empty());
    CHECK(test::contains(save_errors[static_cast<std::size_t>(r)], "process 2: "));
    CHECK(test::contains(save_errors[static_cast<std::size_t>(r)], "IO timeout"));
    CHECK(seconds[static_cast<std::size_t>(r)] < 3.0);
    MESSAGE("process ", r, " failed after ", seconds[static_cast<std::size_t>(r)], " s");
  }
  CHECK(stuck != nullptr);
  CHECK_FALSE(std::filesystem::exists(tmp / "c"));
  CHECK(test::find_tmp_entries(tmp.path()).empty());
}

TEST_CASE("a process that stops answering fails the others at the collective deadline, naming "
          "it") {
  // Process 1's first write never completes and it has no IO timeout: it never reports.
  test::TempDir tmp;
  LocalGroup group(3);
  std::vector<std::string> save_errors(3);
  std::vector<double> seconds(3);
  std::latch others_done(2);
  auto errors = on_ranks(3, [&](int r) {
    RuntimeOptions o = rank_options(group, r);
    o.collective_timeout = std::chrono::milliseconds(300);
    io::FaultEngine* faults = nullptr;
    o.wrap_engine = test::wrap_in_faults(&faults);
    Runtime rt(o);
    if (r == 1) faults->arm({io::Request::Op::write, 1, io::FaultKind::hang, 0, false});
    ShardedState s = test::make_sharded_state(static_cast<std::uint64_t>(r), 3, true, true);
    SaveOptions so;
    so.sharding = s.sharding;
    auto start = Clock::now();
    auto h = rt.save(tmp / "c", s.tree, {}, so);
    if (r == 1) {
      others_done.wait();
      faults->release_hung();  // it reports late, and learns the outcome process 0 sent
    }
    if (auto e = test::catch_error([&] { h.wait(); })) save_errors[static_cast<std::size_t>(r)] = e->what();
    seconds[static_cast<std::size_t>(r)] = std::chrono::duration<double>(Clock::now() - start).count();
    if (r != 1) others_done.count_down();
  });
  for (int r = 0; r < 3; ++r) {
    CAPTURE(r);
    CHECK(errors[static_cast<std::size_t>(r)].empty());
    CHECK(test::contains(save_errors[static_cast<std::size_t>(r)], "process 1 did not answer"));
  }
  CHECK(seconds[0] < 3.0);
  MESSAGE("process 0 failed after ", seconds[0], " s, process 2 after ", seconds[2], " s");
  CHECK_FALSE(std::filesystem::exists(tmp / "c"));
}

TEST_CASE("one process saves with a sharding; the tool lists, inspects, verifies (naming a damaged "
          "shard file) and gc-removes sharded checkpoints") {
  test::TempDir tmp;
  Runtime rt(small_options());
  ShardedState s = test::make_sharded_state(0, 1, true, true);
  SaveOptions so;
  so.sharding = s.sharding;
  rt.save(tmp / "one", s.tree, {}, so).wait();
  CHECK(resharded_restore(3, tmp / "one") == 0);
  collective_save(2, tmp / "run", "s");
  // The tool: list, inspect (the shard layout) and verify understand it.
  const std::string tool = CKPT_TOOL_PATH;
  std::string out;
  CHECK(test::run_command(tool + " list " + tmp / "run", &out) == 0);
  CHECK(test::contains(out, "s"));
  CHECK(test::run_command(tool + " inspect " + tmp / "run/s", &out) == 0);
  CHECK(test::contains(out, "shards:"));
  CHECK(test::contains(out, "data-00001.bin"));
  CHECK(test::contains(out, "replicated"));
  CHECK(test::run_command(tool + " verify " + tmp / "run/s", &out) == 0);
  test::flip_byte(tmp / "run/s/data-00001.bin", 10);
  CHECK(test::run_command(tool + " verify " + tmp / "run/s", &out) != 0);
  CHECK(test::contains(out, "data-00001.bin"));
  auto report = verify_checkpoint(*io::make_engine(), tmp / "run/s");
  REQUIRE(report.problems.size() == 1);
  CHECK(test::contains(report.problems[0], "data-00001.bin"));
  ShardedState t = test::make_sharded_state(0, 1, false, false);
  auto e = test::catch_error([&] { rt.restore(tmp / "run/s", t.tree, t.sharding); });
  REQUIRE(e);
  CHECK(e->code() == Errc::corrupt);
  CHECK(test::count_wrong(t) > 0);  // untouched: still zeros
  // gc keeps latest and removes the older sharded checkpoint whole, every shard file with it.
  collective_save(2, tmp / "run", "t");
  CHECK(test::run_command(tool + " gc " + tmp / "run" + " --keep 1", &out) == 0);
  CHECK_FALSE(std::filesystem::exists(tmp / "run/s"));
  CHECK(test::run_command(tool + " verify " + tmp / "run/t", &out) == 0);
  CHECK(resharded_restore(3, tmp / "run/t") == 0);
}

TEST_CASE("incremental collective saves: each process writes only its changed shards; restores, "
          "deletions in every order, corruption, export and a failing process") {
  test::TempDir tmp;
  const std::string run = tmp / "chain";
  // s1 writes everything; s2 changes leaves 0 and 1, s3 leaves 2 and 3: a third of the shards.
  const std::vector<Versions> versions{{0, 0, 0, 0, 0, 0}, {1, 1, 0, 0, 0, 0}, {1, 1, 2, 2, 0, 0}};
  const std::vector<std::string> suffixes{"s1", "s2", "s3"};
  std::vector<std::vector<SaveTimings>> timings(3, std::vector<SaveTimings>(3));
  {
    LocalGroup group(3);
    auto errors = on_ranks(3, [&](int r) {
      RuntimeOptions o = rank_options(group, r);
      o.incremental = true;
      Runtime rt(o);
      for (std::size_t k = 0; k < 3; ++k) {
        ShardedState s = inc_state(static_cast<std::uint64_t>(r), 3, true, &versions[k],
                                   static_cast<std::int64_t>(k + 1));
        SaveOptions so;
        so.sharding = s.sharding;
        so.run_dir = run;  // the base: process 0's last commit in it
        SaveHandle h = rt.save(run + "/" + suffixes[k], s.tree, {}, so);
        h.wait();
        timings[k][static_cast<std::size_t>(r)] = h.timings();
      }
      rt.register_latest(run, "s3").wait();
    });
    for (const auto& e : errors) CHECK_MESSAGE(e.empty(), e);
  }
  const std::uint64_t box_bytes = 4096 * 4;
  Runtime reader(small_options());
  for (std::size_t r = 0; r < 3; ++r) {
    CAPTURE(r);
    MESSAGE("process " << r << " written bytes: " << timings[0][r].written_bytes << " (full), "
                       << timings[1][r].written_bytes << ", " << timings[2][r].written_bytes
                       << " (incremental)");
    CHECK(timings[0][r].written_bytes >= kIncLeaves * box_bytes);
    for (std::size_t k = 1; k < 3; ++k) {
      // Two changed boxes, and the page of the replicated step for the process that writes it.
      CHECK(timings[k][r].written_bytes >= 2 * box_bytes);
      CHECK(timings[k][r].written_bytes <= 2 * box_bytes + 4096);
      CHECK(timings[k][r].stored_bytes >= kIncLeaves * box_bytes);
    }
  }
  for (std::size_t k = 0; k < 3; ++k) {
    CAPTURE(k);
    CHECK(inc_restores(reader, run + "/" + suffixes[k], versions[k],
                       static_cast<std::int64_t>(k + 1)));
  }
  // s3 names its own three files and links to s2's (leaves 0, 1) and s1's (leaves 4, 5).
  Manifest m3 = read_manifest(run + "/s3");
  CHECK(m3.process_count == 3);
  REQUIRE(m3.data_files.size() == 9);
  CHECK(m3.data_files[3].origin == "s2");
  CHECK(m3.data_files[8].origin == "s1");
  CHECK(storage_report(run + "/s3", m3).shared > 0);

  // Deleting the checkpoints in every order never breaks the others.
  std::vector<std::size_t> order{0, 1, 2};
  int orders = 0;
  do {
    const std::string copy = tmp / ("order" + std::to_string(orders++));
    REQUIRE(test::run_command("cp -a '" + run + "' '" + copy + "'") == 0);
    for (std::size_t gone = 0; gone < order.size(); ++gone) {
      remove_checkpoint(copy + "/" + suffixes[order[gone]]);
      for (std::size_t k = gone + 1; k < order.size(); ++k) {
        const std::size_t left = order[k];
        CHECK_MESSAGE(inc_restores(reader, copy + "/" + suffixes[left], versions[left],
                                   static_cast<std::int64_t>(left + 1), false),
                      suffixes[left]);
      }
    }
  } while (std::next_permutation(order.begin(), order.end()));
  CHECK(orders == 6);

  // A corrupt shared file is named, as shared, by every checkpoint that uses it.
  const Manifest m1 = read_manifest(run + "/s1");
  const ExtentInfo& e4 = m1.leaves[4].extents.at(0);
  const std::string s1_file = run + "/s1/data-0000" + std::to_string(e4.file) + ".bin";
  test::flip_byte(s1_file, e4.offset + 8);
  VerifyReport bad = verify_checkpoint(*io::make_engine(), run + "/s3");
  REQUIRE_FALSE(bad.ok());
  CHECK(test::contains(bad.problems.front(), "shared, first written by s1"));
  CHECK(test::contains(bad.problems.front(), "l4"));
  CHECK_FALSE(inc_restores(reader, run + "/s3", versions[2], 3));
  test::flip_byte(s1_file, e4.offset + 8);
  CHECK(inc_restores(reader, run + "/s3", versions[2], 3));

  // New Runtimes (the base: `latest`, s3, read by process 0). s4 changes leaves 2 and 3 again,
  // so it needs none of s3's own files: its links are renumbered past the gap. Leaves 4 and 5 are
  // written again: s1's files hold 32 KiB s4 would use and 68 KiB it would not, which
  // worth_sharing refuses (dead bytes bounded). Then a process failing s5 fails it everywhere;
  // nothing is committed or left behind.
  const Versions v4{1, 1, 4, 4, 0, 0};
  for (int fail = 0; fail < 2; ++fail) {
    LocalGroup group(3);
    const std::string path = run + (fail ? "/s5" : "/s4");
    auto errors = on_ranks(3, [&](int r) {
      RuntimeOptions o = rank_options(group, r);
      o.incremental = true;
      io::FaultEngine* faults = nullptr;
      o.wrap_engine = test::wrap_in_faults(&faults);
      Runtime rt(o);
      if (fail && r == 1) faults->arm({io::Request::Op::write, 1, io::FaultKind::error, EIO, false});
      Versions v = fail ? Versions{1, 1, 5, 5, 5, 5} : v4;
      ShardedState s = inc_state(static_cast<std::uint64_t>(r), 3, true, &v, 4 + fail);
      SaveOptions so;
      so.sharding = s.sharding;
      so.run_dir = run;
      SaveHandle h = rt.save(path, s.tree, {}, so);
      h.wait();
      CHECK(h.timings().written_bytes >= 4 * box_bytes);
      CHECK(h.timings().written_bytes <= 4 * box_bytes + 4096);
      rt.register_latest(run, fail ? "s5" : "s4").wait();
    });
    for (const auto& e : errors) CHECK(fail ? test::contains(e, "process 1: ") : e.empty());
  }
  Manifest m4 = read_manifest(run + "/s4");
  REQUIRE(m4.data_files.size() == 6);  // its own three, s2's three (through s3's links)
  CHECK(m4.data_files[5].origin == "s2");
  CHECK(inc_restores(reader, run + "/s4", v4, 4));
  CHECK_FALSE(std::filesystem::exists(run + "/s5"));
  CHECK(test::find_tmp_entries(run).empty());

  // Export: a self-contained copy that outlives the whole chain.
  export_checkpoint(run + "/s3", tmp / "exported");
  std::filesystem::remove_all(run);
  Manifest ex = read_manifest(tmp / "exported");
  CHECK(ex.data_files.size() == 9);
  CHECK(storage_report(tmp / "exported", ex).shared == 0);
  CHECK(inc_restores(reader, tmp / "exported", versions[2], 3));
}

TEST_CASE("retention and ckpt gc over incremental collective saves keep what they keep restorable; "
          "the tool lists, inspects and verifies them") {
  test::TempDir tmp;
  const std::string run = tmp / "run";
  std::vector<Versions> versions;
  LocalGroup group(2);
  auto errors = on_ranks(2, [&](int r) {
    RuntimeOptions o = rank_options(group, r);
    o.incremental = true;
    Runtime rt(o);
    Versions v(kIncLeaves, 0);
    for (std::uint64_t k = 0; k < 3; ++k) {
      v[k % kIncLeaves] = 10 + k;
      if (r == 0) versions.push_back(v);
      ShardedState s = inc_state(static_cast<std::uint64_t>(r), 2, true, &v,
                                 static_cast<std::int64_t>(k));
      SaveOptions so;
      so.sharding = s.sharding;
      so.run_dir = run;
      so.retention.max_to_keep = 2;  // process 0's policy removes the bases
      rt.save(run + "/step/" + std::to_string(k), s.tree, {}, so).wait();
      rt.register_latest(run, "step/" + std::to_string(k)).wait();
    }
    rt.drain();
  });
  for (const auto& e : errors) CHECK_MESSAGE(e.empty(), e);
  auto listed = list_checkpoints(run);
  REQUIRE(listed.size() == 2);
  Runtime reader(small_options());
  for (const auto& info : listed) {
    std::size_t k = std::stoul(info.suffix.substr(5));
    CHECK_MESSAGE(inc_restores(reader, info.path, versions[k], static_cast<std::int64_t>(k)),
                  info.suffix);
  }
  const std::string tool = CKPT_TOOL_PATH;
  std::string out;
  CHECK(test::run_command(tool + " list " + run, &out) == 0);
  CHECK(test::contains(out, "step/2"));
  CHECK(test::run_command(tool + " inspect " + run + "/step/2", &out) == 0);
  CHECK(test::contains(out, "shared bytes"));
  CHECK(test::contains(out, "step/1"));  // the origin of the files it links
  CHECK(test::run_command(tool + " gc " + run + " --keep 1", &out) == 0);
  REQUIRE(list_checkpoints(run).size() == 1);
  CHECK(test::run_command(tool + " verify " + run + "/step/2", &out) == 0);
  CHECK(inc_restores(reader, run + "/step/2", versions[2], 2));
}

TEST_CASE("an incremental save with a sharding and no communicator (one process) shares unchanged "
          "leaves and restores") {
  test::TempDir tmp;
  RuntimeOptions o = small_options();
  o.incremental = true;
  Runtime rt(o);
  Versions v(kIncLeaves, 0);
  std::vector<SaveTimings> t;
  for (std::uint64_t k = 0; k < 2; ++k) {
    v[1] = k;
    ShardedState s = inc_state(0, 1, true, &v, static_cast<std::int64_t>(k));
    SaveOptions so;
    so.sharding = s.sharding;
    so.run_dir = tmp / "run";
    SaveHandle h = rt.save(tmp / ("run/" + std::to_string(k)), s.tree, {}, so);
    h.wait();
    t.push_back(h.timings());
  }
  CHECK(t[0].written_bytes >= kIncLeaves * 3 * 4096 * 4);
  CHECK(t[1].written_bytes <= 3 * 4096 * 4 + 4096);  // leaf 1 and the step's page
  CHECK(read_manifest(tmp / "run/1").data_files.size() == 2);
  CHECK(inc_restores(rt, tmp / "run/1", v, 1));
}

TEST_CASE("decoding a sharded manifest rejects boxes that leave the array, overlap or leave "
          "part of it uncovered") {
  // Two processes, one float32 [4, 2] leaf in two row boxes of 8 bytes each.
  auto make = [] {
    Manifest m;
    Tree t;
    t["w"] = Array::zeros(DType::f32, {4, 2});
    describe_structure(t, m);
    m.process_count = 2;
    m.total_bytes = 32;
    LeafInfo leaf{"w", DType::f32, {4, 2}, 32, {}};
    for (std::uint32_t r = 0; r < 2; ++r) {
      m.data_files.push_back(FileInfo{data_file_name(r), 4096, 0});
      m.blocks.push_back(BlockInfo{r, 0, 4096, 0});
      ExtentInfo e;
      e.file = r;
      e.length = e.stored_length = 16;
      e.process_index = r;
      e.slice_start = {2 * r, 0};
      e.slice_shape = {2, 2};
      leaf.extents.push_back(e);
    }
    m.leaves.push_back(leaf);
    return m;
  };
  auto rejected = [](const Manifest& m) -> std::string {
    try {
      decode_manifest(encode_manifest(m), "manifest.ckpt");
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  Manifest good = make();
  Manifest d = decode_manifest(encode_manifest(good), "manifest.ckpt");
  CHECK(d.sharded());
  CHECK(d.leaves[0].extents[1].slice_start == Shape{2, 0});
  Manifest m = make();
  m.leaves[0].extents[1].slice_start = {3, 0};
  CHECK(test::contains(rejected(m), "slice outside the global shape"));
  m = make();
  m.leaves[0].extents[1].slice_start = {1, 0};
  CHECK(test::contains(rejected(m), "boxes overlap"));
  m = make();
  m.leaves[0].extents[1].slice_shape = {1, 2};
  m.leaves[0].extents[1].length = m.leaves[0].extents[1].stored_length = 8;
  CHECK(test::contains(rejected(m), "do not cover the leaf"));
  m = make();
  m.leaves[0].extents[1].length = m.leaves[0].extents[1].stored_length = 12;
  CHECK(test::contains(rejected(m), "differs from its box"));
  m = make();
  m.leaves[0].extents[1].process_index = 2;
  CHECK(test::contains(rejected(m), "beyond the process count"));
  // One process and one sliced leaf make the manifest sharded: an unsliced leaf beside it must be
  // one extent (the resharding reader takes each of its extents as the whole array).
  auto with_plain_leaf = [&](int pieces) {
    Manifest one = make();
    one.process_count = 1;
    for (auto& e : one.leaves[0].extents) e.process_index = 0;
    Tree t;
    t["b"] = Array::zeros(DType::u8, {8});
    t["w"] = Array::zeros(DType::f32, {4, 2});
    describe_structure(t, one);
    LeafInfo b{"b", DType::u8, {8}, 8, {}};
    for (int k = 0; k < pieces; ++k) {
      ExtentInfo e;
      e.offset = 16 + static_cast<std::uint64_t>(k) * (8 / pieces);
      e.length = e.stored_length = static_cast<std::uint64_t>(8 / pieces);
      e.leaf_offset = static_cast<std::uint64_t>(k) * (8 / pieces);
      b.extents.push_back(e);
    }
    one.leaves.insert(one.leaves.begin(), b);
    one.total_bytes = 40;
    return one;
  };
  CHECK(rejected(with_plain_leaf(1)).empty());
  CHECK(test::contains(rejected(with_plain_leaf(2)), "not the leaf's only one"));
}

TEST_CASE("a resharding restore names template arrays that share memory, as every restore does") {
  // 'a' reaches over 'b' into 'c': 'b' and 'c' do not touch, so only a check against the span
  // reaching furthest (not each address neighbour) finds 'a' and 'c'.
  test::TempDir tmp;
  auto engine = io::make_engine();
  Tree saved;
  saved["a"] = Array::zeros(DType::f32, {8});
  saved["b"] = Array::zeros(DType::f32, {2});
  saved["c"] = Array::zeros(DType::f32, {2});
  saved["d"] = Array::zeros(DType::f32, {4});
  save_checkpoint(*engine, tmp / "c", saved, {{"step", 1}});

  std::vector<float> buffer(32, 0.0f);
  std::vector<float> own(4, 0.0f);
  Tree templ;
  templ["a"] = Array::view(DType::f32, {8}, buffer.data());      // [0, 8)
  templ["b"] = Array::view(DType::f32, {2}, buffer.data() + 2);  // [2, 4)
  templ["c"] = Array::view(DType::f32, {2}, buffer.data() + 6);  // [6, 8)
  templ["d"] = Array::view(DType::f32, {4}, own.data());         // resharded: a box of its own
  Sharding sharding;
  sharding.shard("d", {4}, {0});
  auto e = test::catch_error(
      [&] { restore_checkpoint(*engine, tmp / "c", templ, false, read_options(1, 1, 0, sharding)); });
  REQUIRE(e);
  CHECK(e->code() == Errc::mismatch);
  const std::string what = e->what();
  CAPTURE(what);
  CHECK(test::contains(what, "(2 differences)"));
  CHECK(test::contains(what, "'a' and 'b': template arrays share memory"));
  CHECK(test::contains(what, "'a' and 'c': template arrays share memory"));
  CHECK(std::all_of(buffer.begin(), buffer.end(), [](float v) { return v == 0.0f; }));
}

TEST_CASE("a block corrupt mid-restore leaves a resharded template byte for byte as it was, "
          "staged or in two passes") {
  test::TempDir tmp;
  collective_save(2, tmp / "run", "s", matrix_state);
  const std::string dir = tmp / "run/s";
  Manifest man = read_manifest(dir);
  REQUIRE(man.data_files.size() == 2);
  REQUIRE(man.blocks.size() >= 6);
  const std::string last = dir + "/" + man.data_files[1].name;
  auto restore = [&](int parts, std::uint64_t part, const std::function<void(ShardedState&)>& fn) {
    ShardedState s = matrix_state(part, static_cast<std::uint64_t>(parts));  // any box will do
    auto [start, shape] = split_box(kM, 1, part, static_cast<std::uint64_t>(parts));
    s.tree["m"] = Array::zeros(DType::f32, shape);
    s.sharding = Sharding();
    s.sharding.shard("m", kM, start);
    test::fill_pattern(s.tree.at("m").array(), 77);
    fn(s);
  };
  auto wrong = [&](const ShardedState& s) {
    const Box& b = *s.sharding.find("m");
    const Array& a = s.tree.at("m").array();
    std::uint64_t n = 0;
    test::for_each_in_box(kM, b.start, a.shape(), [&](std::uint64_t l, std::uint64_t g) {
      n += a.as<float>()[l] != static_cast<float>(g);
    });
    return n;
  };
  // Sound first: three column boxes, each through every block of both files.
  for (std::uint64_t part = 0; part < 3; ++part) {
    restore(3, part, [&](ShardedState& s) {
      Runtime rt(small_options());
      rt.restore(dir, s.tree, s.sharding);
      CHECK(wrong(s) == 0);
    });
  }
  // The last block of the second file: with one worker and one read in flight, every other
  // block was verified and swapped into the template before it fails, and is swapped back.
  test::flip_byte(last, man.data_files[1].size - 100);
  for (std::uint64_t staging : {std::uint64_t{1} << 30, std::uint64_t{0}}) {
    CAPTURE(staging);
    restore(1, 0, [&](ShardedState& s) {
      ReadOptions ro = read_options(1, 1, staging, s.sharding);
      auto engine = io::make_engine();
      auto e = test::catch_error([&] { restore_checkpoint(*engine, dir, s.tree, false, ro); });
      REQUIRE(e);
      CHECK(e->code() == Errc::corrupt);
      CHECK(test::contains(e->what(), "data-00001.bin"));
      CHECK(test::contains(e->what(), "checksum mismatch"));
      CHECK(test::has_pattern(s.tree.at("m").array(), 77));
    });
  }
  // Through a Runtime: its copy threads, reads in flight, lent staging.
  restore(2, 1, [&](ShardedState& s) {
    Runtime rt(small_options());
    auto e = test::catch_error([&] { rt.restore(dir, s.tree, s.sharding); });
    REQUIRE(e);
    CHECK(e->code() == Errc::corrupt);
    CHECK(test::has_pattern(s.tree.at("m").array(), 77));
  });
}

}  // namespace ckpt
