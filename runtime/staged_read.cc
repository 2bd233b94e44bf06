#include "runtime/staged_read.h"

#include <fmt/format.h>

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "io/error.h"

namespace ckpt {

namespace {

struct Staged : std::enable_shared_from_this<Staged> {
  io::Engine& engine;
  const Manifest& m;
  const std::vector<Unit>& units;
  const std::vector<io::File*>& files;
  const std::vector<std::byte*>& buffers;
  const std::vector<const Array*>& targets;
  unsigned depth;

  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::size_t> ready;  // read, not yet verified
  std::size_t next_read = 0;
  std::size_t in_flight = 0;
  std::size_t verified = 0;
  std::size_t busy = 0;  // workers verifying or scattering a unit now
  std::size_t next_scatter = 0;
  std::size_t scattered = 0;
  std::exception_ptr error;
  bool scatter_phase = false;
  bool finished = false;
  std::vector<std::uint32_t> crc;

  Staged(io::Engine& e, const Manifest& man, const std::vector<Unit>& u,
         const std::vector<io::File*>& f, const std::vector<std::byte*>& b,
         const std::vector<const Array*>& t, unsigned d)
      : engine(e),
        m(man),
        units(u),
        files(f),
        buffers(b),
        targets(t),
        depth(std::max(d, 1u)),
        crc(extent_slots(man)) {}

  // Under mu: the reads to submit now (submitted by the caller after unlocking: a completion
  // may run on the submitting thread).
  std::vector<std::size_t> take_reads_locked() {
    std::vector<std::size_t> out;
    while (!error && in_flight < depth && next_read < units.size()) {
      out.push_back(next_read++);
      ++in_flight;
    }
    return out;
  }

  void fail_locked(std::exception_ptr e) {
    if (!error) error = e;
  }

  // Under mu: the verify phase ends when every unit verified (then scatter), or after a failure
  // once nothing is in flight or being verified (then finished).
  void advance_locked() {
    if (scatter_phase || finished) return;
    if (error) {
      if (in_flight == 0 && busy == 0) {
        finished = true;
        cv.notify_all();
      }
      return;
    }
    if (verified == units.size()) {
      scatter_phase = true;
      if (units.empty()) finished = true;
      cv.notify_all();
    }
  }

  void submit(const std::vector<std::size_t>& reads) {
    for (std::size_t i : reads) {
      const Unit& u = units[i];
      io::Request r{io::Request::Op::read, files[u.file]->fd(), buffers[i], u.length, u.offset};
      engine.submit(r,
                    [self = shared_from_this(), i](std::int64_t res) { self->read_done(i, res); });
    }
  }

  void read_done(std::size_t i, std::int64_t res) {
    std::vector<std::size_t> more;
    {
      std::lock_guard lock(mu);
      --in_flight;
      const Unit& u = units[i];
      if (res < 0) {
        fail_locked(std::make_exception_ptr(
            sys_error("read", files[u.file]->path(), static_cast<int>(-res))));
      } else if (static_cast<std::uint64_t>(res) != u.length) {
        fail_locked(std::make_exception_ptr(Error(
            Errc::corrupt,
            fmt::format("short read at offset {} (the file is shorter than its manifest says)",
                        u.offset),
            files[u.file]->path())));
      } else {
        ready.push_back(i);
        cv.notify_one();
      }
      more = take_reads_locked();
      advance_locked();
    }
    submit(more);
  }

  void verify(std::size_t i) {
    const Unit& u = units[i];
    std::exception_ptr bad;
    try {
      auto pieces = verify_unit(u, buffers[i], m, crc);
      if (!pieces.empty()) {
        const BlockInfo& b = m.blocks[pieces.front().block];
        bad = std::make_exception_ptr(
            Error(Errc::corrupt,
                  fmt::format("checksum mismatch in the block at offset {} ({} bytes) holding {}",
                              b.offset, b.length, block_leaves(m, pieces.front().block)),
                  files[u.file]->path()));
      }
    } catch (...) {
      bad = std::current_exception();
    }
    std::lock_guard lock(mu);
    --busy;
    if (bad) {
      fail_locked(bad);
    } else {
      ++verified;
    }
    advance_locked();
  }

  // Every participant, the caller included, runs this until the read is finished.
  void work() {
    std::unique_lock lock(mu);
    for (;;) {
      cv.wait(lock, [&] { return finished || !ready.empty() || scatter_phase; });
      if (finished) return;
      if (!ready.empty()) {
        std::size_t i = ready.front();
        ready.pop_front();
        if (error) {  // verifying is moot now: the template will not be touched
          advance_locked();
          continue;
        }
        ++busy;
        lock.unlock();
        verify(i);
        lock.lock();
        continue;
      }
      // Scatter phase: every block verified.
      if (next_scatter == units.size()) {
        cv.wait(lock, [&] { return finished; });
        return;
      }
      std::size_t i = next_scatter++;
      lock.unlock();
      scatter_unit(units[i], buffers[i], targets);
      lock.lock();
      if (++scattered == units.size()) {
        finished = true;
        cv.notify_all();
      }
    }
  }
};

}  // namespace

bool whole_blocks(const std::vector<Unit>& units) {
  for (const Unit& u : units) {
    for (const Piece& p : u.pieces) {
      if (p.start != 0 || !p.ends_block) return false;
    }
  }
  return true;
}

void staged_read(io::Engine& engine, const Manifest& manifest, const std::vector<Unit>& units,
                 const std::vector<io::File*>& files, const std::vector<std::byte*>& buffers,
                 const std::vector<const Array*>& targets, const StagedReadOptions& options) {
  auto st = std::make_shared<Staged>(engine, manifest, units, files, buffers, targets,
                                     options.queue_depth);
  std::vector<std::size_t> first;
  {
    std::lock_guard lock(st->mu);
    first = st->take_reads_locked();
    st->advance_locked();
  }
  st->submit(first);
  unsigned helpers = options.threads > 1 ? options.threads - 1 : 0;
  helpers = static_cast<unsigned>(
      std::min<std::size_t>(helpers, units.size() > 0 ? units.size() - 1 : 0));
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < helpers; ++t) {
    // A helper holds the state alive; it touches buffers and targets only for a unit it took,
    // and the caller returns only after every unit taken was done.
    auto run = [st] { st->work(); };
    if (options.spawn) {
      options.spawn(run);
    } else {
      threads.emplace_back(run);
    }
  }
  st->work();
  for (auto& t : threads) t.join();
  std::lock_guard lock(st->mu);
  if (st->error) std::rethrow_exception(st->error);
}

ReadStaging::ReadStaging(
    const std::vector<Unit>& units, std::uint64_t unit_bytes, std::uint64_t own_limit,
    const std::function<std::vector<std::byte*>(std::size_t, std::uint64_t)>& borrow,
    std::function<void(const std::vector<std::byte*>&)> give_back)
    : give_back_(std::move(give_back)) {
  if (units.empty()) return;
  if (borrow) lent_ = borrow(units.size(), unit_bytes);
  buffers_ = lent_;
  std::uint64_t total = 0;
  for (const Unit& u : units) total += u.length;
  if (buffers_.empty() && total <= own_limit) {
    own_ = io::AlignedBuffer(static_cast<std::size_t>(total));
    std::uint64_t at = 0;
    for (const Unit& u : units) {
      buffers_.push_back(own_.data() + at);
      at += u.length;
    }
  }
}

ReadStaging::~ReadStaging() {
  if (!lent_.empty() && give_back_) give_back_(lent_);
}

}  // namespace ckpt
