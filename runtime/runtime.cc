// The asynchronous save pipeline. Per save:
//
//   caller:      plan layout ─► admit (staging chunks, block/skip) ─► [sync: parallel copy]
//                ─► return SaveHandle
//   background:  [overlapped: parallel copy ─► snapshotted]
//                ─► make <dir>.tmp-<tag>/, open data file (O_DIRECT)
//                ─► per unit, on the copy threads: CRC32C, then the engine write; each chunk
//                   returns to the staging pool as its write completes
//                ─► fsync data ─► metadata.json, extra files, manifest.ckpt ─► fsync dir
//                ─► rename to <dir>, fsync parent (commit) ─► handle completes ─► retention
//
// Threads: the coroutines run on one strand (the Runtime's io_context thread, or a strand over
// the executor it was given) and only orchestrate; copies, checksums and blocking file-system
// calls run on the copy pool; IO completions arrive on the engine's thread and touch only atomic
// counters and the staging pool. Unit i of a save always uses staging chunk i.
#include "runtime/runtime.h"

#include <unistd.h>

#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>

#include "io/crash_point.h"
#include "io/error.h"
#include "io/file.h"
#include "io/log.h"
#include "io/tracking_engine.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/commit.h"
#include "runtime/run_lock.h"
#include "runtime/staging_pool.h"

namespace ckpt {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

std::uint64_t default_budget() {
  long pages = ::sysconf(_SC_PHYS_PAGES);
  long page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return 4ull << 30;
  return static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page) / 4;
}

unsigned default_threads(unsigned n) {
  if (n != 0) return n;
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 2 : hw;
}

// True on a thread that runs `e`'s io_context (or is inside its strand): blocking there until the
// Runtime's strand makes progress would deadlock when that io_context has one thread. Executors
// other than io_context's (a thread_pool, say) are not recognized.
bool runs_executor(const asio::any_io_executor& e) {
  using IoEx = asio::io_context::executor_type;
  if (const auto* io = e.target<IoEx>()) return io->running_in_this_thread();
  if (const auto* s = e.target<asio::strand<IoEx>>()) {
    return s->running_in_this_thread() || s->get_inner_executor().running_in_this_thread();
  }
  if (const auto* s = e.target<asio::strand<asio::any_io_executor>>()) {
    return s->running_in_this_thread() || runs_executor(s->get_inner_executor());
  }
  return false;
}

std::unique_ptr<io::TrackingEngine> make_runtime_engine(const RuntimeOptions& o) {
  auto engine = io::make_engine({o.engine, o.queue_depth, o.io_threads});
  if (o.wrap_engine) engine = o.wrap_engine(std::move(engine));
  return std::make_unique<io::TrackingEngine>(std::move(engine));
}

// A suffix of a run directory, under that directory's writer lease: once publish()ed it stays
// protected in .ckpt-writer until reset() or destruction.
struct Protection {
  std::shared_ptr<RunLease> lease;
  std::string suffix;
  bool published = false;
  Protection() = default;
  Protection(std::shared_ptr<RunLease> l, std::string s) : lease(std::move(l)), suffix(std::move(s)) {}
  Protection(const Protection&) = delete;
  Protection& operator=(Protection&& o) noexcept {
    reset();
    lease = std::move(o.lease);
    suffix = std::move(o.suffix);
    published = std::exchange(o.published, false);
    return *this;
  }
  ~Protection() { reset(); }
  void publish() {
    if (!lease || published) return;
    lease->protect(suffix);
    published = true;
  }
  void reset() noexcept {
    if (published) lease->release(suffix);
    published = false;
    lease.reset();
  }
};

struct SaveOp {
  std::shared_ptr<detail::SaveShared> shared;
  SavePlan plan;
  std::string final_dir;
  boost::json::object metadata;
  SaveOptions options;
  StagingPool::Chunks chunks;
  std::vector<std::atomic<bool>> released;  // per chunk: returned to the pool
  Clock::time_point start;
  std::string tmp_dir;
  io::File data;
  // Set when an IO stage timed out with requests still in the engine: their completions own
  // the chunks they write from and, through this op, the data file (RuntimeOptions::io_timeout).
  std::atomic<bool> io_abandoned{false};
  // The previous save of the same path, still running when this one was admitted: commits of
  // one path happen in admission order, so the newest save is the one that stays.
  std::shared_ptr<detail::SaveShared> previous;
  // With SaveOptions::run_dir: the suffix in the run directory, published as protected from
  // before the temporary directory is made until the save ends.
  Protection protection;
  bool run_dir_counted = false;  // admitted: counts among run_dir's operations until it ends
};

// The pool as seen by engine completions, which may outlive a save that timed out and even the
// Runtime: ~Impl closes the gate before the pool goes away.
struct PoolGate {
  explicit PoolGate(StagingPool* p) : pool(p) {}
  std::mutex mu;
  StagingPool* pool;
  void release(SaveOp& op, std::size_t i) {
    std::lock_guard lock(mu);
    if (pool != nullptr && !op.released[i].exchange(true)) pool->release(op.chunks[i]);
  }
};

// One IO stage of a save (its writes, its fsync), ended by its last completion or by the
// io_timeout watchdog, whichever comes first; the other finds `done` taken and does nothing.
struct IoStage : std::enable_shared_from_this<IoStage> {
  std::mutex mu;
  std::function<void(std::exception_ptr)> done;  // empty once the stage has ended
  std::atomic<std::size_t> in_flight{0};         // requests submitted and not completed
  std::atomic<Clock::rep> last_progress{Clock::now().time_since_epoch().count()};
  // The watchdog, touched only on the strand. Dropped when the stage ends: a completion that
  // comes much later (even after the Runtime and its io_context are gone) must not own it.
  std::shared_ptr<asio::steady_timer> timer;
  asio::any_io_executor ex;

  void submitted() { ++in_flight; }
  void completed() {
    last_progress = Clock::now().time_since_epoch().count();
    --in_flight;
  }
  std::function<void(std::exception_ptr)> take() {
    std::lock_guard lock(mu);
    return std::exchange(done, nullptr);
  }
  bool ended() {
    std::lock_guard lock(mu);
    return !done;
  }
  void end(std::exception_ptr e) {
    auto f = take();
    if (!f) return;
    if (ex) asio::post(ex, [self = shared_from_this()] { self->timer.reset(); });
    f(e);
  }
};

// Work split over the copy threads: every participant takes units off `next` until none is left.
struct Sweep {
  std::atomic<std::size_t> next{0};
  std::atomic<std::size_t> finished{0};
  std::size_t total = 0;
  std::mutex mu;
  std::condition_variable cv;
  std::exception_ptr error;
};

}  // namespace

struct Runtime::Impl {
  RuntimeOptions options;
  std::unique_ptr<io::TrackingEngine> engine;  // knows its requests in flight: bounded shutdown
  StagingPool pool;  // after the engine: it unregisters its slabs from it on destruction
  std::shared_ptr<PoolGate> gate = std::make_shared<PoolGate>(&pool);
  asio::thread_pool workers;
  std::optional<asio::io_context> own_context;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> own_work;
  std::thread io_thread;
  asio::any_io_executor ex;
  // Handed to every handle and async completion instead of `ex` (runtime/event.h); closed by the
  // destructor once drained.
  std::shared_ptr<detail::RuntimeLink> link;

  mutable std::mutex mu;
  std::condition_variable idle_cv;
  std::size_t active = 0;  // saves and registrations not finished
  std::unordered_multimap<std::string, std::shared_ptr<detail::SaveShared>> in_flight;
  // The newest save started per path (in flight or ended, the last 4096 paths), which
  // register_latest waits for.
  std::unordered_map<std::string, std::shared_ptr<detail::SaveShared>> newest;
  std::deque<std::string> newest_order;
  std::unordered_map<std::string, std::shared_ptr<Event>> last_register;  // per run_dir
  std::multiset<std::pair<std::string, std::string>> pending_registers;   // (run_dir, suffix)
  // Per run directory this Runtime writes into: its writer lease, the saves (with run_dir) and
  // registrations not finished, and the retention passes (at most one running, one more asked).
  struct RunDir {
    std::shared_ptr<RunLease> lease;
    std::size_t active = 0;
    std::optional<RetentionPolicy> policy;  // the last one a save asked for
    bool pass_running = false;
    bool pass_again = false;
  };
  std::map<std::string, RunDir> run_dirs;
  std::vector<std::shared_ptr<detail::SaveShared>> failed_saves;
  std::vector<std::shared_ptr<detail::RegisterShared>> failed_registers;
  // async_drain waiters: called (off the lock) with the report when active drops to 0.
  std::vector<std::function<void(DrainReport)>> idle_waiters;
  RuntimeStats counters;

  Impl(RuntimeOptions opts, std::optional<asio::any_io_executor> external)
      : options(normalize(opts)),
        engine(make_runtime_engine(options)),
        pool(options.staging_budget, options.unit_bytes, engine.get()),
        workers(options.copy_threads) {
    std::function<bool()> on_runtime_thread;
    if (external) {
      ex = asio::make_strand(*external);
      on_runtime_thread = [outer = *external, strand = ex] {
        return runs_executor(strand) || runs_executor(outer);
      };
    } else {
      own_context.emplace(1);
      own_work.emplace(own_context->get_executor());
      ex = own_context->get_executor();
      on_runtime_thread = [io = own_context->get_executor()] {
        return io.running_in_this_thread();
      };
      io_thread = std::thread([this] { own_context->run(); });
    }
    link = std::make_shared<detail::RuntimeLink>(ex, std::move(on_runtime_thread));
    counters.staging_budget = pool.capacity_chunks() * pool.chunk_bytes();
    counters.engine = std::string(engine->name());
  }

  static RuntimeOptions normalize(RuntimeOptions o) {
    o.copy_threads = default_threads(o.copy_threads);
    if (o.staging_budget == 0) o.staging_budget = default_budget();
    o.unit_bytes = std::max<std::uint64_t>(io::align_up(o.unit_bytes), io::kAlignment);
    if (o.queue_depth == 0) o.queue_depth = 1;
    return o;
  }

  ~Impl() {
    {
      std::lock_guard lock(gate->mu);
      gate->pool = nullptr;  // completions of timed-out requests no longer return chunks
    }
    workers.join();
    if (own_context) {
      own_work.reset();
      io_thread.join();
    }
    abandon_stuck_io();
  }

  // Bounded shutdown (docs/design.md): every save has ended, so with an io_timeout a request
  // still in the engine is one the watchdog gave up on. Rather than block in the engine's
  // destructor for a device that may never answer, give it a short grace, then log what is
  // abandoned and keep the engine and the staging memory alive for the rest of the process.
  void abandon_stuck_io() {
    if (options.io_timeout.count() <= 0) return;  // no deadline asked for: the engine waits
    auto grace = std::min<Clock::duration>(options.io_timeout, std::chrono::milliseconds(100));
    if (engine->wait_idle(Clock::now() + grace)) return;
    auto stuck = engine->describe_in_flight();
    std::uint64_t kept = pool.abandon();
    log().error(
        "Runtime shut down with {} IO request(s) stuck past the IO timeout of {} ms: abandoning "
        "them with the engine and {} bytes of staging memory, which stay allocated until the "
        "process exits",
        stuck.size(), options.io_timeout.count(), kept);
    constexpr std::size_t kShown = 16;
    for (std::size_t i = 0; i < stuck.size() && i < kShown; ++i) log().error("abandoned: {}", stuck[i]);
    if (stuck.size() > kShown) log().error("abandoned: {} more", stuck.size() - kShown);
    io::abandon_engine(std::move(engine));
  }

  // Restores read through pre-faulted staging chunks when the pool has them free (a fresh mapping
  // costs its page faults on every restore), else through memory of their own.
  boost::json::object restore(const std::string& path, Tree& templ, bool partial) {
    ReadOptions ro{options.unit_bytes, options.queue_depth, options.allow_direct, {}};
    std::size_t want = std::min<std::size_t>({options.queue_depth, 16, pool.capacity_chunks() / 2});
    if (want > 0) {
      if (auto chunks = pool.try_acquire(want)) ro.buffers = std::move(*chunks);
    }
    struct Return {
      StagingPool& pool;
      const std::vector<std::byte*>& chunks;
      ~Return() {
        if (!chunks.empty()) pool.release(chunks);
      }
    } give_back{pool, ro.buffers};
    return restore_checkpoint(*engine, path, templ, partial, ro);
  }

  void begin_op() {
    std::lock_guard lock(mu);
    ++active;
  }

  void end_op() {
    std::vector<std::function<void(DrainReport)>> waiters;
    DrainReport report;
    {
      std::lock_guard lock(mu);
      if (--active != 0) return;
      idle_cv.notify_all();
      if (idle_waiters.empty()) return;
      waiters.swap(idle_waiters);
      report = take_failures_locked();
    }
    for (auto& w : waiters) w(report);  // they hold no reference to *this
  }

  // The failures nobody observed since the last report; forgets every failure it saw.
  DrainReport take_failures_locked() {
    DrainReport report;
    for (const auto& s : failed_saves) {
      if (!s->observed) report.errors.push_back("save " + s->path + ": " + describe_error(s->done.error()));
    }
    for (const auto& r : failed_registers) {
      if (!r->observed) {
        report.errors.push_back("register " + r->run_dir + "/" + r->suffix + ": " +
                                describe_error(r->done.error()));
      }
    }
    report.failed = report.errors.size();
    failed_saves.clear();
    failed_registers.clear();
    return report;
  }

  // The destructor's part before ~Impl: waits for every operation, logs the failures no drain()
  // reported, and cuts the handles' link to the executor.
  void shut_down() {
    DrainReport report;
    {
      std::unique_lock lock(mu);
      idle_cv.wait(lock, [&] { return active == 0; });
      report = take_failures_locked();
    }
    if (!report.ok()) {
      log().error("runtime shut down with {} failed operation(s) nobody waited for", report.failed);
    }
    link->close();
  }

  // Runs fn() on the copy pool; the awaiting coroutine resumes on its own executor.
  // g++ 12 destroys temporaries of a co_await full-expression twice (PITFALLS.md): the helpers
  // that build awaitables are plain functions taking references to named objects, never
  // coroutines taking temporaries.
  template <typename F>
  asio::awaitable<void> on_workers(const F& fn) {
    return detail::async_call<void(std::exception_ptr)>(
        ex, asio::use_awaitable, [this, fn](auto done) mutable {
          asio::post(workers, [fn = std::move(fn), done]() mutable {
            try {
              fn();
              done(std::exception_ptr());
            } catch (...) {
              done(std::current_exception());
            }
          });
        });
  }

  // ---- snapshot -------------------------------------------------------------------------

  // Copies every unit of op into its chunk with the pool's threads; `on_done` runs once, on the
  // thread that copied the last unit.
  void start_copy(const std::shared_ptr<SaveOp>& op,
                  std::function<void(std::exception_ptr)> on_done, bool caller_joins) {
    auto sweep = std::make_shared<Sweep>();
    sweep->total = op->plan.units.size();
    auto work = [op, sweep, on_done]() {
      for (;;) {
        std::size_t i = sweep->next.fetch_add(1);
        if (i >= sweep->total) return;
        try {
          copy_unit(op->plan.units[i], op->plan.leaves, op->chunks[i], op->plan.manifest);
        } catch (...) {
          std::lock_guard lock(sweep->mu);
          if (!sweep->error) sweep->error = std::current_exception();
        }
        if (sweep->finished.fetch_add(1) + 1 == sweep->total) {
          std::exception_ptr e;
          {
            std::lock_guard lock(sweep->mu);
            e = sweep->error;
          }
          sweep->cv.notify_all();
          if (on_done) on_done(e);
        }
      }
    };
    if (sweep->total == 0) {
      if (on_done) on_done(nullptr);
      return;
    }
    unsigned helpers = caller_joins ? options.copy_threads - 1 : options.copy_threads;
    helpers = static_cast<unsigned>(std::min<std::size_t>(helpers, sweep->total));
    for (unsigned t = 0; t < helpers; ++t) asio::post(workers, work);
    if (caller_joins) {
      work();
      std::unique_lock lock(sweep->mu);
      sweep->cv.wait(lock, [&] { return sweep->finished.load() == sweep->total; });
    }
  }

  // ---- writes ----------------------------------------------------------------------------

  struct WriteState {
    std::atomic<std::size_t> next{0};
    std::atomic<std::size_t> remaining{0};
    std::mutex mu;
    int error = 0;
    bool short_write = false;
    std::uint64_t error_offset = 0;
    std::atomic<std::size_t> writes_done{0};
  };

  void release_chunk(SaveOp& op, std::size_t i) {
    if (!op.released[i].exchange(true)) pool.release(op.chunks[i]);
  }

  void release_all(SaveOp& op) {
    for (std::size_t i = 0; i < op.chunks.size(); ++i) release_chunk(op, i);
  }

  // Starts the io_timeout watchdog of `stage` (on the strand). When the stage has requests in
  // the engine and none completes for io_timeout, it marks the op's IO abandoned, runs
  // on_timeout and ends the stage with Errc::timeout. Time with nothing in flight (units still
  // being checksummed on busy copy threads) does not count.
  void watch(const std::shared_ptr<IoStage>& stage, const std::shared_ptr<SaveOp>& op,
             std::string what, std::function<void()> on_timeout) {
    if (options.io_timeout.count() <= 0) return;
    stage->ex = ex;
    stage->timer = std::make_shared<asio::steady_timer>(ex);
    rearm_watchdog(stage, op, std::move(what), std::move(on_timeout));
  }

  void rearm_watchdog(std::shared_ptr<IoStage> stage, std::shared_ptr<SaveOp> op, std::string what,
                      std::function<void()> on_timeout) {
    auto last = Clock::time_point(Clock::duration(stage->last_progress.load()));
    stage->timer->expires_at(last + options.io_timeout);
    stage->timer->async_wait([this, stage, op, what, on_timeout](boost::system::error_code ec) {
      if (ec || stage->ended()) return;  // the stage ended: the Runtime may be gone
      auto last = Clock::time_point(Clock::duration(stage->last_progress.load()));
      if (stage->in_flight == 0 || Clock::now() - last < options.io_timeout) {
        if (stage->in_flight == 0) stage->last_progress = Clock::now().time_since_epoch().count();
        rearm_watchdog(stage, op, what, on_timeout);
        return;
      }
      auto done = stage->take();
      if (!done) return;     // the last completion came first
      stage->timer.reset();  // safe in its own handler: the handler was moved out
      op->io_abandoned = true;
      if (on_timeout) on_timeout();
      done(std::make_exception_ptr(Error(Errc::timeout,
                                         what + " did not complete within the IO timeout of " +
                                             std::to_string(options.io_timeout.count()) + " ms",
                                         op->data.path())));
    });
  }

  // Checksums and writes every unit; completes when every write has completed (or was skipped
  // after a failure) and every chunk is back in the pool, or when the watchdog gives up on them.
  asio::awaitable<void> write_units(const std::shared_ptr<SaveOp>& op) {
    return detail::async_call<void(
        std::exception_ptr)>(ex, asio::use_awaitable, [this, op](auto done) {
      auto st = std::make_shared<WriteState>();
      std::size_t n = op->plan.units.size();
      st->remaining = n;
      if (n == 0) {
        done(std::exception_ptr());
        return;
      }
      auto stage = std::make_shared<IoStage>();
      stage->done = done;
      watch(stage, op, "data write", [st] {
        std::lock_guard lock(st->mu);  // units not yet submitted are skipped
        if (st->error == 0 && !st->short_write) st->error = ETIMEDOUT;
      });
      auto finish_one = [op, st, stage]() {
        if (st->remaining.fetch_sub(1) != 1) return;
        std::exception_ptr e;
        if (st->error != 0) {
          e = std::make_exception_ptr(sys_error("write", op->data.path(), st->error));
        } else if (st->short_write) {
          e = std::make_exception_ptr(
              Error(Errc::io, "short write at offset " + std::to_string(st->error_offset),
                    op->data.path()));
        }
        stage->end(e);
      };
      auto work = [this, op, st, stage, finish_one, gate = gate]() {
        for (;;) {
          std::size_t i = st->next.fetch_add(1);
          if (i >= op->plan.units.size()) return;
          bool failed;
          {
            std::lock_guard lock(st->mu);
            failed = st->error != 0 || st->short_write;
          }
          if (failed) {
            release_chunk(*op, i);
            finish_one();
            continue;
          }
          const Unit& u = op->plan.units[i];
          checksum_unit(u, op->chunks[i], op->plan.manifest);
          io::Request r{io::Request::Op::write, op->data.fd(), op->chunks[i], u.length, u.offset};
          stage->submitted();
          engine->submit(r, [gate, op, st, stage, i, finish_one, len = u.length,
                             off = u.offset](std::int64_t res) {
            stage->completed();
            if (res < 0 || static_cast<std::uint64_t>(res) != len) {
              std::lock_guard lock(st->mu);
              if (st->error == 0 && !st->short_write) {
                st->error = res < 0 ? static_cast<int>(-res) : 0;
                st->short_write = res >= 0;
                st->error_offset = off;
              }
            } else if (st->writes_done.fetch_add(1) == 0) {
              CKPT_CRASH_POINT("mid_write");
            }
            gate->release(*op, i);
            finish_one();
          });
        }
      };
      unsigned threads = static_cast<unsigned>(std::min<std::size_t>(options.copy_threads, n));
      for (unsigned t = 0; t < threads; ++t) asio::post(workers, work);
    });
  }

  asio::awaitable<void> fsync_data(const std::shared_ptr<SaveOp>& op) {
    return detail::async_call<void(std::exception_ptr)>(
        ex, asio::use_awaitable, [this, op](auto done) {
          if (io::fsync_dropped("data_file")) return done(std::exception_ptr());  // test switch
          auto stage = std::make_shared<IoStage>();
          stage->done = done;
          watch(stage, op, "data fsync", nullptr);
          io::Request r{io::Request::Op::fsync, op->data.fd(), nullptr, 0, 0};
          stage->submitted();
          engine->submit(r, [op, stage](std::int64_t res) {
            stage->completed();
            stage->end(res < 0 ? std::make_exception_ptr(
                                     sys_error("fsync", op->data.path(), static_cast<int>(-res)))
                               : std::exception_ptr());
          });
        });
  }

  // ---- the pipeline ----------------------------------------------------------------------

  asio::awaitable<void> run_save(std::shared_ptr<SaveOp> op) {
    std::exception_ptr failure;
    const auto copy_in_background = [this, op](auto done) { start_copy(op, done, false); };
    const auto open_files = [op, this] {
      op->protection.publish();
      op->tmp_dir = make_tmp_dir(op->final_dir);
      op->data = io::open_direct(op->tmp_dir + "/" + data_file_name(0), io::OpenMode::write_new,
                                 options.allow_direct);
      // Sized before the writes: ext4 serializes direct writes that extend a file.
      op->data.truncate(op->plan.manifest.data_files[0].size);
    };
    const auto commit = [op] {
      op->data.close();
      finish_checkpoint(op->tmp_dir, op->final_dir, op->plan.manifest, op->metadata,
                        op->options.extra_files);
    };
    const auto clean_up = [op] {
      // Requests the watchdog gave up on may still use the descriptor: it closes with the op.
      if (!op->io_abandoned) op->data = io::File();
      abandon_tmp_dir(op->tmp_dir);
    };
    try {
      if (op->options.mode == SnapshotMode::overlapped) {
        co_await detail::async_call<void(std::exception_ptr)>(ex, asio::use_awaitable,
                                                              copy_in_background);
        mark_snapshotted(*op);
      }
      co_await on_workers(open_files);
      co_await write_units(op);
      co_await fsync_data(op);
      CKPT_FAULT_POINT("after_data_fsync", op->data.path());
      if (op->previous) {
        const std::shared_ptr<Event> previous_done(op->previous, &op->previous->done);
        co_await async_wait_event(previous_done, ex, asio::as_tuple(asio::use_awaitable));
        op->previous.reset();
      }
      co_await on_workers(commit);
    } catch (...) {
      failure = std::current_exception();
    }
    if (!op->io_abandoned) release_all(*op);  // else the engine's completions return them
    if (failure) {
      if (!op->tmp_dir.empty()) co_await on_workers(clean_up);
      fail_save(op, failure);
      co_return;
    }
    {
      std::lock_guard lock(op->shared->mu);
      op->shared->timings.durable = Clock::now() - op->start;
    }
    op->shared->state = SaveState::committed;
    finish_save(op, nullptr);
    end_op();
  }

  // ---- run directories and retention ------------------------------------------------------

  // This Runtime's writer lease on run_dir (taken on first use; waits up to lock_wait for
  // another process, but never on the Runtime's own thread, where it fails at once).
  std::shared_ptr<RunLease> lease_for(const std::string& run_dir) {
    {
      std::lock_guard lock(mu);
      if (auto it = run_dirs.find(run_dir); it != run_dirs.end() && it->second.lease) {
        return it->second.lease;
      }
    }
    auto wait = link->on_runtime_thread() ? std::chrono::milliseconds(0) : options.lock_wait;
    auto lease = RunLease::acquire(run_dir, wait);
    std::lock_guard lock(mu);
    auto& st = run_dirs[run_dir];
    if (!st.lease) st.lease = std::move(lease);
    return st.lease;
  }

  // A save or registration of run_dir ended. A committed save with a policy asks for a pass;
  // so does the last operation to end, so that the policy holds once everything drained (while
  // saves and registrations are in flight, passes must spare them).
  void run_dir_op_ended(const std::string& run_dir, const RetentionPolicy* committed_policy) {
    std::lock_guard lock(mu);
    auto& st = run_dirs[run_dir];
    --st.active;
    const bool asked = committed_policy != nullptr && committed_policy->active();
    if (asked) st.policy = *committed_policy;
    if (st.policy && (asked || st.active == 0)) request_pass_locked(run_dir, st);
  }

  void request_pass_locked(const std::string& run_dir, RunDir& st) {
    if (st.pass_running) {
      st.pass_again = true;  // the running pass goes again when it ends: passes never pile up
      return;
    }
    st.pass_running = true;
    ++active;  // drain() waits for the pass
    asio::post(workers, [this, run_dir] { retention_passes(run_dir); });
  }

  // Runs on a copy thread: passes over run_dir until none more was asked for.
  void retention_passes(const std::string& run_dir) {
    for (;;) {
      RetentionPolicy policy;
      std::shared_ptr<RunLease> lease;
      {
        std::lock_guard lock(mu);
        auto& st = run_dirs[run_dir];
        st.pass_again = false;
        policy = *st.policy;
        lease = st.lease;
      }
      try {
        RetentionPass pass;
        {
          // Under the mutation lock: `ckpt gc` in another process and `latest` moving wait.
          // What to spare is read after the listing (apply_retention): this Runtime's saves
          // and registrations, and those of every other Runtime sharing the lease.
          auto mutation = lease->lock_mutations(options.lock_wait);
          pass = apply_retention(run_dir, policy, [&] {
            std::set<std::string> protect = protected_suffixes(run_dir);
            protect.merge(lease->protected_now());
            return protect;
          });
        }
        if (!pass.latest_error.empty()) {
          log().warn("retention skipped for {}: {}", run_dir, pass.latest_error);
        }
        for (const auto& doomed : pass.doomed) bury(doomed);  // off the lock
      } catch (const std::exception& e) {
        log().error("retention in {} failed: {}", run_dir, e.what());
      }
      std::lock_guard lock(mu);
      auto& st = run_dirs[run_dir];
      if (st.pass_again) continue;
      st.pass_running = false;
      break;
    }
    end_op();
  }

  void mark_snapshotted(SaveOp& op) {
    {
      std::lock_guard lock(op.shared->mu);
      op.shared->timings.snapshot = Clock::now() - op.start;
    }
    op.shared->state = SaveState::writing;
    op.shared->snapshotted.complete();
    CKPT_CRASH_POINT("after_snapshot");
  }

  // Suffixes of run_dir that retention must not remove: saves in flight and pending
  // registrations (a registration may name a save that has just committed).
  std::set<std::string> protected_suffixes(const std::string& run_dir) {
    std::set<std::string> out;
    std::lock_guard lock(mu);
    for (const auto& [path, shared] : in_flight) {
      fs::path rel = fs::path(path).lexically_relative(run_dir);
      if (!rel.empty() && *rel.begin() != "..") out.insert(rel.string());
    }
    for (const auto& [dir, suffix] : pending_registers) {
      if (dir == run_dir) out.insert(suffix);
    }
    return out;
  }

  // Moves a finished save out of the in-flight table and completes its handle.
  void finish_save(const std::shared_ptr<SaveOp>& op, std::exception_ptr failure) {
    auto& shared = op->shared;
    op->protection.reset();
    {
      std::lock_guard lock(mu);
      auto range = in_flight.equal_range(shared->path);
      for (auto it = range.first; it != range.second; ++it) {
        if (it->second == shared) {
          in_flight.erase(it);
          break;
        }
      }
      if (failure) {
        ++counters.saves_failed;
        failed_saves.push_back(shared);
      } else if (shared->state == SaveState::committed) {
        ++counters.saves_committed;
      }
    }
    shared->snapshotted.complete(failure);
    shared->done.complete(failure);
    if (!op->run_dir_counted) return;
    run_dir_op_ended(op->options.run_dir, failure ? nullptr : &op->options.retention);
  }

  void fail_save(const std::shared_ptr<SaveOp>& op, std::exception_ptr failure) {
    op->shared->state = SaveState::failed;
    log().error("save of {} failed: {}", op->shared->path, describe_error(failure));
    finish_save(op, failure);
    end_op();
  }

  // ---- admission -------------------------------------------------------------------------

  std::shared_ptr<SaveOp> prepare(const std::string& path, const Tree& tree,
                                  const boost::json::object& metadata, const SaveOptions& options) {
    auto op = std::make_shared<SaveOp>();
    op->start = Clock::now();
    op->final_dir = clean_checkpoint_dir(path);
    check_checkpoint_dir_name(op->final_dir);
    check_extra_files(options.extra_files);
    check_metadata(metadata);
    op->plan = plan_save(tree, this->options.unit_bytes, this->options.unit_bytes);
    op->metadata = metadata;
    op->options = options;
    if (!options.run_dir.empty()) {
      op->options.run_dir = clean_checkpoint_dir(options.run_dir);
      std::string suffix = suffix_in_run_dir(op->options.run_dir, op->final_dir);
      // The lease now (a second writer fails here, before anything is written); the suffix is
      // published by the pipeline before its directory exists, off the caller's stall.
      op->protection = Protection(lease_for(op->options.run_dir), std::move(suffix));
    }
    op->shared = std::make_shared<detail::SaveShared>();
    op->shared->path = op->final_dir;
    op->shared->runtime = link;
    op->shared->timings.bytes = op->plan.manifest.total_bytes;
    op->shared->timings.stored_bytes = op->plan.manifest.stored_bytes();
    return op;
  }

  void mark_skipped(const std::shared_ptr<SaveOp>& op) {
    op->protection.reset();
    op->shared->state = SaveState::skipped;
    log().warn("save of {} skipped: staging budget in use by earlier saves", op->final_dir);
    {
      std::lock_guard lock(mu);
      ++counters.saves_skipped;
      note_newest_locked(op->shared);
    }
    op->shared->snapshotted.complete();
    op->shared->done.complete();
  }

  // Called once the op holds its chunks: enters the in-flight table.
  void admitted(const std::shared_ptr<SaveOp>& op, StagingPool::Chunks chunks) {
    op->chunks = std::move(chunks);
    op->released = std::vector<std::atomic<bool>>(op->chunks.size());
    std::lock_guard lock(mu);
    ++active;
    ++counters.saves_started;
    in_flight.emplace(op->shared->path, op->shared);
    if (!op->options.run_dir.empty()) {
      ++run_dirs[op->options.run_dir].active;
      op->run_dir_counted = true;
    }
    if (auto it = newest.find(op->shared->path); it != newest.end() && !it->second->done.done()) {
      op->previous = it->second;
    }
    note_newest_locked(op->shared);
  }

  void note_newest_locked(const std::shared_ptr<detail::SaveShared>& shared) {
    if (newest.insert_or_assign(shared->path, shared).second) newest_order.push_back(shared->path);
    while (newest_order.size() > 4096) {
      newest.erase(newest_order.front());
      newest_order.pop_front();
    }
  }

  void launch(const std::shared_ptr<SaveOp>& op) {
    asio::co_spawn(ex, run_save(op), [path = op->shared->path](std::exception_ptr e) {
      if (e) log().critical("save pipeline of {} ended abnormally: {}", path, describe_error(e));
    });
  }

  void stall_done(const std::shared_ptr<SaveOp>& op) {
    std::lock_guard lock(op->shared->mu);
    op->shared->timings.stall = Clock::now() - op->start;
  }

  // ---- register ----------------------------------------------------------------------------

  asio::awaitable<void> run_register(std::shared_ptr<detail::RegisterShared> reg,
                                     std::shared_ptr<detail::SaveShared> save,
                                     std::shared_ptr<Event> previous,
                                     std::shared_ptr<Protection> protection) {
    std::exception_ptr failure;
    if (previous) {
      co_await async_wait_event(previous, ex, asio::as_tuple(asio::use_awaitable));
    }
    const std::string path = reg->run_dir + "/" + reg->suffix;
    if (save) {
      const std::shared_ptr<Event> save_done(save, &save->done);
      auto [e] = co_await async_wait_event(save_done, ex, asio::as_tuple(asio::use_awaitable));
      if (e) {
        failure = e;
      } else if (save->state == SaveState::skipped) {
        failure = std::make_exception_ptr(
            Error(Errc::skipped, "cannot register a skipped save", save->path));
      }
    }
    const auto move_latest = [this, reg, protection] {
      // Checked and written under the mutation lock: no gc or retention pass removes the
      // checkpoint in between.
      auto mutation = protection->lease->lock_mutations(options.lock_wait);
      require_committed_checkpoint(reg->run_dir, reg->suffix);
      write_latest(reg->run_dir, reg->suffix);
    };
    if (!failure) {
      try {
        co_await on_workers(move_latest);
      } catch (...) {
        failure = std::current_exception();
      }
    }
    if (failure) {
      log().error("latest in {} not moved to {}: {}", reg->run_dir, reg->suffix,
                  describe_error(failure));
      std::lock_guard lock(mu);
      failed_registers.push_back(reg);
    }
    reg->done.complete(failure);
    {
      std::lock_guard lock(mu);
      auto it = last_register.find(reg->run_dir);
      if (it != last_register.end() && it->second.get() == &reg->done) last_register.erase(it);
      auto pending = pending_registers.find({reg->run_dir, reg->suffix});
      if (pending != pending_registers.end()) pending_registers.erase(pending);
    }
    protection->reset();
    run_dir_op_ended(reg->run_dir, nullptr);
    end_op();
  }
};

Runtime::Runtime(RuntimeOptions options) : impl_(std::make_unique<Impl>(options, std::nullopt)) {}

Runtime::Runtime(asio::any_io_executor executor, RuntimeOptions options)
    : impl_(std::make_unique<Impl>(options, executor)) {}

Runtime::~Runtime() {
  bool here = impl_->link->on_runtime_thread();
  std::size_t active;
  {
    std::lock_guard lock(impl_->mu);
    active = impl_->active;
  }
  if (!here || (active == 0 && !impl_->own_context)) {
    impl_->shut_down();
    return;  // ~Impl joins the threads
  }
  // On the Runtime's own thread, waiting for the operations (or joining that very thread) would
  // hang: a helper thread drains and tears down once the current handler has returned.
  if (active > 0) {
    log().critical(
        "Runtime destroyed on its own thread with {} operation(s) in flight: they finish on a "
        "helper thread (the executor must keep running); co_await async_drain() before destroying "
        "it there",
        active);
  }
  std::thread([impl = std::move(impl_)]() mutable {
    impl->shut_down();
    impl.reset();
  }).detach();
}

SaveHandle Runtime::save(const std::string& path, const Tree& tree,
                         const boost::json::object& metadata, const SaveOptions& options) {
  Backpressure policy = options.backpressure.value_or(impl_->options.backpressure);
  // Staging returns to the pool through that thread: waiting for it there can never end.
  if (policy == Backpressure::block && impl_->link->on_runtime_thread()) {
    throw Error(Errc::invalid_argument,
                "save() with Backpressure::block called on the Runtime's own thread (a plain "
                "async_wait callback, or a coroutine on its executor) could deadlock: use "
                "async_save, or Backpressure::skip",
                path);
  }
  auto op = impl_->prepare(path, tree, metadata, options);
  std::size_t n = op->plan.units.size();
  StagingPool::Chunks chunks;
  if (policy == Backpressure::skip) {
    auto granted = impl_->pool.try_acquire(n);
    if (!granted) {
      impl_->mark_skipped(op);
      impl_->stall_done(op);
      return SaveHandle(op->shared);
    }
    chunks = std::move(*granted);
  } else {
    chunks = impl_->pool.acquire(n);
  }
  impl_->admitted(op, std::move(chunks));
  if (options.mode == SnapshotMode::sync) {
    impl_->start_copy(op, nullptr, true);
    impl_->mark_snapshotted(*op);
  }
  impl_->stall_done(op);
  impl_->launch(op);
  return SaveHandle(op->shared);
}

void Runtime::start_async_save(std::string path, Tree tree, boost::json::object metadata,
                               SaveOptions options,
                               std::function<void(std::exception_ptr, SaveHandle)> done) {
  std::shared_ptr<SaveOp> op;
  try {
    op = impl_->prepare(path, tree, metadata, options);
  } catch (...) {
    done(std::current_exception(), SaveHandle());
    return;
  }
  Impl* impl = impl_.get();
  auto on_granted = [impl, op, done](StagingPool::Chunks chunks) {
    impl->admitted(op, std::move(chunks));
    if (op->options.mode == SnapshotMode::overlapped) {
      impl->stall_done(op);
      impl->launch(op);
      done(nullptr, SaveHandle(op->shared));
      return;
    }
    impl->start_copy(
        op,
        [impl, op, done](std::exception_ptr e) {
          impl->mark_snapshotted(*op);
          impl->stall_done(op);
          impl->launch(op);
          done(e, SaveHandle(op->shared));
        },
        false);
  };
  std::size_t n = op->plan.units.size();
  try {
    if (options.backpressure.value_or(impl_->options.backpressure) == Backpressure::skip) {
      auto granted = impl_->pool.try_acquire(n);
      if (!granted) {
        impl_->mark_skipped(op);
        impl_->stall_done(op);
        done(nullptr, SaveHandle(op->shared));
        return;
      }
      on_granted(std::move(*granted));
    } else {
      impl_->pool.acquire_async(n, on_granted);
    }
  } catch (...) {
    done(std::current_exception(), SaveHandle());
  }
}

RegisterHandle Runtime::register_latest(const std::string& run_dir, const std::string& suffix) {
  check_suffix(suffix);
  auto reg = std::make_shared<detail::RegisterShared>();
  reg->run_dir = clean_checkpoint_dir(run_dir);
  reg->suffix = suffix;
  // Published before this returns: from here `ckpt gc` spares the checkpoint to be registered.
  auto protection =
      std::make_shared<Protection>(impl_->lease_for(reg->run_dir), std::string(suffix));
  protection->publish();
  reg->runtime = impl_->link;
  std::string path = clean_checkpoint_dir(reg->run_dir + "/" + suffix);
  std::shared_ptr<detail::SaveShared> save;
  std::shared_ptr<Event> previous;
  {
    std::lock_guard lock(impl_->mu);
    // The newest save of that path, in flight or ended (else any in flight: more than 4096
    // paths were saved since).
    if (auto it = impl_->newest.find(path); it != impl_->newest.end()) {
      save = it->second;
    } else if (auto in = impl_->in_flight.find(path); in != impl_->in_flight.end()) {
      save = in->second;
    }
    impl_->pending_registers.emplace(reg->run_dir, reg->suffix);
    auto& last = impl_->last_register[reg->run_dir];
    previous = last;
    last = std::shared_ptr<Event>(reg, &reg->done);
    ++impl_->active;
    ++impl_->run_dirs[reg->run_dir].active;
  }
  asio::co_spawn(impl_->ex, impl_->run_register(reg, save, previous, protection),
                 [](std::exception_ptr e) {
    if (e) log().critical("register pipeline ended abnormally");
  });
  return RegisterHandle(reg);
}

boost::json::object Runtime::restore(const std::string& path, Tree& templ, bool partial) {
  return impl_->restore(path, templ, partial);
}

void Runtime::start_async_restore(
    std::string path, Tree templ, bool partial,
    std::function<void(std::exception_ptr, boost::json::object)> done) {
  Impl* impl = impl_.get();
  impl->begin_op();
  asio::post(impl->workers, [impl, path = std::move(path), templ = std::move(templ), partial,
                             done]() mutable {
    try {
      auto metadata = impl->restore(path, templ, partial);
      done(nullptr, std::move(metadata));
    } catch (...) {
      done(std::current_exception(), boost::json::object());
    }
    impl->end_op();
  });
}

void Runtime::reserve_staging(std::uint64_t bytes) { impl_->pool.reserve(bytes); }

void Runtime::claim_run_dir(const std::string& run_dir) {
  impl_->lease_for(clean_checkpoint_dir(run_dir));
}

DrainReport Runtime::drain() {
  if (impl_->link->on_runtime_thread()) {
    throw Error(Errc::invalid_argument,
                "drain() called on the Runtime's own thread (a plain async_wait callback, or a "
                "coroutine on its executor) would deadlock: co_await async_drain() instead");
  }
  std::unique_lock lock(impl_->mu);
  impl_->idle_cv.wait(lock, [&] { return impl_->active == 0; });
  return impl_->take_failures_locked();
}

void Runtime::start_async_drain(std::function<void(DrainReport)> done) {
  std::unique_lock lock(impl_->mu);
  if (impl_->active != 0) {
    impl_->idle_waiters.push_back(std::move(done));
    return;
  }
  DrainReport report = impl_->take_failures_locked();
  lock.unlock();
  done(std::move(report));
}

std::shared_ptr<detail::RuntimeLink> Runtime::link() const { return impl_->link; }

RuntimeStats Runtime::stats() const {
  RuntimeStats s;
  {
    std::lock_guard lock(impl_->mu);
    s = impl_->counters;
  }
  s.staging_in_use = impl_->pool.in_use_bytes();
  s.staging_mapped = impl_->pool.mapped_bytes();
  return s;
}

io::Engine& Runtime::engine() { return *impl_->engine; }
asio::any_io_executor Runtime::executor() const { return impl_->ex; }
const RuntimeOptions& Runtime::options() const { return impl_->options; }

}  // namespace ckpt
