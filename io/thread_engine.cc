#include "io/thread_engine.h"

#include <unistd.h>

#include <cerrno>

namespace ckpt::io {

ThreadEngine::ThreadEngine(unsigned threads) {
  if (threads == 0) threads = 1;
  for (unsigned i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
}

ThreadEngine::~ThreadEngine() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;  // workers drain the queue before they exit
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadEngine::submit(const Request& request, Completion done) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back(Item{request, std::move(done)});
  }
  cv_.notify_one();
}

namespace {

std::int64_t execute(const Request& r) {
  if (r.op == Request::Op::fsync) {
    while (::fsync(r.fd) != 0) {
      if (errno != EINTR) return -errno;
    }
    return 0;
  }
  std::size_t done = 0;
  auto* buf = static_cast<std::byte*>(r.buf);
  while (done < r.len) {
    auto off = static_cast<off_t>(r.offset + done);
    ssize_t n = r.op == Request::Op::read ? ::pread(r.fd, buf + done, r.len - done, off)
                                          : ::pwrite(r.fd, buf + done, r.len - done, off);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return -errno;
    }
    if (n == 0) break;  // end of file (read) or nothing written: reported as a short transfer
    done += static_cast<std::size_t>(n);
  }
  return static_cast<std::int64_t>(done);
}

}  // namespace

void ThreadEngine::work() {
  for (;;) {
    Item item;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      item = std::move(queue_.front());
      queue_.pop_front();
    }
    std::int64_t result = execute(item.req);
    item.done(result);
  }
}

}  // namespace ckpt::io
