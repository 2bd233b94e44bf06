#pragma once
// TrackingEngine: wraps an engine and knows which requests are in flight, so that its owner can
// wait for them with a deadline and, past it, abandon the engine instead of blocking forever in
// its destructor on a stuck device (docs/design.md, "Bounded shutdown"). The Runtime wraps its
// engine in one.
//
// Abandoning: abandon_engine() and abandon_memory() keep an engine (its threads, its ring) and
// the memory its requests read from alive, never destroyed, until the process exits. A request
// stuck in the kernel may still complete long after its owner is gone; it then finds its
// buffer mapped and its completion's state alive (the completion owns that state), instead of
// EFAULT or a write from memory reused by someone else.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/engine.h"
#include "io/file.h"

namespace ckpt::io {

class TrackingEngine final : public Engine {
 public:
  explicit TrackingEngine(std::unique_ptr<Engine> inner);
  ~TrackingEngine() override;  // destroys the wrapped engine, which waits for its requests

  std::string_view name() const noexcept override { return inner_->name(); }
  void submit(const Request& request, Completion done) override;
  bool register_buffers(std::span<const iovec> buffers) override;
  void unregister_buffers() override;

  std::size_t in_flight() const;
  // Waits until no request is in flight (every completion has returned) or `deadline` passes;
  // true when idle.
  bool wait_idle(std::chrono::steady_clock::time_point deadline) const;
  // One line per request in flight, oldest first: "write of 8192 bytes at offset 0 of <path>,
  // in flight for 1.204 s" (the path from /proc/self/fd).
  std::vector<std::string> describe_in_flight() const;

 private:
  struct Entry {
    Request request;
    std::chrono::steady_clock::time_point since;
  };
  struct State {
    mutable std::mutex mu;
    mutable std::condition_variable idle;
    std::uint64_t next = 0;
    std::unordered_map<std::uint64_t, Entry> in_flight;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();  // completions hold it
  std::unique_ptr<Engine> inner_;
};

// Keep `engine` / `memory` alive until the process exits (see above).
void abandon_engine(std::unique_ptr<Engine> engine);
void abandon_memory(std::vector<AlignedBuffer> memory);

}  // namespace ckpt::io
