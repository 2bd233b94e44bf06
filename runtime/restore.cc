// Restores through the Runtime: its engine, its staging chunks and its copy pool.
#include "runtime/runtime_impl.h"

namespace ckpt {

boost::json::object Runtime::Impl::restore(const std::string& path, Tree& templ, bool partial) {
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

boost::json::object Runtime::restore(const std::string& path, Tree& templ, bool partial) {
  return impl_->restore(path, templ, partial);
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
