#pragma once
// FaultEngine: a test driver that wraps another engine and injects faults into chosen requests
// (RocksDB's FaultInjectionTestFS, for our one interface).
//
// Armed faults count requests per operation (read, write, fsync) from the moment they are armed:
// `nth = 3` hits the third write submitted after arm(). Kinds:
//  - error: completes with -errno (EIO, ENOSPC, ...) without touching the file;
//  - short_transfer: forwards only the first half of the request (rounded down to kAlignment,
//    so O_DIRECT rules hold) and completes with the bytes of that half: the rest is never
//    written. This deliberately breaks the engine contract (no resubmission) to test callers;
//  - hang: keeps the request, unsubmitted, until release_hung() forwards it to the wrapped engine
//    or the FaultEngine is destroyed, which completes it with -ECANCELED (nothing leaks);
//  - stuck: a device that never answers: kept like `hang`, but the destructor waits until
//    release_hung() forwards it, as a real engine waits for a request stuck in the kernel.
// A sticky fault also hits every later request of its operation. Unarmed, every call is forwarded.
// An injected error completes at once on the submitting thread (callers never hold a lock their
// completion takes across submit(), so this is safe and keeps the driver a few dozen lines).
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "io/engine.h"

namespace ckpt::io {

enum class FaultKind : std::uint8_t { error, short_transfer, hang, stuck };

struct FaultSpec {
  Request::Op op = Request::Op::write;
  std::uint64_t nth = 1;  // 1-based, counted from arm()
  FaultKind kind = FaultKind::error;
  int error = EIO;      // for FaultKind::error
  bool sticky = false;  // also every later request of `op`
};

class FaultEngine final : public Engine {
 public:
  explicit FaultEngine(std::unique_ptr<Engine> inner);
  // Waits for stuck requests to be released, completes hung ones with -ECANCELED, then destroys
  // `inner`.
  ~FaultEngine() override;

  std::string_view name() const noexcept override { return inner_->name(); }
  void submit(const Request& request, Completion done) override;
  bool register_buffers(std::span<const iovec> buffers) override;
  void unregister_buffers() override;

  // Replaces the armed fault (one at a time) and restarts the request counts.
  void arm(const FaultSpec& spec);
  void disarm();
  // Forwards every hung request to the wrapped engine; returns how many there were.
  std::size_t release_hung();
  std::size_t hung() const;
  std::uint64_t injected() const;  // faults injected since construction

  Engine& inner() noexcept { return *inner_; }

 private:
  struct Held {
    Request request;
    Completion done;
    bool stuck = false;
  };

  std::unique_ptr<Engine> inner_;
  mutable std::mutex mu_;
  std::condition_variable released_;
  bool armed_ = false;
  FaultSpec spec_;
  std::uint64_t seen_[3] = {0, 0, 0};  // per Request::Op since arm()
  std::uint64_t injected_ = 0;
  std::vector<Held> hung_;
};

}  // namespace ckpt::io
