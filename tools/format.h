#pragma once
// Rendering helpers of the `ckpt` tool: sizes, times, aligned text tables and JSON text.
#include <boost/json/value.hpp>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/byte_size.h"  // human_bytes

namespace ckpt::tools {

// Local time as ISO-8601 with the UTC offset, "2024-05-01T12:34:56+02:00"; "unknown" for 0.
std::string local_time_iso8601(std::int64_t unix_ns);

// "1a2b3c4d": CRC32C values as people compare them (fixed width, lower-case hex).
std::string crc_hex(std::uint32_t crc);

// Replaces line breaks with "; " so that an error message stays on one line.
std::string one_line(std::string_view text);

// A text table: a header row and data rows, columns padded to their widest cell. Columns marked
// right-aligned (numbers) pad on the left. The last column is never padded on the right.
class Table {
 public:
  explicit Table(std::vector<std::string> headers, std::vector<bool> right_aligned = {});
  void add_row(std::vector<std::string> cells);
  bool empty() const noexcept { return rows_.empty(); }
  // Every line starts with `indent`.
  std::string render(std::string_view indent = "") const;

 private:
  std::vector<std::string> headers_;
  std::vector<bool> right_;
  std::vector<std::vector<std::string>> rows_;
};

// JSON text indented by two spaces per level; every line after the first starts with `indent`.
std::string pretty_json(const boost::json::value& value, std::string_view indent = "");

}  // namespace ckpt::tools
