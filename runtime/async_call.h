#pragma once
// async_call: turns a callback-style operation into an Asio asynchronous operation that accepts
// any completion token. `start` receives a copyable callback that may be called once, from any
// thread; the handler then runs on its associated executor (work tracked until then), or, without
// one, where the fallback says: a plain executor (the Runtime's own coroutines), or a RuntimeLink
// (completions handed to callers: the Runtime's executor while it lives, else
// asio::system_executor; see runtime/event.h).
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <memory>
#include <tuple>
#include <utility>

#include "runtime/event.h"

namespace ckpt::detail {

// Arguments are taken by reference: a coroutine's co_await full-expression must not hold
// temporaries that g++ 12 would destroy twice (PITFALLS.md).
template <typename Signature, typename Token, typename Start>
auto async_call(const boost::asio::any_io_executor& fallback, Token&& token, const Start& start) {
  return boost::asio::async_initiate<Token, Signature>(
      [](auto handler, boost::asio::any_io_executor fallback_ex, Start start_fn) {
        auto work = boost::asio::make_work_guard(
            boost::asio::get_associated_executor(handler, fallback_ex));
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        std::move(start_fn)([shared, work](auto... args) {
          boost::asio::post(work.get_executor(),
                            [shared, work, tuple = std::make_tuple(std::move(args)...)]() mutable {
                              std::apply([&](auto&... a) { std::move (*shared)(std::move(a)...); },
                                         tuple);
                              work.reset();
                            });
        });
      },
      token, fallback, start);
}

template <typename Signature, typename Token, typename Start>
auto async_call(const std::shared_ptr<RuntimeLink>& link, Token&& token, const Start& start) {
  return boost::asio::async_initiate<Token, Signature>(
      [](auto handler, std::shared_ptr<RuntimeLink> home, Start start_fn) {
        std::move(start_fn)(make_completion(std::move(handler), home, [](const auto&...) {}));
      },
      token, link, start);
}

}  // namespace ckpt::detail
