// Restores through the Runtime: its engine, its staging chunks and its copy pool.
#include "runtime/runtime_impl.h"

namespace ckpt {

// docs/design.md, section 6: blocks are read into staging chunks and verified on the copy
// threads; a transactional restore swaps them in as they arrive (or copies them after the last
// read) and swaps them back on a failure, one that is not copies each in as it verifies. The
// chunks are borrowed from the pool when it has them free (pre-faulted: no page faults);
// otherwise the reader maps its own staging up to the budget, or reads twice (once when not
// transactional). How each restore went in is counted in RuntimeStats::restores_*.
boost::json::object Runtime::Impl::restore(const std::string& path, Tree& templ,
                                           const RestoreOptions& how, const Sharding* sharding) {
  ReadOptions ro;
  ro.sharding = sharding;
  ro.transactional = how.transactional;
  ro.unit_bytes = options.unit_bytes;
  ro.queue_depth = options.queue_depth;
  ro.allow_direct = options.allow_direct;
  ro.staging_bytes = options.staging_budget;
  ro.threads = options.copy_threads;
  ro.borrow = [this](std::size_t n, std::uint64_t each) {
    std::vector<std::byte*> out;
    if (each <= pool.chunk_bytes() && n <= pool.capacity_chunks()) {
      if (auto chunks = pool.try_acquire(n)) out = std::move(*chunks);
    }
    return out;
  };
  ro.give_back = [this](const std::vector<std::byte*>& chunks) { pool.release(chunks); };
  // The caller waits for the restore: its helpers run at its priority (std::threads it starts;
  // the copy pool's threads run at copy_nice, so under load they would get a sliver of a core).
  // An async_restore runs on the copy pool already, in the background: it posts its helpers there.
  if (workers.get_executor().running_in_this_thread()) {
    ro.spawn = [this](std::function<void()> fn) { asio::post(workers, std::move(fn)); };
  }
  // The decoded manifest is destroyed on the copy pool once the restore returned: at 100,000
  // leaves its frees took 5-10 ms of the restore's wall time.
  ro.dispose = [this](std::function<void()> fn) { asio::post(workers, std::move(fn)); };
  ReadHow read = ReadHow::nothing;
  ro.read_how = &read;
  boost::json::object metadata = restore_checkpoint(*engine, path, templ, how.partial, ro);
  std::lock_guard lock(mu);
  switch (read) {
    case ReadHow::nothing: break;
    case ReadHow::swapped: ++counters.restores_swapped; break;
    case ReadHow::copied: ++counters.restores_copied; break;
    case ReadHow::placed: ++counters.restores_placed; break;
    case ReadHow::two_passes: ++counters.restores_two_passes; break;
    case ReadHow::one_pass: ++counters.restores_one_pass; break;
  }
  return metadata;
}

boost::json::object Runtime::restore(const std::string& path, Tree& templ, bool partial) {
  return impl_->restore(path, templ, {partial, true});
}

boost::json::object Runtime::restore(const std::string& path, Tree& templ,
                                     const RestoreOptions& options) {
  return impl_->restore(path, templ, options);
}

boost::json::object Runtime::restore(const std::string& path, Tree& templ,
                                     const Sharding& sharding, bool partial) {
  return impl_->restore(path, templ, {partial, true}, &sharding);
}

void Runtime::start_async_restore(
    std::string path, Tree templ, RestoreOptions how,
    std::function<void(std::exception_ptr, boost::json::object)> done) {
  Impl* impl = impl_.get();
  impl->begin_op();
  asio::post(impl->workers,
             [impl, path = std::move(path), templ = std::move(templ), how, done]() mutable {
               try {
                 auto metadata = impl->restore(path, templ, how);
                 done(nullptr, std::move(metadata));
               } catch (...) {
                 done(std::current_exception(), boost::json::object());
               }
               impl->end_op();
             });
}

}  // namespace ckpt
