#include "runtime/handles.h"

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

std::exception_ptr SaveHandle::error() const {
  shared_->observed = true;
  return shared_->done.error();
}

SaveTimings SaveHandle::timings() const {
  std::lock_guard lock(shared_->mu);
  return shared_->timings;
}

void SaveHandle::wait() const {
  shared_->observed = true;
  shared_->done.wait();
  if (auto e = shared_->done.error()) std::rethrow_exception(e);
}

bool SaveHandle::wait_for(std::chrono::nanoseconds timeout) const {
  shared_->observed = true;
  return shared_->done.wait_for(timeout);
}

void SaveHandle::wait_snapshotted() const { shared_->snapshotted.wait(); }

std::exception_ptr RegisterHandle::error() const {
  shared_->observed = true;
  return shared_->done.error();
}

void RegisterHandle::wait() const {
  shared_->observed = true;
  shared_->done.wait();
  if (auto e = shared_->done.error()) std::rethrow_exception(e);
}

bool RegisterHandle::wait_for(std::chrono::nanoseconds timeout) const {
  shared_->observed = true;
  return shared_->done.wait_for(timeout);
}

}  // namespace ckpt
