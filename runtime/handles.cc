#include "runtime/handles.h"

#include "io/error.h"

namespace ckpt {

std::string_view to_string(SaveState state) noexcept {
  switch (state) {
    case SaveState::snapshotting:
      return "snapshotting";
    case SaveState::writing:
      return "writing";
    case SaveState::committed:
      return "committed";
    case SaveState::failed:
      return "failed";
    case SaveState::skipped:
      return "skipped";
  }
  return "?";
}

namespace {

// Blocking on the Runtime's own thread would wait for work that needs that very thread.
void refuse_on_runtime_thread(const detail::RuntimeLink* runtime, const Event& event,
                              const char* what, const char* instead) {
  if (runtime == nullptr || event.done() || !runtime->on_runtime_thread()) return;
  throw Error(Errc::invalid_argument,
              std::string(what) + " called on the Runtime's own thread would deadlock (the " +
                  "operation needs that thread to finish): use " + instead + " instead");
}

// Hands the failure (if any) to the caller: from here on it counts as observed.
std::exception_ptr deliver(const Event& event, std::atomic<bool>& observed) {
  std::exception_ptr e = event.error();
  if (e) observed = true;
  return e;
}

}  // namespace

std::exception_ptr SaveHandle::error() const { return deliver(shared_->done, shared_->observed); }

SaveTimings SaveHandle::timings() const {
  std::lock_guard lock(shared_->mu);
  return shared_->timings;
}

void SaveHandle::wait() const {
  refuse_on_runtime_thread(shared_->runtime.get(), shared_->done, "SaveHandle::wait()",
                           "async_wait");
  shared_->done.wait();
  if (auto e = deliver(shared_->done, shared_->observed)) std::rethrow_exception(e);
}

bool SaveHandle::wait_for(std::chrono::nanoseconds timeout) const {
  return shared_->done.wait_for(timeout);
}

void SaveHandle::wait_snapshotted() const {
  refuse_on_runtime_thread(shared_->runtime.get(), shared_->snapshotted,
                           "SaveHandle::wait_snapshotted()", "async_snapshotted");
  shared_->snapshotted.wait();
}

std::exception_ptr RegisterHandle::error() const {
  return deliver(shared_->done, shared_->observed);
}

void RegisterHandle::wait() const {
  refuse_on_runtime_thread(shared_->runtime.get(), shared_->done, "RegisterHandle::wait()",
                           "async_wait");
  shared_->done.wait();
  if (auto e = deliver(shared_->done, shared_->observed)) std::rethrow_exception(e);
}

bool RegisterHandle::wait_for(std::chrono::nanoseconds timeout) const {
  return shared_->done.wait_for(timeout);
}

}  // namespace ckpt
