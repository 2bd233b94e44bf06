#include "runtime/dtype.h"

#include <array>

namespace ckpt {

namespace {
struct Info {
  std::string_view name;
  std::size_t size;
};
constexpr std::array<Info, kDTypeCount> kInfo{{
    {"float64", 8},
    {"float32", 4},
    {"float16", 2},
    {"bfloat16", 2},
    {"float8_e4m3", 1},
    {"float8_e5m2", 1},
    {"int64", 8},
    {"int32", 4},
    {"int16", 2},
    {"int8", 1},
    {"uint64", 8},
    {"uint32", 4},
    {"uint16", 2},
    {"uint8", 1},
    {"bool", 1},
}};
}  // namespace

std::size_t dtype_size(DType dtype) noexcept {
  auto i = static_cast<std::size_t>(dtype);
  return i < kInfo.size() ? kInfo[i].size : 0;
}

std::string_view to_string(DType dtype) noexcept {
  auto i = static_cast<std::size_t>(dtype);
  return i < kInfo.size() ? kInfo[i].name : "invalid";
}

std::optional<DType> parse_dtype(std::string_view name) noexcept {
  for (std::size_t i = 0; i < kInfo.size(); ++i) {
    if (kInfo[i].name == name) return static_cast<DType>(i);
  }
  return std::nullopt;
}

}  // namespace ckpt
