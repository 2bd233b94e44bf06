#pragma once
// Work on a thread of its own beside the caller's, where one can be started.
#include <future>
#include <system_error>
#include <type_traits>
#include <utility>

namespace ckpt {

// `fn` on a new thread (std::async). An invalid future where no thread could be started: the
// caller then does the work itself. The future waits for `fn` when destroyed, so what `fn`
// refers to must outlive the future.
template <typename Fn>
std::future<std::invoke_result_t<std::decay_t<Fn>>> start_beside(Fn&& fn) {
  try {
    return std::async(std::launch::async, std::forward<Fn>(fn));
  } catch (const std::system_error&) {
    return {};
  }
}

}  // namespace ckpt
