// ckpt_bench: how long a save stalls the training loop, how long until the checkpoint is safe,
// and how long a restore takes, each next to the physical limit measured in the same run on the
// same bytes and disk (bench/baselines.h says how each limit is taken).
//
//   build/bench/ckpt_bench --dir /tmp/ckbench --state-mb 2048 --leaves 64 --saves 5 --mode sync
//   build/bench/ckpt_bench --dir /tmp/ckbench --state-mb 2048 --leaves 64 --mode overlapped --json
//   build/bench/ckpt_bench --dir /tmp/ckbench --state-mb 256 --leaves 100000 --engine threads
//   build/bench/ckpt_bench --dir /tmp/ckbench --small --saves 500      # small-checkpoint latency
//   build/bench/ckpt_bench --dir /tmp/ckbench --state-mb 1024 --incremental --changed-fraction 0.05
//
// --incremental: after the full saves, the same number of incremental saves into a run directory
// (SaveOptions::incremental, runtime/incremental.h), each after a step that changes
// --changed-fraction of the leaves (the same leaves each step; the full saves take the same steps).
// Three incremental warm-up saves come first (the base, then two that share: they also tell
// the Runtime which units change); only the newest two checkpoints are kept. JSON: `save` is the
// incremental series (with bytes_written), `full_save` the full one, `incremental` the ratios.
//
// One run, in this order: the baselines (warm memcpy with 1 and with --copy-threads threads; raw
// O_DIRECT io_uring write of the same bytes with fsync; raw O_DIRECT read back), then one warm-up
// save (it maps the staging pool; reported apart), then --saves saves of the state, each
// followed by a simulated training step that reads and then rewrites every array, then
// --restores restores into the live state's arrays; the last restore is checked against the
// checksum of the state taken when the last save was called (snapshot isolation, end to end).
// In overlapped mode the step's read phase runs before wait_snapshotted() and its update after,
// as a training loop overlaps the copy with its forward and backward pass.
//
// --paired (default on): a leaf memcpy and a raw write also run just before each measured save,
// and a leaf scatter and a raw read before each restore (class Pairing says exactly what runs);
// the p50 of the per-pair ratios of stall, durable and restore is reported next to the ratios
// against the best baseline run. It costs one more state of memory. On a machine whose memory
// and disk speed drift from one second to the next (a shared VM), the pair measures both under
// the same conditions.
//
// Output: a table (stdout), or with --json one JSON object on stdout and the table on stderr.
// Everything is written under DIR/ckpt_bench-<pid>/, which is removed at the end (--keep keeps).
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <boost/json/serialize.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include "bench/baselines.h"
#include "bench/bench_options.h"
#include "bench/bench_util.h"
#include "bench/state.h"
#include "io/file.h"
#include "runtime/manifest.h"

namespace ckpt::bench {

namespace fs = std::filesystem;
namespace json = boost::json;

RuntimeOptions BenchOptions::runtime_options() const {
  RuntimeOptions o;
  o.engine = io::parse_engine_kind(engine);
  o.copy_threads = copy_threads;
  o.overlapped_copy_threads = overlapped_copy_threads;
  o.copy_nice = copy_nice;
  o.write_during_copy = write_during_copy;
  o.staging_budget = staging_mb << 20;
  o.unit_bytes = unit_kb << 10;
  o.queue_depth = queue_depth;
  return o;
}

namespace {

struct SaveSample {
  double stall_ms = 0;          // save() call to return, measured by the caller
  double snapshot_ms = 0;       // call to the copy being complete (SaveTimings::snapshot)
  double snapshot_wait_ms = 0;  // overlapped: time the loop blocked in wait_snapshotted()
  double durable_ms = 0;        // call to durable and committed (SaveTimings::durable)
  double step_ms = 0;           // the simulated training step, waits included
  std::uint64_t bytes = 0;
  std::uint64_t stored_bytes = 0;
  std::uint64_t written_bytes = 0;  // data bytes this save wrote (incremental: not shared)
  // --paired: the baselines taken just before this save (0 when not paired).
  double pair_memcpy_ms = 0;
  double pair_memcpy_first_ms = 0;  // that memcpy's warm-up copy, into a buffer idle since
  double pair_raw_write_ms = 0;     // the last pair (Pairing::memcpy_ms)
  double blocked_ms() const { return stall_ms + snapshot_wait_ms; }
};

json::object sample_json(const SaveSample& s) {
  return {{"stall_ms", s.stall_ms},
          {"snapshot_ms", s.snapshot_ms},
          {"snapshot_wait_ms", s.snapshot_wait_ms},
          {"durable_ms", s.durable_ms},
          {"step_ms", s.step_ms},
          {"bytes", s.bytes},
          {"stored_bytes", s.stored_bytes},
          {"bytes_written", s.written_bytes},
          {"pair_memcpy_ms", s.pair_memcpy_ms},
          {"pair_memcpy_first_ms", s.pair_memcpy_first_ms},
          {"pair_raw_write_ms", s.pair_raw_write_ms}};
}

double gbps(std::uint64_t bytes, double ms) {
  return ms > 0 ? static_cast<double>(bytes) / ms / 1e6 : 0;
}

double ratio(double num, double den) { return den > 0 ? num / den : 0; }

void progress(const std::string& line) { std::fprintf(stderr, "ckpt_bench: %s\n", line.c_str()); }

// One save, then the simulated step; waits until the save is durable (saves are spaced further
// apart than their write time, as in training, so each save's durable time is its own).
SaveSample save_and_step(Runtime& rt, SyntheticState& state, const std::string& path,
                         bool overlapped, std::uint64_t step, const SaveOptions& options = {},
                         double changed_fraction = 1.0) {
  SaveOptions so = options;
  so.mode = overlapped ? SnapshotMode::overlapped : SnapshotMode::sync;
  json::object meta{{"step", step}};
  SaveSample s;
  auto t0 = Clock::now();
  SaveHandle h = rt.save(path, state.tree(), meta, so);
  s.stall_ms = ms_since(t0);
  auto t1 = Clock::now();
  volatile double sink = state.forward();
  (void)sink;
  if (overlapped) {
    auto tw = Clock::now();
    h.wait_snapshotted();
    s.snapshot_wait_ms = ms_since(tw);
  }
  state.update(changed_fraction);
  s.step_ms = ms_since(t1);
  h.wait();
  SaveTimings t = h.timings();
  s.snapshot_ms = to_ms(t.snapshot);
  s.durable_ms = to_ms(t.durable);
  s.bytes = t.bytes;
  s.stored_bytes = t.stored_bytes;
  s.written_bytes = t.written_bytes;
  return s;
}

// The incremental series: saves into one run directory, keeping the newest two.
std::vector<SaveSample> incremental_saves(Runtime& rt, SyntheticState& state, const BenchOptions& o,
                                          const std::string& run, std::uint32_t& expected_crc,
                                          std::string& last) {
  SaveOptions so;
  so.incremental = true;
  so.run_dir = run;
  const bool overlapped = o.mode == "overlapped";
  std::vector<std::string> kept;
  std::vector<SaveSample> samples;
  const int warmups = 3;
  for (int k = 1; k <= warmups + o.saves; ++k) {
    progress(k <= warmups ? fmt::format("incremental warm-up save {}/{}", k, warmups)
                          : fmt::format("incremental save {}/{}", k - warmups, o.saves));
    if (k == warmups + o.saves) expected_crc = state.checksum();
    std::string path = fmt::format("{}/step_{:06}", run, k);
    SaveSample s = save_and_step(rt, state, path, overlapped, static_cast<std::uint64_t>(k), so,
                                 o.changed_fraction);
    if (k > warmups) samples.push_back(s);
    kept.push_back(path);
    if (kept.size() > 2) {
      // Deleting a base never breaks what shares its data (hard links): rm -rf is enough.
      fs::remove_all(kept.front());
      kept.erase(kept.begin());
    }
    last = path;
  }
  return samples;
}

std::uint64_t default_staging_mb(const BenchOptions& o, std::uint64_t leaf_bytes) {
  std::uint64_t unit = o.unit_kb << 10;
  std::uint64_t stored = io::align_up(leaf_bytes * o.leaves);  // packed (format version 2)
  std::uint64_t per_save = (stored + unit - 1) / unit * unit;
  return (2 * per_save + (1u << 20) - 1) >> 20;
}

// --paired: the baselines once more just before each measured save (a leaf memcpy, after its
// untimed warm-up copy, and one raw write-and-read cycle, whose write is kept) and each restore
// (a leaf scatter: the state gathered into the buffer, untimed, and copied back, timed; then a
// raw read of the data file that restore reads: the same bytes on the same disk, nothing
// written before it), into a buffer of their own, one state in size. On a machine whose speed
// drifts between runs, a ratio of two figures taken moments apart says more than the p50 of the
// saves against the best of a few baseline runs taken minutes earlier; both are reported.
class Pairing {
 public:
  Pairing(const BenchOptions& o, SyntheticState& state)
      : o_(o), state_(state), dst_(io::align_up(state.bytes())) {}
  // The leaf memcpy into the buffer, timed after a warm-up copy (warm), and that warm-up copy's
  // own time (first): the buffer was idle since the last pair, as a save's staging is between
  // saves. Where memory left idle is slow to touch again (on some VMs, below the guest: README,
  // "On a VM whose idle memory is slow"), the first copy pays what a save's copy into its
  // staging pays.
  struct Copy {
    double warm = 0;
    double first = 0;
  };
  Copy memcpy_ms() {
    Copy c;
    c.warm = memcpy_best_ms(state_.spans(), dst_.data(), o_.copy_threads, 1, nullptr, &c.first);
    return c;
  }
  // The state's bytes copied back into its arrays (unchanged): gathered first, untimed.
  double scatter_ms() {
    memcpy_best_ms(state_.spans(), dst_.data(), o_.copy_threads, 1);
    return scatter_best_ms(dst_.data(), state_.mutable_spans(), o_.copy_threads, 1);
  }
  RawIo raw_io() { return raw_io_best(o_.work_dir, dst_.data(), dst_.size(), 1); }
  // The checkpoint's data file, up to the buffer's size. A file padded past the state, or an
  // incremental checkpoint (whose other data files are links to its base's), reads less than
  // the restore does: the pair errs against ckpt.
  double raw_read_ms(const std::string& checkpoint) {
    const std::string path = checkpoint + "/" + data_file_name(0);
    const std::uint64_t size = std::filesystem::file_size(path);
    return bench::raw_read_ms(path, dst_.data(), std::min<std::uint64_t>(size, dst_.size()) & ~4095ull);
  }
  std::size_t buffer_bytes() const { return dst_.size(); }

 private:
  const BenchOptions& o_;
  SyntheticState& state_;
  io::AlignedBuffer dst_;
};

// The p50 of the per-pair ratios num[i] / den[i] (pairs with a zero left out).
double paired_ratio(const std::vector<double>& num, const std::vector<double>& den) {
  std::vector<double> r;
  for (std::size_t i = 0; i < num.size() && i < den.size(); ++i)
    if (num[i] > 0 && den[i] > 0) r.push_back(num[i] / den[i]);
  return summarize(r).p50;
}

json::object run_full(BenchOptions& o) {
  json::object out;
  out["benchmark"] = "ckpt_bench";
  out["machine"] = describe_machine(o.dir);
  progress(fmt::format("building a {} MiB state of {} leaves", o.state_mb, o.leaves));
  SyntheticState state(o.state_mb << 20, o.leaves);
  const std::uint64_t bytes = state.bytes();
  if (o.staging_mb == 0) o.staging_mb = default_staging_mb(o, bytes / state.leaf_count());

  // ---- baselines ------------------------------------------------------------------------
  json::object base;
  {
    progress("baselines: memcpy");
    io::AlignedBuffer dst(io::align_up(bytes));
    Spans spans = state.spans();
    base["memcpy_1t_ms"] = memcpy_best_ms(spans, dst.data(), 1, o.baseline_runs);
    base["memcpy_mt_ms"] = memcpy_best_ms(spans, dst.data(), o.copy_threads, o.baseline_runs);
    base["memcpy_threads"] = o.copy_threads;
    // dst holds the state's bytes now: scattered back into its arrays.
    base["scatter_mt_ms"] =
        scatter_best_ms(dst.data(), state.mutable_spans(), o.copy_threads, o.baseline_runs);
    progress("baselines: raw O_DIRECT write and read");
    // The raw write sends the state's own bytes (the memcpy left them in dst).
    RawIo raw = raw_io_best(o.work_dir, dst.data(), io::align_up(bytes), o.baseline_runs);
    base["raw_write_ms"] = raw.write_ms;
    base["raw_read_ms"] = raw.read_ms;
    base["raw_bytes"] = io::align_up(bytes);
    base["raw_fixed_buffers"] = raw.fixed_buffers;
    base["raw_queue_depth"] = kRawQueueDepth;
    base["raw_request_bytes"] = kRawRequestBytes;
    base["runs"] = o.baseline_runs;
  }

  // ---- ckpt ------------------------------------------------------------------------------
  // Allocated before the peak RSS is reset: its buffer is reported apart from ckpt's memory.
  std::unique_ptr<Pairing> pairing = o.paired ? std::make_unique<Pairing>(o, state) : nullptr;
  std::uint64_t pair_faults = 0;  // page faults of the paired baselines, not ckpt's
  if (pairing) pairing->memcpy_ms();  // faults its buffer in
  bool peak_reset = reset_peak_rss();
  Runtime rt(o.runtime_options());
  const bool overlapped = o.mode == "overlapped";
  const std::string run = o.work_dir + "/run";
  progress("warm-up save");
  std::uint64_t f0 = page_faults();
  SaveSample warm = save_and_step(rt, state, run + "/warmup", overlapped, 0);
  std::uint64_t warm_faults = page_faults() - f0;

  std::vector<SaveSample> samples;
  std::uint32_t expected_crc = 0;
  std::string last;
  f0 = page_faults();
  const double fraction = o.incremental ? o.changed_fraction : 1.0;
  for (int k = 1; k <= o.saves; ++k) {
    progress(fmt::format("save {}/{}", k, o.saves));
    // The state as the last save sees it; the step after the save changes every element.
    if (k == o.saves) expected_crc = state.checksum();
    std::string path = fmt::format("{}/step_{:06}", run, k);
    Pairing::Copy pair_memcpy;
    double pair_write = 0;
    if (pairing) {
      std::uint64_t pf = page_faults();
      pair_memcpy = pairing->memcpy_ms();
      pair_write = pairing->raw_io().write_ms;
      pair_faults += page_faults() - pf;
    }
    samples.push_back(save_and_step(rt, state, path, overlapped, static_cast<std::uint64_t>(k),
                                    SaveOptions(), fraction));
    samples.back().pair_memcpy_ms = pair_memcpy.warm;
    samples.back().pair_memcpy_first_ms = pair_memcpy.first;
    samples.back().pair_raw_write_ms = pair_write;
    fs::remove_all(k == 1 ? run + "/warmup" : last);  // disk space: keep only the newest
    last = path;
  }
  std::uint64_t save_faults = page_faults() - f0 - pair_faults;
  std::vector<SaveSample> full_samples;
  if (o.incremental) {
    fs::remove_all(last);
    full_samples = std::move(samples);
    f0 = page_faults();
    samples = incremental_saves(rt, state, o, o.work_dir + "/run_inc", expected_crc, last);
    save_faults = page_faults() - f0;
  }
  RuntimeStats stats = rt.stats();

  std::vector<double> restore_ms, pair_read_ms, pair_scatter_ms;
  bool verified = false;
  for (int r = 0; r < o.restores && !last.empty(); ++r) {
    progress(fmt::format("restore {}/{}", r + 1, o.restores));
    if (pairing) {
      pair_scatter_ms.push_back(pairing->scatter_ms());
      pair_read_ms.push_back(pairing->raw_read_ms(last));
    }
    auto t0 = Clock::now();
    rt.restore(last, state.tree(), RestoreOptions{false, o.transactional_restore});
    restore_ms.push_back(ms_since(t0));
    verified = state.checksum() == expected_crc;
  }
  std::uint64_t peak = peak_rss_bytes();
  DrainReport drained = rt.drain();

  // The same baselines once more after ckpt's phase: on a shared machine the disk and memory
  // bandwidth drift, and a figure measured under different conditions is flagged, not hidden.
  // The ratios keep using the baselines taken first.
  json::object after;
  if (o.recheck) {
    progress("baselines again (drift check)");
    io::AlignedBuffer dst(io::align_up(bytes));
    after["memcpy_mt_ms"] =
        memcpy_best_ms(state.spans(), dst.data(), o.copy_threads, o.baseline_runs);
    after["scatter_mt_ms"] =
        scatter_best_ms(dst.data(), state.mutable_spans(), o.copy_threads, o.baseline_runs);
    RawIo raw = raw_io_best(o.work_dir, dst.data(), io::align_up(bytes), o.baseline_runs);
    after["raw_write_ms"] = raw.write_ms;
    after["raw_read_ms"] = raw.read_ms;
    double drift = 0;
    for (const char* key : {"memcpy_mt_ms", "scatter_mt_ms", "raw_write_ms", "raw_read_ms"}) {
      double a = base[key].as_double(), b = after[key].as_double();
      drift = std::max(drift, std::abs(b - a) / std::min(a, b));
    }
    after["max_drift"] = drift;
  }

  // ---- report ----------------------------------------------------------------------------
  // One field of every sample, in save order.
  auto column = [](const std::vector<SaveSample>& from, double SaveSample::*field) {
    std::vector<double> v;
    for (const auto& s : from) v.push_back(s.*field);
    return v;
  };
  auto pick_from = [&](const std::vector<SaveSample>& from, double SaveSample::*field) {
    return summarize(column(from, field));
  };
  auto pick = [&](double SaveSample::*field) { return pick_from(samples, field); };
  auto series_json = [&](const std::vector<SaveSample>& from) {
    json::array per_save;
    std::vector<double> blocked_v, written_v;
    for (const auto& s : from) {
      per_save.push_back(sample_json(s));
      blocked_v.push_back(s.blocked_ms());
      written_v.push_back(static_cast<double>(s.written_bytes));
    }
    return json::object{
        {"stall_ms", to_json(pick_from(from, &SaveSample::stall_ms))},
        {"snapshot_ms", to_json(pick_from(from, &SaveSample::snapshot_ms))},
        {"snapshot_wait_ms", to_json(pick_from(from, &SaveSample::snapshot_wait_ms))},
        {"blocked_ms", to_json(summarize(blocked_v))},
        {"durable_ms", to_json(pick_from(from, &SaveSample::durable_ms))},
        {"step_ms", to_json(pick_from(from, &SaveSample::step_ms))},
        {"bytes", from.empty() ? 0 : from.back().bytes},
        {"stored_bytes", from.empty() ? 0 : from.back().stored_bytes},
        {"bytes_written", to_json(summarize(written_v))},
        {"per_save", per_save}};
  };
  std::vector<double> blocked;
  for (const auto& s : samples) blocked.push_back(s.blocked_ms());
  Summary stall = pick(&SaveSample::stall_ms), durable = pick(&SaveSample::durable_ms);
  Summary restore = summarize(restore_ms);
  Summary blocked_s = summarize(blocked);

  out["state_bytes"] = bytes;
  out["leaves"] = state.leaf_count();
  out["mode"] = o.mode;
  out["engine"] = stats.engine;
  out["saves"] = o.saves;
  out["options"] = {{"copy_threads", o.copy_threads},
                    {"staging_budget_bytes", stats.staging_budget},
                    {"unit_bytes", o.unit_kb << 10},
                    {"queue_depth", o.queue_depth},
                    {"write_during_copy", o.write_during_copy},
                    {"transactional_restore", o.transactional_restore}};
  out["baseline"] = base;
  if (o.recheck) out["baseline_after"] = after;
  out["save"] = series_json(samples);
  if (o.incremental) {
    out["full_save"] = series_json(full_samples);
    Summary full_durable = pick_from(full_samples, &SaveSample::durable_ms);
    Summary full_stall = pick_from(full_samples, &SaveSample::stall_ms);
    std::vector<double> written_v;
    for (const auto& s : samples) written_v.push_back(static_cast<double>(s.written_bytes));
    Summary written = summarize(written_v);
    out["incremental"] = {
        {"changed_fraction", o.changed_fraction},
        {"bytes_written_over_state", ratio(written.p50, static_cast<double>(bytes))},
        {"durable_over_full", ratio(durable.p50, full_durable.p50)},
        {"stall_over_full", ratio(stall.p50, full_stall.p50)}};
  }
  json::object warm_j = sample_json(warm);
  warm_j["faults"] = warm_faults;
  out["warmup"] = warm_j;
  out["restore"] = {{"ms", to_json(restore)}, {"verified", verified}};
  const double memcpy_mt = base["memcpy_mt_ms"].as_double();
  out["ratios"] = {{"stall_over_memcpy", ratio(stall.p50, memcpy_mt)},
                   {"blocked_over_memcpy", ratio(blocked_s.p50, memcpy_mt)},
                   {"stall_over_memcpy_1t", ratio(stall.p50, base["memcpy_1t_ms"].as_double())},
                   {"write_over_raw", ratio(base["raw_write_ms"].as_double(), durable.p50)},
                   {"restore_over_raw", ratio(base["raw_read_ms"].as_double(), restore.p50)},
                   {"restore_over_read_scatter",
                    ratio(base["raw_read_ms"].as_double() + base["scatter_mt_ms"].as_double(),
                          restore.p50)}};
  if (pairing) {
    // The incremental series is not paired: its ratios are to the full saves of the same run.
    const std::vector<SaveSample>& paired = o.incremental ? full_samples : samples;
    const std::vector<double> stall_v = column(paired, &SaveSample::stall_ms);
    const std::vector<double> durable_v = column(paired, &SaveSample::durable_ms);
    const std::vector<double> memcpy_v = column(paired, &SaveSample::pair_memcpy_ms);
    const std::vector<double> first_v = column(paired, &SaveSample::pair_memcpy_first_ms);
    const std::vector<double> write_v = column(paired, &SaveSample::pair_raw_write_ms);
    std::vector<double> read_scatter = pair_read_ms;
    for (std::size_t i = 0; i < read_scatter.size() && i < pair_scatter_ms.size(); ++i)
      read_scatter[i] += pair_scatter_ms[i];
    out["paired"] = {{"series", o.incremental ? "full_save" : "save"},
                     {"memcpy_mt_ms", to_json(summarize(memcpy_v))},
                     {"raw_write_ms", to_json(summarize(write_v))},
                     {"raw_read_ms", to_json(summarize(pair_read_ms))},
                     {"stall_over_memcpy", paired_ratio(stall_v, memcpy_v)},
                     {"memcpy_first_ms", to_json(summarize(first_v))},
                     {"stall_over_memcpy_first", paired_ratio(stall_v, first_v)},
                     {"write_over_raw", paired_ratio(write_v, durable_v)},
                     {"scatter_mt_ms", to_json(summarize(pair_scatter_ms))},
                     {"restore_over_raw", paired_ratio(pair_read_ms, restore_ms)},
                     {"restore_over_read_scatter", paired_ratio(read_scatter, restore_ms)},
                     {"buffer_bytes", pairing->buffer_bytes()}};
  }
  out["faults_per_save"] =
      o.saves > 0 ? static_cast<double>(save_faults) / static_cast<double>(o.saves) : 0.0;
  // The paired baselines' buffer is resident through the ckpt phase: not ckpt's memory.
  out["peak_rss_bytes"] = peak - (pairing ? std::min<std::uint64_t>(peak, pairing->buffer_bytes()) : 0);
  out["peak_rss_scope"] = peak_reset ? "ckpt phase (VmHWM reset after the baselines)" : "process";
  out["staging_mapped_bytes"] = stats.staging_mapped;
  out["unwaited_failures"] = drained.failed;
  return out;
}

// ---- the table ----------------------------------------------------------------------------

struct Lines {
  std::string text;
  template <typename... A>
  void operator()(fmt::format_string<A...> f, A&&... args) {
    text += fmt::format(f, std::forward<A>(args)...);
    text += '\n';
  }
};

double num(const json::value& v) { return v.to_number<double>(); }
double at(const json::object& o, std::string_view a, std::string_view b) {
  return num(o.at(a).as_object().at(b));
}

std::string full_table(const json::object& r) {
  const auto& base = r.at("baseline").as_object();
  const auto& save = r.at("save").as_object();
  const auto& ratios = r.at("ratios").as_object();
  const auto& opts = r.at("options").as_object();
  auto bytes = r.at("state_bytes").to_number<std::uint64_t>();
  auto raw_bytes = base.at("raw_bytes").to_number<std::uint64_t>();
  auto stored = save.at("stored_bytes").to_number<std::uint64_t>();
  Lines line;
  line("ckpt_bench: {:.0f} MiB state ({} bytes) in {} leaves, mode {}, engine {}, {} saves",
       static_cast<double>(bytes) / (1 << 20), bytes, r.at("leaves").to_number<std::uint64_t>(),
       r.at("mode").as_string().c_str(), r.at("engine").as_string().c_str(),
       r.at("saves").to_number<int>());
  line("machine: {}", machine_line(r.at("machine").as_object()));
  line("runtime: {} copy threads, staging budget {} MiB, unit {} KiB, queue depth {}{}{}",
       num(opts.at("copy_threads")), num(opts.at("staging_budget_bytes")) / (1 << 20),
       num(opts.at("unit_bytes")) / 1024, num(opts.at("queue_depth")),
       opts.at("write_during_copy").as_bool() ? "" : ", sync writes after the copy",
       opts.at("transactional_restore").as_bool() ? "" : ", restores not transactional");
  line("");
  line("baselines (best of {})                                   ms      GB/s",
       num(base.at("runs")));
  auto base_line = [&](const char* name, const char* key, std::uint64_t n) {
    double ms = num(base.at(key));
    line("  {:<50} {:>8.1f} {:>8.2f}", name, ms, gbps(n, ms));
  };
  // The memcpy baselines copy the state's N leaf buffers into one contiguous buffer: what any
  // snapshot of N leaves must do at least.
  base_line("leaf memcpy (every leaf into one buffer), 1 thread", "memcpy_1t_ms", bytes);
  base_line(fmt::format("leaf memcpy, {} threads", num(base.at("memcpy_threads"))).c_str(),
            "memcpy_mt_ms", bytes);
  base_line("raw write (O_DIRECT, io_uring QD16 1 MiB, fsync)", "raw_write_ms", raw_bytes);
  base_line("raw read (O_DIRECT, io_uring QD16 1 MiB)", "raw_read_ms", raw_bytes);
  // A restore into the N arrays also copies the bytes it read into them (unless it reads straight
  // into them): the reverse of the leaf memcpy.
  base_line(fmt::format("leaf scatter (buffer into every leaf), {} threads",
                        num(base.at("memcpy_threads"))).c_str(),
            "scatter_mt_ms", bytes);
  if (r.contains("baseline_after")) {
    const auto& after = r.at("baseline_after").as_object();
    double drift = num(after.at("max_drift"));
    line(
        "  again after the saves: memcpy {:.1f}, scatter {:.1f}, raw write {:.1f}, raw read {:.1f} "
        "ms (largest drift {:.0f}%{})",
        num(after.at("memcpy_mt_ms")), num(after.at("scatter_mt_ms")),
        num(after.at("raw_write_ms")), num(after.at("raw_read_ms")),
        drift * 100, drift > 0.2 ? ": NOISY MACHINE, ratios are uncertain; rerun" : "");
  }
  line("");
  line("save        stall ms  snapshot ms  blocked ms  durable ms  write GB/s  step ms");
  auto save_line = [&](const std::string& name, const json::object& x) {
    line("  {:<8} {:>9.2f} {:>12.1f} {:>11.2f} {:>11.1f} {:>11.2f} {:>8.1f}", name,
         num(x.at("stall_ms")), num(x.at("snapshot_ms")),
         num(x.at("stall_ms")) + num(x.at("snapshot_wait_ms")), num(x.at("durable_ms")),
         gbps(x.at("bytes_written").to_number<std::uint64_t>(), num(x.at("durable_ms"))),
         num(x.at("step_ms")));
  };
  save_line("warm-up", r.at("warmup").as_object());
  int k = 0;
  for (const auto& x : save.at("per_save").as_array())
    save_line(std::to_string(++k), x.as_object());
  line("  (blocked = stall + time the loop waited in wait_snapshotted(); write GB/s counts the");
  line("   data bytes each save wrote; {} bytes of data files per checkpoint)", stored);
  line("");
  line("summary                  p50        p90        max");
  auto sum_line = [&](const char* name, const json::object& x) {
    line("  {:<18} {:>9.2f}  {:>9.2f}  {:>9.2f}", name, num(x.at("p50")), num(x.at("p90")),
         num(x.at("max")));
  };
  sum_line("stall ms", save.at("stall_ms").as_object());
  sum_line("blocked ms", save.at("blocked_ms").as_object());
  sum_line("durable ms", save.at("durable_ms").as_object());
  sum_line("restore ms", r.at("restore").as_object().at("ms").as_object());
  line("");
  line("ratios (p50 against the best baseline run)");
  line("  stall / memcpy {} threads     {:>7.3f}   (1 = a bare warm memcpy)",
       num(base.at("memcpy_threads")), num(ratios.at("stall_over_memcpy")));
  line("  blocked / memcpy {} threads   {:>7.3f}", num(base.at("memcpy_threads")),
       num(ratios.at("blocked_over_memcpy")));
  line("  raw write / durable          {:>7.3f}   (1 = raw disk speed, fsync included)",
       num(ratios.at("write_over_raw")));
  line("  raw read / restore           {:>7.3f}   (1 = raw disk speed)",
       num(ratios.at("restore_over_raw")));
  line("  (raw read + scatter) / restore {:>5.3f}   (1 = a read, then a copy into the arrays)",
       num(ratios.at("restore_over_read_scatter")));
  if (r.contains("paired")) {
    const auto& p = r.at("paired").as_object();
    line("");
    line("paired: one baseline run just before each {} (p50 of the per-pair ratios)",
         p.at("series").as_string() == "save" ? "save and restore" : "full save and restore");
    line("  stall / memcpy {} threads     {:>7.3f}   (memcpy p50 {:.1f} ms, max {:.1f})",
         num(base.at("memcpy_threads")), num(p.at("stall_over_memcpy")),
         at(p, "memcpy_mt_ms", "p50"), at(p, "memcpy_mt_ms", "max"));
    line("  stall / first memcpy         {:>7.3f}   (into memory idle since the last pair: p50 "
         "{:.1f} ms, max {:.1f})",
         num(p.at("stall_over_memcpy_first")), at(p, "memcpy_first_ms", "p50"),
         at(p, "memcpy_first_ms", "max"));
    line("  raw write / durable          {:>7.3f}   (raw write p50 {:.1f} ms, max {:.1f})",
         num(p.at("write_over_raw")), at(p, "raw_write_ms", "p50"), at(p, "raw_write_ms", "max"));
    line("  raw read / restore           {:>7.3f}   (raw read p50 {:.1f} ms, max {:.1f})",
         num(p.at("restore_over_raw")), at(p, "raw_read_ms", "p50"), at(p, "raw_read_ms", "max"));
    line("  (raw read + scatter) / restore {:>5.3f}   (scatter p50 {:.1f} ms, max {:.1f})",
         num(p.at("restore_over_read_scatter")), at(p, "scatter_mt_ms", "p50"),
         at(p, "scatter_mt_ms", "max"));
  }
  if (r.contains("incremental")) {
    const auto& inc = r.at("incremental").as_object();
    const auto& full = r.at("full_save").as_object();
    line("");
    line("incremental saves (changed fraction {:.2f}) against full saves, p50:",
         num(inc.at("changed_fraction")));
    line("  full:        stall {:>9.2f} ms  durable {:>9.1f} ms  written {:>12.0f} bytes",
         num(full.at("stall_ms").as_object().at("p50")),
         num(full.at("durable_ms").as_object().at("p50")),
         num(full.at("bytes_written").as_object().at("p50")));
    line("  incremental: stall {:>9.2f} ms  durable {:>9.1f} ms  written {:>12.0f} bytes",
         num(save.at("stall_ms").as_object().at("p50")),
         num(save.at("durable_ms").as_object().at("p50")),
         num(save.at("bytes_written").as_object().at("p50")));
    line("  written / state {:.4f}   durable / full {:.3f}   stall / full {:.3f}",
         num(inc.at("bytes_written_over_state")), num(inc.at("durable_over_full")),
         num(inc.at("stall_over_full")));
  }
  line("");
  line("page faults per save: {:.1f} (warm-up save: {})", num(r.at("faults_per_save")),
       num(r.at("warmup").as_object().at("faults")));
  double peak = num(r.at("peak_rss_bytes")), mapped = num(r.at("staging_mapped_bytes"));
  const double pair_buf = r.contains("paired") ? at(r, "paired", "buffer_bytes") : 0;
  line("peak RSS: {:.0f} MiB = state {:.0f} + staging mapped {:.0f} + other {:.0f} MiB{}",
       peak / (1 << 20), static_cast<double>(bytes) / (1 << 20), mapped / (1 << 20),
       (peak - static_cast<double>(bytes) - mapped) / (1 << 20),
       pair_buf > 0 ? fmt::format(" (the paired baselines' buffer of {:.0f} MiB not counted)",
                                  pair_buf / (1 << 20))
                    : "");
  line("restore verified against the last save's checksum: {}",
       r.at("restore").as_object().at("verified").as_bool() ? "yes" : "NO");
  return line.text;
}

std::string small_table(const json::object& r) {
  Lines line;
  const auto& small = r.at("small").as_object();
  line("ckpt_bench --small: {} bytes in {} leaves, {} saves, engine {}", num(r.at("tree_bytes")),
       num(r.at("leaves")), num(r.at("saves")), r.at("engine").as_string().c_str());
  line("machine: {}", machine_line(r.at("machine").as_object()));
  line("");
  line("                                             p50 ms     p90 ms     p99 ms     max ms");
  auto row = [&](const char* name, const json::object& x) {
    line("  {:<40} {:>9.3f}  {:>9.3f}  {:>9.3f}  {:>9.3f}", name, num(x.at("p50")),
         num(x.at("p90")), num(x.at("p99")), num(x.at("max")));
  };
  row("ckpt save: stall", small.at("stall_ms").as_object());
  row("ckpt save: durable (SaveTimings)", small.at("durable_ms").as_object());
  row("ckpt save: call to wait() returning", small.at("observed_ms").as_object());
  row("bare: write 4 KiB, fsync, rename, fsync dir", r.at("bare").as_object().at("ms").as_object());
  line("");
  line("ratios: ckpt/bare p50 {:.2f}, p99 {:.2f} (observed latency; 1 = the bare protocol)",
       at(r, "ratios", "small_p50_over_bare_p50"), at(r, "ratios", "small_p99_over_bare_p99"));
  return line.text;
}

}  // namespace
}  // namespace ckpt::bench

int main(int argc, char** argv) {
  using namespace ckpt::bench;
  BenchOptions o;
  CLI::App app{"ckpt_bench: save stall, time to durable and restore, next to memcpy and raw disk"};
  app.add_option("--dir", o.dir, "directory on the disk to measure")->required();
  app.add_option("--state-mb", o.state_mb, "state size in MiB")->check(CLI::PositiveNumber);
  app.add_option("--leaves", o.leaves, "number of arrays in the state")->check(CLI::PositiveNumber);
  app.add_option("--saves", o.saves, "measured saves (default 5; 200 with --small)")
      ->check(CLI::PositiveNumber);
  app.add_option("--mode", o.mode, "snapshot mode")->check(CLI::IsMember({"sync", "overlapped"}));
  app.add_option("--engine", o.engine, "storage engine")
      ->check(CLI::IsMember({"auto", "uring", "threads"}));
  app.add_flag("--json", o.json, "print one JSON object on stdout (the table goes to stderr)");
  app.add_option("--copy-threads", o.copy_threads, "copy threads (0: hardware threads)");
  app.add_option("--overlapped-copy-threads", o.overlapped_copy_threads,
                 "threads an overlapped copy uses (0: the Runtime's default, all copy threads)");
  app.add_option("--copy-nice", o.copy_nice, "nice value of the copy threads");
  app.add_flag("--write-during-copy,!--no-write-during-copy", o.write_during_copy,
               "a sync save writes each unit as soon as it is copied (default on; off: its "
               "writes start when the copy ends)");
  app.add_flag("--transactional-restore,!--no-transactional-restore", o.transactional_restore,
               "a failed restore leaves the arrays as they were (default on; off: blocks are "
               "copied in without undo, and read once beyond the staging)");
  app.add_option("--staging-mb", o.staging_mb, "staging budget in MiB (0: two saves' worth)");
  app.add_option("--unit-kb", o.unit_kb, "write unit in KiB (0: the Runtime's default)");
  app.add_option("--queue-depth", o.queue_depth, "IO requests in flight")
      ->check(CLI::PositiveNumber);
  app.add_option("--restores", o.restores, "restores to time")->check(CLI::NonNegativeNumber);
  app.add_option("--baseline-runs", o.baseline_runs, "runs of each baseline (best is kept)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--small", o.small, "small-checkpoint latency against a bare write+fsync+rename");
  app.add_option("--small-kb", o.small_kb, "size of the small tree in KiB")
      ->check(CLI::PositiveNumber);
  app.add_flag("--recheck,!--no-recheck", o.recheck,
               "measure the baselines again after the saves to flag drift (default on)");
  app.add_flag("--paired,!--no-paired", o.paired,
               "also time one memcpy and raw write before each save, one leaf scatter and raw read "
               "before each restore, and report the per-pair ratios (default on)");
  app.add_flag("--keep", o.keep, "keep what the run wrote under DIR/ckpt_bench-<pid>");
  app.add_flag("--incremental", o.incremental,
               "measure incremental saves next to full ones (runtime/incremental.h)");
  app.add_option("--changed-fraction", o.changed_fraction,
                 "with --incremental: fraction of the leaves each step changes")
      ->check(CLI::Range(0.0, 1.0));
  app.add_flag("--sharded", o.sharded,
               "collective save of one global state split over the processes (under mpirun)");
  CLI11_PARSE(app, argc, argv);
  if (o.small && app.count("--saves") == 0) o.saves = 200;
  if (o.copy_threads == 0) o.copy_threads = std::max(std::thread::hardware_concurrency(), 1u);
  if (o.unit_kb == 0) o.unit_kb = ckpt::RuntimeOptions{}.unit_bytes >> 10;

  namespace fs = std::filesystem;
  int rc = 0;
  if (o.sharded) {
    try {
      fs::create_directories(o.dir);
      o.dir = fs::canonical(o.dir).string();
      if (o.staging_mb == 0) o.staging_mb = 64;  // run_sharded sizes it to two saves at least
      return run_sharded(o, bench_communicator(&argc, &argv));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ckpt_bench: %s\n", e.what());
      return 1;
    }
  }
  try {
    fs::create_directories(o.dir);
    o.dir = fs::canonical(o.dir).string();
    o.work_dir = fmt::format("{}/ckpt_bench-{}", o.dir, ::getpid());
    fs::create_directories(o.work_dir);
    boost::json::object result = o.small ? run_small(o) : run_full(o);
    std::string table = o.small ? small_table(result) : full_table(result);
    if (o.json) {
      std::fputs(table.c_str(), stderr);
      std::cout << boost::json::serialize(result) << std::endl;
    } else {
      std::fputs(table.c_str(), stdout);
    }
    if (!o.small && !result.at("restore").as_object().at("verified").as_bool() && o.restores > 0) {
      std::fprintf(stderr, "ckpt_bench: restored state differs from the saved one\n");
      rc = 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ckpt_bench: %s\n", e.what());
    rc = 1;
  }
  std::error_code ec;
  if (!o.keep && !o.work_dir.empty()) fs::remove_all(o.work_dir, ec);
  return rc;
}
