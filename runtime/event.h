#pragma once
// Event: a one-shot, thread-safe completion carrying an error (or none), awaitable with any Asio
// completion token and waitable from plain threads. The building block of SaveHandle and
// RegisterHandle.
//
// Where a waiter's handler runs (async_wait_event):
//  - a handler with an associated executor (use_awaitable: the awaiting coroutine's; bind_executor;
//    use_future) runs there; that executor is kept busy (work tracked) until the handler runs, so
//    an io_context does not return from run() under a waiting coroutine;
//  - a handler without one (a plain callback, or a deferred operation launched with one) runs on
//    the Runtime's executor while the Runtime lives, else on asio::system_executor. This is
//    decided when the event completes, through a RuntimeLink: a handle never holds an executor
//    (nor a work guard) that can outlive its execution context.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/system_executor.hpp>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace ckpt {

class Event {
 public:
  // Fires the event; later calls are ignored.
  void complete(std::exception_ptr error = nullptr);
  bool done() const;
  std::exception_ptr error() const;  // null until done, and when it succeeded
  void wait() const;                 // blocks until done (does not throw)
  bool wait_for(std::chrono::nanoseconds timeout) const;

  // `callback` runs once, with the error, on the thread that completes the event (or at once on
  // this thread when it is done already). It must be short.
  void on_complete(std::function<void(std::exception_ptr)> callback);

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
  std::vector<std::function<void(std::exception_ptr)>> callbacks_;
};

namespace detail {

// What handles (and async_save / async_restore completions) know of their Runtime: its executor
// while it lives, and how to tell its own thread. Shared by the Runtime and every handle; the
// Runtime closes it on destruction (after draining), and from then on it holds no executor.
class RuntimeLink {
 public:
  RuntimeLink(boost::asio::any_io_executor executor, std::function<bool()> on_runtime_thread)
      : executor_(std::move(executor)), on_runtime_thread_(std::move(on_runtime_thread)) {}

  // Posts `fn` to the Runtime's executor, or to asio::system_executor once the Runtime is gone.
  template <typename F>
  void post(F&& fn) {
    std::unique_lock lock(mu_);
    if (open_) {
      boost::asio::post(executor_, std::forward<F>(fn));
      return;
    }
    lock.unlock();
    boost::asio::post(boost::asio::system_executor(), std::forward<F>(fn));
  }

  // True on a thread where blocking until the Runtime makes progress would deadlock it: its own
  // io_context thread, inside its strand, or a thread running the io_context it was given.
  bool on_runtime_thread() const;
  bool open() const;
  void close();  // the Runtime is being destroyed: forget the executor

 private:
  mutable std::mutex mu_;
  bool open_ = true;
  boost::asio::any_io_executor executor_;
  std::function<bool()> on_runtime_thread_;
};

// The associated executor query's answer for a handler that has none of its own.
struct NoAssociatedExecutor {};
template <typename Handler>
inline constexpr bool has_associated_executor_v =
    !std::is_same_v<boost::asio::associated_executor_t<Handler, NoAssociatedExecutor>,
                    NoAssociatedExecutor>;

// Wraps a (move-only) completion handler into a copyable callable that may be called once, from
// any thread, with the completion's arguments; the handler then runs as described at the top of
// this file. `before` (may be empty) is called with the arguments on the completing thread just
// before the handler is handed to its executor.
template <typename Handler, typename Before>
auto make_completion(Handler handler, const std::shared_ptr<RuntimeLink>& link, Before before) {
  auto shared = std::make_shared<Handler>(std::move(handler));
  if constexpr (has_associated_executor_v<Handler>) {
    auto work = boost::asio::make_work_guard(boost::asio::get_associated_executor(*shared));
    return [shared, work, before](auto... args) mutable {
      before(args...);
      boost::asio::post(work.get_executor(),
                        [shared, work, tuple = std::make_tuple(std::move(args)...)]() mutable {
                          std::apply([&](auto&... a) { std::move (*shared)(std::move(a)...); },
                                     tuple);
                          work.reset();
                        });
    };
  } else {
    return [shared, link, before](auto... args) {
      before(args...);
      link->post([shared, tuple = std::make_tuple(std::move(args)...)]() mutable {
        std::apply([&](auto&... a) { std::move (*shared)(std::move(a)...); }, tuple);
      });
    };
  }
}

}  // namespace detail

// Waits for `event` with an Asio completion token; signature void(std::exception_ptr). The
// shared_ptr keeps the event alive until the handler ran (it may alias a larger state object).
// For the Runtime's own coroutines, whose handlers always have an associated executor.
template <typename Token>
auto async_wait_event(const std::shared_ptr<Event>& event,
                      const boost::asio::any_io_executor& default_executor, Token&& token) {
  return boost::asio::async_initiate<Token, void(std::exception_ptr)>(
      [](auto handler, std::shared_ptr<Event> ev, boost::asio::any_io_executor fallback) {
        auto work =
            boost::asio::make_work_guard(boost::asio::get_associated_executor(handler, fallback));
        // std::function needs a copyable callable: the move-only handler lives in a shared_ptr.
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        ev->on_complete([shared, work](std::exception_ptr e) {
          boost::asio::post(work.get_executor(), [shared, e, work]() mutable {
            (*shared)(e);
            work.reset();
          });
        });
      },
      token, event, default_executor);
}

// The same for handles: a handler without an associated executor runs where `link` says. When
// `observed` is given, it is set once a failure is handed to the handler (only a launched
// operation gets that far: a deferred one never launched observes nothing).
template <typename Token>
auto async_wait_event(const std::shared_ptr<Event>& event,
                      const std::shared_ptr<detail::RuntimeLink>& link,
                      const std::shared_ptr<std::atomic<bool>>& observed, Token&& token) {
  return boost::asio::async_initiate<Token, void(std::exception_ptr)>(
      [](auto handler, std::shared_ptr<Event> ev, std::shared_ptr<detail::RuntimeLink> home,
         std::shared_ptr<std::atomic<bool>> seen) {
        auto before = [seen](const std::exception_ptr& e) {
          if (e && seen) *seen = true;
        };
        ev->on_complete(detail::make_completion(std::move(handler), home, before));
      },
      token, event, link, observed);
}

}  // namespace ckpt
