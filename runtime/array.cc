#include "runtime/array.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <limits>

#include "io/error.h"

namespace ckpt {

std::uint64_t shape_numel(const Shape& shape) {
  // A zero dimension makes the array empty whatever the others are (as in numpy).
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  std::uint64_t n = 1;
  for (std::uint64_t d : shape) {
    if (d != 0 && n > std::numeric_limits<std::uint64_t>::max() / d) {
      throw Error(Errc::invalid_argument, "shape " + shape_to_string(shape) + " overflows");
    }
    n *= d;
  }
  return n;
}

std::uint64_t array_nbytes(DType dtype, const Shape& shape) {
  std::uint64_t n = shape_numel(shape);
  std::size_t size = dtype_size(dtype);
  if (size == 0) throw Error(Errc::invalid_argument, "invalid dtype");
  // Limit to what a 64-bit address space and off_t can hold.
  if (n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) / size) {
    throw Error(Errc::invalid_argument, "array of shape " + shape_to_string(shape) + " overflows");
  }
  return n * size;
}

std::string shape_to_string(const Shape& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

Array::Array(DType dtype, Shape shape, std::byte* data, bool read_only)
    : dtype_(dtype), shape_(std::move(shape)), data_(data), read_only_(read_only) {
  numel_ = shape_numel(shape_);
  nbytes_ = array_nbytes(dtype_, shape_);
  if (data_ == nullptr && nbytes_ != 0) {
    throw Error(Errc::invalid_argument, "array view of null memory");
  }
}

Array Array::view(DType dtype, Shape shape, void* data) {
  return Array(dtype, std::move(shape), static_cast<std::byte*>(data), false);
}

Array Array::view(DType dtype, Shape shape, const void* data) {
  return Array(dtype, std::move(shape), static_cast<std::byte*>(const_cast<void*>(data)), true);
}

Array Array::zeros(DType dtype, Shape shape) {
  std::uint64_t bytes = array_nbytes(dtype, shape);
  auto owned = std::make_shared<std::byte[]>(bytes == 0 ? 1 : bytes);
  Array a(dtype, std::move(shape), owned.get(), false);
  a.owned_ = std::move(owned);
  return a;
}

std::byte* Array::mutable_data() const {
  if (read_only_) throw Error(Errc::invalid_argument, "array is a read-only view");
  return data_;
}

}  // namespace ckpt
