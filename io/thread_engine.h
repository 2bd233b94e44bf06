#pragma once
// Thread-pool driver: pread/pwrite/fsync on worker threads. The fallback when io_uring is
// unavailable, and the reference the io_uring driver is tested against.
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "io/engine.h"

namespace ckpt::io {

class ThreadEngine final : public Engine {
 public:
  explicit ThreadEngine(unsigned threads = 4);
  ~ThreadEngine() override;

  std::string_view name() const noexcept override { return "threads"; }
  void submit(const Request& request, Completion done) override;

 private:
  struct Item {
    Request req;
    Completion done;
  };
  void work();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace ckpt::io
