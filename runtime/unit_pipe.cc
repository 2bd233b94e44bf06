#include "runtime/unit_pipe.h"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>

#include "io/error.h"

namespace ckpt {

namespace {

// State shared with the completions of one write_all/read_all call.
struct Flight {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<bool> busy;  // per buffer slot
  unsigned in_flight = 0;
  int error = 0;  // first errno
  std::uint64_t error_offset = 0;
  std::uint32_t error_file = 0;
  bool short_transfer = false;

  void wait_idle(std::unique_lock<std::mutex>& lock) {
    cv.wait(lock, [&] { return in_flight == 0; });
  }
  bool failed() const { return error != 0 || short_transfer; }
};

[[noreturn]] void raise(const Flight& f, const std::vector<io::File*>& files, const char* op) {
  const std::string& path = files[f.error_file]->path();
  if (f.error != 0) throw sys_error(op, path, f.error);
  throw Error(Errc::corrupt,
              fmt::format("short {} at offset {}: file is shorter than the manifest says", op,
                          f.error_offset),
              path);
}

}  // namespace

UnitPipe::UnitPipe(io::Engine& engine, std::uint64_t buffer_bytes, unsigned depth,
                   std::vector<std::byte*> buffers)
    : engine_(engine),
      buffer_bytes_(io::align_up(buffer_bytes)),
      depth_(depth == 0 ? 1 : depth),
      external_(std::move(buffers)) {}

std::byte* UnitPipe::slot_data(std::size_t slot) const {
  return external_.empty() ? memory_.data() + slot * slot_bytes_ : external_[slot];
}

void UnitPipe::reserve(const std::vector<Unit>& units) {
  // Only as much memory as these units need: a small checkpoint must not map depth × unit bytes.
  std::uint64_t largest = 0;
  for (const Unit& u : units) {
    if (u.length > buffer_bytes_) throw Error(Errc::invalid_argument, "IO unit larger than buffer");
    largest = std::max(largest, u.length);
  }
  slot_bytes_ = io::align_up(std::max<std::uint64_t>(largest, 1));
  slots_ = static_cast<unsigned>(std::clamp<std::size_t>(units.size(), 1, depth_));
  if (!external_.empty()) {  // lent buffers of buffer_bytes_ each: no memory to map
    slots_ = std::min<unsigned>(slots_, static_cast<unsigned>(external_.size()));
    return;
  }
  if (memory_.size() < slot_bytes_ * slots_) memory_ = io::AlignedBuffer(slot_bytes_ * slots_);
}

void UnitPipe::write_all(const std::vector<Unit>& units, const std::vector<io::File*>& files,
                         const std::function<void(const Unit&, std::byte*)>& fill) {
  reserve(units);
  Flight f;
  f.busy.assign(slots_, false);
  std::unique_lock lock(f.mu);
  try {
    for (const Unit& u : units) {
      std::size_t slot = 0;
      f.cv.wait(lock, [&] {
        if (f.failed()) return true;
        for (slot = 0; slot < slots_; ++slot) {
          if (!f.busy[slot]) return true;
        }
        return false;
      });
      if (f.failed()) break;
      std::byte* buf = slot_data(slot);
      lock.unlock();
      fill(u, buf);
      lock.lock();
      f.busy[slot] = true;
      ++f.in_flight;
      lock.unlock();
      io::Request r{io::Request::Op::write, files[u.file]->fd(), buf, u.length, u.offset};
      engine_.submit(r,
                     [&f, slot, len = u.length, off = u.offset, file = u.file](std::int64_t res) {
                       std::lock_guard g(f.mu);
                       if (!f.failed() && (res < 0 || static_cast<std::uint64_t>(res) != len)) {
                         f.error = res < 0 ? static_cast<int>(-res) : 0;
                         f.short_transfer = res >= 0;
                         f.error_offset = off;
                         f.error_file = file;
                       }
                       f.busy[slot] = false;
                       --f.in_flight;
                       f.cv.notify_all();
                     });
      lock.lock();
    }
  } catch (...) {
    if (!lock.owns_lock()) lock.lock();
    f.wait_idle(lock);  // completions reference `f`
    throw;
  }
  f.wait_idle(lock);
  if (f.failed()) raise(f, files, "write");
}

void UnitPipe::read_all(const std::vector<Unit>& units, const std::vector<io::File*>& files,
                        const std::function<void(const Unit&, const std::byte*)>& consume) {
  Flight f;
  reserve(units);
  f.busy.assign(slots_, false);
  std::deque<std::pair<std::size_t, std::size_t>> order;  // (unit, slot) in submission order
  std::vector<std::size_t> free_slots;
  for (std::size_t s = slots_; s-- > 0;) free_slots.push_back(s);
  std::size_t next = 0;
  std::unique_lock lock(f.mu);
  try {
    while (next < units.size() || !order.empty()) {
      while (next < units.size() && !free_slots.empty() && !f.failed() &&
             f.in_flight < reads_toward_the_end(units.size() - next + f.in_flight, depth_)) {
        const Unit& u = units[next];
        std::size_t slot = free_slots.back();
        free_slots.pop_back();
        order.emplace_back(next++, slot);
        f.busy[slot] = true;
        ++f.in_flight;
        std::byte* buf = slot_data(slot);
        lock.unlock();
        io::Request r{io::Request::Op::read, files[u.file]->fd(), buf, u.length, u.offset};
        engine_.submit(
            r, [&f, slot, len = u.length, off = u.offset, file = u.file](std::int64_t res) {
              std::lock_guard g(f.mu);
              if (!f.failed() && (res < 0 || static_cast<std::uint64_t>(res) != len)) {
                f.error = res < 0 ? static_cast<int>(-res) : 0;
                f.short_transfer = res >= 0;
                f.error_offset = off + static_cast<std::uint64_t>(std::max<std::int64_t>(res, 0));
                f.error_file = file;
              }
              f.busy[slot] = false;
              --f.in_flight;
              f.cv.notify_all();
            });
        lock.lock();
      }
      if (order.empty()) break;
      auto [unit, slot] = order.front();
      f.cv.wait(lock, [&, s = slot] { return f.failed() || !f.busy[s]; });
      if (f.failed()) break;
      order.pop_front();
      lock.unlock();
      consume(units[unit], slot_data(slot));
      lock.lock();
      free_slots.push_back(slot);
    }
  } catch (...) {
    if (!lock.owns_lock()) lock.lock();
    f.wait_idle(lock);
    throw;
  }
  f.wait_idle(lock);
  if (f.failed()) raise(f, files, "read");
}

}  // namespace ckpt
