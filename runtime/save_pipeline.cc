// The asynchronous save pipeline. Per save:
//
//   caller:      plan layout ─► admit (staging chunks, block/skip) ─► start the writes
//                ─► [sync: parallel copy] ─► return SaveHandle
//   copy pool:   make <dir>.tmp-<tag>/, open the data file (O_DIRECT), sized   } at once,
//                [overlapped: parallel copy ─► snapshotted]                      } overlapped
//                per unit, as soon as it is copied and the file is open: engine write (a sync
//                save without write_during_copy: once the copy ends), and CRC32C on a copy
//                thread; its chunk returns to the pool when both are done;
//                the last unit checksummed ─► metadata.json, extra files, manifest.ckpt, fsynced
//                (write_files, during the data writes; not for a collective save)
//   background:  every unit written ─► fsync data ─► [collective: the files, collective_commit]
//                ─► fsync dir ─► rename to <dir>, fsync parent (commit) ─► handle completes
//                ─► retention
//
// An incremental save (runtime/incremental.h) links its base's files into the temporary
// directory when it opens the data file; a unit is then hashed, packed and checksummed on a copy
// thread (after the caller's copy in sync mode, like the checksums) and only what the base lacks
// is written, at the next free offset; units that keep changing are written whole at once and
// hashed afterwards. The data file is truncated to what was used before its fsync.
//
// So time to durable approaches max(copy, write) rather than copy + write. Threads: the
// coroutines run on one strand (the Runtime's io_context thread, or a strand over the executor it
// was given) and only orchestrate; copies, checksums and blocking file-system calls run on the
// copy pool; IO completions arrive on the engine's thread and touch only atomic counters, the
// Writes state and the staging pool. Unit i of a save always uses staging chunk i.
#include "io/durable.h"
#include "runtime/crc32c.h"
#include "runtime/runtime_impl.h"

namespace ckpt {

namespace {

// A sync save's unit that may be shared, once the base is attached: hashed from the leaves in the
// stall, and copied only where the base lacks it (runtime/incremental.h, pack_from_sources). Never
// in overlapped mode, where the leaves change during the copy. Units copied before the base is
// attached (it is opened on a copy thread beside the copy) are copied whole, as before. A unit
// that changed costs its hashing on top of its copy, so once more than half of the units hashed
// so far (and 4) changed, the rest are copied whole and hashed after the stall: a save where
// everything changes unforeseen pays for a few units' hashing, not the state's.
bool pack_in_stall(const SaveOp& op, std::size_t i) {
  return op.inc && op.options.mode == SnapshotMode::sync && op.speculate[i] == 0 &&
         op.base_ready && op.base_ready->done() && op.inc->has_base() &&
         2 * op.stall_changed.load(std::memory_order_relaxed) <=
             op.stall_hashed.load(std::memory_order_relaxed) + 8;
}

}  // namespace

void Runtime::Impl::start_copy(const std::shared_ptr<SaveOp>& op,
                               std::function<void(std::exception_ptr)> on_done, bool caller_joins) {
  auto sweep = std::make_shared<Sweep>();
  sweep->total = op->plan->units.size();
  if (sweep->total == 0) {
    if (on_done) on_done(nullptr);
    return;
  }
  auto work = [this, op, sweep, on_done = std::move(on_done)]() {
    // A large save's copy outgrows the cache before its checksums and writes read it back: it
    // stores around the cache.
    const Stores stores = stores_for(op->plan->manifest.total_bytes);
    const auto copy = [&](std::size_t i) {
      try {
        if (pack_in_stall(*op, i)) {
          const bool changed = op->inc->pack_from_sources(i, op->sources, op->chunks[i]);
          op->packed[i] = 1;
          op->stall_hashed.fetch_add(1, std::memory_order_relaxed);
          if (changed) op->stall_changed.fetch_add(1, std::memory_order_relaxed);
          packed_in_stall.fetch_add(1, std::memory_order_relaxed);
        } else {
          copy_unit(op->plan->units[i], op->sources, op->chunks[i], stores);
        }
      } catch (...) {
        op->writes->fail(sweep->keep(std::current_exception()));  // skipped, not written
      }
      // Issuing the unit fails only when a post runs out of memory, and then its parts could
      // never be counted down: the save would hang. Fatal, as it was before drain() caught
      // what its items throw.
      [&]() noexcept { unit_copied(op, i); }();
    };
    sweep->drain(copy, [&](std::exception_ptr e) {
      if (on_done) on_done(e);
    });
  };
  const unsigned helpers = caller_joins ? options.copy_threads - 1 : options.overlapped_copy_threads;
  post_helpers(helpers, sweep->total, work, caller_joins);
  if (caller_joins) {
    work();
    sweep->wait();
  }
}

void Runtime::Impl::sweep_in_stall(std::size_t n, const std::function<void(std::size_t)>& task) {
  auto sweep = std::make_shared<Sweep>();
  sweep->total = n;
  // A helper that starts after every task was taken returns without touching `task`, which
  // lives on the caller's stack: the caller returns only once every task taken has finished.
  auto work = [sweep, task = &task]() {
    sweep->drain([task](std::size_t i) { (*task)(i); }, [](const std::exception_ptr&) {});
  };
  post_helpers(options.copy_threads > 0 ? options.copy_threads - 1 : 0, n, work, true);
  work();
  sweep->wait();
  if (sweep->error) std::rethrow_exception(sweep->error);
}

unsigned Runtime::Impl::post_helpers(unsigned helpers, std::size_t items,
                                     const std::function<void()>& work, bool caller_joins) {
  helpers = static_cast<unsigned>(std::min<std::size_t>(helpers, items));
  unsigned posted = 0;
  try {
    for (; posted < helpers; ++posted) asio::post(workers, work);
  } catch (...) {
    if (posted == 0 && !caller_joins) throw;
    log().warn("could post only {} of {} copy helpers: {}", posted, helpers,
               describe_error(std::current_exception()));
  }
  return posted;
}

void Runtime::Impl::release_chunk(SaveOp& op, std::size_t i) {
  if (!op.released[i].exchange(true)) pool.release(op.chunks[i]);
}

void Runtime::Impl::release_all(SaveOp& op) {
  for (std::size_t i = 0; i < op.chunks.size(); ++i) release_chunk(op, i);
}

void Runtime::Impl::watch(const std::shared_ptr<IoStage>& stage, const std::shared_ptr<SaveOp>& op,
                          std::string what, std::function<void()> on_timeout) {
  if (options.io_timeout.count() <= 0) return;
  {
    std::lock_guard lock(stage->mu);
    if (!stage->done) return;  // ended already (the writes may finish before it is watched)
    stage->ex = ex;
  }
  stage->timer = std::make_shared<asio::steady_timer>(ex);
  rearm_watchdog(stage, op, std::move(what), std::move(on_timeout));
}

void Runtime::Impl::rearm_watchdog(std::shared_ptr<IoStage> stage, std::shared_ptr<SaveOp> op,
                                   std::string what, std::function<void()> on_timeout) {
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

void Runtime::Impl::start_writes(const std::shared_ptr<SaveOp>& op) {
  auto w = std::make_shared<Writes>();
  std::size_t n = op->plan->units.size();
  w->parts = std::make_unique<std::atomic<int>[]>(n);
  for (std::size_t i = 0; i < n; ++i) w->parts[i] = 2;  // the write and the checksum
  w->remaining = n + 1;                                 // and the open
  w->hold_checksums = op->options.mode == SnapshotMode::sync;
  if (!op->sharded) {
    w->checksums_left = n;
    op->files_done = std::make_shared<Event>();
  }
  w->stage->done = [done = w->done](std::exception_ptr e) { done->complete(e); };
  op->writes = w;
  asio::post(workers, [this, op] { open_data_file(op); });
}

void Runtime::Impl::open_data_file(const std::shared_ptr<SaveOp>& op) {
  Writes& w = *op->writes;
  try {
    op->protection.publish();
    // A collective save's processes share one temporary directory, each writing data-<rank>.bin.
    op->tmp_dir = op->sharded ? make_tmp_dir(op->final_dir, op->sharded->tmp_tag)
                              : make_tmp_dir(op->final_dir);
    const auto file = static_cast<std::uint32_t>(op->sharded ? op->sharded->comm->rank() : 0);
    op->data = io::open_direct(op->tmp_dir + "/" + data_file_name(file), io::OpenMode::write_new,
                               options.allow_direct);
    // Sized before the writes: ext4 serializes direct writes that extend a file. (An
    // incremental save uses less of it and truncates it before its fsync.)
    op->data.truncate(op->plan->manifest.data_files[0].size);
    if (op->inc) {
      if (op->inc_base_from_latest) {
        try {
          if (auto suffix = read_latest(op->options.run_dir))
            op->inc_base = op->options.run_dir + "/" + *suffix;
        } catch (const Error& e) {
          log().warn("incremental save of {}: no base ({})", op->final_dir, e.what());
        }
      }
      if (!op->inc_base.empty())
        op->inc->attach_base(op->inc_base, op->tmp_dir, op->options.run_dir);
    }
    if (op->sinc && !op->inc_base.empty()) op->sinc->attach_base(op->inc_base, op->sharded->base_origin);
  } catch (...) {
    w.fail(std::current_exception());
  }
  if (op->base_ready) op->base_ready->complete();  // attached or not: the copy need not wait
  std::vector<std::size_t> pending;
  {
    std::lock_guard lock(w.mu);
    w.file_ready = true;
    pending.swap(w.pending);
  }
  for (std::size_t i : pending) issue_unit(op, i);
  if (op->files_done && op->plan->units.empty() && !w.failed()) {
    start_files(op);  // no checksum to wait for (a tree without bytes)
  }
  w.finish_one();
}

void Runtime::Impl::unit_copied(const std::shared_ptr<SaveOp>& op, std::size_t i) {
  {
    std::lock_guard lock(op->writes->mu);
    if (!op->writes->file_ready) {
      op->writes->pending.push_back(i);
      return;
    }
  }
  issue_unit(op, i);
}

namespace {

// One of unit i's two parts (its write, its checksum) is done; the second returns its chunk.
// Completions may come after a timed-out save ended and the Runtime is gone: they reach the pool
// only through the gate, and the op and its Writes through their own references.
void part_done(const std::shared_ptr<SaveOp>& op, const std::shared_ptr<PoolGate>& gate,
               std::size_t i) {
  if (op->writes->parts[i].fetch_sub(1) != 1) return;
  gate->release(*op, i);
  op->writes->finish_one();
}

}  // namespace

void Runtime::Impl::post_checksum(const std::shared_ptr<SaveOp>& op, std::size_t i) {
  asio::post(workers, [this, op, i, gate = gate] {
    if (!op->inc) {
      checksum_unit(op->plan->units[i], op->chunks[i], op->block_crc);
    } else if (op->speculate[i]) {
      op->inc->hash_whole(i, op->chunks[i]);  // written already
    } else if (op->writes->failed()) {
      part_done(op, gate, i);  // its write is skipped
    } else {
      // Hashed, packed and checksummed here (or hashed and packed in the caller's stall already);
      // written only when something is left.
      IncrementalSave::Write w = op->packed[i] != 0 ? op->inc->place_packed(i, op->chunks[i])
                                                    : op->inc->process_unit(i, op->chunks[i]);
      if (w.length == 0) {
        part_done(op, gate, i);
      } else {
        submit_write(op, i, w.offset, w.length);
      }
    }
    if (op->files_done && op->writes->checksums_left.fetch_sub(1) == 1 &&
        !op->writes->failed()) {
      start_files(op);  // before this unit's last part is done, so before the writes can end
    }
    part_done(op, gate, i);
  });
}

// Called once the manifest is complete (its data need not be written yet), before the writes can
// end: run_save, which waits for the writes, then knows whether the files are being written.
void Runtime::Impl::start_files(const std::shared_ptr<SaveOp>& op) {
  op->files_started = true;
  asio::post(workers, [this, op] { write_files(op); });
}

void Runtime::Impl::write_files(const std::shared_ptr<SaveOp>& op) {
  std::exception_ptr failure;
  try {
    if (op->inc) {
      // Every unit is placed: the links no extent uses go, and the manifest is known.
      op->inc->drop_unused_links(op->tmp_dir);
      Manifest m = op->inc->build_manifest(op->plan->manifest);
      m.created_unix_ns = op->created_unix_ns;
      write_checkpoint_files(op->tmp_dir, m, op->metadata, op->options.extra_files);
      // Kept for the next save, which then need not decode it from disk.
      op->inc_trailer = manifest_trailer(op->tmp_dir);
      op->inc_committed = std::make_shared<const Manifest>(std::move(m));
    } else {
      ManifestParts parts;
      parts.created_unix_ns = op->created_unix_ns;
      parts.block_crc = &op->block_crc;
      write_checkpoint_files(op->tmp_dir, op->plan->manifest, parts, op->plan->encoded_tree(),
                             op->metadata, op->options.extra_files);
    }
  } catch (...) {
    failure = std::current_exception();
  }
  op->files_done->complete(failure);
}

void Runtime::Impl::release_held(const std::shared_ptr<SaveOp>& op) {
  std::vector<std::size_t> held;
  std::vector<std::pair<std::size_t, IncrementalSave::Write>> held_writes;
  {
    std::lock_guard lock(op->writes->mu);
    op->writes->hold_checksums = false;
    held.swap(op->writes->held);
    held_writes.swap(op->writes->held_writes);
  }
  // A unit whose write or checksum is lost would never count down, and the save would hang:
  // fatal instead, as unit_copied is.
  [&]() noexcept {
    for (const auto& [i, at] : held_writes) submit_write(op, i, at.offset, at.length);
    for (std::size_t i : held) post_checksum(op, i);
  }();
}

void Runtime::Impl::issue_unit(const std::shared_ptr<SaveOp>& op, std::size_t i) {
  if (op->sinc) {
    // Nothing is written before every leaf is hashed: a leaf may span units.
    if (op->units_copied.fetch_add(1) + 1 == op->plan->units.size())
      asio::post(workers, [this, op] { hash_shards(op); });
    return;
  }
  if (op->writes->failed()) {
    part_done(op, gate, i);
    part_done(op, gate, i);
    return;
  }
  const Unit& u = op->plan->units[i];
  // Written whole now (a full save's unit, or an incremental one expected to have changed), or
  // by its processing task (an incremental unit that may be shared).
  const bool whole = !op->inc || op->speculate[i];
  IncrementalSave::Write at{u.offset, u.length};
  if (op->inc && whole) at = op->inc->reserve_whole(i);  // before its hashing may start
  // The checksum on a copy thread (the write needs none to start), held back while a sync
  // save's caller is still copying; the write too without write_during_copy.
  bool hold;
  bool hold_write;
  {
    std::lock_guard lock(op->writes->mu);
    hold = op->writes->hold_checksums;
    if (hold) op->writes->held.push_back(i);
    hold_write = whole && hold && !options.write_during_copy;
    if (hold_write) op->writes->held_writes.emplace_back(i, at);
  }
  if (!hold) post_checksum(op, i);
  if (whole && !hold_write) submit_write(op, i, at.offset, at.length);
}

void Runtime::Impl::submit_write(const std::shared_ptr<SaveOp>& op, std::size_t i,
                                 std::uint64_t offset, std::uint64_t length,
                                 std::uint64_t chunk_offset) {
  io::Request r{io::Request::Op::write, op->data.fd(), op->chunks[i] + chunk_offset, length, offset};
  op->writes->stage->submitted();
  engine->submit(r, [op, w = op->writes, gate = gate, i, len = length,
                     off = offset](std::int64_t res) {
    w->stage->completed();
    if (res < 0) {
      w->fail(std::make_exception_ptr(sys_error("write", op->data.path(), static_cast<int>(-res))));
    } else if (static_cast<std::uint64_t>(res) != len) {
      w->fail(std::make_exception_ptr(
          Error(Errc::io, "short write at offset " + std::to_string(off), op->data.path())));
    } else if (w->writes_done.fetch_add(1) == 0) {
      CKPT_CRASH_POINT("mid_write");
    }
    part_done(op, gate, i);
  });
}

void Runtime::Impl::hash_shards(const std::shared_ptr<SaveOp>& op) {
  auto sweep = std::make_shared<Sweep>();
  sweep->total = op->writes->failed() ? 0 : op->sinc->leaf_count();
  if (sweep->total == 0) return place_shards(op);
  auto work = [this, op, sweep] {
    const auto hash = [&](std::size_t l) {
      try {
        op->sinc->hash_leaf(l, op->chunks);
      } catch (...) {
        op->writes->fail(std::current_exception());
      }
    };
    sweep->drain(hash, [&](const std::exception_ptr&) { place_shards(op); });
  };
  post_helpers(options.copy_threads > 0 ? options.copy_threads - 1 : 0, sweep->total, work, true);
  work();
}

void Runtime::Impl::place_shards(const std::shared_ptr<SaveOp>& op) {
  const std::size_t n = op->plan->units.size();
  auto writes = std::make_shared<std::vector<ShardIncremental::Write>>();
  if (!op->writes->failed()) {
    try {
      *writes = op->sinc->place(op->tmp_dir);
    } catch (...) {
      op->writes->fail(std::current_exception());
    }
  }
  if (op->writes->failed()) {
    for (std::size_t i = 0; i < n; ++i) {
      part_done(op, gate, i);
      part_done(op, gate, i);
    }
    return;
  }
  // Per unit: its writes, and one more part for their checksums.
  std::vector<std::vector<std::size_t>> per_unit(n);
  for (std::size_t k = 0; k < writes->size(); ++k) per_unit[(*writes)[k].unit].push_back(k);
  for (std::size_t i = 0; i < n; ++i) op->writes->parts[i] = static_cast<int>(per_unit[i].size()) + 1;
  for (std::size_t i = 0; i < n; ++i) {
    if (per_unit[i].empty()) {
      part_done(op, gate, i);
      continue;
    }
    for (std::size_t k : per_unit[i]) {
      const auto& w = (*writes)[k];
      submit_write(op, i, w.file_offset, w.length, w.unit_offset);
    }
    asio::post(workers, [op, i, writes, ks = std::move(per_unit[i]), gate = gate] {
      for (std::size_t k : ks) {
        const auto& w = (*writes)[k];
        op->sinc->set_crc(k, crc32c(op->chunks[i] + w.unit_offset, w.length));
      }
      part_done(op, gate, i);
    });
  }
}

asio::awaitable<void> Runtime::Impl::await_writes(const std::shared_ptr<SaveOp>& op) {
  std::shared_ptr<Writes> w = op->writes;
  watch(w->stage, op, "data write", [w, op] {
    // Units not yet issued are skipped.
    w->fail(std::make_exception_ptr(Error(Errc::timeout, "data write timed out", op->data.path())));
  });
  auto [e] = co_await async_wait_event(w->done, ex, asio::as_tuple(asio::use_awaitable));
  if (e) std::rethrow_exception(e);
}

asio::awaitable<void> Runtime::Impl::await_files(const std::shared_ptr<SaveOp>& op) {
  auto [e] = co_await async_wait_event(op->files_done, ex, asio::as_tuple(asio::use_awaitable));
  if (e) std::rethrow_exception(e);
}

asio::awaitable<void> Runtime::Impl::fsync_data(const std::shared_ptr<SaveOp>& op) {
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

asio::awaitable<void> Runtime::Impl::run_save(std::shared_ptr<SaveOp> op) {
  std::exception_ptr failure;
  const auto copy_in_background = [this, op](auto done) { start_copy(op, done, false); };
  const auto trim = [op] {
    op->data.truncate(op->sinc ? op->sinc->own_size() : op->inc->own_size());
  };
  const auto commit = [op] {
    op->data.close();
    // Its files were written during the data writes (write_files).
    commit_checkpoint(op->tmp_dir, op->final_dir);
  };
  const auto clean_up = [op] {
    // Requests the watchdog gave up on may still use the descriptor: it closes with the op.
    if (!op->io_abandoned) op->data = io::File();
    // A collective save's directory is shared: collective_commit has dealt with it.
    if (!op->sharded) abandon_tmp_dir(op->tmp_dir);
  };
  // Every process reports, process 0 commits, everyone gets the outcome (collective_commit.h).
  auto agreed = std::make_shared<std::exception_ptr>();
  const auto collective = [op, agreed] {
    if (!*agreed) {
      try {
        op->data.close();
      } catch (...) {
        *agreed = std::current_exception();
      }
    }
    ShardResult r;
    r.failure = *agreed;
    r.local = &op->plan->manifest;
    r.block_crc = &op->block_crc;
    Manifest placed;  // an incremental save's: its extents, its own file's blocks and links
    if (op->sinc && !r.failure) {
      placed = op->sinc->local_result();
      r.local = &placed;
      r.block_crc = nullptr;
      r.links = &op->sinc->links();
    }
    // Process 0 removes the shared directory on a failure, even one before it made it itself.
    r.tmp_dir = op->tmp_dir.empty() && op->sharded->comm->rank() == 0
                    ? shared_tmp_dir(*op->sharded, op->final_dir)
                    : op->tmp_dir;
    r.final_dir = op->final_dir;
    r.metadata = &op->metadata;
    r.extra_files = &op->options.extra_files;
    r.created_unix_ns = op->created_unix_ns;
    *agreed = collective_commit(*op->sharded, r);
  };
  try {
    if (op->options.mode == SnapshotMode::overlapped) {
      co_await detail::async_call<void(std::exception_ptr)>(ex, asio::use_awaitable,
                                                            copy_in_background);
      mark_snapshotted(*op);
    }
    co_await await_writes(op);
    if (op->inc || op->sinc) co_await on_workers(trim);
    co_await fsync_data(op);
    CKPT_FAULT_POINT("after_data_fsync", op->data.path());
    if (op->files_done) co_await await_files(op);
    if (op->previous) {
      const std::shared_ptr<Event> previous_done(op->previous, &op->previous->done);
      co_await async_wait_event(previous_done, ex, asio::as_tuple(asio::use_awaitable));
      op->previous.reset();
    }
    if (!op->sharded) co_await on_workers(commit);
  } catch (...) {
    failure = std::current_exception();
  }
  if (failure && !op->io_abandoned && !op->writes->done->done()) {
    // A failed copy or open: the units still in flight hold their chunks (and the file).
    co_await async_wait_event(op->writes->done, ex, asio::as_tuple(asio::use_awaitable));
  }
  if (failure && op->files_started && !op->io_abandoned) {
    // Its files are being written into the temporary directory that the clean-up removes.
    co_await async_wait_event(op->files_done, ex, asio::as_tuple(asio::use_awaitable));
  }
  if (!op->io_abandoned) release_all(*op);  // else the engine's completions return them
  if (op->sharded) {
    // Also after a local failure: the others must hear of it.
    *agreed = failure;
    co_await on_collective(op->sharded->seq, collective);
    failure = *agreed;
    // Its last use: an op the engine still holds (abandoned IO) must not keep MPI alive.
    op->sharded->comm.reset();
  }
  if (failure) {
    if (!op->tmp_dir.empty()) co_await on_workers(clean_up);
    fail_save(op, failure);
    co_return;
  }
  {
    std::lock_guard lock(op->shared->mu);
    op->shared->timings.durable = Clock::now() - op->start;
    if (op->inc) {
      op->shared->timings.stored_bytes = op->inc->stored_bytes();
      op->shared->timings.written_bytes = op->inc->own_size();
    } else if (op->sinc) {
      op->shared->timings.stored_bytes = op->sinc->stored_bytes();
      op->shared->timings.written_bytes = op->sinc->own_size();
    }
  }
  note_commit(*op);
  op->shared->state = SaveState::committed;
  finish_save(op, nullptr);
  end_op();
}

void Runtime::Impl::mark_snapshotted(SaveOp& op) {
  {
    std::lock_guard lock(op.shared->mu);
    op.shared->timings.snapshot = Clock::now() - op.start;
  }
  op.shared->state = SaveState::writing;
  op.shared->snapshotted.complete();
  CKPT_CRASH_POINT("after_snapshot");
}

void Runtime::Impl::finish_save(const std::shared_ptr<SaveOp>& op, std::exception_ptr failure) {
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

void Runtime::Impl::fail_save(const std::shared_ptr<SaveOp>& op, std::exception_ptr failure) {
  op->shared->state = SaveState::failed;
  log().error("save of {} failed: {}", op->shared->path, describe_error(failure));
  finish_save(op, failure);
  end_op();
}

std::shared_ptr<SaveOp> Runtime::Impl::prepare(const std::string& path, const Tree& tree,
                                               const boost::json::object& metadata,
                                               const SaveOptions& options,
                                               std::exception_ptr refused) {
  auto op = std::make_shared<SaveOp>();
  op->start = Clock::now();
  const bool collective = is_collective(options);
  if (!collective) {
    if (refused) std::rethrow_exception(refused);
    op->final_dir = clean_checkpoint_dir(path);
    check_checkpoint_dir_name(op->final_dir);
    check_extra_files(options.extra_files);
    check_metadata(metadata);
  }
  PlannedSave planned;
  std::string run_dir;
  Protection protection;
  if (collective) {
    // The number first: whatever fails below, every process takes part in the same check, and a
    // failure after it is reported in this operation's turn, so that no number is left open
    // (the queue would wait for it forever) and every process hears of it.
    std::shared_ptr<Communicator> comm = communicator();
    const std::uint64_t seq = collective_steps.allocate(*comm);
    try {
      if (refused) std::rethrow_exception(refused);
      op->final_dir = clean_checkpoint_dir(path);
      check_checkpoint_dir_name(op->final_dir);
      check_extra_files(options.extra_files);
      check_metadata(metadata);
      if (options.backpressure.value_or(this->options.backpressure) == Backpressure::skip) {
        throw Error(Errc::invalid_argument,
                    "a collective save cannot use Backpressure::skip (processes could decide "
                    "differently)",
                    path);
      }
      // Process 0 alone holds the run directory's lease and protects and retains in it; taken
      // before the check, so that a busy lease refuses the save on every process.
      if (comm->rank() == 0 && !options.run_dir.empty()) {
        run_dir = clean_checkpoint_dir(options.run_dir);
        protection = Protection(lease_for(run_dir), suffix_in_run_dir(run_dir, op->final_dir));
      }
    } catch (...) {
      refused = std::current_exception();
    }
    IncrementalChoice choice;
    if (comm->rank() == 0 && options.incremental.value_or(this->options.incremental)) {
      choice = collective_base(options);
    }
    ShardedPlan sp;
    try {
      sp = plan_sharded_save(tree, options.sharding, comm, seq, this->options.collective_timeout,
                             op->final_dir, refused, choice);
    } catch (...) {
      collective_steps.skip(seq);
      throw;
    }
    op->sharded = std::move(sp.save);
    try {
      planned = plan_cache.plan(sp.local, this->options.unit_bytes);
    } catch (...) {
      // This process's own tree cannot be written (its manifest limits): the others hear of it.
      report_refusal(op, std::current_exception());
      throw;
    }
  } else {
    planned = plan_cache.plan(tree, this->options.unit_bytes,
                              [this](std::size_t n, const std::function<void(std::size_t)>& task) {
                                sweep_in_stall(n, task);
                              });
    if (!options.run_dir.empty()) {
      run_dir = clean_checkpoint_dir(options.run_dir);
      std::string suffix = suffix_in_run_dir(run_dir, op->final_dir);
      // The lease now (a second writer fails here, before anything is written); the suffix is
      // published by the pipeline before its directory exists, off the caller's stall.
      protection = Protection(lease_for(run_dir), std::move(suffix));
    }
  }
  op->plan = std::move(planned.plan);
  op->sources = std::move(planned.sources);
  op->owners = std::move(planned.owners);
  op->block_crc.assign(op->plan->manifest.blocks.size(), 0);
  op->created_unix_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
  {
    std::lock_guard lock(mu);
    ++(planned.reused ? counters.plans_reused : counters.plans_built);
    if (planned.parts > 0) ++counters.plans_checked_in_parts;
  }
  op->metadata = metadata;
  op->options = options;
  op->options.run_dir = run_dir;  // cleaned; empty on the processes other than 0 of a collective
  op->protection = std::move(protection);
  op->shared = std::make_shared<detail::SaveShared>();
  op->shared->path = op->final_dir;
  op->shared->runtime = link;
  op->shared->timings.bytes = op->plan->manifest.total_bytes;
  op->shared->timings.stored_bytes = op->plan->manifest.stored_bytes();
  op->shared->timings.written_bytes = op->shared->timings.stored_bytes;
  if (op->sharded) {
    // Process 0's choice, for every process (runtime/shard_incremental.h).
    if (op->sharded->incremental) {
      op->sinc = std::make_shared<ShardIncremental>(
          op->plan->manifest, op->plan->units,
          static_cast<std::uint32_t>(op->sharded->comm->size()));
      op->inc_base = op->sharded->base;
    }
  } else if (options.incremental.value_or(this->options.incremental)) {
    plan_incremental(*op);
  }
  return op;
}

IncrementalChoice Runtime::Impl::collective_base(const SaveOptions& options) {
  // As for one process: the explicit base, else this Runtime's last commit in the run directory,
  // else the one its `latest` names (a small read in the caller's stall, once per run).
  IncrementalChoice choice;
  choice.on = true;
  try {
    std::string run;
    if (!options.run_dir.empty()) run = clean_checkpoint_dir(options.run_dir);
    if (!options.incremental_base.empty()) {
      choice.base = clean_checkpoint_dir(options.incremental_base);
    } else if (!run.empty()) {
      {
        std::lock_guard lock(mu);
        if (auto it = last_commits.find(run); it != last_commits.end()) choice.base = it->second.dir;
      }
      if (choice.base.empty()) {
        if (auto suffix = read_latest(run)) choice.base = run + "/" + *suffix;
      }
    }
    choice.origin = choice.base;
    if (!run.empty() && !choice.base.empty()) {
      try {
        choice.origin = suffix_in_run_dir(run, choice.base);
      } catch (const Error&) {  // an explicit base elsewhere: named by its path
      }
    }
  } catch (const Error& e) {
    log().warn("incremental collective save: no base ({}); writing everything", e.what());
    choice.base.clear();
  }
  return choice;
}

void Runtime::Impl::plan_incremental(SaveOp& op) {
  op.inc = std::make_shared<IncrementalSave>(op.plan->manifest, op.plan->units);
  op.speculate.assign(op.plan->units.size(), 0);
  op.packed.assign(op.plan->units.size(), 0);
  const std::string& run_dir = op.options.run_dir;
  if (!op.options.incremental_base.empty()) {
    op.inc_base = clean_checkpoint_dir(op.options.incremental_base);
  } else if (!run_dir.empty()) {
    std::lock_guard lock(mu);
    auto it = last_commits.find(run_dir);
    if (it == last_commits.end()) {
      op.inc_base_from_latest = true;  // read on a copy thread, off the stall
    } else {
      op.inc_base = it->second.dir;
      if (it->second.manifest) op.inc->use_cached_base(it->second.manifest, it->second.trailer);
      // Written whole at once: units that changed in each of the last two saves of this plan.
      if (it->second.plan == op.plan) {
        for (std::size_t i = 0; i < op.speculate.size(); ++i)
          op.speculate[i] = it->second.changed[i] >= 2 ? 1 : 0;
      }
    }
  }
  if (op.inc_base.empty() && !op.inc_base_from_latest) {
    op.speculate.assign(op.plan->units.size(), 1);  // nothing to share: write as it comes
  } else if (op.options.mode == SnapshotMode::sync) {
    op.base_ready = std::make_shared<Event>();
  }
}

void Runtime::Impl::note_commit(const SaveOp& op) {
  if (op.options.run_dir.empty()) return;
  std::lock_guard lock(mu);
  LastCommit& last = last_commits[op.options.run_dir];
  last.dir = op.final_dir;
  last.manifest = op.inc_committed;
  last.trailer = op.inc_trailer;
  if (!op.inc) {
    last.plan = nullptr;
    last.changed.clear();
    return;
  }
  // Streaks of saves in which each unit changed (reset by a save of another plan).
  std::vector<std::uint8_t> changed = op.inc->changed_units();
  const bool same = last.plan == op.plan && last.changed.size() == changed.size();
  for (std::size_t i = 0; i < changed.size(); ++i) {
    std::uint8_t before = same ? last.changed[i] : 0;
    changed[i] = changed[i] ? static_cast<std::uint8_t>(std::min(before + 1, 255)) : 0;
  }
  last.plan = op.plan;
  last.changed = std::move(changed);
}

void Runtime::Impl::mark_skipped(const std::shared_ptr<SaveOp>& op) {
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

void Runtime::Impl::admitted(const std::shared_ptr<SaveOp>& op, StagingPool::Chunks chunks) {
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

void Runtime::Impl::note_newest_locked(const std::shared_ptr<detail::SaveShared>& shared) {
  if (newest.insert_or_assign(shared->path, shared).second) newest_order.push_back(shared->path);
  while (newest_order.size() > 4096) {
    newest.erase(newest_order.front());
    newest_order.pop_front();
  }
}

void Runtime::Impl::launch(const std::shared_ptr<SaveOp>& op) {
  asio::co_spawn(ex, run_save(op), [path = op->shared->path](std::exception_ptr e) {
    if (e) log().critical("save pipeline of {} ended abnormally: {}", path, describe_error(e));
  });
}

void Runtime::Impl::stall_done(const std::shared_ptr<SaveOp>& op) {
  std::lock_guard lock(op->shared->mu);
  op->shared->timings.stall = Clock::now() - op->start;
}

SaveHandle Runtime::save(const std::string& path, const Tree& tree,
                         const boost::json::object& metadata, const SaveOptions& options) {
  Backpressure policy = options.backpressure.value_or(impl_->options.backpressure);
  // Staging returns to the pool through that thread: waiting for it there can never end.
  // (A collective save reports it in its check, so the other processes refuse it too.)
  std::exception_ptr refused;
  if (policy == Backpressure::block && impl_->link->on_runtime_thread()) {
    refused = std::make_exception_ptr(
        Error(Errc::invalid_argument,
              "save() with Backpressure::block called on the Runtime's own thread (a plain "
              "async_wait callback, or a coroutine on its executor) could deadlock: use "
              "async_save, or Backpressure::skip",
              path));
  }
  auto op = impl_->prepare(path, tree, metadata, options, refused);
  std::size_t n = op->plan->units.size();
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
    try {
      chunks = impl_->pool.acquire(n);
    } catch (...) {
      // Over the budget: this process fails here, and tells the others in the commit's turn.
      if (op->sharded) impl_->report_refusal(op, std::current_exception());
      throw;
    }
  }
  impl_->admitted(op, std::move(chunks));
  impl_->start_writes(op);
  if (options.mode == SnapshotMode::sync) {
    impl_->start_copy(op, nullptr, true);
    impl_->release_held(op);
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
    // A collective check waits for every process: on the Runtime's own thread it would hold up
    // the saves in flight, whose reports the others may be waiting for.
    std::exception_ptr refused;
    if (impl_->is_collective(options) && impl_->link->on_runtime_thread()) {
      refused = std::make_exception_ptr(
          Error(Errc::invalid_argument,
                "a collective async_save cannot start on the Runtime's own thread (its check "
                "waits for every process): start it from another thread",
                path));
    }
    op = impl_->prepare(path, tree, metadata, options, refused);
  } catch (...) {
    done(std::current_exception(), SaveHandle());
    return;
  }
  Impl* impl = impl_.get();
  auto on_granted = [impl, op, done](StagingPool::Chunks chunks) {
    impl->admitted(op, std::move(chunks));
    impl->start_writes(op);
    if (op->options.mode == SnapshotMode::overlapped) {
      impl->stall_done(op);
      impl->launch(op);
      done(nullptr, SaveHandle(op->shared));
      return;
    }
    impl->start_copy(
        op,
        [impl, op, done](std::exception_ptr e) {
          impl->release_held(op);
          impl->mark_snapshotted(*op);
          impl->stall_done(op);
          impl->launch(op);
          done(e, SaveHandle(op->shared));
        },
        false);
  };
  std::size_t n = op->plan->units.size();
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
      impl_->acquire_counted(op, n, std::move(on_granted), done);
    }
  } catch (...) {
    if (op->sharded) impl_->report_refusal(op, std::current_exception());
    done(std::current_exception(), SaveHandle());
  }
}

namespace {

// Ends one counted operation when it leaves scope, however it leaves.
struct EndOp {
  Runtime::Impl* impl;
  ~EndOp() { impl->end_op(); }
};

}  // namespace

// Counted among the operations in flight while it waits (drain() and the destructor wait for its
// admission; the save is counted on its own from there), and refused with Errc::cancelled if
// the Runtime shuts down while nothing can free staging for it.
void Runtime::Impl::acquire_counted(const std::shared_ptr<SaveOp>& op, std::size_t n,
                                    StagingPool::Grant on_granted,
                                    const std::function<void(std::exception_ptr, SaveHandle)>& done) {
  {
    std::lock_guard lock(mu);
    ++active;
    ++waiting_for_staging;
  }
  const auto stop_waiting = [this] {
    std::lock_guard lock(mu);
    --waiting_for_staging;
  };
  auto granted = [this, stop_waiting, on_granted = std::move(on_granted)](
                     StagingPool::Chunks chunks) {
    stop_waiting();
    EndOp counted{this};
    on_granted(std::move(chunks));  // admitted: counted as a save from here
  };
  auto refused = [this, op, stop_waiting, done](std::exception_ptr why) {
    stop_waiting();
    EndOp counted{this};
    try {
      std::rethrow_exception(why);
    } catch (const Error& e) {
      if (e.path().empty()) why = std::make_exception_ptr(Error(e.code(), e.what(), op->final_dir));
    } catch (...) {
    }
    if (op->sharded) report_refusal(op, why);
    done(why, SaveHandle());
  };
  try {
    pool.acquire_async(n, std::move(granted), std::move(refused));
  } catch (...) {
    stop_waiting();
    EndOp counted{this};
    throw;
  }
}

void Runtime::Impl::report_refusal(const std::shared_ptr<SaveOp>& op, std::exception_ptr why) {
  begin_op();  // drain() and the destructor wait for the report
  asio::co_spawn(ex, run_refusal(op, std::move(why)), [this](std::exception_ptr e) {
    if (e) log().critical("collective refusal ended abnormally: {}", describe_error(e));
    end_op();
  });
}

asio::awaitable<void> Runtime::Impl::run_refusal(std::shared_ptr<SaveOp> op,
                                                 std::exception_ptr why) {
  const auto report = [op, why] {
    ShardResult r;
    r.failure = why;
    r.final_dir = op->final_dir;
    // Process 0 removes the shared temporary directory the others may have written into.
    if (op->sharded->comm->rank() == 0) r.tmp_dir = shared_tmp_dir(*op->sharded, op->final_dir);
    collective_commit(*op->sharded, r);  // its outcome is this failure, or an earlier one
  };
  co_await on_collective(op->sharded->seq, report);
  op->sharded->comm.reset();
}

}  // namespace ckpt
