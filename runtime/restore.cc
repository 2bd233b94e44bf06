// Restores through the Runtime: its engine, its staging chunks and its copy pool.
#include "runtime/runtime_impl.h"

namespace ckpt {

// Transactional (docs/design.md, section 6): blocks are read into staging chunks, verified on the
// copy threads and swapped into the template as they arrive; a failure swaps them back. The
// chunks are borrowed from the pool when it has them free (pre-faulted: no page faults);
// otherwise the reader maps its own staging up to the budget, or reads twice.
boost::json::object Runtime::Impl::restore(const std::string& path, Tree& templ, bool partial,
                                           const Sharding* sharding) {
  ReadOptions ro;
  ro.sharding = sharding;
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
  return restore_checkpoint(*engine, path, templ, partial, ro);
}

boost::json::object Runtime::restore(const std::string& path, Tree& templ, bool partial) {
  return impl_->restore(path, templ, partial);
}

boost::json::object Runtime::restore(const std::string& path, Tree& templ,
                                     const Sharding& sharding, bool partial) {
  return impl_->restore(path, templ, partial, &sharding);
}

void Runtime::start_async_restore(
    std::string path, Tree templ, bool partial,
    std::function<void(std::exception_ptr, boost::json::object)> done) {
  Impl* impl = impl_.get();
  impl->begin_op();
  asio::post(impl->workers,
             [impl, path = std::move(path), templ = std::move(templ), partial, done]() mutable {
               try {
                 auto metadata = impl->restore(path, templ, partial);
                 done(nullptr, std::move(metadata));
               } catch (...) {
                 done(std::current_exception(), boost::json::object());
               }
               impl->end_op();
             });
}

}  // namespace ckpt
