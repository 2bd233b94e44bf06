#pragma once
// Array: a dense, row-major n-d array of one dtype in host memory. Either a view of memory the
// caller owns (the usual case: the training loop's parameters) or memory the Array owns.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/dtype.h"

namespace ckpt {

using Shape = std::vector<std::uint64_t>;

// Elements of `shape`; throws Error(invalid_argument) when the product overflows.
std::uint64_t shape_numel(const Shape& shape);
// Bytes of an array of `dtype` and `shape`; throws Error(invalid_argument) on overflow.
std::uint64_t array_nbytes(DType dtype, const Shape& shape);
std::string shape_to_string(const Shape& shape);  // "[2, 3]"

class Array {
 public:
  Array() = default;

  // A view of `data`, which must outlive the Array and hold nbytes() bytes.
  static Array view(DType dtype, Shape shape, void* data);
  // A read-only view: it can be saved, not restored into.
  static Array view(DType dtype, Shape shape, const void* data);
  // Owned, zero-filled memory.
  static Array zeros(DType dtype, Shape shape);

  template <typename T>
  static Array view(std::span<T> values, Shape shape) {
    return view(dtype_of<std::remove_const_t<T>>(), std::move(shape), values.data());
  }

  DType dtype() const noexcept { return dtype_; }
  const Shape& shape() const noexcept { return shape_; }
  std::uint64_t numel() const noexcept { return numel_; }
  std::uint64_t nbytes() const noexcept { return nbytes_; }
  bool read_only() const noexcept { return read_only_; }
  bool owns_memory() const noexcept { return owned_ != nullptr; }
  // The owned memory (null for a view): holding it keeps the bytes alive.
  const std::shared_ptr<std::byte[]>& owner() const noexcept { return owned_; }

  const std::byte* data() const noexcept { return data_; }
  std::byte* mutable_data() const;  // throws Error(invalid_argument) for a read-only view

  template <typename T>
  std::span<T> as() const {
    return {reinterpret_cast<T*>(mutable_data()), static_cast<std::size_t>(numel_)};
  }

 private:
  Array(DType dtype, Shape shape, std::byte* data, bool read_only);

  DType dtype_ = DType::u8;
  Shape shape_;
  std::uint64_t numel_ = 0;
  std::uint64_t nbytes_ = 0;
  std::byte* data_ = nullptr;
  bool read_only_ = false;
  std::shared_ptr<std::byte[]> owned_;
};

}  // namespace ckpt
