#pragma once
// ckpt::Runtime: asynchronous saves, registration of `latest`, and restores.
//
// save() copies the tree's arrays into pooled staging memory (the caller's only stall) and
// returns a SaveHandle; checksums, the manifest, the O_DIRECT writes, the fsyncs and the
// directory commit run in the background (docs/design.md, "The save pipeline"). The Runtime owns
// an io_context thread (or runs on the executor it is given), a pool of copy/checksum threads,
// the storage engine, the staging pool and the table of operations in flight.
//
// Contracts:
//  - SnapshotMode::sync: save() returns after the copy; the caller may mutate the tree at once.
//  - SnapshotMode::overlapped: save() returns before the copy; the caller must not mutate (or
//    free) the arrays until handle.async_snapshotted() / wait_snapshotted() completes.
//  - Backpressure: staging in use never exceeds the budget. `block` makes save() wait (async_save
//    waits asynchronously); `skip` returns a handle in state skipped.
//  - register_latest() moves `latest` only after the named save committed, in call order per
//    run directory; if that save failed, `latest` stays and the handle fails with its error.
//  - Destroying the Runtime drains it: every save in flight completes first. Handles stay valid
//    after it (runtime/handles.h).
//
// Where completions run (docs/design.md, "Handles and waiting"):
//  - handle.async_wait / async_snapshotted, async_save, async_restore, async_drain: on the
//    handler's associated executor (use_awaitable: the awaiting coroutine's; bind_executor;
//    use_future completes its future from the completing thread). A handler without one (a plain
//    callback, a deferred operation launched with one) runs on the Runtime's own thread (the
//    Runtime(options) io_context thread, or the strand over the executor given to
//    Runtime(executor)), and on asio::system_executor once the Runtime is destroyed.
//  - The Runtime's own thread is that thread, or any thread running the io_context whose executor
//    was given (detected for io_context executors and strands over them; a thread_pool is not
//    detected, and one with a single thread can deadlock). Blocking there would wait for work that
//    needs that thread, so these calls throw Error(invalid_argument) at once instead:
//    save() with Backpressure::block (use async_save, or Backpressure::skip), drain() (use
//    co_await async_drain), handle.wait() and wait_snapshotted() on an operation not done (use
//    async_wait / async_snapshotted). restore() and wait_for() work there but block the thread
//    (wait_for only times out). Destroying the Runtime there cannot wait: it logs critical when
//    operations are in flight, and a helper thread drains and tears it down after the current
//    handler returns (with Runtime(executor), that executor must keep running until then).
#include <boost/asio/any_io_executor.hpp>
#include <boost/json/object.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/engine.h"
#include "runtime/async_call.h"
#include "runtime/communicator.h"
#include "runtime/handles.h"
#include "runtime/retention.h"
#include "runtime/sharding.h"
#include "runtime/tree.h"

namespace ckpt {

enum class SnapshotMode : std::uint8_t { sync, overlapped };
enum class Backpressure : std::uint8_t { block, skip };

struct RuntimeOptions {
  io::EngineKind engine = io::EngineKind::automatic;
  unsigned queue_depth = 32;            // IO requests in flight
  unsigned io_threads = 4;              // thread-pool engine workers
  unsigned copy_threads = 0;            // copy/checksum threads; 0: one per hardware thread
  // Threads an overlapped save's copy runs on while the training loop computes beside it
  // (docs/design.md, "Pacing"); 0: all copy_threads. A sync save's copy always uses all of them.
  unsigned overlapped_copy_threads = 0;
  // Nice value of the copy threads (0: the caller's priority; up to 19). A positive value lets
  // the training loop's thread preempt them when they compete for a core; the copy still uses
  // every idle core, and a sync save's caller joins its copy at its own priority. 10 by default:
  // measured with bench/overhead.py (docs/design.md, "Pacing").
  int copy_nice = 10;
  std::uint64_t staging_budget = 0;     // bytes; 0: a quarter of physical memory
  std::uint64_t unit_bytes = 4u << 20;  // extent grid, staging chunk and write request size
  Backpressure backpressure = Backpressure::block;
  bool allow_direct = true;
  // A sync save writes each unit as soon as it is copied, so that its time to durable approaches
  // max(copy, write) instead of copy + write. false: its writes start once the caller's copy
  // ends, and the stall is the copy alone. Where the writes compete with the copy (a VM whose
  // disk the host serves from the guest's memory, as Firecracker's virtio-blk does), that trades
  // time to durable for stall: at 1 GiB on a 2-core VM the median stall went from 1.36 to 1.07
  // times a memcpy, and raw write / durable from 0.94 to 0.88 (docs/design.md, section 5).
  // Overlapped saves always write as they copy.
  bool write_during_copy = true;
  // IO deadline of a save (0: none). A save fails with Errc::timeout when, while it has IO
  // outstanding (data writes, the data fsync), none of it completes for this long: a slow device
  // that keeps completing requests is not a timeout, a stuck one is. The stuck requests stay with
  // the engine: the staging chunks they write from return to the pool, and the data file is
  // closed, only when the engine completes them (staging_in_use stays above 0 until then), so
  // the kernel never reads memory a later save reuses. Small-file writes, renames and directory
  // fsyncs are plain system calls and have no deadline. With an io_timeout, destroying the
  // Runtime is bounded too: it waits for its saves (each ends at the latest io_timeout after its
  // IO stopped progressing), then at most min(io_timeout, 100 ms) for the engine's requests, and
  // then abandons what is still stuck, logging each request: the engine and the staging memory
  // stay allocated until the process exits (io/tracking_engine.h). Without one it waits for the
  // engine's requests however long they take.
  std::chrono::milliseconds io_timeout{0};
  // How long to wait for a run directory that another process holds: its writer lease (another
  // writer; save() and register_latest() then fail with Errc::busy naming its pid) or its
  // mutation lock (`ckpt gc` in the middle of a pass). See runtime/run_lock.h.
  std::chrono::milliseconds lock_wait{10000};
  // Incremental saves by default (SaveOptions::incremental overrides per save): extents get a
  // content hash, and bytes the base checkpoint already holds are shared with it by hard links
  // instead of written (runtime/incremental.h, docs/design.md section 13).
  bool incremental = false;
  // Wraps the storage engine the Runtime builds (tests inject faults with io::FaultEngine).
  std::function<std::unique_ptr<io::Engine>(std::unique_ptr<io::Engine>)> wrap_engine;
  // Multi-process checkpoints (docs/design.md, section 14). With a communicator, every save and
  // register_latest of this Runtime is collective: every process calls them for the same paths,
  // in the same order (the n-th collective call of each process belongs together); each process
  // writes its own shards, process 0 commits, and every handle completes with the same result.
  // Such saves refuse Backpressure::skip (processes could decide differently). Null: one process.
  std::shared_ptr<Communicator> communicator;
  // The deadline of each collective step: a process that does not report within it (its IO hangs
  // past io_timeout, it is stopped, it died) fails the save on the others, naming it.
  std::chrono::milliseconds collective_timeout{60000};
};

// How Runtime::restore reads: `partial` as restore_checkpoint's; `transactional` as
// ReadOptions::transactional (false where the template is thrown away when the restore fails).
struct RestoreOptions {
  bool partial = false;
  bool transactional = true;
};

struct SaveOptions {
  SnapshotMode mode = SnapshotMode::sync;
  std::optional<Backpressure> backpressure;        // default: RuntimeOptions::backpressure
  std::map<std::string, std::string> extra_files;  // more JSON files (job.json, config.json)
  // The run directory the checkpoint belongs to: the checkpoint directory must lie below it.
  // When set, the save takes the run directory's writer lease (runtime/run_lock.h) and publishes
  // its suffix as protected until it ends, so `ckpt gc` in another process never removes it.
  std::string run_dir;
  // Applied to run_dir after the commit, and once more when the run directory's saves and
  // registrations have drained, so the policy holds at the end.
  RetentionPolicy retention;
  // Incremental save (default: RuntimeOptions::incremental). Each extent is content-hashed on
  // the copy threads; an extent the base holds is not written but shared with it (a hard link
  // of the base's data file into this checkpoint), so deleting either never breaks the other.
  // The base: incremental_base when set (a committed checkpoint directory, on the same file
  // system to share anything), else the checkpoint of run_dir this Runtime committed last,
  // else the one run_dir's `latest` names; none: everything is written (with hashes, so that
  // the next save can share it). A base that is gone or unreadable is logged and ignored.
  std::optional<bool> incremental;
  std::string incremental_base;
  // The leaves of the tree that are shards (boxes of global arrays, runtime/sharding.h); the
  // others are replicated: every process holds the whole array, and one of them writes it. A save
  // with a sharding, or any save of a Runtime with a communicator, is collective. In a collective
  // save only process 0's run_dir (lease, protection, retention), metadata and extra files count,
  // and its incremental / incremental_base: every process then dedupes its own shards against the
  // base process 0 chose (runtime/shard_incremental.h).
  Sharding sharding;
};

struct DrainReport {
  std::size_t failed = 0;           // failed saves/registrations nobody waited for
  std::vector<std::string> errors;  // their messages
  bool ok() const noexcept { return failed == 0; }
};

struct RuntimeStats {
  std::uint64_t saves_started = 0;
  std::uint64_t saves_committed = 0;
  std::uint64_t saves_failed = 0;
  std::uint64_t saves_skipped = 0;
  std::uint64_t plans_built = 0;   // saves that planned their layout
  std::uint64_t plans_reused = 0;  // saves that reused the previous save's plan (same structure)
  // Of those, saves whose structure check ran in parts side by side (16,384 leaves or more).
  std::uint64_t plans_checked_in_parts = 0;
  // Units of incremental sync saves hashed straight from the leaves in the caller's stall, with
  // only what their base lacked copied (docs/design.md, section 13).
  std::uint64_t units_packed_in_stall = 0;
  // Restores that returned, by how their blocks went into the template (ReadHow): staged,
  // swapped in or copied in after the last read (transactional) or copied in as each verified
  // (not); beyond the staging, read twice (transactional) or once.
  std::uint64_t restores_swapped = 0;
  std::uint64_t restores_copied = 0;
  std::uint64_t restores_placed = 0;
  std::uint64_t restores_two_passes = 0;
  std::uint64_t restores_one_pass = 0;
  std::uint64_t staging_in_use = 0;  // bytes
  std::uint64_t staging_mapped = 0;  // bytes
  std::uint64_t staging_budget = 0;  // bytes
  std::string engine;
};

class Runtime {
 public:
  explicit Runtime(RuntimeOptions options = {});
  // Runs the Runtime's coroutines on `executor` (a strand is made over it) instead of a thread
  // of its own; that executor must keep running while saves are in flight.
  Runtime(boost::asio::any_io_executor executor, RuntimeOptions options = {});
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Starts a save of `tree` and `metadata` as the checkpoint directory `path`.
  SaveHandle save(const std::string& path, const Tree& tree, const boost::json::object& metadata,
                  const SaveOptions& options = {});

  // save() for coroutines: admission waits asynchronously. Completes with the handle once save()
  // would have returned. Signature void(std::exception_ptr, SaveHandle). While it waits for
  // staging it counts as in flight (drain() and the destructor wait for it); a Runtime destroyed
  // while only IO the watchdog gave up on holds that staging completes it with
  // Error(Errc::cancelled).
  // g++ 12: inside a co_await expression, pass SaveOptions() or a named object, never `{}`
  // (a braced temporary there is destroyed twice), and build metadata before the co_await.
  template <typename Token>
  auto async_save(std::string path, Tree tree, boost::json::object metadata, SaveOptions options,
                  Token&& token) {
    return detail::async_call<void(std::exception_ptr, SaveHandle)>(
        link(), std::forward<Token>(token),
        [this, path = std::move(path), tree = std::move(tree), metadata = std::move(metadata),
         options = std::move(options)](auto done) mutable {
          start_async_save(std::move(path), std::move(tree), std::move(metadata),
                           std::move(options), std::move(done));
        });
  }

  template <typename Token>
  auto async_save(std::string path, Tree tree, boost::json::object metadata, Token&& token) {
    return async_save(std::move(path), std::move(tree), std::move(metadata), SaveOptions(),
                      std::forward<Token>(token));
  }

  // Points run_dir/latest at `suffix` once the save of run_dir/suffix is committed. Throws
  // Error(invalid_argument | path_escape) at once for a bad suffix, Error(busy) when another
  // process holds the run directory's writer lease. Takes that lease (see claim_run_dir).
  RegisterHandle register_latest(const std::string& run_dir, const std::string& suffix);

  // Takes the writer lease of run_dir now (runtime/run_lock.h): from here until this Runtime is
  // destroyed, no other process can write into run_dir, and `ckpt gc` spares what this Runtime
  // protects. Waits up to RuntimeOptions::lock_wait, then throws Error(busy) naming the holder's
  // pid. Saves with SaveOptions::run_dir and register_latest take it implicitly.
  void claim_run_dir(const std::string& run_dir);

  // Reads the checkpoint at `path` into `templ` (see restore_checkpoint); returns the metadata.
  // RestoreOptions::transactional false: a failed restore may leave `templ` partly written
  // (ReadOptions::transactional), for a template that is thrown away then.
  boost::json::object restore(const std::string& path, Tree& templ, bool partial = false);
  boost::json::object restore(const std::string& path, Tree& templ, const RestoreOptions& options);
  // The same into a template whose leaves are boxes of the global arrays (`sharding`), from a
  // checkpoint saved in any decomposition by any number of processes (runtime/sharded_read.h).
  // Not collective: each process reads the bytes its boxes need.
  boost::json::object restore(const std::string& path, Tree& templ, const Sharding& sharding,
                              bool partial = false);
  // Signature void(std::exception_ptr, boost::json::object). The template's arrays must stay
  // alive until completion.
  template <typename Token>
  auto async_restore(std::string path, Tree templ, bool partial, Token&& token) {
    return async_restore(std::move(path), std::move(templ), RestoreOptions{partial, true},
                         std::forward<Token>(token));
  }
  template <typename Token>
  auto async_restore(std::string path, Tree templ, RestoreOptions how, Token&& token) {
    return detail::async_call<void(std::exception_ptr, boost::json::object)>(
        link(), std::forward<Token>(token),
        [this, path = std::move(path), templ = std::move(templ), how](auto done) mutable {
          start_async_restore(std::move(path), std::move(templ), how, std::move(done));
        });
  }

  // Maps and pre-faults staging memory for `bytes` of checkpoint now (within the budget), so that
  // the first save stalls for a warm memcpy like the later ones. Call it at start-up with the size
  // of the state.
  void reserve_staging(std::uint64_t bytes);

  // Waits for every operation in flight; reports the failures nobody observed (handles.h) since
  // the last drain. Throws Error(invalid_argument) on the Runtime's own thread: use async_drain.
  DrainReport drain();
  // drain() for coroutines and callbacks: completes once no operation is in flight, with the same
  // report. Signature void(DrainReport).
  template <typename Token>
  auto async_drain(Token&& token) {
    return detail::async_call<void(DrainReport)>(
        link(), std::forward<Token>(token),
        [this](auto done) { start_async_drain(std::move(done)); });
  }

  RuntimeStats stats() const;
  io::Engine& engine();
  // The executor the Runtime's coroutines run on. A handler bound to it must not outlive the
  // Runtime (with Runtime(options) it belongs to the Runtime's own io_context).
  boost::asio::any_io_executor executor() const;
  const RuntimeOptions& options() const;

  struct Impl;

 private:
  void start_async_save(std::string path, Tree tree, boost::json::object metadata,
                        SaveOptions options,
                        std::function<void(std::exception_ptr, SaveHandle)> done);
  void start_async_restore(std::string path, Tree templ, RestoreOptions how,
                           std::function<void(std::exception_ptr, boost::json::object)> done);
  void start_async_drain(std::function<void(DrainReport)> done);
  std::shared_ptr<detail::RuntimeLink> link() const;

  std::unique_ptr<Impl> impl_;
};

}  // namespace ckpt
