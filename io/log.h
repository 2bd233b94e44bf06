#pragma once
// The library logs through one spdlog logger named "ckpt"; applications may replace it with
// spdlog::register_logger before first use.
//
// log() returns a thin front of that logger. Its debug/info/warn/error/critical check the level,
// then format with fmt::vformat (compiled into libfmt) and hand spdlog the finished message.
// spdlog's own formatting calls instantiate fmt's whole formatting engine (integer, float and
// padding writers: about 150 KB of code) in every translation unit that logs, and compiling that
// code was most of the compile time of the small files (io/crash_point.cc under ASan: 18.7 s
// before this front, 3.4 s after). Through it a call costs only its argument list.
#include <fmt/core.h>
#include <spdlog/common.h>

#include <memory>
#include <utility>
#include <vector>

namespace spdlog {
class logger;
}  // namespace spdlog

namespace ckpt {

class Log {
 public:
  using Level = spdlog::level::level_enum;

  template <class... A>
  void debug(fmt::format_string<A...> f, A&&... a) {
    emit(spdlog::level::debug, f, fmt::make_format_args(a...));
  }
  template <class... A>
  void info(fmt::format_string<A...> f, A&&... a) {
    emit(spdlog::level::info, f, fmt::make_format_args(a...));
  }
  template <class... A>
  void warn(fmt::format_string<A...> f, A&&... a) {
    emit(spdlog::level::warn, f, fmt::make_format_args(a...));
  }
  template <class... A>
  void error(fmt::format_string<A...> f, A&&... a) {
    emit(spdlog::level::err, f, fmt::make_format_args(a...));
  }
  template <class... A>
  void critical(fmt::format_string<A...> f, A&&... a) {
    emit(spdlog::level::critical, f, fmt::make_format_args(a...));
  }

  void set_level(Level level);
  void flush();
  std::vector<spdlog::sink_ptr>& sinks();
  spdlog::logger& logger() { return *logger_; }

 private:
  friend Log& log();
  explicit Log(std::shared_ptr<spdlog::logger> logger) : logger_(std::move(logger)) {}
  // Formats only when `level` is enabled.
  void emit(Level level, fmt::string_view format, fmt::format_args args);

  // Held here, so the logger stays alive however spdlog's registry changes later.
  std::shared_ptr<spdlog::logger> logger_;
};

Log& log();

}  // namespace ckpt
