#include "runtime/event.h"

namespace ckpt {

void Event::complete(std::exception_ptr error) {
  std::vector<std::function<void(std::exception_ptr)>> callbacks;
  {
    std::lock_guard lock(mu_);
    if (done_) return;
    done_ = true;
    error_ = error;
    callbacks.swap(callbacks_);
  }
  cv_.notify_all();
  for (auto& cb : callbacks) cb(error);
}

bool Event::done() const {
  std::lock_guard lock(mu_);
  return done_;
}

std::exception_ptr Event::error() const {
  std::lock_guard lock(mu_);
  return error_;
}

void Event::wait() const {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return done_; });
}

bool Event::wait_for(std::chrono::nanoseconds timeout) const {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return done_; });
}

void Event::on_complete(std::function<void(std::exception_ptr)> callback) {
  std::exception_ptr error;
  {
    std::lock_guard lock(mu_);
    if (!done_) {
      callbacks_.push_back(std::move(callback));
      return;
    }
    error = error_;
  }
  callback(error);
}

}  // namespace ckpt

namespace ckpt::detail {

bool RuntimeLink::on_runtime_thread() const {
  // Under the lock: the executors it asks point into the Runtime's io_context until close().
  std::lock_guard lock(mu_);
  return open_ && on_runtime_thread_ && on_runtime_thread_();
}

bool RuntimeLink::open() const {
  std::lock_guard lock(mu_);
  return open_;
}

void RuntimeLink::close() {
  std::lock_guard lock(mu_);
  open_ = false;
  executor_ = boost::asio::any_io_executor();
  on_runtime_thread_ = nullptr;
}

}  // namespace ckpt::detail
