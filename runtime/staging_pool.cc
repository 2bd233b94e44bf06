#include "runtime/staging_pool.h"

#include "io/tracking_engine.h"

#include <fmt/format.h>
#include <sys/uio.h>

#include <algorithm>
#include <future>

#include "io/error.h"
#include "io/log.h"
#include "runtime/byte_size.h"

namespace ckpt {

namespace {
constexpr std::uint64_t kSlabBytes = 256u << 20;
constexpr std::uint64_t kMaxSlabBytes = 1u << 30;
}

StagingPool::StagingPool(std::uint64_t budget_bytes, std::uint64_t chunk_bytes, io::Engine* engine)
    : budget_bytes_(budget_bytes),
      chunk_bytes_(std::max<std::uint64_t>(io::align_up(chunk_bytes), io::kAlignment)),
      capacity_(static_cast<std::size_t>(budget_bytes / chunk_bytes_)),
      engine_(engine) {
  // A pool without one whole chunk could never grant anything: every save would fail. Refused
  // here, when the Runtime is built, rather than at the first save.
  if (capacity_ == 0) {
    throw Error(Errc::invalid_argument,
                fmt::format("staging budget of {} is below one staging chunk of {} "
                            "(RuntimeOptions::staging_budget must hold at least one "
                            "RuntimeOptions::unit_bytes)",
                            format_bytes(budget_bytes), format_bytes(chunk_bytes_)));
  }
}

StagingPool::~StagingPool() {
  // The kernel must stop using the slabs before they are unmapped.
  if (engine_ != nullptr && !slabs_.empty()) engine_->unregister_buffers();
}

std::uint64_t StagingPool::abandon() {
  std::lock_guard lock(mu_);
  std::uint64_t bytes = static_cast<std::uint64_t>(mapped_chunks_) * chunk_bytes_;
  io::abandon_memory(std::move(slabs_));
  slabs_.clear();
  free_.clear();
  engine_ = nullptr;
  return bytes;
}

void StagingPool::check_size(std::size_t n) const {
  if (n > capacity_) {
    // Chunks are granted all at once, so the whole save must fit in the budget.
    throw Error(Errc::invalid_argument,
                fmt::format("save needs {} of staging, budget is {} "
                            "(RuntimeOptions::staging_budget); a save must fit in the staging "
                            "budget at once ({} chunks of {}, room for {})",
                            format_bytes(static_cast<std::uint64_t>(n) * chunk_bytes_),
                            format_bytes(budget_bytes_), n, format_bytes(chunk_bytes_), capacity_));
  }
}

bool StagingPool::can_grant_locked(std::size_t n) const {
  return free_.size() + (capacity_ - mapped_chunks_) >= n;
}

void StagingPool::grow_locked(std::size_t need) {
  if (free_.size() >= need) return;
  std::size_t missing = need - free_.size();
  std::uint64_t slab_chunks = std::max<std::uint64_t>(kSlabBytes / chunk_bytes_, 1);
  std::size_t chunks = std::min<std::size_t>(std::max<std::size_t>(missing, slab_chunks),
                                             capacity_ - mapped_chunks_);
  // Slabs of at most 1 GiB: io_uring registers no larger buffer.
  std::uint64_t max_slab_chunks = std::max<std::uint64_t>(kMaxSlabBytes / chunk_bytes_, 1);
  while (chunks > 0) {
    std::size_t n = std::min<std::size_t>(chunks, max_slab_chunks);
    io::AlignedBuffer slab(n * chunk_bytes_);
    for (std::size_t i = 0; i < n; ++i) free_.push_back(slab.data() + i * chunk_bytes_);
    mapped_chunks_ += n;
    slabs_.push_back(std::move(slab));
    chunks -= n;
  }
  if (engine_ != nullptr) {
    std::vector<iovec> iov;
    for (const auto& s : slabs_) iov.push_back(iovec{s.data(), s.size()});
    engine_->register_buffers(iov);
  }
  log().debug("staging pool grew to {} MiB in {} slabs", mapped_chunks_ * chunk_bytes_ >> 20,
              slabs_.size());
}

StagingPool::Chunks StagingPool::take_locked(std::size_t n) {
  grow_locked(n);
  Chunks out(free_.end() - static_cast<std::ptrdiff_t>(n), free_.end());
  free_.resize(free_.size() - n);
  in_use_ += n;
  return out;
}

std::optional<StagingPool::Chunks> StagingPool::try_acquire(std::size_t n) {
  check_size(n);
  std::lock_guard lock(mu_);
  if (!waiters_.empty() || !can_grant_locked(n)) return std::nullopt;
  return take_locked(n);
}

void StagingPool::acquire_async(std::size_t n, Grant granted, Refuse refused) {
  check_size(n);
  Chunks chunks;
  {
    std::lock_guard lock(mu_);
    if (!waiters_.empty() || !can_grant_locked(n)) {
      waiters_.push_back(Waiter{n, std::move(granted), std::move(refused)});
      return;
    }
    chunks = take_locked(n);
  }
  granted(std::move(chunks));
}

StagingPool::Chunks StagingPool::acquire(std::size_t n) {
  std::promise<Chunks> promise;
  auto future = promise.get_future();
  acquire_async(
      n, [&promise](Chunks c) { promise.set_value(std::move(c)); },
      [&promise](std::exception_ptr why) { promise.set_exception(std::move(why)); });
  return future.get();
}

std::size_t StagingPool::refuse_waiters(std::exception_ptr why) {
  std::deque<Waiter> refused;
  {
    std::lock_guard lock(mu_);
    refused.swap(waiters_);
  }
  for (Waiter& w : refused) {
    if (w.refused) w.refused(why);
  }
  return refused.size();
}

void StagingPool::reserve(std::uint64_t bytes) {
  std::lock_guard lock(mu_);
  std::size_t want = std::min<std::size_t>(
      static_cast<std::size_t>((bytes + chunk_bytes_ - 1) / chunk_bytes_), capacity_);
  if (want > mapped_chunks_) grow_locked(free_.size() + (want - mapped_chunks_));
}

void StagingPool::release(std::byte* chunk) { release(Chunks{chunk}); }

void StagingPool::release(const Chunks& chunks) {
  std::vector<std::pair<Grant, Chunks>> ready;
  {
    std::lock_guard lock(mu_);
    for (std::byte* c : chunks) free_.push_back(c);
    in_use_ -= chunks.size();
    while (!waiters_.empty() && can_grant_locked(waiters_.front().n)) {
      Waiter w = std::move(waiters_.front());
      waiters_.pop_front();
      ready.emplace_back(std::move(w.granted), take_locked(w.n));
    }
  }
  for (auto& [grant, c] : ready) grant(std::move(c));
}

std::uint64_t StagingPool::in_use_bytes() const {
  std::lock_guard lock(mu_);
  return in_use_ * chunk_bytes_;
}

std::uint64_t StagingPool::mapped_bytes() const {
  std::lock_guard lock(mu_);
  return mapped_chunks_ * chunk_bytes_;
}

}  // namespace ckpt
