#include "io/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace ckpt {

spdlog::logger& log() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    if (auto existing = spdlog::get("ckpt")) return existing;
    auto created = spdlog::stderr_color_mt("ckpt");
    return created;
  }();
  return *logger;
}

}  // namespace ckpt
