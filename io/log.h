#pragma once
// The library logs through one spdlog logger named "ckpt"; applications may replace it with
// spdlog::register_logger before first use.
#include <spdlog/spdlog.h>

#include <memory>

namespace ckpt {
spdlog::logger& log();
}  // namespace ckpt
