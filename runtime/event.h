#pragma once
// Event: a one-shot, thread-safe completion carrying an error (or none), awaitable with any Asio
// completion token and waitable from plain threads. The building block of SaveHandle and
// RegisterHandle.
//
// Completion handlers run on their associated executor (for use_awaitable: the awaiting
// coroutine's), or on the default executor given to async_wait; the executor is kept busy (work
// tracked) until the handler runs, so an io_context does not return from run() under a waiting
// coroutine.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
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

// Waits for `event` with an Asio completion token; signature void(std::exception_ptr). The
// shared_ptr keeps the event alive until the handler ran (it may alias a larger state object).
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

}  // namespace ckpt
