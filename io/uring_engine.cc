#include "io/uring_engine.h"

#include <cerrno>
#include <cstring>

#include "io/error.h"
#include "io/log.h"

namespace ckpt::io {

struct UringEngine::Op {
  Request req;
  Completion done;
  std::size_t transferred = 0;
};

namespace {
constexpr std::uint64_t kWakeTag = 0;  // user_data of the NOP that stops the reaper
}

UringEngine::UringEngine(unsigned entries) : capacity_(entries == 0 ? 1 : entries) {
  io_uring_params params{};
  // No SQPOLL (a busy kernel thread) and no DEFER_TASKRUN (completions would wait for the
  // submitting thread, see PITFALLS.md).
  int rc = io_uring_queue_init_params(capacity_, &ring_, &params);
  if (rc < 0) throw Error(Errc::unsupported, "io_uring_queue_init failed", {}, -rc);
  io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
  bool ok = probe != nullptr;
  for (int opcode : {IORING_OP_READ, IORING_OP_WRITE, IORING_OP_FSYNC, IORING_OP_READ_FIXED,
                     IORING_OP_WRITE_FIXED, IORING_OP_NOP}) {
    ok = ok && io_uring_opcode_supported(probe, opcode);
  }
  if (probe != nullptr) io_uring_free_probe(probe);
  if (!ok) {
    io_uring_queue_exit(&ring_);
    throw Error(Errc::unsupported, "io_uring lacks read/write/fsync opcodes");
  }
  reaper_ = std::thread([this] { reap_loop(); });
}

UringEngine::~UringEngine() {
  {
    std::unique_lock lock(mu_);
    idle_cv_.wait(lock, [&] { return idle_locked(); });
    stopping_ = true;
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe != nullptr) {
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data64(sqe, kWakeTag);
      io_uring_submit(&ring_);
    }
  }
  reaper_.join();
  io_uring_queue_exit(&ring_);
}

int UringEngine::fixed_index(const void* buf, std::size_t len) const {
  auto* p = static_cast<const std::byte*>(buf);
  for (std::size_t i = 0; i < registered_.size(); ++i) {
    auto* base = static_cast<const std::byte*>(registered_[i].iov_base);
    if (p >= base && p + len <= base + registered_[i].iov_len) return static_cast<int>(i);
  }
  return -1;
}

void UringEngine::push_locked(Op* op) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {  // cannot happen while in_flight_ <= capacity_, but never lose a request
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  const Request& r = op->req;
  auto* buf = static_cast<std::byte*>(r.buf) + op->transferred;
  auto len = static_cast<unsigned>(std::min<std::size_t>(r.len - op->transferred, 1u << 30));
  std::uint64_t off = r.offset + op->transferred;
  int fixed = r.op == Request::Op::fsync ? -1 : fixed_index(buf, len);
  switch (r.op) {
    case Request::Op::read:
      if (fixed >= 0)
        io_uring_prep_read_fixed(sqe, r.fd, buf, len, off, fixed);
      else
        io_uring_prep_read(sqe, r.fd, buf, len, off);
      break;
    case Request::Op::write:
      if (fixed >= 0)
        io_uring_prep_write_fixed(sqe, r.fd, buf, len, off, fixed);
      else
        io_uring_prep_write(sqe, r.fd, buf, len, off);
      break;
    case Request::Op::fsync:
      io_uring_prep_fsync(sqe, r.fd, 0);
      break;
  }
  io_uring_sqe_set_data(sqe, op);
  ++in_flight_;
  int rc;
  do {
    rc = io_uring_submit(&ring_);
  } while (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY);
  // The SQE stays in the ring and goes to the kernel with the next successful submit.
  if (rc < 0) log().error("io_uring_submit: {}", std::strerror(-rc));
}

void UringEngine::submit(const Request& request, Completion done) {
  auto* op = new Op{request, std::move(done), 0};
  std::lock_guard lock(mu_);
  if (in_flight_ < capacity_)
    push_locked(op);
  else
    waiting_.push_back(op);
}

void UringEngine::reap_loop() {
  for (;;) {
    io_uring_cqe* cqe = nullptr;
    int rc = io_uring_wait_cqe(&ring_, &cqe);
    if (rc == -EINTR || rc == -EAGAIN) continue;
    if (rc < 0) {
      log().critical("io_uring_wait_cqe: {}", std::strerror(-rc));
      return;
    }
    std::uint64_t tag = io_uring_cqe_get_data64(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    Op* op = nullptr;
    std::int64_t result = 0;
    {
      // The op was built by a submitting thread: read and update it under the lock, which is
      // also what tells ThreadSanitizer about the hand-off through the kernel.
      std::lock_guard lock(mu_);
      if (tag == kWakeTag) {
        if (stopping_) return;
        continue;
      }
      op = reinterpret_cast<Op*>(tag);
      const Request& r = op->req;
      bool finished = true;
      if (res == -EINTR || res == -EAGAIN) {
        finished = false;
      } else if (res < 0) {
        result = res;
      } else if (r.op != Request::Op::fsync) {
        op->transferred += static_cast<std::size_t>(res);
        // A short transfer continues from where it stopped; 0 bytes means end of file.
        finished = res == 0 || op->transferred == r.len;
        result = static_cast<std::int64_t>(op->transferred);
      }
      --in_flight_;
      if (finished) {
        ++running_callbacks_;
      } else {
        push_locked(op);
        op = nullptr;
      }
      while (in_flight_ < capacity_ && !waiting_.empty()) {
        push_locked(waiting_.front());
        waiting_.pop_front();
      }
    }
    if (op != nullptr) {
      Completion done = std::move(op->done);
      delete op;
      done(result);
      std::lock_guard lock(mu_);
      --running_callbacks_;
      if (idle_locked()) idle_cv_.notify_all();
    }
  }
}

bool UringEngine::register_buffers(std::span<const iovec> buffers) {
  // A sparse table updated slot by slot: a growing pool registers its new slabs while requests
  // on the slabs registered before are in flight.
  std::lock_guard lock(mu_);
  if (buffers.size() > kMaxFixedBuffers) return false;
  if (!sparse_) {
    int rc = io_uring_register_buffers_sparse(&ring_, kMaxFixedBuffers);
    if (rc < 0) {
      log().info("io_uring buffer registration refused ({}); using unregistered buffers",
                 std::strerror(-rc));
      return false;
    }
    sparse_ = true;
  }
  std::vector<iovec> updated;
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    bool same = i < registered_.size() && registered_[i].iov_base == buffers[i].iov_base &&
                registered_[i].iov_len == buffers[i].iov_len;
    if (!same) {
      __u64 tag = 0;
      iovec v = buffers[i];
      int rc = io_uring_register_buffers_update_tag(&ring_, static_cast<unsigned>(i), &v, &tag, 1);
      if (rc < 0) {
        log().info("io_uring buffer registration refused ({}); using unregistered buffers",
                   std::strerror(-rc));
        registered_.resize(std::min(registered_.size(), i));
        return false;
      }
    }
    updated.push_back(buffers[i]);
  }
  // Slots beyond the new set are cleared so that no stale region matches.
  for (std::size_t i = buffers.size(); i < registered_.size(); ++i) {
    __u64 tag = 0;
    iovec empty{nullptr, 0};
    io_uring_register_buffers_update_tag(&ring_, static_cast<unsigned>(i), &empty, &tag, 1);
  }
  registered_ = std::move(updated);
  return true;
}

void UringEngine::unregister_buffers() {
  std::lock_guard lock(mu_);
  if (!sparse_) return;
  io_uring_unregister_buffers(&ring_);
  sparse_ = false;
  registered_.clear();
}

}  // namespace ckpt::io
