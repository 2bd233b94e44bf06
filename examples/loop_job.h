#pragma once
// What train_loop's two jobs share (examples/train_loop.cc): the training loop with its periodic
// checkpoints (fire-and-forget, each registered as `latest`; the final one awaited), the printing
// (process 0 alone writes to stdout), the restore and the per-step timings. A job supplies its
// state, the leaves of it that are shards, and the step's two halves.
#include <boost/asio/use_awaitable.hpp>
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "io/error.h"
#include "jobs/job.h"

namespace train {

// Whether this process prints progress to stdout (false on every process but 0).
inline bool print_progress = true;
inline std::mutex print_mu;

template <typename... Args>
void say(fmt::format_string<Args...> f, Args&&... args) {
  if (!print_progress) return;
  std::lock_guard lock(print_mu);
  fmt::print(f, std::forward<Args>(args)...);
  std::fflush(stdout);
}

// An error of this process: on stdout where progress goes, else on stderr.
template <typename... Args>
void complain(fmt::format_string<Args...> f, Args&&... args) {
  std::lock_guard lock(print_mu);
  std::FILE* out = print_progress ? stdout : stderr;
  fmt::print(out, f, std::forward<Args>(args)...);
  std::fflush(out);
}

inline std::uint64_t splitmix(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
inline float uniform(std::uint64_t& s) {  // in [-1, 1)
  return static_cast<float>(splitmix(s) >> 40) / static_cast<float>(1ull << 23) - 1.0f;
}
inline double ms(std::chrono::nanoseconds d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// C has steps, save_every and mode ("sync" | "overlapped").
template <typename C>
class LoopJob : public ckpt::jobs::RestoreableJob<C> {
 public:
  using ckpt::jobs::RestoreableJob<C>::RestoreableJob;

  // The whole state (this process's part of it) as a tree of views into the job's arrays.
  virtual ckpt::Tree state() = 0;
  // The leaves of state() that are boxes of global arrays; none for a single-process state.
  virtual ckpt::Sharding sharding() const { return {}; }
  // The digest of the (global) state, as printed in the final line; "" on processes but 0.
  virtual std::string digest() = 0;

  void restore_from_path(const std::string& rel_path) override {
    auto [tree, metadata] = this->get_tree_and_metadata_from_path(rel_path, state(), sharding());
    say("restored {} (step {}, loss {:.6f})\n", rel_path, step_,
        metadata.contains("loss") ? metadata.at("loss").template to_number<double>() : 0.0);
  }

  std::int64_t step() const { return step_; }
  int failed_saves() const { return failed_saves_; }
  // Each step this process ran, in ms (the save call and any snapshot wait included).
  const std::vector<double>& step_ms() const { return step_ms_; }
  // Steps per second over the steps this process ran; 0 when it ran none.
  double steps_per_s() const {
    double total = 0;
    for (double m : step_ms_) total += m;
    return total > 0 ? static_cast<double>(step_ms_.size()) * 1e3 / total : 0.0;
  }

  boost::asio::awaitable<void> run() override {
    namespace asio = boost::asio;
    using ckpt::RegisterHandle;
    using ckpt::SaveHandle;
    const auto& c = this->args();
    ckpt::SaveOptions options;
    options.mode = c.mode == "overlapped" ? ckpt::SnapshotMode::overlapped : ckpt::SnapshotMode::sync;
    options.sharding = sharding();
    std::optional<SaveHandle> pending_snapshot;
    double loss = 0;
    step_ms_.reserve(static_cast<std::size_t>(std::max<std::int64_t>(c.steps - step_, 0)));
    while (step_ < c.steps) {
      const auto step_start = std::chrono::steady_clock::now();
      auto end_step = [&] { step_ms_.push_back(ms(std::chrono::steady_clock::now() - step_start)); };
      loss = forward();
      if (pending_snapshot) {  // overlapped mode: the copy must finish before the update
        co_await pending_snapshot->async_snapshotted(asio::use_awaitable);
        pending_snapshot.reset();
      }
      apply_update();
      ++step_;
      bool last = step_ == c.steps;
      if (c.save_every > 0 && (step_ % c.save_every == 0 || last)) {
        std::string suffix = "step/" + std::to_string(step_);
        boost::json::object metadata;
        metadata["step"] = step_;
        metadata["loss"] = reported_loss(loss);
        SaveHandle h = this->save_tree_and_metadata(suffix, state(), metadata, options);
        RegisterHandle reg = this->register_latest(suffix);
        if (options.mode == ckpt::SnapshotMode::overlapped && !last) pending_snapshot = h;
        say("step {:>6} loss {:.6f}  save {} stall {:.2f} ms\n", step_,
            metadata["loss"].as_double(), suffix, ms(h.timings().stall));
        if (last) {
          end_step();  // the wait for the final save to be durable is not a training step
          co_await h.async_wait(asio::use_awaitable);
          co_await reg.async_wait(asio::use_awaitable);
          say("saved {}: durable after {:.1f} ms ({:.1f} MiB), latest -> {}\n", suffix,
              ms(h.timings().durable), h.timings().bytes / 1048576.0, suffix);
        } else {
          h.async_wait([this, h, suffix](std::exception_ptr e) {  // fire and forget: report
            if (e) {
              ++failed_saves_;  // training goes on; the exit status tells
              complain("save {} FAILED: {}\n", suffix, ckpt::describe_error(e));
            } else if (h.state() == ckpt::SaveState::committed) {
              say("saved {}: durable after {:.1f} ms\n", suffix, ms(h.timings().durable));
            }
          });
        }
      }
      if (!last || c.save_every == 0) end_step();
    }
    this->finish();
  }

 protected:
  // The step's forward pass; returns its loss (this process's part of it).
  virtual double forward() = 0;
  // The step's update of the state (after the pending snapshot, if any, completed).
  virtual void apply_update() = 0;
  // The loss a checkpoint's metadata and the progress line show, from this process's part.
  virtual double reported_loss(double loss) { return loss; }

  std::int64_t step_ = 0;

 private:
  std::vector<double> step_ms_;
  std::atomic<int> failed_saves_{0};
};

}  // namespace train
