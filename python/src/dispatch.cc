// The dispatcher thread of the extension and the spdlog -> Python logging bridge (bind.h).
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>

#include "io/log.h"
#include "python/src/bind.h"

namespace ckpt::py_bind {

namespace {

class Dispatcher {
 public:
  // False once shutdown() began (the item is dropped, never run).
  bool push(std::function<void()> fn) {
    std::lock_guard lock(mu_);
    if (stopping_ || stopped_) return false;
    if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
    queue_.push_back(std::move(fn));
    ++pushed_;
    cv_.notify_all();
    return true;
  }

  void flush() {
    std::unique_lock lock(mu_);
    if (std::this_thread::get_id() == thread_.get_id()) return;  // from a callback: would deadlock
    const std::uint64_t target = pushed_;
    cv_.wait(lock, [&] { return finished_ >= target || stopped_; });
  }

  void shutdown() {
    std::thread thread;
    {
      std::lock_guard lock(mu_);
      if (stopped_) return;
      stopping_ = true;
      cv_.notify_all();
      thread = std::move(thread_);
    }
    if (thread.joinable() && thread.get_id() != std::this_thread::get_id()) thread.join();
    std::lock_guard lock(mu_);
    stopped_ = true;
    cv_.notify_all();
  }

 private:
  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return !queue_.empty() || stopping_; });
      if (queue_.empty()) return;  // stopping, and everything queued has run
      std::function<void()> fn = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      {
        py::gil_scoped_acquire gil;
        try {
          fn();
        } catch (py::error_already_set& e) {
          e.discard_as_unraisable("ckpt callback");
        } catch (const std::exception& e) {
          PyErr_SetString(PyExc_RuntimeError, e.what());
          PyErr_WriteUnraisable(nullptr);
        }
        fn = nullptr;  // its captures (Python objects) are released with the GIL held
      }
      lock.lock();
      ++finished_;
      cv_.notify_all();
    }
  }

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::uint64_t pushed_ = 0;
  std::uint64_t finished_ = 0;
  bool stopping_ = false;
  bool stopped_ = false;
  std::thread thread_;
};

Dispatcher& dispatcher() {
  static auto* d = new Dispatcher();  // never destroyed: it may be used during static teardown
  return *d;
}

int python_level(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug: return 10;
    case spdlog::level::info: return 20;
    case spdlog::level::warn: return 30;
    case spdlog::level::err: return 40;
    case spdlog::level::critical: return 50;
    default: return 20;
  }
}

// Hands each record to logging.getLogger("ckpt") on the dispatcher (the logging thread may not
// hold the GIL); once the dispatcher has stopped (interpreter exit), writes to stderr.
class PythonSink : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    std::string text(msg.payload.begin(), msg.payload.end());
    const int level = python_level(msg.level);
    bool queued = dispatcher().push([text, level] {
      py::module_::import("logging").attr("getLogger")("ckpt").attr("log")(level, "%s", text);
    });
    if (!queued) std::fprintf(stderr, "ckpt: %s\n", text.c_str());
  }
  void flush_() override {}
};

}  // namespace

void dispatch(std::function<void()> fn) { dispatcher().push(std::move(fn)); }

void dispatch_flush() { dispatcher().flush(); }

void dispatch_shutdown() { dispatcher().shutdown(); }

void install_log_bridge() {
  auto sink = std::make_shared<PythonSink>();
  if (auto existing = spdlog::get("ckpt")) {
    existing->sinks().clear();
    existing->sinks().push_back(sink);
  } else {
    spdlog::register_logger(std::make_shared<spdlog::logger>("ckpt", sink));
  }
  log();  // the library's logger is now the bridged one
}

PyCallback::~PyCallback() {
  if (fn_ == nullptr) return;
  PyObject* fn = fn_;
  if (PyGILState_Check()) {
    Py_DECREF(fn);
  } else {
    // Released on the dispatcher; leaked when it has stopped (interpreter exit).
    dispatch([fn] { Py_DECREF(fn); });
  }
}

void PyCallback::call(py::object arg) {
  py::object fn = py::reinterpret_steal<py::object>(fn_);
  fn_ = nullptr;
  fn(std::move(arg));
}

}  // namespace ckpt::py_bind
