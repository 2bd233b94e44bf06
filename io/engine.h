#pragma once
// The storage engine: one interface, several drivers (io_uring, thread pool, fault injection).
//
// Contract of every driver:
//  - submit() queues one request and returns; the completion runs exactly once, on a driver
//    thread, with the number of bytes transferred or -errno. Completions must be short and must
//    not block on the engine (they may submit further requests).
//  - Reads and writes are complete: a short transfer is resubmitted for the remaining bytes; a
//    read that hits end of file completes with the bytes it got.
//  - Requests in flight run in any order. An fsync covers only writes that completed before it
//    was submitted: callers wait for their writes, then submit the fsync.
//  - Buffers, offsets and lengths of requests on a File opened with O_DIRECT are multiples of
//    kAlignment (io/file.h).
//  - The destructor waits for every request in flight.
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace ckpt::io {

enum class EngineKind { automatic, uring, threads };

std::string_view to_string(EngineKind kind) noexcept;
EngineKind parse_engine_kind(std::string_view text);  // "auto" | "uring" | "threads"; throws Error

struct Request {
  enum class Op : std::uint8_t { read, write, fsync };
  Op op = Op::write;
  int fd = -1;
  void* buf = nullptr;
  std::size_t len = 0;
  std::uint64_t offset = 0;
};

using Completion = std::function<void(std::int64_t result)>;

class Engine {
 public:
  virtual ~Engine() = default;
  virtual std::string_view name() const noexcept = 0;
  virtual void submit(const Request& request, Completion done) = 0;
  // Registers long-lived buffers with the kernel (io_uring fixed buffers) so requests inside them
  // skip per-request page pinning. The call replaces the registered set; entries equal to those
  // registered before stay valid for requests in flight, so a growing pool passes its whole list
  // each time. Buffers dropped from the set must have no request in flight. Returns false when
  // the driver or the memlock limit does not allow it; requests work either way.
  virtual bool register_buffers(std::span<const iovec> buffers) {
    (void)buffers;
    return false;
  }
  virtual void unregister_buffers() {}
};

struct EngineOptions {
  EngineKind kind = EngineKind::automatic;
  unsigned queue_depth = 64;  // io_uring entries / in-flight requests
  unsigned threads = 4;       // thread-pool driver workers
};

// Builds the driver. `automatic` probes io_uring once and falls back to threads with one warning
// when the ring cannot be created (ENOSYS, EPERM under seccomp, io_uring_disabled).
std::unique_ptr<Engine> make_engine(const EngineOptions& options = {});

// Runs `requests` on `engine` with at most `queue_depth` in flight and waits for all of them.
// Throws the Error of the first failure (naming `path`) once nothing is in flight any more; a
// short read or write is an error. After a failure no further request is submitted.
void run_batch(Engine& engine, std::span<const Request> requests, unsigned queue_depth,
               const std::string& path);

// Submits one fsync and waits for it.
void sync_file(Engine& engine, int fd, const std::string& path);

}  // namespace ckpt::io
