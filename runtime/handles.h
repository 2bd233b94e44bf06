#pragma once
// SaveHandle and RegisterHandle: what Runtime::save and Runtime::register_latest return.
//
// A handle is a cheap, copyable reference to the operation. Dropping every copy never cancels the
// operation (fire-and-forget): the Runtime keeps it alive, logs a failure with spdlog, counts it
// and reports it from Runtime::drain(). Waiting: blocking wait() (rethrows the error), or
// async_wait(token) with any Asio completion token (use_awaitable, deferred, use_future, a
// callback), signature void(std::exception_ptr).
//
// A handle may outlive its Runtime: it holds the operation's state, never the Runtime's executor.
// Every member works after the Runtime is gone (the operation has ended by then: the destructor
// drains); a handler without an associated executor then runs on asio::system_executor.
//
// Observed failures: drain() reports the failures that were never delivered to anyone. A failure
// counts as delivered when error() returns it, when wait() rethrows it, or when it is handed to the
// handler of a launched async_wait / async_snapshotted (posted to the handler's executor).
// done(), state(), wait_for() and wait_snapshotted() deliver nothing: wait_for() returning true
// says the operation ended, not how; call wait() or error() to take the failure. An error() call
// while the operation runs, a wait_for() that times out, and a deferred async_wait never launched
// observe nothing either.
//
// Blocking members on the Runtime's own thread (a plain async_wait callback, or a coroutine on the
// executor given to Runtime(executor)): wait() and wait_snapshotted() on an operation not yet done
// throw Error(invalid_argument) at once instead of deadlocking (the operation needs that thread
// to finish); use async_wait / async_snapshotted there. wait_for() does not throw: it times out.
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
  std::uint64_t stored_bytes = 0;        // bytes of the checkpoint's data files
  // Bytes this save wrote to data files: stored_bytes, or for an incremental save only what
  // it did not share with its base (known once committed).
  std::uint64_t written_bytes = 0;
};

namespace detail {
struct SaveShared {
  std::string path;
  std::atomic<SaveState> state{SaveState::snapshotting};
  std::atomic<bool> observed{false};  // the failure was delivered (see the top of this file)
  Event snapshotted;
  Event done;
  mutable std::mutex mu;  // guards timings
  SaveTimings timings;
  std::shared_ptr<RuntimeLink> runtime;
};
struct RegisterShared {
  std::string run_dir;
  std::string suffix;
  std::atomic<bool> observed{false};
  Event done;
  std::shared_ptr<RuntimeLink> runtime;
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
  // Returning the failure marks it observed.
  std::exception_ptr error() const;
  SaveTimings timings() const;

  // Blocks until committed, failed or skipped; rethrows the failure. A skipped save returns
  // normally (check state()): skipping is the policy the caller chose, not an error.
  void wait() const;
  // False on timeout; does not throw, and does not mark a failure observed.
  bool wait_for(std::chrono::nanoseconds timeout) const;
  // Blocks until the arrays have been copied (always true on return for SnapshotMode::sync).
  void wait_snapshotted() const;

  // The handler runs on its associated executor, else on the Runtime's executor (its internal
  // thread, or the strand over the executor it was given), or on asio::system_executor once the
  // Runtime is gone.
  template <typename Token>
  auto async_wait(Token&& token) const {
    return async_wait_event(std::shared_ptr<Event>(shared_, &shared_->done), shared_->runtime,
                            observed(), std::forward<Token>(token));
  }
  // Completes once the caller may mutate the tree again (SnapshotMode::overlapped); with the
  // failure when the save failed before or during the copy.
  template <typename Token>
  auto async_snapshotted(Token&& token) const {
    return async_wait_event(std::shared_ptr<Event>(shared_, &shared_->snapshotted),
                            shared_->runtime, observed(), std::forward<Token>(token));
  }

 private:
  std::shared_ptr<std::atomic<bool>> observed() const { return {shared_, &shared_->observed}; }

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
    return async_wait_event(std::shared_ptr<Event>(shared_, &shared_->done), shared_->runtime,
                            observed(), std::forward<Token>(token));
  }

 private:
  std::shared_ptr<std::atomic<bool>> observed() const { return {shared_, &shared_->observed}; }

  std::shared_ptr<detail::RegisterShared> shared_;
};

}  // namespace ckpt
