#include "runtime/collective_queue.h"

namespace ckpt {

CollectiveQueue::~CollectiveQueue() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::uint64_t CollectiveQueue::allocate(Communicator& comm) {
  std::lock_guard lock(mu_);  // numbers enter `expected_` in the order they are taken
  std::uint64_t seq = comm.next_sequence();
  expected_.insert(seq);
  return seq;
}

void CollectiveQueue::skip(std::uint64_t seq) {
  {
    std::lock_guard lock(mu_);
    expected_.erase(seq);
  }
  cv_.notify_all();
}

void CollectiveQueue::post(std::uint64_t seq, std::function<void()> fn) {
  {
    std::lock_guard lock(mu_);
    ready_[seq] = std::move(fn);
    if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
  }
  cv_.notify_all();
}

void CollectiveQueue::loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    // The lowest number expected runs first; one never allocated here (a step posted without
    // allocate) runs when nothing before it is expected.
    auto runnable = [&] {
      return !ready_.empty() &&
             (expected_.empty() || ready_.begin()->first <= *expected_.begin());
    };
    // Stopping (the Runtime drained): whatever is left runs in number order.
    cv_.wait(lock, [&] { return runnable() || stop_; });
    if (ready_.empty()) return;
    auto it = ready_.begin();
    std::uint64_t seq = it->first;
    std::function<void()> fn = std::move(it->second);
    ready_.erase(it);
    lock.unlock();
    fn();
    lock.lock();
    expected_.erase(seq);
  }
}

}  // namespace ckpt
