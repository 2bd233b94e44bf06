#pragma once
// io_uring driver. One ring; submissions from any thread under a mutex; one reaper thread blocks
// in io_uring_wait_cqe and runs completions, so no thread spins. Requests beyond the ring's
// capacity wait in a queue inside the engine, so submit() never blocks and completions may submit.
#include <liburing.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "io/engine.h"

namespace ckpt::io {

class UringEngine final : public Engine {
 public:
  // Throws Error(unsupported) when the ring cannot be created or lacks an opcode we need.
  explicit UringEngine(unsigned entries = 64);
  ~UringEngine() override;

  std::string_view name() const noexcept override { return "uring"; }
  void submit(const Request& request, Completion done) override;
  bool register_buffers(std::span<const iovec> buffers) override;
  void unregister_buffers() override;

 private:
  struct Op;
  void push_locked(Op* op);  // requires mu_
  void reap_loop();
  int fixed_index(const void* buf, std::size_t len) const;  // requires mu_

  io_uring ring_{};
  std::mutex mu_;
  std::condition_variable idle_cv_;
  unsigned capacity_;
  unsigned in_flight_ = 0;          // ops in the kernel
  unsigned running_callbacks_ = 0;  // completions running on the reaper (they may submit)
  bool idle_locked() const {
    return in_flight_ == 0 && waiting_.empty() && running_callbacks_ == 0;
  }
  std::deque<Op*> waiting_;
  static constexpr unsigned kMaxFixedBuffers = 1024;
  std::vector<iovec> registered_;  // fixed-buffer slots in use (a prefix of the sparse table)
  bool sparse_ = false;
  bool stopping_ = false;
  std::thread reaper_;
};

}  // namespace ckpt::io
