// train_loop: the main job. A two-layer MLP learns a fixed random "teacher" function by SGD with
// momentum on synthetic data generated from (seed, step), so every run is deterministic. It is a
// RestoreableJob: periodic checkpoints are fire-and-forget, each registered as `latest`; the final
// one is awaited. --resume continues from `latest` (or from the newest checkpoint that verifies,
// with a warning, when `latest` is corrupt), and a run killed at any moment and resumed until done
// prints the same final digest as a run never interrupted.
//
//   build/examples/train_loop --dir ./checkpoints --steps 2000 --save-every 200 --state-mb 64
//   build/examples/train_loop --dir ./checkpoints --resume --steps 4000
//   build/examples/train_loop --dir /tmp/c --save-every 0 --sweep --step-times /tmp/steps.txt
//
// --save-every 0 trains without any checkpoint (the baseline of bench/overhead). The line before
// the final one is `throughput steps_per_s=X`, over this run's training steps alone: from the
// first step to the end of the last (save calls and snapshot waits included; start-up, restore
// and the wait for the final save to be durable excluded). --sweep makes every step's update
// write every element of the state, as an optimizer over the whole model does, instead of one
// element per padding array. --step-times writes each step's duration in ms, one line a step.
//
// --sharded runs examples/sharded_job.h instead: every array is cut across the processes of an
// MPI launch (each element's update depends only on the seed, the step and its global index), the
// checkpoints are collective, and the final digest is the same for any process count, also when a
// run is resumed under another one (the restore reshards). Process 0 alone prints to stdout.
//   mpirun -np 4 build/examples/train_loop --sharded --dir D --steps 400 --save-every 50 --state-mb 64
//   mpirun -np 3 build/examples/train_loop --sharded --dir D --resume
//   build/examples/train_loop --sharded --dir D --steps 400 --save-every 50 --state-mb 64
// Without mpirun (or without MPI in the build) --sharded runs as one process.
#include <CLI/CLI.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/describe/class.hpp>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fmt/format.h>
#include <atomic>
#include <mutex>
#include <fstream>
#include <optional>
#include <pthread.h>
#include <sched.h>

#include "io/error.h"
#include "io/file.h"
#include "io/log.h"
#include "examples/loop_job.h"
#include "examples/sharded_job.h"
#include "jobs/job.h"
#include "runtime/checkpoint.h"
#include "runtime/crc32c.h"
#if defined(CKPT_HAVE_MPI)
#include "runtime/mpi_communicator.h"
#endif

namespace asio = boost::asio;
using namespace ckpt;
using namespace ckpt::jobs;
using namespace train;

struct TrainConfig {
  std::int64_t steps = 2000;
  std::int64_t save_every = 200;
  std::int64_t state_mb = 64;  // the state is padded with extra arrays up to this size
  std::uint64_t seed = 0;
  std::string mode = "sync";   // sync | overlapped
  std::int64_t keep = 3;       // retention: checkpoints kept (besides latest)
  double lr = 0.05;
  double momentum = 0.9;
  std::int64_t hidden = 64;
  std::int64_t batch = 64;
  bool sweep = false;  // every step writes every element of the padding (a whole-model update)
};
BOOST_DESCRIBE_STRUCT(TrainConfig, (),
                      (steps, save_every, state_mb, seed, mode, keep, lr, momentum, hidden, batch,
                       sweep))

namespace {

constexpr std::int64_t kIn = 32;
constexpr std::int64_t kOut = 8;

}  // namespace

class TrainJob : public LoopJob<TrainConfig> {
 public:
  TrainJob(ExecutionSpec spec, TrainConfig config) : LoopJob(std::move(spec), std::move(config)) {
    const auto& c = args();
    if (c.mode != "sync" && c.mode != "overlapped") {
      throw Error(Errc::invalid_argument, "config key 'mode': expected sync or overlapped");
    }
    if (c.steps < 0 || c.save_every < 0 || c.hidden <= 0 || c.batch <= 0 || c.state_mb < 0) {
      throw Error(Errc::invalid_argument,
                  "hidden and batch must be positive; steps, save_every and state_mb not negative");
    }
    std::uint64_t s = c.seed * 7919 + 1;
    auto init = [&](std::vector<float>& v, std::size_t n, float scale) {
      v.resize(n);
      for (auto& x : v) x = uniform(s) * scale;
    };
    const auto h = static_cast<std::size_t>(c.hidden);
    init(w1_, kIn * h, 1.0f / std::sqrt(float(kIn)));
    b1_.assign(h, 0.0f);
    init(w2_, h * kOut, 1.0f / std::sqrt(float(h)));
    b2_.assign(kOut, 0.0f);
    init(teacher_, kIn * kOut, 1.0f);
    for (auto* v : {&w1_, &b1_, &w2_, &b2_}) momentum_.emplace_back(v->size(), 0.0f);
    std::uint64_t model = 0;
    for (auto* v : {&w1_, &b1_, &w2_, &b2_}) model += 2 * v->size() * sizeof(float);
    std::uint64_t want = static_cast<std::uint64_t>(c.state_mb) << 20;
    constexpr std::uint64_t kPadMax = 16u << 20;
    for (std::uint64_t left = want > model ? want - model : 0; left >= 4;) {
      std::uint64_t bytes = std::min(left, kPadMax);
      init(pads_.emplace_back(), bytes / 4, 1.0f);
      left -= bytes / 4 * 4;
    }
    RetentionPolicy retention;
    retention.max_to_keep = static_cast<std::size_t>(std::max<std::int64_t>(c.keep, 1));
    retention.prefix = "step/";  // the periodic checkpoints rotate; anything else stays
    set_retention(retention);
  }

  Tree state() override {
    Tree t;
    auto view = [](std::vector<float>& v, Shape shape) { return Array::view(DType::f32, std::move(shape), v.data()); };
    const auto h = static_cast<std::uint64_t>(args().hidden);
    t["params"]["w1"] = view(w1_, {kIn, h});
    t["params"]["b1"] = view(b1_, {h});
    t["params"]["w2"] = view(w2_, {h, kOut});
    t["params"]["b2"] = view(b2_, {kOut});
    const char* names[] = {"w1", "b1", "w2", "b2"};
    for (std::size_t i = 0; i < momentum_.size(); ++i) {
      t["opt"]["momentum"][names[i]] = view(momentum_[i], {momentum_[i].size()});
    }
    Tree pads = Tree::list();
    for (auto& p : pads_) pads.push_back(view(p, {p.size()}));
    t["pad"] = std::move(pads);
    t["step"] = Array::view(DType::i64, {}, &step_);
    return t;
  }

  std::string digest() override {
    std::uint32_t crc = 0;
    state().for_each_leaf([&](const std::string&, const Array& a) { crc = crc32c(a.data(), a.nbytes(), crc); });
    return fmt::format("{:08x}", crc);
  }

 private:
  // Forward and backward pass on the batch of this step; fills grads_ and returns the loss.
  double forward() override {
    const auto& c = args();
    const auto b = static_cast<std::size_t>(c.batch), h = static_cast<std::size_t>(c.hidden);
    std::uint64_t s = c.seed * 1000003 + static_cast<std::uint64_t>(step_) * 7 + 11;
    x_.resize(b * kIn);
    for (auto& v : x_) v = uniform(s);
    y_.assign(b * kOut, 0.0f);
    for (std::size_t i = 0; i < b; ++i)
      for (std::size_t k = 0; k < kOut; ++k) {
        float acc = 0;
        for (std::size_t j = 0; j < kIn; ++j) acc += x_[i * kIn + j] * teacher_[j * kOut + k];
        y_[i * kOut + k] = std::tanh(acc);
      }
    hid_.assign(b * h, 0.0f);
    for (std::size_t i = 0; i < b; ++i)
      for (std::size_t k = 0; k < h; ++k) {
        float acc = b1_[k];
        for (std::size_t j = 0; j < kIn; ++j) acc += x_[i * kIn + j] * w1_[j * h + k];
        hid_[i * h + k] = std::tanh(acc);
      }
    std::vector<float> dy(b * kOut);
    double loss = 0;
    for (std::size_t i = 0; i < b; ++i)
      for (std::size_t k = 0; k < kOut; ++k) {
        float out = b2_[k];
        for (std::size_t j = 0; j < h; ++j) out += hid_[i * h + j] * w2_[j * kOut + k];
        float d = out - y_[i * kOut + k];
        loss += double(d) * d;
        dy[i * kOut + k] = 2.0f * d / float(b * kOut);
      }
    grads_.assign(4, {});
    grads_[0].assign(w1_.size(), 0.0f);
    grads_[1].assign(b1_.size(), 0.0f);
    grads_[2].assign(w2_.size(), 0.0f);
    grads_[3].assign(b2_.size(), 0.0f);
    for (std::size_t i = 0; i < b; ++i) {
      for (std::size_t k = 0; k < kOut; ++k) {
        grads_[3][k] += dy[i * kOut + k];
        for (std::size_t j = 0; j < h; ++j) grads_[2][j * kOut + k] += hid_[i * h + j] * dy[i * kOut + k];
      }
      for (std::size_t j = 0; j < h; ++j) {
        float dh = 0;
        for (std::size_t k = 0; k < kOut; ++k) dh += dy[i * kOut + k] * w2_[j * kOut + k];
        dh *= 1.0f - hid_[i * h + j] * hid_[i * h + j];
        grads_[1][j] += dh;
        for (std::size_t m = 0; m < kIn; ++m) grads_[0][m * h + j] += x_[i * kIn + m] * dh;
      }
    }
    return loss / double(b * kOut);
  }

  void apply_update() override {
    const auto lr = static_cast<float>(args().lr), mu = static_cast<float>(args().momentum);
    std::vector<float>* params[] = {&w1_, &b1_, &w2_, &b2_};
    for (std::size_t p = 0; p < 4; ++p) {
      auto& w = *params[p];
      for (std::size_t i = 0; i < w.size(); ++i) {
        momentum_[p][i] = mu * momentum_[p][i] + grads_[p][i];
        w[i] -= lr * momentum_[p][i];
      }
    }
    // The padding stands for optimizer state too large to model here; each step changes a slice
    // of it so that snapshot isolation and resume equivalence cover every array.
    for (std::size_t k = 0; k < pads_.size(); ++k) {
      auto& p = pads_[k];
      p[static_cast<std::size_t>(step_) % p.size()] += 1.0f;
      if (args().sweep) {
        for (float& x : p) x = x * 0.999999f + 1e-6f;
      }
    }
  }

  std::vector<float> w1_, b1_, w2_, b2_, teacher_;
  std::vector<std::vector<float>> momentum_, pads_, grads_;
  std::vector<float> x_, y_, hid_;
};

CKPT_REGISTER_JOB(TrainJob, "train_loop");

namespace {

// The job to run: from `latest`, else from the newest checkpoint that verifies, else new. In a
// run of several processes every process decides alike: process 0 reads `latest` and the list of
// checkpoints for all, and each resume attempt is agreed (from_checkpoint is collective there).
template <typename Job>
std::unique_ptr<Job> resume_or_start(const ExecutionSpec& spec, const boost::json::value& fresh,
                                     const boost::json::object& overrides, bool resume,
                                     const std::shared_ptr<Runtime>& runtime) {
  const auto& comm = runtime->options().communicator;
  if (resume) {
    std::vector<std::string> candidates;
    try {
      if (auto latest = Job::latest(spec, comm)) candidates.push_back(*latest);
    } catch (const Error& e) {
      log().warn("latest is unreadable ({}); looking for the newest checkpoint that verifies", e.what());
    }
    auto all = Job::checkpoints(spec, comm);
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
      if (candidates.empty() || *it != candidates.front()) candidates.push_back(*it);
    }
    for (const auto& suffix : candidates) {
      try {
        auto [job, config] =
            from_checkpoint<Job>(suffix, spec, boost::json::value(overrides), true, runtime);
        return std::move(job);
      } catch (const Error& e) {
        log().warn("cannot resume from {}: {}", suffix, e.what());
      }
    }
    say("no checkpoint to resume from in {}; starting from scratch\n", run_dir(spec));
  }
  boost::json::value merged = merge_patch(fresh, overrides);
  auto job = std::make_unique<Job>(spec, config_from_json<typename Job::Config>(merged));
  job->set_runtime(runtime);
  return job;
}

// Runs the job to its end on the default Runtime; returns the exit status.
template <typename Job>
int run_job(const ExecutionSpec& spec, const boost::json::value& fresh,
            const boost::json::object& overrides, bool resume, const std::string& step_times) {
  std::shared_ptr<Runtime> runtime = default_runtime();
  auto job = resume_or_start<Job>(spec, fresh, overrides, resume, runtime);
  const auto& c = job->args();
  // Staging for one checkpoint of the state (each leaf padded to 4 KiB), mapped now rather
  // than in the first save's stall.
  std::uint64_t state_bytes = 0;
  job->state().for_each_leaf([&](const std::string&, const Array& a) { state_bytes += io::align_up(a.nbytes()); });
  runtime->reserve_staging(state_bytes);
  say("train_loop: {} steps from step {}, state {} MiB, save every {} ({} mode, engine {}), run dir {}{}\n",
      c.steps, job->step(), c.state_mb, c.save_every, c.mode, runtime->stats().engine,
      run_dir(job->spec()),
      spec.process_count > 1 ? fmt::format(", {} processes", spec.process_count) : std::string());
  run_blocking(*job);
  DrainReport report = runtime->drain();
  if (!report.ok()) {
    for (const auto& e : report.errors) fmt::print(stderr, "train_loop: {}\n", e);
    return 1;
  }
  if (!step_times.empty() && spec.process_index == 0) {
    std::ofstream out(step_times);
    for (double m : job->step_ms()) out << fmt::format("{:.4f}\n", m);
    out.close();
    if (!out) throw Error(Errc::io, fmt::format("--step-times {}: cannot write", step_times));
  }
  const std::string digest = job->digest();  // collective in a sharded run
  say("throughput steps_per_s={:.3f}\n", job->steps_per_s());
  say("final step={} digest={}\n", job->step(), digest);
  if (job->failed_saves() > 0) {
    fmt::print(stderr, "train_loop: {} periodic save(s) failed\n", job->failed_saves());
    return 1;
  }
  return 0;
}

// --seed takes the whole uint64 range and nothing else: CLI11 2.1's own conversion (strtoull)
// reads "-1" as 2^64-1 and clamps values above 2^64-1 without a word.
std::optional<std::uint64_t> parse_seed(const std::string& text) {
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// Pins the calling thread to one CPU; threads it starts later inherit the mask.
void pin_this_thread(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set); rc != 0) {
    throw Error(Errc::invalid_argument, fmt::format("--pin: CPU {}: {}", cpu, std::strerror(rc)));
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"train_loop: a small MLP trained by SGD that checkpoints with ckpt"};
  std::string dir = "./checkpoints";
  std::string engine = "auto";
  bool resume = false;
  TrainConfig config;
  app.add_option("--dir", dir, "checkpoints directory");
  auto* steps = app.add_option("--steps", config.steps, "total training steps");
  auto* every = app.add_option("--save-every", config.save_every, "steps between checkpoints");
  auto* state = app.add_option("--state-mb", config.state_mb, "state size in MiB (padded)");
  std::string seed_text;
  auto* seed = app.add_option("--seed", seed_text, "data and initialisation seed, 0 to 2^64-1")
                   ->check(CLI::Validator(
                       [](std::string& text) {
                         return parse_seed(text) ? std::string()
                                                 : "not an integer from 0 to 2^64-1: " + text;
                       },
                       "UINT64"));
  auto* mode = app.add_option("--mode", config.mode, "sync | overlapped")->check(CLI::IsMember({"sync", "overlapped"}));
  auto* keep = app.add_option("--keep", config.keep, "checkpoints to keep");
  auto* hidden = app.add_option("--hidden", config.hidden, "hidden units (the step's compute)");
  auto* batch = app.add_option("--batch", config.batch, "batch size (the step's compute)");
  auto* sweep = app.add_flag("--sweep", config.sweep, "each step writes every state element");
  std::string step_times;
  app.add_option("--step-times", step_times, "write each step's duration in ms to this file");
  RuntimeOptions ro;
  app.add_option("--overlapped-copy-threads", ro.overlapped_copy_threads,
                 "threads an overlapped copy uses (0: the Runtime's default)");
  app.add_option("--copy-nice", ro.copy_nice, "nice value of ckpt's copy threads");
  app.add_flag("--write-during-copy,!--no-write-during-copy", ro.write_during_copy,
               "a sync save writes each unit as soon as it is copied (default on; off: its "
               "writes start when the copy ends, RuntimeOptions::write_during_copy)");
  std::vector<int> pin;
  app.add_option("--pin", pin, "LOOP_CPU,CKPT_CPU: the training thread on one CPU, ckpt's on another")
      ->delimiter(',')
      ->expected(2);
  app.add_option("--engine", engine, "auto | uring | threads")->check(CLI::IsMember({"auto", "uring", "threads"}));
  app.add_flag("--resume", resume, "continue from latest");
  bool sharded = false;
  app.add_flag("--sharded", sharded,
               "every array cut across the processes (run under mpirun, or alone as one process)");
  CLI11_PARSE(app, argc, argv);
  if (seed->count()) config.seed = *parse_seed(seed_text);

  // Flags given explicitly override the saved config on --resume (a JSON merge patch).
  boost::json::object overrides;
  if (steps->count()) overrides["steps"] = config.steps;
  if (every->count()) overrides["save_every"] = config.save_every;
  if (state->count()) overrides["state_mb"] = config.state_mb;
  if (seed->count()) overrides["seed"] = config.seed;
  if (mode->count()) overrides["mode"] = config.mode;
  if (keep->count()) overrides["keep"] = config.keep;
  if (hidden->count()) overrides["hidden"] = config.hidden;
  if (batch->count()) overrides["batch"] = config.batch;
  if (sweep->count()) overrides["sweep"] = config.sweep;
  std::shared_ptr<Communicator> comm;
  try {
#if defined(CKPT_HAVE_MPI)
    if (launched_by_mpirun()) {
      comm = make_mpi_communicator(&argc, &argv);
      if (comm->rank() != 0) print_progress = false;
      if (!sharded && comm->size() > 1) {
        throw Error(Errc::invalid_argument,
                    "under mpirun with more than one process, train_loop needs --sharded");
      }
    }
#endif
    ro.engine = io::parse_engine_kind(engine);
    ro.staging_budget = 2 * (static_cast<std::uint64_t>(std::max<std::int64_t>(config.state_mb, 1)) << 20) + (64u << 20);
    if (!pin.empty()) pin_this_thread(pin[1]);  // the Runtime's threads inherit this CPU
    ro.communicator = comm;
    set_default_runtime(std::make_shared<Runtime>(ro));
    if (!pin.empty()) pin_this_thread(pin[0]);  // and the training loop runs on this one
    int status = 0;
    if (sharded) {
      if (hidden->count() || batch->count()) {
        throw Error(Errc::invalid_argument, "--hidden and --batch do not apply to --sharded");
      }
      ExecutionSpec spec = ExecutionSpec::local(dir, "train_loop_sharded");
      spec.process_index = comm ? static_cast<std::uint32_t>(comm->rank()) : 0;
      spec.process_count = comm ? static_cast<std::uint32_t>(comm->size()) : 1;
      ShardedConfig fresh{config.steps, config.save_every, config.state_mb, config.seed, config.mode,
                          config.keep, config.lr, config.momentum, config.sweep};
      status = run_job<ShardedTrainJob>(spec, config_to_json(fresh), overrides, resume, step_times);
    } else {
      ExecutionSpec spec = ExecutionSpec::local(dir, "train_loop");
      status = run_job<TrainJob>(spec, config_to_json(config), overrides, resume, step_times);
    }
    // The Runtime before the communicator: destroying the last reference to an MPI communicator
    // finalizes MPI.
    set_default_runtime(nullptr);
    comm.reset();
    return status;
  } catch (const std::exception& e) {
    fmt::print(stderr, "train_loop: {}\n", e.what());
    if (comm) {
      // The other processes may wait for this one in a collective step until its deadline; the
      // launcher ends them at once when a process exits without finalizing MPI.
      std::fflush(nullptr);
      std::_Exit(1);
    }
    return 1;
  }
}
