// Run directories through the Runtime: writer leases, register_latest (which moves `latest`) and
// the retention passes after saves (docs/design.md, sections 3 and 5).
#include "runtime/runtime_impl.h"

namespace ckpt {

std::shared_ptr<RunLease> Runtime::Impl::lease_for(const std::string& run_dir) {
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

void Runtime::Impl::run_dir_op_ended(const std::string& run_dir,
                                     const RetentionPolicy* committed_policy) {
  std::lock_guard lock(mu);
  auto& st = run_dirs[run_dir];
  --st.active;
  const bool asked = committed_policy != nullptr && committed_policy->active();
  if (asked) st.policy = *committed_policy;
  if (st.policy && (asked || st.active == 0)) request_pass_locked(run_dir, st);
}

void Runtime::Impl::request_pass_locked(const std::string& run_dir, RunDir& st) {
  if (st.pass_running) {
    st.pass_again = true;  // the running pass goes again when it ends: passes never pile up
    return;
  }
  st.pass_running = true;
  ++active;  // drain() waits for the pass
  asio::post(workers, [this, run_dir] { retention_passes(run_dir); });
}

void Runtime::Impl::retention_passes(const std::string& run_dir) {
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

std::set<std::string> Runtime::Impl::protected_suffixes(const std::string& run_dir) {
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

asio::awaitable<void> Runtime::Impl::run_register(std::shared_ptr<detail::RegisterShared> reg,
                                                  std::shared_ptr<detail::SaveShared> save,
                                                  std::shared_ptr<Event> previous,
                                                  std::shared_ptr<Protection> protection,
                                                  std::exception_ptr unpublished, bool collective,
                                                  std::uint64_t seq) {
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
  if (!failure) failure = unpublished;  // no protection, no move: the save's own error first
  const auto move_latest = [this, reg, protection] {
    // Checked and written under the mutation lock: no gc or retention pass removes the
    // checkpoint in between.
    auto mutation = protection->lease->lock_mutations(options.lock_wait);
    require_committed_checkpoint(reg->run_dir, reg->suffix);
    write_latest(reg->run_dir, reg->suffix);
  };
  // A collective registration: process 0 moves `latest`, then every process gets its result.
  const bool writes_latest = !collective || options.communicator->rank() == 0;
  if (!failure && writes_latest) {
    try {
      co_await on_workers(move_latest);
    } catch (...) {
      failure = std::current_exception();
    }
  }
  if (collective) {
    auto agreed = std::make_shared<std::exception_ptr>(failure);
    const auto agree = [this, agreed, seq] {
      *agreed = collective_outcome(*options.communicator, seq, options.collective_timeout, *agreed);
    };
    co_await on_collective(seq, agree);
    failure = *agreed;
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

RegisterHandle Runtime::register_latest(const std::string& run_dir, const std::string& suffix) {
  const std::shared_ptr<Communicator>& comm = impl_->options.communicator;
  const bool collective = comm != nullptr;
  // The number first, so that the processes' numbering never drifts apart.
  const std::uint64_t seq = collective ? impl_->collective_steps.allocate(*comm) : 0;
  auto reg = std::make_shared<detail::RegisterShared>();
  try {
    check_suffix(suffix);
    reg->run_dir = clean_checkpoint_dir(run_dir);
  } catch (...) {
    // The arguments are the same on every process: each refuses here and gives up its turn.
    if (collective) impl_->collective_steps.skip(seq);
    throw;
  }
  reg->suffix = suffix;
  // Published before this returns: from here `ckpt gc` spares the checkpoint to be registered.
  // In a collective registration only process 0 writes, so only it takes the lease.
  std::shared_ptr<Protection> protection;
  // A failure to take the lease of a collective registration (process 0's: another writer or
  // `ckpt gc` holds it) or to publish (a full disk: the saves in flight are filling it) fails the
  // handle in the registration's turn, like every other failure of it, so every process hears of
  // it; a single-process one fails this call.
  std::exception_ptr unpublished;
  try {
    protection = (collective && comm->rank() != 0)
                     ? std::make_shared<Protection>()
                     : std::make_shared<Protection>(impl_->lease_for(reg->run_dir),
                                                    std::string(suffix));
  } catch (...) {
    if (!collective) throw;
    protection = std::make_shared<Protection>();
    unpublished = std::current_exception();
  }
  if (!unpublished) {
    try {
      protection->publish();
    } catch (...) {
      unpublished = std::current_exception();
    }
  }
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
  asio::co_spawn(impl_->ex,
                 impl_->run_register(reg, save, previous, protection, unpublished, collective, seq),
                 [](std::exception_ptr e) {
                   if (e) log().critical("register pipeline ended abnormally");
                 });
  return RegisterHandle(reg);
}

void Runtime::claim_run_dir(const std::string& run_dir) {
  impl_->lease_for(clean_checkpoint_dir(run_dir));
}

}  // namespace ckpt
