#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace ckpt {

// Element types. The numeric values are the on-disk enum (schemas/checkpoint.fbs): append only.
enum class DType : std::uint8_t {
  f64 = 0,
  f32,
  f16,
  bf16,
  f8_e4m3,
  f8_e5m2,
  i64,
  i32,
  i16,
  i8,
  u64,
  u32,
  u16,
  u8,
  boolean,
};

inline constexpr int kDTypeCount = 15;

std::size_t dtype_size(DType dtype) noexcept;
std::string_view to_string(DType dtype) noexcept;  // numpy-style names: "float32", "bfloat16", ...
std::optional<DType> parse_dtype(std::string_view name) noexcept;

// The C++ type a DType stands for, where C++ has one.
template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<double>() {
  return DType::f64;
}
template <>
constexpr DType dtype_of<float>() {
  return DType::f32;
}
template <>
constexpr DType dtype_of<std::int64_t>() {
  return DType::i64;
}
template <>
constexpr DType dtype_of<std::int32_t>() {
  return DType::i32;
}
template <>
constexpr DType dtype_of<std::int16_t>() {
  return DType::i16;
}
template <>
constexpr DType dtype_of<std::int8_t>() {
  return DType::i8;
}
template <>
constexpr DType dtype_of<std::uint64_t>() {
  return DType::u64;
}
template <>
constexpr DType dtype_of<std::uint32_t>() {
  return DType::u32;
}
template <>
constexpr DType dtype_of<std::uint16_t>() {
  return DType::u16;
}
template <>
constexpr DType dtype_of<std::uint8_t>() {
  return DType::u8;
}
template <>
constexpr DType dtype_of<bool>() {
  return DType::boolean;
}

}  // namespace ckpt
