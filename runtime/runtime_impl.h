#pragma once
// The Runtime's internals, shared by the files of its stages: runtime.cc (construction, draining,
// shutdown), save_pipeline.cc (admission, copy, writes, commit), restore.cc, run_dirs.cc (writer
// leases, register_latest, retention). Asio-heavy: include it only from those files.
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
#include "runtime/collective_commit.h"
#include "runtime/collective_queue.h"
#include "runtime/commit.h"
#include "runtime/incremental.h"
#include "runtime/plan_cache.h"
#include "runtime/run_lock.h"
#include "runtime/runtime.h"
#include "runtime/staging_pool.h"

namespace ckpt {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace detail {

// A suffix of a run directory, under that directory's writer lease: once publish()ed it stays
// protected in .ckpt-writer until reset() or destruction.
struct Protection {
  std::shared_ptr<RunLease> lease;
  std::string suffix;
  bool published = false;
  Protection() = default;
  Protection(std::shared_ptr<RunLease> l, std::string s)
      : lease(std::move(l)), suffix(std::move(s)) {}
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

struct Writes;

struct SaveOp {
  std::shared_ptr<detail::SaveShared> shared;
  std::shared_ptr<const PlanSkeleton> plan;  // shared with other saves of the same structure
  std::vector<const std::byte*> sources;     // each leaf's bytes, flattening order
  std::vector<std::shared_ptr<std::byte[]>> owners;  // owned arrays, alive until the op ends
  std::vector<std::uint32_t> block_crc;              // this save's checksums, per block
  std::int64_t created_unix_ns = 0;
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
  std::shared_ptr<Writes> writes;  // from admission
  // A single-process save writes metadata.json, its extra files and its manifest as soon as its
  // last unit is checksummed (incremental: hashed and placed), while its data writes are still in
  // flight; this fires when they are written and fsynced. Null for a collective save: process 0
  // writes the global manifest after every process's report.
  std::shared_ptr<Event> files_done;
  std::atomic<bool> files_started{false};
  // The previous save of the same path, still running when this one was admitted: commits of
  // one path happen in admission order, so the newest save is the one that stays.
  std::shared_ptr<detail::SaveShared> previous;
  // With SaveOptions::run_dir: the suffix in the run directory, published as protected from
  // before the temporary directory is made until the save ends.
  Protection protection;
  bool run_dir_counted = false;  // admitted: counts among run_dir's operations until it ends
  // Incremental saves (runtime/incremental.h): the hashing, packing and placement of this save;
  // its base (empty: none, or `latest` of run_dir when base_from_latest); per unit, whether it
  // is written whole as soon as copied (it changed in the previous save of this plan).
  std::shared_ptr<IncrementalSave> inc;
  std::string inc_base;
  bool inc_base_from_latest = false;
  std::vector<std::uint8_t> speculate;
  // A sync save with a base: fires once the base is attached (or could not be), on the opener's
  // thread. Units the caller copies after that and does not speculate on are hashed from the
  // leaves in the stall and only what the base lacks is copied (`packed`, per unit).
  std::shared_ptr<Event> base_ready;
  std::vector<std::uint8_t> packed;
  // Of the units this save hashed in its stall, how many turned out changed (hashed and copied):
  // past half of them (and a few), the rest of the copy stops hashing (pack_in_stall).
  std::atomic<std::size_t> stall_hashed{0};
  std::atomic<std::size_t> stall_changed{0};
  // Once committed: the manifest it wrote and that file's trailer (the next save's cached base).
  std::shared_ptr<const Manifest> inc_committed;
  std::string inc_trailer;
  // A collective save (runtime/collective_commit.h): this process's part; null for a plain save.
  std::shared_ptr<ShardedSave> sharded;
  // An incremental collective save (runtime/shard_incremental.h): hashed and placed once every
  // unit is copied (units_copied counts them).
  std::shared_ptr<ShardIncremental> sinc;
  std::atomic<std::size_t> units_copied{0};
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
  asio::any_io_executor ex;  // under mu: set by the watchdog, which may start after the requests

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
    std::function<void(std::exception_ptr)> f;
    asio::any_io_executor watchdog;
    {
      std::lock_guard lock(mu);
      f = std::exchange(done, nullptr);
      watchdog = ex;
    }
    if (!f) return;
    if (watchdog) asio::post(watchdog, [self = shared_from_this()] { self->timer.reset(); });
    f(e);
  }
};

// The data writes of one save, started when it is admitted (docs/design.md, section 5): the
// data file is opened on a copy thread while the copy runs, and each unit is written as soon as
// it is copied and the file is open, its CRC32C computed meanwhile on the copy threads. The
// stage ends once the file was opened (or failed to) and every unit was written and checksummed
// (or skipped after a failure).
struct Writes {
  std::mutex mu;
  bool file_ready = false;           // the open ended (opened or failed)
  std::vector<std::size_t> pending;  // units copied before that
  // A sync save holds its units' checksums until the caller's copy is done: on few cores they
  // would slow the copy (the stall) and the writes need none to start.
  bool hold_checksums = false;
  std::vector<std::size_t> held;
  // And, without RuntimeOptions::write_during_copy, its writes too: where each goes.
  std::vector<std::pair<std::size_t, IncrementalSave::Write>> held_writes;
  std::exception_ptr error;  // the first failure: later units are skipped
  // Per unit: the parts still to do (its write, its checksum); at 0 the chunk returns.
  std::unique_ptr<std::atomic<int>[]> parts;
  std::atomic<std::size_t> remaining{0};  // units not finished, plus 1 for the open
  std::atomic<std::size_t> writes_done{0};
  // A single-process save's units still to checksum (or hash and place): the last starts its
  // manifest.
  std::atomic<std::size_t> checksums_left{0};
  std::shared_ptr<IoStage> stage = std::make_shared<IoStage>();
  std::shared_ptr<Event> done = std::make_shared<Event>();

  bool failed() {
    std::lock_guard lock(mu);
    return error != nullptr;
  }
  void fail(std::exception_ptr e) {
    std::lock_guard lock(mu);
    if (!error) error = e;
  }
  // One part of the open or of a unit ended.
  void finish_one() {
    if (remaining.fetch_sub(1) != 1) return;
    std::exception_ptr e;
    {
      std::lock_guard lock(mu);
      e = error;
    }
    stage->end(e);
  }
};

// Work split over the copy threads: every participant calls drain(), which takes items off
// `next` until none is left.
struct Sweep {
  std::atomic<std::size_t> next{0};
  std::atomic<std::size_t> finished{0};
  std::size_t total = 0;
  std::mutex mu;
  std::condition_variable cv;
  std::exception_ptr error;

  // Records `e` unless an earlier failure was; returns the first one.
  std::exception_ptr keep(std::exception_ptr e) {
    std::lock_guard lock(mu);
    if (!error) error = std::move(e);
    return error;
  }
  // item(i) for each index not yet taken; an exception it throws is kept. The thread that
  // finishes the last item wakes wait() and calls last(the first failure, or null).
  template <typename Item, typename Last>
  void drain(const Item& item, const Last& last) {
    for (;;) {
      const std::size_t i = next.fetch_add(1);
      if (i >= total) return;
      try {
        item(i);
      } catch (...) {
        keep(std::current_exception());
      }
      if (finished.fetch_add(1) + 1 == total) {
        std::exception_ptr e;
        {
          std::lock_guard lock(mu);  // taken after the count: a waiter between test and wait
          e = error;                 // cannot miss the notification
        }
        cv.notify_all();
        last(e);
      }
    }
  }
  // Until every item is finished (each one taken must be: wait only where the caller drains too,
  // or where helpers were posted).
  void wait() {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return finished.load() == total; });
  }
};

}  // namespace detail

using detail::IoStage;
using detail::PoolGate;
using detail::Protection;
using detail::SaveOp;
using detail::Sweep;
using detail::Writes;

struct Runtime::Impl {
  RuntimeOptions options;
  std::unique_ptr<io::TrackingEngine> engine;  // knows its requests in flight: bounded shutdown
  StagingPool pool;  // after the engine: it unregisters its slabs from it on destruction
  std::shared_ptr<PoolGate> gate = std::make_shared<PoolGate>(&pool);
  PlanCache plan_cache;
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
  // Of those, async_saves queued for staging (not yet admitted): once they are all that is
  // left, nothing in this Runtime will free staging for them, and shut_down refuses them.
  std::size_t waiting_for_staging = 0;
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
  // Per run directory: the checkpoint this Runtime committed there last (an incremental save's
  // default base) and, when it was incremental, its plan and per unit the number of
  // consecutive saves in which it changed (from 2 on, the next save of the same plan writes it
  // whole as soon as it is copied).
  struct LastCommit {
    std::string dir;
    std::shared_ptr<const PlanSkeleton> plan;
    std::vector<std::uint8_t> changed;
    std::shared_ptr<const Manifest> manifest;  // what it wrote (incremental saves only)
    std::string trailer;                       // and the trailer of its manifest.ckpt
  };
  std::map<std::string, LastCommit> last_commits;
  std::vector<std::shared_ptr<detail::SaveShared>> failed_saves;
  std::vector<std::shared_ptr<detail::RegisterShared>> failed_registers;
  // async_drain waiters: called (off the lock) with the report when active drops to 0.
  std::vector<std::function<void(DrainReport)>> idle_waiters;
  RuntimeStats counters;
  std::atomic<std::uint64_t> packed_in_stall{0};  // RuntimeStats::units_packed_in_stall

  // Collective saves and registrations: the communicator (options.communicator, else a
  // single-process one for saves with a sharding), and the thread of their blocking steps, in
  // operation order (runtime/collective_queue.h). Last: destroyed first, after the drain.
  std::shared_ptr<Communicator> solo = std::make_shared<SingleProcessCommunicator>();
  std::shared_ptr<Communicator> communicator() const {
    return options.communicator ? options.communicator : solo;
  }
  // A save with a communicator or a sharding is collective (runtime/collective_commit.h).
  bool is_collective(const SaveOptions& o) const {
    return options.communicator != nullptr || !o.sharding.empty();
  }
  CollectiveQueue collective_steps;

  Impl(RuntimeOptions opts, std::optional<asio::any_io_executor> external);

  static RuntimeOptions normalize(RuntimeOptions o);

  ~Impl();
  void abandon_stuck_io();

  // Restores read through pre-faulted staging chunks when the pool has them free (a fresh mapping
  // costs its page faults on every restore), else through memory of their own.
  boost::json::object restore(const std::string& path, Tree& templ, const RestoreOptions& how,
                              const Sharding* sharding = nullptr);

  void begin_op();

  // An async_save's request for staging under Backpressure::block (runtime/save_pipeline.cc).
  void acquire_counted(const std::shared_ptr<SaveOp>& op, std::size_t n,
                       StagingPool::Grant on_granted,
                       const std::function<void(std::exception_ptr, SaveHandle)>& done);

  void end_op();

  // The failures nobody observed since the last report; forgets every failure it saw.
  DrainReport take_failures_locked();

  // The destructor's part before ~Impl: waits for every operation, logs the failures no drain()
  // reported, and cuts the handles' link to the executor.
  void shut_down();

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

  // Runs fn() on the collective thread in the turn of operation `seq`; the awaiting coroutine
  // resumes on its own executor.
  template <typename F>
  asio::awaitable<void> on_collective(std::uint64_t seq, const F& fn) {
    return detail::async_call<void(std::exception_ptr)>(
        ex, asio::use_awaitable, [this, seq, fn](auto done) mutable {
          collective_steps.post(seq, [fn = std::move(fn), done]() mutable {
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
                  std::function<void(std::exception_ptr)> on_done, bool caller_joins);

  // task(0) ... task(n - 1) on the caller's thread and the copy threads that are free (the
  // caller takes whatever they have not); returns when all are done, rethrowing the first
  // failure. The plan cache's comparison of a large tree (PlanCache::ParallelFor).
  void sweep_in_stall(std::size_t n, const std::function<void(std::size_t)>& task);

  // Posts `work` to the copy threads up to `helpers` times, as many as are free to matter (at most
  // `items`). A post that fails (out of memory) ends the posting: returns how many were posted,
  // and rethrows only when none was and `caller_joins` is false (then nobody would do the work).
  // (Converting a caller's lambda to `work` may throw too, before anything is posted.)
  unsigned post_helpers(unsigned helpers, std::size_t items, const std::function<void()>& work,
                        bool caller_joins);

  // ---- writes ----------------------------------------------------------------------------

  void release_chunk(SaveOp& op, std::size_t i);

  void release_all(SaveOp& op);

  // Starts the io_timeout watchdog of `stage` (on the strand). When the stage has requests in
  // the engine and none completes for io_timeout, it marks the op's IO abandoned, runs
  // on_timeout and ends the stage with Errc::timeout. Time with nothing in flight (units still
  // being checksummed on busy copy threads) does not count.
  void watch(const std::shared_ptr<IoStage>& stage, const std::shared_ptr<SaveOp>& op,
             std::string what, std::function<void()> on_timeout);

  void rearm_watchdog(std::shared_ptr<IoStage> stage, std::shared_ptr<SaveOp> op, std::string what,
                      std::function<void()> on_timeout);

  // Starts the data writes of an admitted save, before its copy (detail::Writes): the data file
  // opens on a copy thread, and units go out as unit_copied() reports them.
  void start_writes(const std::shared_ptr<SaveOp>& op);
  void open_data_file(const std::shared_ptr<SaveOp>& op);
  // Unit i is in its chunk: written now if the data file is open, else once it is.
  void unit_copied(const std::shared_ptr<SaveOp>& op, std::size_t i);
  void issue_unit(const std::shared_ptr<SaveOp>& op, std::size_t i);
  // The unit's second part on a copy thread: its checksum, or for an incremental save its
  // hashing (and, unless written whole, packing and write).
  void post_checksum(const std::shared_ptr<SaveOp>& op, std::size_t i);
  void submit_write(const std::shared_ptr<SaveOp>& op, std::size_t i, std::uint64_t offset,
                    std::uint64_t length, std::uint64_t chunk_offset = 0);
  // An incremental collective save, every unit copied: hashes the leaves on the copy threads,
  // then places and writes what the base lacks (place_shards).
  void hash_shards(const std::shared_ptr<SaveOp>& op);
  void place_shards(const std::shared_ptr<SaveOp>& op);
  // Incremental saves: the base, chosen at prepare (on the caller's thread) from the options and
  // this Runtime's last commit in the run directory; what the last commit teaches is recorded.
  void plan_incremental(SaveOp& op);
  // Process 0 of an incremental collective save: the base every process uses.
  IncrementalChoice collective_base(const SaveOptions& options);
  void note_commit(const SaveOp& op);
  // The copy of a sync save is done: the writes it held start, its checksums go to the copy pool.
  void release_held(const std::shared_ptr<SaveOp>& op);
  void start_files(const std::shared_ptr<SaveOp>& op);
  void write_files(const std::shared_ptr<SaveOp>& op);
  asio::awaitable<void> await_files(const std::shared_ptr<SaveOp>& op);
  // Completes when every unit was written and checksummed (or skipped after a failure) and every
  // chunk is back in the pool, or when the watchdog gives up on the writes in flight.
  asio::awaitable<void> await_writes(const std::shared_ptr<SaveOp>& op);

  asio::awaitable<void> fsync_data(const std::shared_ptr<SaveOp>& op);

  // ---- the pipeline ----------------------------------------------------------------------

  asio::awaitable<void> run_save(std::shared_ptr<SaveOp> op);
  // A collective save this process refused after the check (over its staging budget): it still
  // takes its turn in the commit, reporting `why`, so that every process fails at once with the
  // same error instead of the others waiting for its report until the deadline.
  void report_refusal(const std::shared_ptr<SaveOp>& op, std::exception_ptr why);
  asio::awaitable<void> run_refusal(std::shared_ptr<SaveOp> op, std::exception_ptr why);

  // ---- run directories and retention ------------------------------------------------------

  // This Runtime's writer lease on run_dir (taken on first use; waits up to lock_wait for
  // another process, but never on the Runtime's own thread, where it fails at once).
  std::shared_ptr<RunLease> lease_for(const std::string& run_dir);

  // A save or registration of run_dir ended. A committed save with a policy asks for a pass;
  // so does the last operation to end, so that the policy holds once everything drained (while
  // saves and registrations are in flight, passes must spare them).
  void run_dir_op_ended(const std::string& run_dir, const RetentionPolicy* committed_policy);

  void request_pass_locked(const std::string& run_dir, RunDir& st);

  // Runs on a copy thread: passes over run_dir until none more was asked for.
  void retention_passes(const std::string& run_dir);

  void mark_snapshotted(SaveOp& op);

  // Suffixes of run_dir that retention must not remove: saves in flight and pending
  // registrations (a registration may name a save that has just committed).
  std::set<std::string> protected_suffixes(const std::string& run_dir);

  // Moves a finished save out of the in-flight table and completes its handle.
  void finish_save(const std::shared_ptr<SaveOp>& op, std::exception_ptr failure);

  void fail_save(const std::shared_ptr<SaveOp>& op, std::exception_ptr failure);

  // ---- admission -------------------------------------------------------------------------

  // Checks and plans a save. `refused`: the caller's own reason to refuse it; a collective save
  // still takes its number and reports the refusal in the check, so every process throws it.
  std::shared_ptr<SaveOp> prepare(const std::string& path, const Tree& tree,
                                  const boost::json::object& metadata, const SaveOptions& options,
                                  std::exception_ptr refused = nullptr);

  void mark_skipped(const std::shared_ptr<SaveOp>& op);

  // Called once the op holds its chunks: enters the in-flight table.
  void admitted(const std::shared_ptr<SaveOp>& op, StagingPool::Chunks chunks);

  void note_newest_locked(const std::shared_ptr<detail::SaveShared>& shared);

  void launch(const std::shared_ptr<SaveOp>& op);

  void stall_done(const std::shared_ptr<SaveOp>& op);

  // ---- register ----------------------------------------------------------------------------

  asio::awaitable<void> run_register(std::shared_ptr<detail::RegisterShared> reg,
                                     std::shared_ptr<detail::SaveShared> save,
                                     std::shared_ptr<Event> previous,
                                     std::shared_ptr<Protection> protection,
                                     std::exception_ptr unpublished, bool collective,
                                     std::uint64_t seq);
};

}  // namespace ckpt
