#include "bench/baselines.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <liburing.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <thread>
#include <type_traits>

#include "bench/bench_util.h"

namespace ckpt::bench {

namespace {

[[noreturn]] void fail(const std::string& what, int err) {
  throw std::runtime_error(fmt::format("{}: {}", what, std::strerror(err)));
}

// Bytes [begin, end) of the concatenation of `leaves`, between the leaves and the same offsets
// of `buf`: gathered into buf (Spans), or scattered from it (MutableSpans).
template <typename Leaves, typename Buf>
void copy_range(const Leaves& leaves, const std::vector<std::uint64_t>& starts, Buf* buf,
                std::uint64_t begin, std::uint64_t end) {
  auto it = std::upper_bound(starts.begin(), starts.end(), begin);
  std::size_t leaf = static_cast<std::size_t>(it - starts.begin()) - 1;
  std::uint64_t pos = begin;
  while (pos < end && leaf < leaves.size()) {
    std::uint64_t in_leaf = pos - starts[leaf];
    std::uint64_t n = std::min<std::uint64_t>(leaves[leaf].size() - in_leaf, end - pos);
    if constexpr (std::is_const_v<Buf>) {
      std::memcpy(leaves[leaf].data() + in_leaf, buf + pos, n);
    } else {
      std::memcpy(buf + pos, leaves[leaf].data() + in_leaf, n);
    }
    pos += n;
    ++leaf;
  }
}

template <typename Leaves>
std::vector<std::uint64_t> leaf_starts(const Leaves& leaves, std::uint64_t& total) {
  std::vector<std::uint64_t> starts;
  total = 0;
  for (const auto& s : leaves) {
    starts.push_back(total);
    total += s.size();
  }
  return starts;
}

template <typename Leaves, typename Buf>
double memcpy_once_ms(const Leaves& leaves, const std::vector<std::uint64_t>& starts, Buf* buf,
                      std::uint64_t total, unsigned threads) {
  auto start = Clock::now();
  std::vector<std::thread> helpers;
  auto share = [&](unsigned t) {
    std::uint64_t b = total * t / threads, e = total * (t + 1) / threads;
    copy_range(leaves, starts, buf, b, e);
  };
  for (unsigned t = 1; t < threads; ++t) helpers.emplace_back(share, t);
  share(0);
  for (auto& h : helpers) h.join();
  return ms_since(start);
}

class Ring {
 public:
  explicit Ring(unsigned entries) {
    int r = io_uring_queue_init(entries, &ring_, 0);
    if (r < 0) fail("io_uring_queue_init", -r);
  }
  ~Ring() { io_uring_queue_exit(&ring_); }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  io_uring* get() { return &ring_; }

 private:
  io_uring ring_{};
};

constexpr std::uint64_t kFixedSlice = 1ull << 30;  // io_uring caps one registered buffer at 1 GiB

// Sequential O_DIRECT transfer of buf[0, bytes) at queue depth kRawQueueDepth.
void transfer(io_uring* ring, bool write, int fd, std::byte* buf, std::uint64_t bytes, bool fixed) {
  std::uint64_t next = 0, done = 0;
  unsigned in_flight = 0;
  while (done < bytes) {
    while (in_flight < kRawQueueDepth && next < bytes) {
      io_uring_sqe* sqe = io_uring_get_sqe(ring);
      auto len = static_cast<unsigned>(std::min(kRawRequestBytes, bytes - next));
      auto slice = static_cast<int>(next / kFixedSlice);
      if (write && fixed) {
        io_uring_prep_write_fixed(sqe, fd, buf + next, len, next, slice);
      } else if (write) {
        io_uring_prep_write(sqe, fd, buf + next, len, next);
      } else if (fixed) {
        io_uring_prep_read_fixed(sqe, fd, buf + next, len, next, slice);
      } else {
        io_uring_prep_read(sqe, fd, buf + next, len, next);
      }
      sqe->user_data = len;
      next += len;
      ++in_flight;
    }
    int r = io_uring_submit_and_wait(ring, 1);
    if (r < 0) fail("io_uring_submit_and_wait", -r);
    io_uring_cqe* cqe = nullptr;
    unsigned head = 0, seen = 0;
    io_uring_for_each_cqe(ring, head, cqe) {
      ++seen;
      if (cqe->res < 0) fail(write ? "raw write" : "raw read", -cqe->res);
      if (static_cast<std::uint64_t>(cqe->res) != cqe->user_data) {
        throw std::runtime_error("raw baseline: short transfer");
      }
      done += cqe->user_data;
      --in_flight;
    }
    io_uring_cq_advance(ring, seen);
  }
}

// Registers buf[0, bytes) with the ring in slices of at most kFixedSlice; false where refused.
bool register_fixed(io_uring* ring, std::byte* buf, std::uint64_t bytes) {
  std::vector<iovec> iov;
  for (std::uint64_t off = 0; off < bytes; off += kFixedSlice) {
    iov.push_back(iovec{buf + off, static_cast<std::size_t>(std::min(kFixedSlice, bytes - off))});
  }
  return io_uring_register_buffers(ring, iov.data(), static_cast<unsigned>(iov.size())) == 0;
}

void check_aligned(const std::byte* buf, std::uint64_t bytes) {
  if (bytes % 4096 != 0 || reinterpret_cast<std::uintptr_t>(buf) % 4096 != 0) {
    throw std::invalid_argument("raw baseline: buffer and length must be 4096-aligned");
  }
}

}  // namespace

double memcpy_best_ms(const Spans& src, std::byte* dst, unsigned threads, int runs,
                      const RawSync* sync, double* first_ms) {
  std::uint64_t total = 0;
  const std::vector<std::uint64_t> starts = leaf_starts(src, total);
  threads = std::max(threads, 1u);
  const double first = memcpy_once_ms(src, starts, dst, total, threads);  // warm: caches, TLB
  if (first_ms != nullptr) *first_ms = first;
  double best = 1e300;
  for (int r = 0; r < std::max(runs, 1); ++r) {
    if (sync != nullptr) sync->start();
    double ms = memcpy_once_ms(src, starts, dst, total, threads);
    best = std::min(best, sync != nullptr ? sync->combine(ms) : ms);
  }
  return best;
}

double scatter_best_ms(const std::byte* src, const MutableSpans& dst, unsigned threads, int runs) {
  std::uint64_t total = 0;
  const std::vector<std::uint64_t> starts = leaf_starts(dst, total);
  double best = 1e300;
  for (int r = 0; r < std::max(runs, 1); ++r) {
    best = std::min(best, memcpy_once_ms(dst, starts, src, total, std::max(threads, 1u)));
  }
  return best;
}

RawIo raw_io_best(const std::string& dir, std::byte* buf, std::uint64_t bytes, int runs,
                  bool presize, const RawSync* sync) {
  check_aligned(buf, bytes);
  Ring ring(2 * kRawQueueDepth);
  RawIo out;
  // Registered (fixed) buffers, as the runtime registers its staging pool: pinning happens once,
  // outside the timed region, exactly as it does for ckpt.
  out.fixed_buffers = register_fixed(ring.get(), buf, bytes);
  out.write_ms = out.read_ms = 1e300;
  for (int r = 0; r < std::max(runs, 1); ++r) {
    std::string path = fmt::format("{}/raw-baseline-{}-{}.bin", dir, ::getpid(), r);
    auto aggregate = [&](double ms) { return sync != nullptr ? sync->combine(ms) : ms; };
    if (sync != nullptr) sync->start();
    auto start = Clock::now();
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_DIRECT | O_CLOEXEC, 0644);
    if (fd < 0) fail("open " + path + " (O_DIRECT)", errno);
    // Sized first: on ext4 a direct write past the end of the file waits for its completion
    // under the inode lock (extending writes are serialized), so an unsized file would cap the
    // queue depth at 1 and understate the disk.
    if (presize && ::ftruncate(fd, static_cast<off_t>(bytes)) != 0)
      fail("ftruncate " + path, errno);
    transfer(ring.get(), true, fd, buf, bytes, out.fixed_buffers);
    if (::fsync(fd) != 0) fail("fsync " + path, errno);
    double ms = ms_since(start);
    ::close(fd);
    out.write_ms = std::min(out.write_ms, aggregate(ms));

    if (sync != nullptr) sync->start();
    start = Clock::now();
    fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0) fail("open " + path, errno);
    transfer(ring.get(), false, fd, buf, bytes, out.fixed_buffers);
    ms = ms_since(start);
    ::close(fd);
    out.read_ms = std::min(out.read_ms, aggregate(ms));
    std::filesystem::remove(path);
  }
  if (out.fixed_buffers) io_uring_unregister_buffers(ring.get());
  return out;
}

double raw_read_ms(const std::string& path, std::byte* buf, std::uint64_t bytes) {
  check_aligned(buf, bytes);
  Ring ring(2 * kRawQueueDepth);
  const bool fixed = register_fixed(ring.get(), buf, bytes);
  auto start = Clock::now();
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) fail("open " + path, errno);
  transfer(ring.get(), false, fd, buf, bytes, fixed);
  double ms = ms_since(start);
  ::close(fd);
  if (fixed) io_uring_unregister_buffers(ring.get());
  return ms;
}

double bare_small_write_ms(const std::string& dir, int i) {
  static const std::string payload(4096, 'x');
  std::string tmp = fmt::format("{}/bare-{}.tmp", dir, i);
  std::string final_path = fmt::format("{}/bare-{}", dir, i);
  auto start = Clock::now();
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail("open " + tmp, errno);
  if (::pwrite(fd, payload.data(), payload.size(), 0) != static_cast<ssize_t>(payload.size())) {
    fail("write " + tmp, errno);
  }
  if (::fsync(fd) != 0) fail("fsync " + tmp, errno);
  ::close(fd);
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) fail("rename " + tmp, errno);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) fail("open " + dir, errno);
  if (::fsync(dfd) != 0) fail("fsync " + dir, errno);
  ::close(dfd);
  return ms_since(start);
}

}  // namespace ckpt::bench
