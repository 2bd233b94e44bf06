// The Runtime: construction, draining, shutdown and statistics. Its stages live beside it:
// save_pipeline.cc, restore.cc, run_dirs.cc; runtime_impl.h holds what they share.
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <latch>

#include "runtime/runtime_impl.h"
#include "runtime/stream_copy.h"

namespace ckpt {

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

// Sets every thread of `pool` to `nice` (docs/design.md, "Pacing"): one task per thread, each
// held at a latch until all have started, so no thread runs two of them. The tasks share the
// latch: a thread may still be inside arrive_and_wait() after this function has returned.
void renice_pool(asio::thread_pool& pool, unsigned threads, int nice) {
  if (nice == 0) return;
  auto started = std::make_shared<std::latch>(threads);
  for (unsigned t = 0; t < threads; ++t) {
    asio::post(pool, [started, nice] {
      if (::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), nice) != 0) {
        log().warn("copy thread priority {}: {}", nice, std::strerror(errno));
      }
      started->arrive_and_wait();
    });
  }
  started->wait();
}

}  // namespace

Runtime::Impl::Impl(RuntimeOptions opts, std::optional<asio::any_io_executor> external)
    : options(normalize(opts)),
      engine(make_runtime_engine(options)),
      pool(options.staging_budget, options.unit_bytes, engine.get()),
      workers(options.copy_threads) {
  renice_pool(workers, options.copy_threads, options.copy_nice);
  streaming_bytes();  // reads sysfs now, not in the first save's stall
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
    on_runtime_thread = [io = own_context->get_executor()] { return io.running_in_this_thread(); };
    io_thread = std::thread([this] { own_context->run(); });
  }
  link = std::make_shared<detail::RuntimeLink>(ex, std::move(on_runtime_thread));
  counters.staging_budget = pool.capacity_chunks() * pool.chunk_bytes();
  counters.engine = std::string(engine->name());
}

RuntimeOptions Runtime::Impl::normalize(RuntimeOptions o) {
  o.copy_threads = default_threads(o.copy_threads);
  if (o.overlapped_copy_threads == 0) o.overlapped_copy_threads = o.copy_threads;
  o.overlapped_copy_threads = std::min(o.overlapped_copy_threads, o.copy_threads);
  if (o.staging_budget == 0) o.staging_budget = default_budget();
  o.unit_bytes = std::max<std::uint64_t>(io::align_up(o.unit_bytes), io::kAlignment);
  if (o.queue_depth == 0) o.queue_depth = 1;
  return o;
}

Runtime::Impl::~Impl() {
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

// Bounded shutdown (docs/design.md): every save has ended, so with an io_timeout a request still
// in the engine is one the watchdog gave up on. Rather than block in the engine's destructor for
// a device that may never answer, give it a short grace, then log what is abandoned and keep the
// engine and the staging memory alive for the rest of the process.
void Runtime::Impl::abandon_stuck_io() {
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
  for (std::size_t i = 0; i < stuck.size() && i < kShown; ++i)
    log().error("abandoned: {}", stuck[i]);
  if (stuck.size() > kShown) log().error("abandoned: {} more", stuck.size() - kShown);
  io::abandon_engine(std::move(engine));
}

void Runtime::Impl::begin_op() {
  std::lock_guard lock(mu);
  ++active;
}

void Runtime::Impl::end_op() {
  std::vector<std::function<void(DrainReport)>> waiters;
  DrainReport report;
  {
    std::lock_guard lock(mu);
    if (--active != 0) {
      if (active == waiting_for_staging) idle_cv.notify_all();  // shut_down's first wait
      return;
    }
    idle_cv.notify_all();
    if (idle_waiters.empty()) return;
    waiters.swap(idle_waiters);
    report = take_failures_locked();
  }
  for (auto& w : waiters) w(report);  // they hold no reference to *this
}

DrainReport Runtime::Impl::take_failures_locked() {
  DrainReport report;
  for (const auto& s : failed_saves) {
    if (!s->observed)
      report.errors.push_back("save " + s->path + ": " + describe_error(s->done.error()));
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

void Runtime::Impl::shut_down() {
  DrainReport report;
  {
    std::unique_lock lock(mu);
    // Every other operation first: those that end free staging, admitting the saves queued for
    // it. What is left then waits for staging only IO the watchdog gave up on still holds.
    idle_cv.wait(lock, [&] { return active == waiting_for_staging; });
  }
  const std::size_t refused = pool.refuse_waiters(std::make_exception_ptr(
      Error(Errc::cancelled,
            "the Runtime was destroyed while this save waited for staging (held by IO that did "
            "not complete)")));
  if (refused > 0) log().error("runtime shut down refusing {} save(s) waiting for staging", refused);
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

void Runtime::reserve_staging(std::uint64_t bytes) { impl_->pool.reserve(bytes); }

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
  s.units_packed_in_stall = impl_->packed_in_stall.load();
  s.staging_in_use = impl_->pool.in_use_bytes();
  s.staging_mapped = impl_->pool.mapped_bytes();
  return s;
}

io::Engine& Runtime::engine() { return *impl_->engine; }
asio::any_io_executor Runtime::executor() const { return impl_->ex; }
const RuntimeOptions& Runtime::options() const { return impl_->options; }

}  // namespace ckpt
