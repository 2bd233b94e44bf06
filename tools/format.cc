#include "tools/format.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <boost/json/serialize.hpp>
#include <ctime>

namespace ckpt::tools {

std::string local_time_iso8601(std::int64_t unix_ns) {
  if (unix_ns == 0) return "unknown";
  // Floor division, so that times before 1970 do not round towards the epoch.
  std::int64_t secs = unix_ns / 1'000'000'000;
  if (unix_ns % 1'000'000'000 < 0) --secs;
  std::time_t t = static_cast<std::time_t>(secs);
  std::tm tm{};
  if (::localtime_r(&t, &tm) == nullptr) return fmt::format("@{}ns", unix_ns);
  std::array<char, 32> buf{};
  std::size_t n = std::strftime(buf.data(), buf.size(), "%Y-%m-%dT%H:%M:%S", &tm);
  long offset_min = tm.tm_gmtoff / 60;
  char sign = offset_min < 0 ? '-' : '+';
  offset_min = offset_min < 0 ? -offset_min : offset_min;
  return fmt::format("{}{}{:02}:{:02}", std::string_view(buf.data(), n), sign, offset_min / 60,
                     offset_min % 60);
}

std::string crc_hex(std::uint32_t crc) { return fmt::format("{:08x}", crc); }

std::string one_line(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\r') continue;
    if (text[i] != '\n') {
      out += text[i];
      continue;
    }
    out += "; ";
    while (i + 1 < text.size() && (text[i + 1] == ' ' || text[i + 1] == '\t')) ++i;
  }
  return out;
}

Table::Table(std::vector<std::string> headers, std::vector<bool> right_aligned)
    : headers_(std::move(headers)), right_(std::move(right_aligned)) {
  right_.resize(headers_.size(), false);
}

void Table::add_row(std::vector<std::string> cells) {
  cells.resize(headers_.size());
  rows_.push_back(std::move(cells));
}

std::string Table::render(std::string_view indent) const {
  std::vector<std::size_t> width(headers_.size());
  for (std::size_t c = 0; c < headers_.size(); ++c) width[c] = headers_[c].size();
  for (const auto& row : rows_) {
    for (std::size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    std::string text(indent);
    for (std::size_t c = 0; c < cells.size(); ++c) {
      bool last = c + 1 == cells.size();
      if (right_[c]) {
        text += fmt::format("{:>{}}", cells[c], width[c]);
      } else if (last) {
        text += cells[c];
      } else {
        text += fmt::format("{:<{}}", cells[c], width[c]);
      }
      if (!last) text += "  ";
    }
    while (text.size() > indent.size() && text.back() == ' ') text.pop_back();
    out += text;
    out += '\n';
  };
  line(headers_);
  for (const auto& row : rows_) line(row);
  return out;
}

namespace {

void pretty(const boost::json::value& v, std::string& out, std::string& prefix) {
  if (v.is_object()) {
    const auto& obj = v.as_object();
    if (obj.empty()) {
      out += "{}";
      return;
    }
    out += "{\n";
    prefix += "  ";
    bool first = true;
    for (const auto& kv : obj) {
      if (!first) out += ",\n";
      first = false;
      out += prefix;
      out += boost::json::serialize(boost::json::string_view(kv.key()));
      out += ": ";
      pretty(kv.value(), out, prefix);
    }
    prefix.resize(prefix.size() - 2);
    out += '\n';
    out += prefix;
    out += '}';
  } else if (v.is_array()) {
    const auto& arr = v.as_array();
    if (arr.empty()) {
      out += "[]";
      return;
    }
    out += "[\n";
    prefix += "  ";
    bool first = true;
    for (const auto& e : arr) {
      if (!first) out += ",\n";
      first = false;
      out += prefix;
      pretty(e, out, prefix);
    }
    prefix.resize(prefix.size() - 2);
    out += '\n';
    out += prefix;
    out += ']';
  } else {
    out += boost::json::serialize(v);
  }
}

}  // namespace

std::string pretty_json(const boost::json::value& value, std::string_view indent) {
  std::string out;
  std::string prefix(indent);
  pretty(value, out, prefix);
  return out;
}

}  // namespace ckpt::tools
