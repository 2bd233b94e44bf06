#pragma once
// SaveHandle and RegisterHandle: what Runtime::save and Runtime::register_latest return.
//
// A handle is a cheap, copyable reference to the operation. Dropping every copy never cancels the
// operation (fire-and-forget): the Runtime keeps it alive, logs a failure with spdlog, counts it
// and reports it from Runtime::drain(). Waiting: blocking wait() (rethrows the error), or
// async_wait(token) with any Asio completion token (use_awaitable, deferred, use_future, a
// callback), signature void(std::exception_ptr).
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "runtime/event.h"

namespace ckpt {

enum class SaveState : std::uint8_t { snapshotting, writing, committed, failed, skipped };
std::string_view to_string(SaveState state) noexcept;

struct SaveTimings {
  std::chrono::nanoseconds stall{0};     // save() call to return
  std::chrono::nanoseconds snapshot{0};  // call to the copy being complete
  std::chrono::nanoseconds durable{0};   // call to committed (durable and renamed)
  std::uint64_t bytes = 0;               // payload bytes
  std::uint64_t stored_bytes = 0;        // bytes written to the data file
};

namespace detail {
struct SaveShared {
  std::string path;
  std::atomic<SaveState> state{SaveState::snapshotting};
  std::atomic<bool> observed{false};  // someone waited for the result
  Event snapshotted;
  Event done;
  mutable std::mutex mu;  // guards timings
  SaveTimings timings;
  boost::asio::any_io_executor executor;
};
struct RegisterShared {
  std::string run_dir;
  std::string suffix;
  std::atomic<bool> observed{false};
  Event done;
  boost::asio::any_io_executor executor;
};
}  // namespace detail

class SaveHandle {
 public:
  SaveHandle() = default;  // an empty handle (valid() is false)
  explicit SaveHandle(std::shared_ptr<detail::SaveShared> shared) : shared_(std::move(shared)) {}

  bool valid() const noexcept { return shared_ != nullptr; }
  const std::string& path() const { return shared_->path; }
  SaveState state() const { return shared_->state.load(); }
  bool done() const { return shared_->done.done(); }
  // The failure, once failed; null while running, after success, and for a skipped save.
  std::exception_ptr error() const;
  SaveTimings timings() const;

  // Blocks until committed, failed or skipped; rethrows the failure. A skipped save returns
  // normally (check state()): skipping is the policy the caller chose, not an error.
  void wait() const;
  bool wait_for(std::chrono::nanoseconds timeout) const;  // false on timeout; does not throw
  // Blocks until the arrays have been copied (always true on return for SnapshotMode::sync).
  void wait_snapshotted() const;

  template <typename Token>
  auto async_wait(Token&& token) const {
    shared_->observed = true;
    return async_wait_event(std::shared_ptr<Event>(shared_, &shared_->done), shared_->executor,
                            std::forward<Token>(token));
  }
  // Completes once the caller may mutate the tree again (SnapshotMode::overlapped).
  template <typename Token>
  auto async_snapshotted(Token&& token) const {
    return async_wait_event(std::shared_ptr<Event>(shared_, &shared_->snapshotted),
                            shared_->executor, std::forward<Token>(token));
  }

 private:
  std::shared_ptr<detail::SaveShared> shared_;
};

class RegisterHandle {
 public:
  RegisterHandle() = default;
  explicit RegisterHandle(std::shared_ptr<detail::RegisterShared> shared)
      : shared_(std::move(shared)) {}

  bool valid() const noexcept { return shared_ != nullptr; }
  const std::string& suffix() const { return shared_->suffix; }
  bool done() const { return shared_->done.done(); }
  std::exception_ptr error() const;
  void wait() const;  // rethrows the failure
  bool wait_for(std::chrono::nanoseconds timeout) const;

  template <typename Token>
  auto async_wait(Token&& token) const {
    shared_->observed = true;
    return async_wait_event(std::shared_ptr<Event>(shared_, &shared_->done), shared_->executor,
                            std::forward<Token>(token));
  }

 private:
  std::shared_ptr<detail::RegisterShared> shared_;
};

}  // namespace ckpt
