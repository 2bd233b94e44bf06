#include "io/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace ckpt {

Log& log() {
  static Log front([] {
    if (auto existing = spdlog::get("ckpt")) return existing;
    return spdlog::stderr_color_mt("ckpt");
  }());
  return front;
}

void Log::set_level(Level level) { logger_->set_level(level); }

void Log::flush() { logger_->flush(); }

std::vector<spdlog::sink_ptr>& Log::sinks() { return logger_->sinks(); }

void Log::emit(Level level, fmt::string_view format, fmt::format_args args) {
  if (!logger_->should_log(level)) return;
  // As with spdlog's own formatting calls, no failure escapes a log call: the library logs from
  // destructors and noexcept paths. (The format strings are checked at compile time; what is
  // left is running out of memory.)
  try {
    const std::string message = fmt::vformat(format, args);
    logger_->log(level, spdlog::string_view_t(message.data(), message.size()));
  } catch (...) {
  }
}

}  // namespace ckpt
