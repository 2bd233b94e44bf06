#include "runtime/staged_read.h"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "io/error.h"
#include "runtime/crc32c.h"
#include "runtime/unit_pipe.h"

namespace ckpt {

namespace {

// Exchanges n bytes of a and b through a bounce buffer that stays in the L1 cache: both sides
// read and written once.
void swap_bytes(std::byte* a, std::byte* b, std::uint64_t n) noexcept {
  constexpr std::size_t kBounce = 16384;
  alignas(64) std::byte bounce[kBounce];
  for (std::uint64_t at = 0; at < n; at += kBounce) {
    auto k = static_cast<std::size_t>(std::min<std::uint64_t>(kBounce, n - at));
    std::memcpy(bounce, a + at, k);
    std::memcpy(a + at, b + at, k);
    std::memcpy(b + at, bounce, k);
  }
}

// Exchanges the unit's segments in `buf` with the target bytes they go to: done twice, it
// restores both sides.
void swap_unit(const Unit& unit, std::byte* buf,
               const std::vector<const Array*>& targets) noexcept {
  for (const Segment& s : unit.segments) {
    if (const Array* t = targets[s.leaf])
      swap_bytes(t->mutable_data() + s.leaf_offset, buf + s.unit_offset, s.len);
  }
}

// verify_unit and swap_unit in one pass, window by window, each window checksummed and then
// swapped while its bytes are still in cache (one pass over the staging instead of two). Every
// segment is swapped, also when a block is bad (the caller swaps the unit back). Returns the
// first piece whose block ended with a CRC mismatch. Segments sorted by unit_offset, disjoint.
// With check false (the unit verified already), only swaps.
std::optional<Piece> verify_swap_unit(const Unit& unit, std::byte* buf, const Manifest& m,
                                      std::vector<std::uint32_t>& crc,
                                      const std::vector<const Array*>& targets,
                                      bool check) noexcept {
  constexpr std::uint64_t kWindow = 64u << 10;
  std::optional<Piece> bad;
  std::size_t pi = 0, si = 0;
  std::uint64_t piece_at = 0;  // where piece pi starts in the unit
  auto end_piece = [&](const Piece& p) {
    if (p.ends_block && crc[p.block] != m.blocks[p.block].crc32c && !bad) bad = p;
    piece_at += p.len;
    ++pi;
  };
  for (std::uint64_t w0 = 0; w0 < unit.length; w0 += kWindow) {
    const std::uint64_t w1 = std::min(unit.length, w0 + kWindow);
    for (std::uint64_t at = w0; check && at < w1 && pi < unit.pieces.size();) {
      const Piece& p = unit.pieces[pi];
      const std::uint64_t n = std::min(w1, piece_at + p.len) - at;
      const bool fresh = at == piece_at && p.start == 0;
      crc[p.block] = crc32c(buf + at, n, fresh ? 0 : crc[p.block]);
      at += n;
      if (at == piece_at + p.len) end_piece(p);
    }
    while (si < unit.segments.size() &&
           unit.segments[si].unit_offset + unit.segments[si].len <= w0) {
      ++si;
    }
    for (std::size_t k = si; k < unit.segments.size() && unit.segments[k].unit_offset < w1; ++k) {
      const Segment& s = unit.segments[k];
      const Array* t = targets[s.leaf];
      const std::uint64_t lo = std::max(w0, s.unit_offset);
      const std::uint64_t hi = std::min(w1, s.unit_offset + s.len);
      if (t != nullptr && lo < hi) {
        swap_bytes(t->mutable_data() + s.leaf_offset + (lo - s.unit_offset), buf + lo, hi - lo);
      }
    }
  }
  while (check && pi < unit.pieces.size()) {  // empty pieces past the last byte
    const Piece& p = unit.pieces[pi];
    if (p.start == 0) crc[p.block] = crc32c(buf, 0, 0);
    end_piece(p);
  }
  return bad;
}

// True when no two segments share a byte: within a unit's buffer, or (unless the caller vouches
// for them) in the targets. A unit's segments come sorted by offset (plan_units); sorted, two
// overlap only if two neighbours do.
bool segments_disjoint(const std::vector<Unit>& units, const std::vector<const Array*>& targets,
                       bool targets_disjoint) {
  std::vector<std::pair<std::uintptr_t, std::uint64_t>> dst;
  for (const Unit& u : units) {
    const Segment* prev = nullptr;
    for (const Segment& s : u.segments) {
      const Array* t = targets[s.leaf];
      if (t == nullptr || s.len == 0) continue;
      if (prev != nullptr && (prev->unit_offset > s.unit_offset ||  // unsorted
                              prev->unit_offset + prev->len > s.unit_offset)) {
        return false;
      }
      prev = &s;
      if (!targets_disjoint) {
        dst.emplace_back(reinterpret_cast<std::uintptr_t>(t->data()) + s.leaf_offset, s.len);
      }
    }
  }
  std::sort(dst.begin(), dst.end());
  for (std::size_t k = 1; k < dst.size(); ++k) {
    if (dst[k - 1].first + dst[k - 1].second > dst[k].first) return false;
  }
  return true;
}

}  // namespace

// The reads go by `io` (file, offset and length of each unit, from the start). A unit read before
// finish() may be checked against the layout's block checksums by one helper (check_ahead); what
// verifies and places the units (`manifest`, `units`, `targets`, `mode`, `crc`) is armed by
// finish(). Read completions touch only `io`, the buffers and what is under `mu`.
struct StagedRead::State : std::enable_shared_from_this<StagedRead::State> {
  struct Io {
    std::uint32_t file;
    std::uint64_t offset;
    std::uint64_t length;
  };
  // What a worker does with a unit it takes from `ready`.
  enum class Mode : std::uint8_t {
    ahead,   // before finish(): check the unit's blocks against the layout's checksums
    swap,    // verify it (unless checked ahead) and swap it into the targets at once
    verify,  // verify it (unless checked ahead); the units are copied once every one verified
    copy,    // every unit verified: copy this one into the targets
    place,   // not transactional: verify it (unless checked ahead) and copy it in at once
  };
  struct Outcome {
    bool ok = true;        // verified (ahead: its blocks matched the layout's checksums)
    bool swapped = false;  // its segments are in the targets now
    std::exception_ptr bad;
  };
  io::Engine& engine;
  std::vector<Io> io;
  const std::vector<io::File*>& files;
  const std::vector<std::byte*>& buffers;
  unsigned depth;
  const Manifest* m = nullptr;
  const std::vector<Unit>* units = nullptr;
  const std::vector<const Array*>* targets = nullptr;
  Stores stores = Stores::cached;  // how units are copied into the targets
  std::vector<std::uint32_t> crc;
  // check_ahead's: the layout (blocks only) and its units (the same reads, pieces but no segments).
  const Manifest* layout = nullptr;
  const std::vector<Unit>* layout_units = nullptr;
  std::vector<std::uint32_t> layout_crc;
  unsigned ahead_helpers = 0;
  std::size_t ahead_checked = 0, ahead_passed = 0;  // under mu

  std::mutex mu;
  std::condition_variable cv;       // the workers (and the caller waiting for them to finish)
  std::condition_variable read_cv;  // wait_read
  Mode mode = Mode::ahead;
  bool parallel_copy = false;     // Mode::verify: the workers copy once all verified (else the caller)
  bool layout_trusted = true;     // finish() found the layout's blocks equal to the manifest's
  std::deque<std::size_t> ready;  // read, to be worked on in the current mode
  std::vector<std::size_t> parked;  // checked ahead before finish(): taken up again once armed
  std::size_t next_read = 0;
  std::size_t in_flight = 0;
  std::size_t done = 0;  // placed in the targets (swapped or copied), or verified for the caller
  std::size_t busy = 0;  // workers on a unit now
  std::exception_ptr error;
  bool finished = false;
  std::vector<char> swapped;   // per unit: its segments are in the targets
  std::vector<char> verified;  // per unit: its blocks verified
  std::size_t verified_count = 0;

  State(io::Engine& e, const std::vector<Unit>& u, const std::vector<io::File*>& f,
        const std::vector<std::byte*>& b, unsigned d)
      : engine(e),
        files(f),
        buffers(b),
        depth(std::max(d, 1u)),
        swapped(u.size(), 0),
        verified(u.size(), 0) {
    io.reserve(u.size());
    for (const Unit& x : u) io.push_back({x.file, x.offset, x.length});
  }

  // True when `u` are the units being read: the same files, offsets and lengths, in order.
  bool same_reads(const std::vector<Unit>& u) const {
    return std::equal(u.begin(), u.end(), io.begin(), io.end(), [](const Unit& a, const Io& b) {
      return a.file == b.file && a.offset == b.offset && a.length == b.length;
    });
  }

  // Under mu: the most reads in flight now (reads already in flight stay). Once finish() armed
  // the placement, reads_toward_the_end: a disk that completes its whole queue at once (this
  // VM's virtio disk does, every 40 ms at 1 GiB) would otherwise hand the workers its last
  // `depth` units together, all verified and placed after the last read: 20-25 ms of a 1 GiB
  // restore here. Halved, where reads were still to issue at finish(), the last read brings one
  // unit, and each round is read while the workers place the one before, which is twice as
  // large but placed about twice as fast as it is read here. Before finish(), nothing can be
  // placed yet: the whole depth keeps the disk busy.
  std::size_t depth_now_locked() const {
    if (mode == Mode::ahead) return depth;
    return reads_toward_the_end(io.size() - next_read + in_flight, depth);
  }

  // Under mu: the reads to submit now (submitted by the caller after unlocking: a completion
  // may run on the submitting thread).
  std::vector<std::size_t> take_reads_locked() {
    std::vector<std::size_t> out;
    while (!error && in_flight < depth_now_locked() && next_read < io.size()) {
      out.push_back(next_read++);
      ++in_flight;
    }
    return out;
  }

  void fail_locked(std::exception_ptr e) {
    if (!error) error = e;
  }

  // Under mu: finished when every unit is done, or after a failure once nothing is in flight or
  // being worked on (so that the caller may swap back what was swapped in).
  void advance_locked() {
    if (finished) return;
    if (error ? in_flight == 0 && busy == 0 : done == io.size()) {
      finished = true;
      cv.notify_all();
    }
  }

  // Under mu: unit i, read, goes where the current mode wants it. A unit that verified ahead
  // waits in Mode::verify for the copy, which starts once every unit verified.
  void route_locked(std::size_t i) {
    if (mode == Mode::verify && verified[i] != 0) return;
    ready.push_back(i);
    cv.notify_one();
  }

  void mark_verified_locked(std::size_t i) {
    if (verified[i] != 0) return;
    verified[i] = 1;
    ++verified_count;
  }

  // Under mu: in Mode::verify, once every unit verified, the copy starts (on the workers, or by
  // the caller after they return).
  void maybe_copy_locked() {
    if (mode != Mode::verify || verified_count != io.size() || error) return;
    if (!parallel_copy) {
      done = io.size();
      return;
    }
    mode = Mode::copy;
    for (std::size_t i = 0; i < io.size(); ++i) ready.push_back(i);
    cv.notify_all();
  }

  void submit(const std::vector<std::size_t>& reads) {
    for (std::size_t i : reads) {
      const Io& u = io[i];
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
      const Io& u = io[i];
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
        route_locked(i);
      }
      more = take_reads_locked();
      if (in_flight == 0) read_cv.notify_all();
      advance_locked();
    }
    submit(more);
  }

  // Works on unit i in `now` (a swap that fails still swaps: the unit goes back with the rest).
  // Unlocked.
  Outcome run(Mode now, std::size_t i) {
    Outcome out;
    try {
      switch (now) {
        case Mode::ahead:
          out.ok = verify_unit((*layout_units)[i], buffers[i], *layout, layout_crc).empty();
          break;
        case Mode::swap: {
          const Unit& u = (*units)[i];
          std::optional<Piece> wrong =
              verify_swap_unit(u, buffers[i], *m, crc, *targets, verified[i] == 0);
          out.swapped = true;
          if (wrong) out.bad = bad_block(u, *wrong);
          break;
        }
        case Mode::verify:  // (a unit verified ahead reaches a worker only to be placed)
        case Mode::place: {
          const Unit& u = (*units)[i];
          if (verified[i] == 0) {
            if (auto pieces = verify_unit(u, buffers[i], *m, crc); !pieces.empty()) {
              out.bad = bad_block(u, pieces.front());
              break;
            }
          }
          if (now == Mode::place) scatter_unit(u, buffers[i], *targets, stores);
          break;
        }
        case Mode::copy:
          scatter_unit((*units)[i], buffers[i], *targets, stores);
          break;
      }
    } catch (...) {
      out.bad = std::current_exception();
    }
    if (out.bad) out.ok = false;
    return out;
  }

  std::exception_ptr bad_block(const Unit& u, const Piece& p) const {
    return std::make_exception_ptr(
        Error(Errc::corrupt, describe_bad_block(*m, p.block), files[u.file]->path()));
  }

  // Under mu: what unit i's outcome in `then` changes.
  void settle_locked(Mode then, std::size_t i, const Outcome& out) {
    switch (then) {
      case Mode::ahead:
        // A unit that failed the check is verified again once armed: that names what is wrong.
        ++ahead_checked;
        if (out.ok) ++ahead_passed;
        if (out.ok && layout_trusted) mark_verified_locked(i);
        if (mode == Mode::ahead) {
          parked.push_back(i);
        } else {
          route_locked(i);
          maybe_copy_locked();
        }
        break;
      case Mode::swap:
      case Mode::place:  // a unit placed stays placed when another fails
        if (out.swapped) swapped[i] = 1;
        if (out.bad) fail_locked(out.bad); else ++done;
        break;
      case Mode::verify:
        if (out.bad) {
          fail_locked(out.bad);
        } else {
          mark_verified_locked(i);
          maybe_copy_locked();
        }
        break;
      case Mode::copy:  // scatter_unit cannot fail: every unit verified before the first copy
        ++done;
        break;
    }
    advance_locked();
  }

  // Under mu, from finish(): the units read so far (and those still to come) are worked on in
  // `armed`.
  void arm_locked(Mode armed, bool copy_on_workers) {
    mode = armed;
    parallel_copy = copy_on_workers;
    for (std::size_t i : parked) route_locked(i);
    parked.clear();
    maybe_copy_locked();
    advance_locked();
  }

  // Every participant, the caller included, runs this until the read is finished.
  void work() {
    std::unique_lock lock(mu);
    for (;;) {
      cv.wait(lock, [&] { return finished || !ready.empty(); });
      if (finished) return;
      std::size_t i = ready.front();
      ready.pop_front();
      if (error) {  // moot now: what was swapped in goes back
        advance_locked();
        continue;
      }
      ++busy;
      const Mode now = mode;
      lock.unlock();
      const Outcome out = run(now, i);
      lock.lock();
      --busy;
      settle_locked(now, i, out);
    }
  }
};

std::string describe_bad_block(const Manifest& m, std::uint32_t block) {
  const BlockInfo& b = m.blocks[block];
  return fmt::format("checksum mismatch in the block at offset {} ({} bytes) holding {}", b.offset,
                     b.length, block_leaves(m, block));
}

bool whole_blocks(const std::vector<Unit>& units) {
  for (const Unit& u : units) {
    for (const Piece& p : u.pieces) {
      if (p.start != 0 || !p.ends_block) return false;
    }
  }
  return true;
}

StagedRead::StagedRead(io::Engine& engine, const std::vector<Unit>& units,
                       const std::vector<io::File*>& files, const std::vector<std::byte*>& buffers,
                       unsigned queue_depth)
    : st_(std::make_shared<State>(engine, units, files, buffers, queue_depth)) {}

StagedRead::~StagedRead() {
  {
    // Without a finish(): the reads in flight still write into the buffers.
    std::unique_lock lock(st_->mu);
    if (!st_->finished) {
      st_->fail_locked(std::make_exception_ptr(Error(Errc::cancelled, "staged read abandoned")));
      st_->advance_locked();
      st_->cv.wait(lock, [&] { return st_->finished; });
    }
  }
  if (ahead_thread_.joinable()) ahead_thread_.join();
}

void StagedRead::start() {
  std::vector<std::size_t> first;
  {
    std::lock_guard lock(st_->mu);
    first = st_->take_reads_locked();
    st_->advance_locked();
  }
  st_->submit(first);
}

void StagedRead::check_ahead(const Manifest& layout, const std::vector<Unit>& units,
                             const StagedReadOptions& options) {
  State& st = *st_;
  // One helper, and only where finish() would have one: the caller is busy decoding meanwhile.
  if (options.threads < 2 || !st.same_reads(units) || !whole_blocks(units)) return;
  {
    std::lock_guard lock(st.mu);
    if (st.mode != State::Mode::ahead || st.ahead_helpers != 0) return;
    st.layout = &layout;
    st.layout_units = &units;
    st.layout_crc.assign(extent_slots(layout), 0);
    ++st.ahead_helpers;
  }
  auto run = [st = st_] { st->work(); };
  try {
    if (options.spawn) {
      options.spawn(run);
    } else {
      ahead_thread_ = std::thread(run);
    }
  } catch (const std::exception&) {
    // Best effort: without the helper, finish() verifies everything itself.
    std::lock_guard lock(st.mu);
    st.layout = nullptr;
    st.layout_units = nullptr;
    st.ahead_helpers = 0;
  }
}

namespace {

// The blocks a layout and a manifest decoded from the same bytes give: equal, unless the bytes
// changed between the two decodes (they do not; checked because the layout was not checksummed).
bool same_blocks(const Manifest& a, const Manifest& b) {
  return std::equal(a.blocks.begin(), a.blocks.end(), b.blocks.begin(), b.blocks.end(),
                    [](const BlockInfo& x, const BlockInfo& y) {
                      return x.file == y.file && x.offset == y.offset && x.length == y.length &&
                             x.crc32c == y.crc32c;
                    });
}

}  // namespace

StagedRead::Placement StagedRead::finish(const Manifest& manifest,
                                         const std::vector<Unit>& units,
                                         const std::vector<const Array*>& targets,
                                         const StagedReadOptions& options) {
  State& st = *st_;
  if (!st.same_reads(units)) {
    throw Error(Errc::invalid_argument, "staged read: units differ from the ones being read");
  }
  const bool disjoint =
      !targets.empty() && segments_disjoint(units, targets, options.targets_disjoint);
  // Not value_or: that would walk every segment even when the caller chose.
  const Stores stores =
      options.stores ? *options.stores : stores_for(scattered_bytes(units, targets));
  unsigned ahead_helpers = 0;
  bool copy_after = false;  // the caller copies once every unit verified
  Placement placement = Placement::swapped;
  {
    std::lock_guard lock(st.mu);  // the workers see it armed
    st.m = &manifest;
    st.units = &units;
    st.targets = &targets;
    st.stores = stores;
    st.crc.assign(extent_slots(manifest), 0);
    if (st.layout != nullptr && !same_blocks(*st.layout, manifest)) {
      st.layout_trusted = false;
      std::fill(st.verified.begin(), st.verified.end(), 0);
      st.verified_count = 0;
    }
    // Swapping a unit in as soon as it verifies runs during the reads still to come, but moves
    // both sides' bytes through a bounce buffer: on two cores it took twice as long as a copy.
    // Copying after every unit verified moves the bytes once, and nothing reaches the targets
    // before that, but it waits for the last read. Once every read is issued and at least half
    // the units are in (as when the manifest's decode took about as long as the reads), the
    // copy afterwards finishes first; with more still to come, swapping hides behind them.
    // Not transactional (ReadOptions::transactional), each unit is copied in as it verifies:
    // half the swap's memory traffic, and no wait for the last read.
    if (disjoint && !options.transactional) {
      st.arm_locked(State::Mode::place, false);
      placement = Placement::placed;
    } else if (!disjoint) {
      copy_after = !targets.empty();
      st.arm_locked(State::Mode::verify, false);
      placement = Placement::copied;
    } else if (st.next_read == st.io.size() && st.in_flight * 2 <= st.io.size()) {
      st.arm_locked(State::Mode::verify, true);
      placement = Placement::copied;
    } else {
      st.arm_locked(State::Mode::swap, false);
    }
    ahead_helpers = st.ahead_helpers;
  }
  unsigned helpers = options.threads > 1 ? options.threads - 1 : 0;
  helpers = static_cast<unsigned>(
      std::min<std::size_t>(helpers, units.size() > 0 ? units.size() - 1 : 0));
  helpers = helpers > ahead_helpers ? helpers - ahead_helpers : 0;
  if (options.on_placed) options.on_placed(placement);
  std::vector<std::thread> threads;
  try {
    for (unsigned t = 0; t < helpers; ++t) {
      // A helper holds the state alive; it touches buffers and targets only for a unit it took,
      // and the read is finished only once no unit is being worked on.
      auto run = [st = st_] { st->work(); };
      if (options.spawn) {
        options.spawn(run);
      } else {
        threads.emplace_back(run);
      }
    }
  } catch (const std::exception&) {
    // Fewer helpers: the caller's own work() below still takes every unit. Leaving now would
    // abandon the units the ahead helper may already have swapped in.
  }
  st.work();
  for (auto& t : threads) t.join();
  if (ahead_thread_.joinable()) ahead_thread_.join();
  std::lock_guard lock(st.mu);
  if (st.error) {
    // Nothing is in flight or being worked on: put back what the targets held.
    for (std::size_t i = 0; i < units.size(); ++i) {
      if (st.swapped[i] != 0) swap_unit(units[i], st.buffers[i], targets);
    }
    std::rethrow_exception(st.error);
  }
  if (copy_after) {
    for (std::size_t i = 0; i < units.size(); ++i) {
      scatter_unit(units[i], st.buffers[i], targets, st.stores);
    }
  }
  return placement;
}

StagedRead::Ahead StagedRead::ahead() const {
  std::lock_guard lock(st_->mu);
  return {st_->ahead_checked, st_->ahead_passed};
}

bool StagedRead::wait_read(std::chrono::milliseconds timeout) {
  std::unique_lock lock(st_->mu);
  return st_->read_cv.wait_for(lock, timeout, [&] {
    return st_->error || (st_->in_flight == 0 && st_->next_read == st_->io.size());
  });
}

ReadPlacement staged_read(io::Engine& engine, const Manifest& manifest,
                          const std::vector<Unit>& units, const std::vector<io::File*>& files,
                          const std::vector<std::byte*>& buffers,
                          const std::vector<const Array*>& targets,
                          const StagedReadOptions& options) {
  StagedRead read(engine, units, files, buffers, options.queue_depth);
  read.start();
  return read.finish(manifest, units, targets, options);
}

void two_pass_read(io::Engine& engine, const Manifest& m, const std::vector<Unit>& units,
                   const std::vector<io::File*>& files, std::uint64_t unit_bytes,
                   unsigned queue_depth, const std::vector<const Array*>& targets,
                   bool transactional) {
  const Stores stores = stores_for(scattered_bytes(units, targets));
  for (bool scatter : {false, true}) {
    if (!scatter && !transactional) continue;
    std::vector<std::uint32_t> crc(extent_slots(m));
    UnitPipe pipe(engine, unit_bytes, queue_depth);
    pipe.read_all(units, files, [&](const Unit& u, const std::byte* buf) {
      auto bad = verify_unit(u, buf, m, crc);
      if (!bad.empty())
        throw Error(Errc::corrupt, describe_bad_block(m, bad.front().block), files[u.file]->path());
      if (scatter) scatter_unit(u, buf, targets, stores);
    });
  }
}

StagedReadOptions staged_options(const ReadOptions& options) {
  StagedReadOptions staged{options.queue_depth, options.threads, options.spawn};
  staged.transactional = options.transactional;
  if (staged.threads == 0) staged.threads = std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
  return staged;
}

void read_into_targets(io::Engine& engine, const Manifest& m, const std::vector<Unit>& units,
                       std::uint64_t unit_bytes, const std::vector<io::File*>& files,
                       const std::vector<const Array*>& targets, const ReadOptions& options,
                       const std::vector<Unit>& pass_units, std::uint64_t pass_unit_bytes) {
  const StagedReadOptions staged = staged_options(options);
  {
    // Staging: buffers lent by the caller (the Runtime's pool), else memory of our own within
    // staging_bytes, else the two-pass read.
    ReadStaging staging(units, unit_bytes, options.staging_bytes, options.borrow,
                        options.give_back);
    if (!staging.buffers().empty() || units.empty()) {
      ReadHow how = staged_read(engine, m, units, files, staging.buffers(), targets, staged);
      if (units.empty()) how = ReadHow::nothing;
      if (options.read_how != nullptr) *options.read_how = how;
      return;
    }
  }
  if (pass_units.empty()) {
    two_pass_read(engine, m, units, files, unit_bytes, options.queue_depth, targets,
                  options.transactional);
  } else {
    two_pass_read(engine, m, pass_units, files, pass_unit_bytes, options.queue_depth, targets,
                  options.transactional);
  }
  if (options.read_how != nullptr) {
    *options.read_how = options.transactional ? ReadHow::two_passes : ReadHow::one_pass;
  }
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
