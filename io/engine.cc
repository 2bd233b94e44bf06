#include "io/engine.h"

#include <cerrno>
#include <condition_variable>
#include <mutex>

#include "io/error.h"
#include "io/log.h"
#include "io/thread_engine.h"
#include "io/uring_engine.h"

namespace ckpt::io {

std::string_view to_string(EngineKind kind) noexcept {
  switch (kind) {
    case EngineKind::automatic:
      return "auto";
    case EngineKind::uring:
      return "uring";
    case EngineKind::threads:
      return "threads";
  }
  return "?";
}

EngineKind parse_engine_kind(std::string_view text) {
  if (text == "auto") return EngineKind::automatic;
  if (text == "uring") return EngineKind::uring;
  if (text == "threads") return EngineKind::threads;
  throw Error(Errc::invalid_argument,
              "unknown engine '" + std::string(text) + "' (expected auto, uring or threads)");
}

std::unique_ptr<Engine> make_engine(const EngineOptions& options) {
  switch (options.kind) {
    case EngineKind::uring:
      return std::make_unique<UringEngine>(options.queue_depth);
    case EngineKind::threads:
      return std::make_unique<ThreadEngine>(options.threads);
    case EngineKind::automatic:
      break;
  }
  try {
    return std::make_unique<UringEngine>(options.queue_depth);
  } catch (const Error& e) {
    log().warn("io_uring unavailable ({}); falling back to the thread-pool engine", e.what());
    return std::make_unique<ThreadEngine>(options.threads);
  }
}

namespace {

// Shared between run_batch and the completions it submitted.
struct Batch {
  std::mutex mu;
  std::condition_variable cv;
  std::size_t in_flight = 0;
  int first_errno = 0;
  std::uint64_t short_offset = 0;
  bool short_transfer = false;
};

}  // namespace

void run_batch(Engine& engine, std::span<const Request> requests, unsigned queue_depth,
               const std::string& path) {
  if (queue_depth == 0) queue_depth = 1;
  Batch batch;
  std::size_t next = 0;
  std::unique_lock lock(batch.mu);
  for (;;) {
    while (next < requests.size() && batch.in_flight < queue_depth && batch.first_errno == 0 &&
           !batch.short_transfer) {
      const Request& r = requests[next++];
      ++batch.in_flight;
      lock.unlock();
      engine.submit(r, [&batch, len = r.len, off = r.offset, op = r.op](std::int64_t result) {
        std::lock_guard g(batch.mu);
        if (result < 0) {
          if (batch.first_errno == 0) batch.first_errno = static_cast<int>(-result);
        } else if (op != Request::Op::fsync && static_cast<std::size_t>(result) != len) {
          if (!batch.short_transfer) batch.short_offset = off;
          batch.short_transfer = true;
        }
        --batch.in_flight;
        batch.cv.notify_all();
      });
      lock.lock();
    }
    if (batch.in_flight == 0 &&
        (next == requests.size() || batch.first_errno != 0 || batch.short_transfer)) {
      break;
    }
    batch.cv.wait(lock);
  }
  if (batch.first_errno != 0) {
    const char* op = requests.empty()                            ? "io"
                     : requests.front().op == Request::Op::read  ? "read"
                     : requests.front().op == Request::Op::write ? "write"
                                                                 : "fsync";
    throw sys_error(op, path, batch.first_errno);
  }
  if (batch.short_transfer) {
    throw Error(
        Errc::corrupt,
        "short transfer at offset " + std::to_string(batch.short_offset) + " (file truncated?)",
        path);
  }
}

void sync_file(Engine& engine, int fd, const std::string& path) {
  Request r{Request::Op::fsync, fd, nullptr, 0, 0};
  run_batch(engine, {&r, 1}, 1, path);
}

}  // namespace ckpt::io
