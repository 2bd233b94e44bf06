#pragma once
// StagingPool: the memory a save copies the caller's arrays into.
//
// Memory comes in chunks of chunk_bytes (the write unit), carved from slabs that are mapped,
// advised for huge pages, pre-faulted and registered with the io_uring engine once, when first
// needed, and kept for the life of the pool: steady-state saves cause no page faults and no
// registration. The pool never holds more than `budget` bytes. Requests are granted in FIFO
// order, all chunks of a request at once, so a large save is not starved by small ones.
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <vector>

#include "io/engine.h"
#include "io/file.h"

namespace ckpt {

class StagingPool {
 public:
  using Chunks = std::vector<std::byte*>;
  using Grant = std::function<void(Chunks)>;
  using Refuse = std::function<void(std::exception_ptr)>;

  // `engine` (optional) gets the slabs registered; it must outlive the pool. chunk_bytes is
  // rounded up to the IO alignment; a budget below one such chunk throws
  // Error(invalid_argument) naming both sizes.
  StagingPool(std::uint64_t budget_bytes, std::uint64_t chunk_bytes, io::Engine* engine = nullptr);
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  std::uint64_t chunk_bytes() const noexcept { return chunk_bytes_; }
  std::size_t capacity_chunks() const noexcept { return capacity_; }

  // Calls `granted` with n chunks once they are free: at once on this thread when they are, else
  // later on the thread whose release() frees them; or `refused` (if given) when refuse_waiters()
  // removes the request first. Throws Error(invalid_argument) when n exceeds the whole budget,
  // saying how many bytes the save needs and what the budget is.
  void acquire_async(std::size_t n, Grant granted, Refuse refused = {});
  // Grants n chunks now if they are free and nobody is queued before; nullopt otherwise.
  std::optional<Chunks> try_acquire(std::size_t n);
  // Blocks until n chunks are granted; throws what refuse_waiters() gives it instead.
  Chunks acquire(std::size_t n);
  // Removes every queued request and calls its `refused` with `why` (on this thread, after the
  // pool's lock is released): for a shutdown after which nothing will free staging. Returns how
  // many there were. A request granted before this call is not affected.
  std::size_t refuse_waiters(std::exception_ptr why);
  // Maps (and pre-faults, registers) chunks now until `bytes` are mapped, within the budget, so
  // that the first save does not pay for it.
  void reserve(std::uint64_t bytes);
  void release(std::byte* chunk);
  void release(const Chunks& chunks);

  std::uint64_t in_use_bytes() const;
  std::uint64_t mapped_bytes() const;

  // For a shutdown that abandons IO stuck on the device: keeps the slabs mapped until the process
  // exits (io::abandon_memory), since abandoned requests may still read them, and forgets the
  // engine (which is abandoned too). Returns the bytes kept. The pool must not be used after.
  std::uint64_t abandon();

 private:
  bool can_grant_locked(std::size_t n) const;
  Chunks take_locked(std::size_t n);
  void grow_locked(std::size_t need);
  void check_size(std::size_t n) const;

  const std::uint64_t budget_bytes_;  // as given, for messages
  const std::uint64_t chunk_bytes_;
  const std::size_t capacity_;  // chunks the budget allows
  io::Engine* engine_;
  mutable std::mutex mu_;
  std::vector<io::AlignedBuffer> slabs_;
  std::vector<std::byte*> free_;
  std::size_t mapped_chunks_ = 0;
  std::size_t in_use_ = 0;
  struct Waiter {
    std::size_t n;
    Grant granted;
    Refuse refused;
  };
  std::deque<Waiter> waiters_;
};

}  // namespace ckpt
