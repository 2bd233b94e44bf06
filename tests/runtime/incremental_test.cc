// Incremental saves (runtime/incremental.h): what is written and shared, restores across chains
// with checkpoints deleted in every order, removal crashing at every step, corrupt and missing
// shared data, export. States are small (8 leaves of 16 KiB, 64 KiB units): the whole suite runs
// in a few seconds.
#include "runtime/incremental.h"

#include <doctest/doctest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdlib>
#include <filesystem>

#include "io/crash_point.h"
#include "io/engine.h"
#include "io/fault_engine.h"
#include "io/file.h"
#include "runtime/commit.h"
#include "runtime/layout.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/retention.h"
#include "runtime/runtime.h"
#include "tests/test_util.h"

using namespace ckpt;
using ckpt::test::catch_error;
using ckpt::test::contains;
using ckpt::test::TempDir;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

constexpr std::size_t kLeaves = 8;
constexpr std::size_t kFloats = 4096;  // 16 KiB a leaf: four leaves a 64 KiB unit
constexpr std::uint64_t kLeafBytes = kFloats * 4;

using Seeds = std::vector<std::uint64_t>;

Tree build(const Seeds& seeds) {
  Tree t = test::make_tree(kLeaves, kFloats, 0);
  auto flat = t.flatten();
  for (std::size_t i = 0; i < kLeaves; ++i) test::fill_pattern(flat[i].second, seeds[i]);
  return t;
}

RuntimeOptions inc_options(bool incremental = true) {
  RuntimeOptions o;
  o.engine = io::EngineKind::threads;
  o.staging_budget = 16u << 20;
  o.unit_bytes = 64u << 10;
  o.lock_wait = 2000ms;
  o.incremental = incremental;
  return o;
}

SaveOptions in_run(const std::string& run, SnapshotMode mode = SnapshotMode::sync) {
  SaveOptions so;
  so.run_dir = run;
  so.mode = mode;
  return so;
}

SaveTimings save(Runtime& rt, const std::string& path, const Seeds& seeds, std::int64_t step,
                 const SaveOptions& so) {
  Tree t = build(seeds);
  boost::json::object md;
  md["step"] = step;
  SaveHandle h = rt.save(path, t, md, so);
  if (so.mode == SnapshotMode::overlapped) h.wait_snapshotted();
  h.wait();
  return h.timings();
}

// Restores without an error to exactly `seeds`, and verifies.
bool restores_to(const std::string& path, const Seeds& seeds) {
  static const auto engine = io::make_engine({io::EngineKind::threads});
  Tree expect = build(seeds);
  Tree t = test::zeros_like(expect);
  if (catch_error([&] { restore_checkpoint(*engine, path, t); })) return false;
  return test::trees_equal(t, expect) && verify_checkpoint(*engine, path).ok();
}

nlink_t links_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_nlink;
}

// A chain of four incremental saves s1..s4 in `run`, each changing some leaves (s3 changes one
// back to its s1 value); latest names s4.
struct Chain {
  std::vector<std::string> suffixes{"s1", "s2", "s3", "s4"};
  std::vector<Seeds> versions;
};

Chain make_chain(const std::string& run) {
  Chain c;
  Seeds v{1, 2, 3, 4, 5, 6, 7, 8};
  c.versions.push_back(v);
  v[0] = 100, v[5] = 105;
  c.versions.push_back(v);
  v[0] = 1, v[2] = 102;
  c.versions.push_back(v);
  v[7] = 107;
  c.versions.push_back(v);
  Runtime rt(inc_options());
  for (std::size_t k = 0; k < c.versions.size(); ++k) {
    save(rt, run + "/" + c.suffixes[k], c.versions[k], static_cast<std::int64_t>(k + 1),
         in_run(run));
  }
  rt.register_latest(run, "s4").wait();
  return c;
}

// A copy of the run directory `from` at `to`, hard links between its checkpoints kept (cp -a
// preserves them within one copy): the same sharing as `from`, without saving again.
void clone_run(const std::string& from, const std::string& to) {
  REQUIRE(test::run_command("cp -a '" + from + "' '" + to + "'") == 0);
}

// Every checkpoint still listed restores to what it saved and verifies.
void check_listed(const std::string& run, const Chain& c) {
  for (const auto& info : list_checkpoints(run)) {
    auto it = std::find(c.suffixes.begin(), c.suffixes.end(), info.suffix);
    REQUIRE(it != c.suffixes.end());
    CHECK_MESSAGE(
        restores_to(info.path, c.versions[static_cast<std::size_t>(it - c.suffixes.begin())]),
        info.suffix);
  }
}

}  // namespace

TEST_CASE("an incremental save writes only the leaves that changed and shares the rest") {
  TempDir dir;
  const std::string run = dir / "run";
  Runtime rt(inc_options());
  Seeds v{1, 2, 3, 4, 5, 6, 7, 8};
  SaveTimings t1 = save(rt, run + "/a", v, 1, in_run(run));
  CHECK(t1.written_bytes == kLeaves * kLeafBytes);
  v[1] = 11, v[6] = 16;
  SaveTimings t2 = save(rt, run + "/b", v, 2, in_run(run));
  // Two 16 KiB leaves, each packed into its unit's block.
  CHECK(t2.written_bytes == 2 * kLeafBytes);
  CHECK(t2.stored_bytes == 2 * kLeafBytes + kLeaves * kLeafBytes);
  CHECK(restores_to(run + "/a", {1, 2, 3, 4, 5, 6, 7, 8}));
  CHECK(restores_to(run + "/b", v));

  Manifest m = read_manifest(run + "/b");
  REQUIRE(m.data_files.size() == 2);
  CHECK(m.data_files[0].size == 2 * kLeafBytes);
  CHECK(m.data_files[1].origin == "a");
  for (const auto& leaf : m.leaves) {
    for (const auto& e : leaf.extents) CHECK(e.has_hash);
  }
  // The shared file is the same inode under both names.
  CHECK(links_of(run + "/b/data-00001.bin") == 2);
  StorageReport r = storage_report(run + "/b", m);
  CHECK(r.owned == 2 * kLeafBytes);
  CHECK(r.shared == kLeaves * kLeafBytes);
  auto listed = list_checkpoints(run);
  REQUIRE(listed.size() == 2);
  CHECK(listed[1].shared_bytes == kLeaves * kLeafBytes);

  // Nothing changed: nothing written, the data file is empty.
  SaveTimings t3 = save(rt, run + "/c", v, 3, in_run(run));
  CHECK(t3.written_bytes == 0);
  CHECK(test::file_size(run + "/c/data-00000.bin") == 0);
  CHECK(restores_to(run + "/c", v));
}

TEST_CASE("units that keep changing are written whole at once and still restore exactly") {
  TempDir dir;
  const std::string run = dir / "run";
  Runtime rt(inc_options());
  for (std::uint64_t k = 0; k < 5; ++k) {
    Seeds v(kLeaves);
    for (std::size_t i = 0; i < kLeaves; ++i) v[i] = 1000 * k + i;  // everything changes
    const std::string path = run + "/s" + std::to_string(k);
    SaveTimings t = save(rt, path, v, static_cast<std::int64_t>(k), in_run(run));
    CHECK(t.written_bytes == kLeaves * kLeafBytes);
    CHECK(restores_to(path, v));
    // Nothing shared: the old files are not worth linking (none of their bytes are used).
    CHECK(read_manifest(path).data_files.size() == 1);
  }
  // A unit written whole that turns out unchanged is correct too, and ends the streak.
  Seeds same(kLeaves);
  for (std::size_t i = 0; i < kLeaves; ++i) same[i] = 4000 + i;
  SaveTimings t = save(rt, run + "/again", same, 9, in_run(run));
  CHECK(t.written_bytes == kLeaves * kLeafBytes);
  CHECK(restores_to(run + "/again", same));
  SaveTimings t2 = save(rt, run + "/again2", same, 10, in_run(run));
  CHECK(t2.written_bytes == 0);
  CHECK(restores_to(run + "/again2", same));
}

TEST_CASE(
    "a sync incremental save hashes the units it may share from the leaves in its stall and "
    "copies only what changed") {
  TempDir dir;
  const std::string run = dir / "run";
  Runtime rt(inc_options());
  // 64 leaves of 256 KiB in 64 KiB units: the copy outlasts the opening of the base, which
  // runs beside it, so most units are hashed in the stall (those copied before are copied whole).
  constexpr std::size_t kBig = 64;
  constexpr std::size_t kBigFloats = 65536;
  Tree t = test::make_tree(kBig, kBigFloats, 0);
  auto flat = t.flatten();
  const auto restores_to_tree = [&](const std::string& path) {
    static const auto engine = io::make_engine({io::EngineKind::threads});
    Tree back = test::zeros_like(t);
    if (catch_error([&] { restore_checkpoint(*engine, path, back); })) return false;
    return test::trees_equal(back, t) && verify_checkpoint(*engine, path).ok();
  };
  SaveHandle first = rt.save(run + "/s0", t, {}, in_run(run));
  first.wait();
  CHECK(restores_to_tree(run + "/s0"));
  for (std::uint64_t k = 1; k <= 8; ++k) {
    // Two leaves change at each step (never the same two twice in a row: nothing speculates).
    test::fill_pattern(flat[(2 * k) % kBig].second, 1000 + k);
    test::fill_pattern(flat[(2 * k + 1) % kBig].second, 2000 + k);
    const std::string path = run + "/s" + std::to_string(k);
    SaveHandle h = rt.save(path, t, {}, in_run(run));
    h.wait();
    CHECK(h.timings().written_bytes == 2 * kBigFloats * 4);
    CHECK_MESSAGE(restores_to_tree(path), path);
  }
  // How many depends on how soon the base is attached beside the copy (none under a sanitizer's
  // slow file-system calls); the test below checks the packing itself unit by unit.
  MESSAGE("units packed in the stall: ", rt.stats().units_packed_in_stall);
  // Everything changes, unforeseen: after a few units found changed, the stall stops hashing
  // (at most 8 more than half of those hashed changed, give or take the two copy threads).
  for (std::size_t l = 0; l < kBig; ++l) test::fill_pattern(flat[l].second, 5000 + l);
  const std::uint64_t before = rt.stats().units_packed_in_stall;
  SaveHandle all = rt.save(run + "/s9", t, {}, in_run(run));
  all.wait();
  CHECK(rt.stats().units_packed_in_stall - before <= 10);
  CHECK(all.timings().written_bytes == kBig * kBigFloats * 4);
  CHECK(restores_to_tree(run + "/s9"));
}

TEST_CASE(
    "packing a unit from the leaves gives the bytes, places and manifest of copying it and "
    "processing the copy") {
  TempDir dir;
  const std::string run = dir / "run";
  Seeds v{1, 2, 3, 4, 5, 6, 7, 8};
  {
    Runtime rt(inc_options());
    save(rt, run + "/base", v, 1, in_run(run));
  }
  v[1] = 11, v[6] = 16;  // two of the eight leaves change
  Tree t = build(v);
  const std::uint64_t unit = inc_options().unit_bytes;
  SavePlan plan = plan_save(t, unit, unit);
  const auto sources = leaf_sources(plan.leaves);
  IncrementalSave copied(plan.manifest, plan.units);
  IncrementalSave packed(plan.manifest, plan.units);
  fs::create_directories(dir / "a");
  fs::create_directories(dir / "b");
  copied.attach_base(run + "/base", dir / "a", run);
  packed.attach_base(run + "/base", dir / "b", run);
  REQUIRE(copied.has_base());
  REQUIRE(packed.has_base());
  std::uint64_t written = 0;
  for (std::size_t i = 0; i < plan.units.size(); ++i) {
    CAPTURE(i);
    io::AlignedBuffer a(plan.units[i].length);
    io::AlignedBuffer b(plan.units[i].length);
    std::memset(b.data(), 0xEE, plan.units[i].length);  // what a reused chunk may hold
    copy_unit(plan.units[i], sources, a.data(), Stores::cached);
    const IncrementalSave::Write wa = copied.process_unit(i, a.data());
    packed.pack_from_sources(i, sources, b.data());
    const IncrementalSave::Write wb = packed.place_packed(i, b.data());
    CHECK(wa.offset == wb.offset);
    REQUIRE(wa.length == wb.length);
    CHECK(std::memcmp(a.data(), b.data(), wa.length) == 0);
    written += wa.length;
  }
  CHECK(written == 2 * kLeafBytes);
  CHECK(copied.changed_units() == packed.changed_units());
  const Manifest ma = copied.build_manifest(plan.manifest);
  const Manifest mb = packed.build_manifest(plan.manifest);
  REQUIRE(ma.leaves.size() == mb.leaves.size());
  for (std::size_t l = 0; l < ma.leaves.size(); ++l) {
    REQUIRE(ma.leaves[l].extents.size() == mb.leaves[l].extents.size());
    for (std::size_t k = 0; k < ma.leaves[l].extents.size(); ++k) {
      const ExtentInfo& x = ma.leaves[l].extents[k];
      const ExtentInfo& y = mb.leaves[l].extents[k];
      CHECK(x.file == y.file);
      CHECK(x.offset == y.offset);
      CHECK(x.length == y.length);
      CHECK(x.hash == y.hash);
    }
  }
  CHECK(ma.blocks.size() == mb.blocks.size());
  for (std::size_t k = 0; k < std::min(ma.blocks.size(), mb.blocks.size()); ++k)
    CHECK(ma.blocks[k].crc32c == mb.blocks[k].crc32c);
}

TEST_CASE("an overlapped incremental save shares unchanged leaves and restores exactly") {
  TempDir dir;
  const std::string run = dir / "run";
  Runtime rt(inc_options());
  Seeds v{1, 2, 3, 4, 5, 6, 7, 8};
  save(rt, run + "/a", v, 1, in_run(run, SnapshotMode::overlapped));
  v[3] = 33;
  SaveTimings t = save(rt, run + "/b", v, 2, in_run(run, SnapshotMode::overlapped));
  CHECK(t.written_bytes == kLeafBytes);
  CHECK(restores_to(run + "/b", v));
}

TEST_CASE("deleting the checkpoints of a chain in every order never breaks the others") {
  // 24 orders of removing s1..s4; after each removal every remaining checkpoint restores.
  TempDir dir;
  const Chain c = make_chain(dir / "chain");
  std::vector<std::size_t> order{0, 1, 2, 3};
  int orders = 0;
  do {
    const std::string run = dir / ("run" + std::to_string(orders));
    clone_run(dir / "chain", run);
    REQUIRE(links_of(run + "/s1/data-00000.bin") > 1);  // shared in the copy too
    for (std::size_t k : order) {
      remove_checkpoint(run + "/" + c.suffixes[k]);
      check_listed(run, c);
    }
    CHECK(list_checkpoints(run).empty());
    ++orders;
  } while (std::next_permutation(order.begin(), order.end()));
  CHECK(orders == 24);
}

TEST_CASE("retention removing the bases of incremental saves keeps the kept ones restorable") {
  for (std::size_t keep : {1u, 2u}) {
    TempDir dir;
    const std::string run = dir / "run";
    Runtime rt(inc_options());
    SaveOptions so = in_run(run);
    so.retention.max_to_keep = keep;
    Seeds v{1, 2, 3, 4, 5, 6, 7, 8};
    std::vector<Seeds> versions;
    for (std::uint64_t k = 0; k < 6; ++k) {
      v[k % kLeaves] = 500 + k;
      versions.push_back(v);
      save(rt, run + "/step/" + std::to_string(k), v, static_cast<std::int64_t>(k), so);
    }
    REQUIRE(rt.drain().ok());
    auto listed = list_checkpoints(run);
    REQUIRE(listed.size() == keep);
    for (const auto& info : listed) {
      std::size_t k = std::stoul(info.suffix.substr(5));
      CHECK(restores_to(info.path, versions[k]));
    }
  }
}

TEST_CASE("gc crashing at every step of a removal never breaks a kept checkpoint") {
  // gc --keep 1 removes s1..s3 (latest is s4): renames under the lock, then unlinks file by
  // file. The child is killed at each step; the survivors restore, and a second gc finishes.
  struct Point {
    const char* name;
    int max_hits;
  };
  TempDir dir;
  const Chain c = make_chain(dir / "chain");
  int crashes = 0;
  for (Point p : {Point{"before_removal_rename", 3}, Point{"after_removal_rename", 3},
                  Point{"removal_unlink", 64}}) {
    for (int n = 1; n <= p.max_hits; ++n) {
      const std::string run = dir / (std::string(p.name) + std::to_string(n));
      clone_run(dir / "chain", run);
      const std::string arm = std::string(p.name) + ":" + std::to_string(n);
      int status = test::in_child([&] {
        ::setenv("CKPT_CRASH_AT", arm.c_str(), 1);
        io::reload_crash_points();
        try {
          RetentionPolicy keep1;
          keep1.max_to_keep = 1;
          collect_garbage(run, keep1, GcOptions());
        } catch (...) {
          return 2;
        }
        return 0;  // the point was not reached n times: the removal finished
      });
      check_listed(run, c);
      if (status == 0) break;
      REQUIRE_MESSAGE(status == 128 + SIGKILL, arm);
      ++crashes;
      CHECK(restores_to(run + "/s4", c.versions[3]));
      RetentionPolicy keep1;
      keep1.max_to_keep = 1;
      GcOptions leftovers;
      leftovers.leftovers = true;
      collect_garbage(run, keep1, leftovers);
      CHECK(test::find_tmp_entries(run).empty());
      REQUIRE(list_checkpoints(run).size() == 1);
      CHECK(restores_to(run + "/s4", c.versions[3]));
    }
  }
  CHECK(crashes >= 3 + 3 + 10);
}

TEST_CASE("a corrupt or missing shared file is reported for every checkpoint that uses it") {
  TempDir dir;
  const std::string run = dir / "run";
  Chain c = make_chain(run);
  auto engine = io::make_engine({io::EngineKind::threads});
  // s1's own data file is shared by s2 and s3 for leaf 1 (s4 wrote that unit again, having seen
  // it change twice): flip a byte of leaf 1.
  Manifest m1 = read_manifest(run + "/s1");
  const ExtentInfo& e = m1.leaves[1].extents.at(0);
  test::flip_byte(run + "/s1/data-00000.bin", e.offset + 5);
  for (const char* name : {"s1", "s2", "s3"}) {
    const std::string s = name;
    VerifyReport report = verify_checkpoint(*engine, run + "/" + s);
    REQUIRE_FALSE(report.ok());
    CHECK(contains(report.problems.front(), "checksum mismatch"));
    CHECK(contains(report.problems.front(), "layer1/w"));
    if (s != "s1") CHECK(contains(report.problems.front(), "shared, first written by s1"));
    Tree t = test::zeros_like(build(c.versions[0]));
    auto err = catch_error([&] { restore_checkpoint(*engine, run + "/" + s, t); });
    REQUIRE(err);
    CHECK(err->code() == Errc::corrupt);
  }
  // A shared file missing from one checkpoint breaks only that one.
  Manifest m4 = read_manifest(run + "/s4");
  REQUIRE(m4.data_files.size() >= 2);
  fs::remove(run + "/s4/" + m4.data_files[1].name);
  VerifyReport report = verify_checkpoint(*engine, run + "/s4");
  REQUIRE_FALSE(report.ok());
  CHECK(contains(report.problems.front(), m4.data_files[1].name));
  CHECK(contains(report.problems.front(), "shared, first written by"));
  CHECK(restores_to(run + "/s3", c.versions[2]) == false);    // still corrupt leaf 1
  test::flip_byte(run + "/s1/data-00000.bin", e.offset + 5);  // repaired
  CHECK(restores_to(run + "/s3", c.versions[2]));
  CHECK(restores_to(run + "/s2", c.versions[1]));
}

TEST_CASE("export writes a self-contained copy that outlives the whole chain") {
  TempDir dir;
  const std::string run = dir / "run";
  Chain c = make_chain(run);
  const std::string out = dir / "exported/s4";
  export_checkpoint(run + "/s4", out);
  fs::remove_all(run);
  CHECK(restores_to(out, c.versions[3]));
  Manifest m = read_manifest(out);
  for (const auto& f : m.data_files) {
    CHECK(f.origin.empty());
    CHECK(links_of(out + "/" + f.name) == 1);
  }
  CHECK(test::find_tmp_entries(dir.path()).empty());
}

TEST_CASE("export refuses a corrupt source and leaves nothing behind") {
  TempDir dir;
  const std::string run = dir / "run";
  make_chain(run);
  test::flip_byte(run + "/s1/data-00000.bin", 100);
  auto err = catch_error([&] { export_checkpoint(run + "/s3", dir / "out"); });
  REQUIRE(err);
  CHECK(err->code() == Errc::corrupt);
  CHECK_FALSE(fs::exists(dir / "out"));
  CHECK(test::find_tmp_entries(dir.path()).empty());
}

TEST_CASE("an incremental save without a usable base writes everything and restores") {
  TempDir dir;
  const std::string run = dir / "run";
  Seeds v{1, 2, 3, 4, 5, 6, 7, 8};
  {
    // A full (non-incremental) base has no hashes: nothing to share.
    Runtime full(inc_options(false));
    save(full, run + "/full", v, 1, in_run(run));
    full.register_latest(run, "full").wait();
  }
  Runtime rt(inc_options());
  SaveTimings t = save(rt, run + "/inc", v, 2, in_run(run));  // base from `latest`
  CHECK(t.written_bytes == kLeaves * kLeafBytes);
  CHECK(restores_to(run + "/inc", v));
  // An explicit base that does not exist.
  SaveOptions so;
  so.incremental_base = dir / "nowhere";
  SaveTimings t2 = save(rt, dir / "other", v, 3, so);
  CHECK(t2.written_bytes == kLeaves * kLeafBytes);
  CHECK(restores_to(dir / "other", v));
  // An explicit base outside any run directory shares with it.
  so.incremental_base = run + "/inc";
  SaveTimings t3 = save(rt, dir / "third", v, 4, so);
  CHECK(t3.written_bytes == 0);
  CHECK(restores_to(dir / "third", v));
  CHECK(read_manifest(dir / "third").data_files.at(1).origin == run + "/inc");
}

TEST_CASE("a failed incremental save leaves nothing behind and its base intact") {
  TempDir dir;
  const std::string run = dir / "run";
  io::FaultEngine* faults = nullptr;
  RuntimeOptions o = inc_options();
  o.wrap_engine = test::wrap_in_faults(&faults);
  Runtime rt(o);
  Seeds v{1, 2, 3, 4, 5, 6, 7, 8};
  save(rt, run + "/a", v, 1, in_run(run));
  Seeds w = v;
  w[2] = 22;
  faults->arm(io::FaultSpec{io::Request::Op::write, 1, io::FaultKind::error, EIO});
  Tree t = build(w);
  boost::json::object md;
  SaveHandle h = rt.save(run + "/b", t, md, in_run(run));
  auto err = catch_error([&] { h.wait(); });
  REQUIRE(err);
  faults->disarm();
  CHECK(test::find_tmp_entries(run).empty());
  CHECK_FALSE(fs::exists(run + "/b"));
  CHECK(links_of(run + "/a/data-00000.bin") == 1);  // the failed save's link is gone
  CHECK(restores_to(run + "/a", v));
  SaveTimings again = save(rt, run + "/b", w, 2, in_run(run));
  CHECK(again.written_bytes == kLeafBytes);
  CHECK(restores_to(run + "/b", w));
}

TEST_CASE("an incremental save over its own base's path keeps the shared data") {
  TempDir dir;
  const std::string run = dir / "run";
  Runtime rt(inc_options());
  Seeds v{1, 2, 3, 4, 5, 6, 7, 8};
  save(rt, run + "/same", v, 1, in_run(run));
  v[4] = 44;
  SaveTimings t = save(rt, run + "/same", v, 2, in_run(run));  // replaces its own base
  CHECK(t.written_bytes == kLeafBytes);
  CHECK(restores_to(run + "/same", v));
}

TEST_CASE("content_hash is libxxhash's XXH3-128 whichever code path the CPU selects") {
  // Checkpoints hashed by earlier builds (libxxhash) and the sharded saves' streaming hash must
  // find the same values: inputs across XXH3's size classes, at odd addresses.
  std::vector<std::byte> bytes((1u << 20) + 64);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>(i * 131 + 7);
  for (std::size_t n : {0u, 1u, 3u, 16u, 17u, 128u, 129u, 240u, 241u, 1024u, 4096u, 65537u,
                        1u << 20}) {
    for (std::size_t at : {0u, 1u, 13u}) {
      CAPTURE(n);
      CAPTURE(at);
      const XXH128_hash_t ref = XXH3_128bits(bytes.data() + at, n);
      const ContentHash h = content_hash(bytes.data() + at, n);
      CHECK(h.lo == ref.low64);
      CHECK(h.hi == ref.high64);
    }
  }
}

TEST_CASE("content hashes and origins survive a manifest round trip") {
  Manifest m;
  m.writer = "test";
  m.nodes.push_back(NodeInfo{Tree::Kind::leaf, {}, {}, 0});
  ExtentInfo e{1, 4096, 64, 64, 0, 0, 0};
  e.has_hash = true;
  e.hash = content_hash("abc", 3);
  m.leaves.push_back(LeafInfo{"", DType::u8, Shape{64}, 64, {e}});
  m.total_bytes = 64;
  m.data_files = {FileInfo{data_file_name(0), 0, 0},
                  FileInfo{data_file_name(1), 8192, 0, "step/1"}};
  m.blocks = {BlockInfo{1, 0, 8192, 7}};
  Manifest d = decode_manifest(encode_manifest(m), "m");
  REQUIRE(d.leaves.at(0).extents.size() == 1);
  CHECK(d.leaves[0].extents[0].has_hash);
  CHECK(d.leaves[0].extents[0].hash == e.hash);
  CHECK(d.data_files.at(1).origin == "step/1");
  CHECK(d.data_files.at(0).origin.empty());
  CHECK_FALSE(content_hash("abc", 3) == content_hash("abd", 3));
}
