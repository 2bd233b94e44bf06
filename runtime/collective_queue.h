#pragma once
// The thread that runs a Runtime's blocking collective steps (a save's report-commit-outcome, a
// registration's outcome: runtime/collective_commit.h) strictly in the order of their operation
// numbers. Every process thus waits on its peers in the same order, as a sequential program
// would: a process never blocks in the step of operation n+1 while a peer blocks in that of n
// waiting for it. They do not run on the copy pool, whose threads the writes and checksums of
// later saves need while a step waits for the other processes.
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "runtime/communicator.h"

namespace ckpt {

class CollectiveQueue {
 public:
  CollectiveQueue() = default;
  ~CollectiveQueue();  // runs what was posted, then joins the thread
  CollectiveQueue(const CollectiveQueue&) = delete;
  CollectiveQueue& operator=(const CollectiveQueue&) = delete;

  // Takes the next operation number from `comm` (program order) and expects a step for it.
  std::uint64_t allocate(Communicator& comm);
  // Operation `seq` has no step after all (it failed before its background part): the next go.
  void skip(std::uint64_t seq);
  // Runs fn on the queue's thread once every operation numbered before `seq` ran or was skipped.
  void post(std::uint64_t seq, std::function<void()> fn);

 private:
  void loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::uint64_t> expected_;  // allocated, neither run nor skipped
  std::map<std::uint64_t, std::function<void()>> ready_;
  bool stop_ = false;
  std::thread thread_;  // started by the first post
};

}  // namespace ckpt
