#include "runtime/json.h"

#include <fmt/format.h>

#include <boost/json/basic_parser_impl.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value_stack.hpp>
#include <charconv>
#include <cmath>
#include <limits>

#include "io/error.h"
#include "runtime/limits.h"

namespace ckpt {

namespace json = boost::json;

namespace {

// boost::json::parser's own handler (a value_stack), except that doubles are converted from the
// number's text with std::from_chars, which rounds correctly.
class ExactHandler {
 public:
  static constexpr std::size_t max_object_size = json::object::max_size();
  static constexpr std::size_t max_array_size = json::array::max_size();
  static constexpr std::size_t max_key_size = json::string::max_size();
  static constexpr std::size_t max_string_size = json::string::max_size();

  json::value_stack st;

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_object_begin(json::error_code&) { return true; }
  bool on_object_end(std::size_t n, json::error_code&) {
    st.push_object(n);
    return true;
  }
  bool on_array_begin(json::error_code&) { return true; }
  bool on_array_end(std::size_t n, json::error_code&) {
    st.push_array(n);
    return true;
  }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    st.push_chars(s);
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code&) {
    st.push_key(s);
    return true;
  }
  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    st.push_chars(s);
    return true;
  }
  bool on_string(json::string_view s, std::size_t, json::error_code&) {
    st.push_string(s);
    return true;
  }
  bool on_number_part(json::string_view s, json::error_code&) {
    number_.append(s.data(), s.size());
    return true;
  }
  bool on_int64(std::int64_t i, json::string_view, json::error_code&) {
    number_.clear();
    st.push_int64(i);
    return true;
  }
  bool on_uint64(std::uint64_t u, json::string_view, json::error_code&) {
    number_.clear();
    st.push_uint64(u);
    return true;
  }
  bool on_double(double d, json::string_view s, json::error_code&) {
    number_.append(s.data(), s.size());
    double exact = 0;
    auto [end, ec] = std::from_chars(number_.data(), number_.data() + number_.size(), exact);
    // Out of range keeps Boost's value (±inf or 0), which the writer never produces anyway.
    if (ec == std::errc{} && end == number_.data() + number_.size()) d = exact;
    number_.clear();
    st.push_double(d);
    return true;
  }
  bool on_bool(bool b, json::error_code&) {
    st.push_bool(b);
    return true;
  }
  bool on_null(json::error_code&) {
    st.push_null();
    return true;
  }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  std::string number_;
};

constexpr std::string_view kNaN = "NaN";
constexpr std::string_view kNegNaN = "-NaN";
constexpr std::string_view kInf = "Infinity";
constexpr std::string_view kNegInf = "-Infinity";
constexpr std::string_view kObjectTag = "object";
constexpr std::string_view kValueKey = "value";

std::string depth_message() {
  return fmt::format("nested deeper than {} arrays and objects (the readers' limit)",
                     kMaxJsonDepth);
}

class Coder {
 public:
  explicit Coder(std::string_view what) : what_(what) {}

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw Error(Errc::invalid_argument,
                fmt::format("{} key '{}': {}", what_, key.empty() ? "(root)" : key, why));
  }

  // `depth`: containers enclosing v once encoded. Recursion stops at kMaxJsonDepth + 1, so a
  // value of any depth is refused without exhausting the stack.
  json::value encode(const json::value& v, const std::string& key, std::size_t depth) const {
    switch (v.kind()) {
      case json::kind::double_: {
        if (std::isfinite(v.get_double())) return v;
        if (depth + 1 > kMaxJsonDepth) fail(key, depth_message());
        return encode_double(v.get_double());
      }
      case json::kind::string:
        if (!is_valid_utf8(v.get_string())) fail(key, "string is not valid UTF-8");
        return v;
      case json::kind::array: {
        if (depth + 1 > kMaxJsonDepth) fail(key, depth_message());
        json::array out;
        out.reserve(v.get_array().size());
        std::size_t i = 0;
        for (const auto& e : v.get_array())
          out.push_back(encode(e, json_index(key, i++), depth + 1));
        return out;
      }
      case json::kind::object: {
        const json::object& o = v.get_object();
        const bool wrap = o.contains(kJsonTagKey);
        const std::size_t inner = depth + (wrap ? 2 : 1);
        if (inner > kMaxJsonDepth) fail(key, depth_message());
        json::object out;
        out.reserve(o.size());
        for (const auto& [k, e] : o) {
          std::string sub = json_key(key, k);
          if (!is_valid_utf8(k)) fail(sub, "key is not valid UTF-8");
          out.emplace(k, encode(e, sub, inner));
        }
        if (!wrap) return out;
        return json::object{{kJsonTagKey, kObjectTag}, {kValueKey, std::move(out)}};
      }
      default:
        return v;
    }
  }

  json::value decode(const json::value& v, const std::string& key, std::size_t depth) const {
    if (v.is_array()) {
      if (depth + 1 > kMaxJsonDepth) fail(key, depth_message());
      json::array out;
      out.reserve(v.get_array().size());
      std::size_t i = 0;
      for (const auto& e : v.get_array()) out.push_back(decode(e, json_index(key, i++), depth + 1));
      return out;
    }
    if (!v.is_object()) return v;
    const json::object& o = v.get_object();
    const json::value* tag = o.if_contains(kJsonTagKey);
    if (tag == nullptr) return decode_members(o, key, depth + 1);
    if (auto d = decode_double(v)) return *d;
    const json::value* inner = o.if_contains(kValueKey);
    if (tag->is_string() && tag->get_string() == kObjectTag && o.size() == 2 && inner != nullptr &&
        inner->is_object()) {
      return decode_members(inner->get_object(), key, depth + 2);
    }
    fail(key, fmt::format("malformed '{}' tag {}", kJsonTagKey, json::serialize(v)));
  }

 private:
  json::object decode_members(const json::object& o, const std::string& key,
                              std::size_t depth) const {
    if (depth > kMaxJsonDepth) fail(key, depth_message());
    json::object out;
    out.reserve(o.size());
    for (const auto& [k, e] : o) out.emplace(k, decode(e, json_key(key, k), depth));
    return out;
  }

  std::string_view what_;
};

}  // namespace

json::value parse_json(std::string_view text, boost::system::error_code& ec) {
  json::parse_options options;
  options.max_depth = kMaxJsonDepth;
  json::basic_parser<ExactHandler> parser(options);
  parser.handler().st.reset();
  std::size_t n = parser.write_some(false, text.data(), text.size(), ec);
  if (ec) return nullptr;
  if (n < text.size()) {
    ec = json::error::extra_data;
    return nullptr;
  }
  return parser.handler().st.release();
}

json::value encode_json(const json::value& v, std::string_view what, const std::string& key,
                        std::size_t depth) {
  return Coder(what).encode(v, key, depth);
}

json::value decode_json(const json::value& v, std::string_view what, const std::string& key,
                        std::size_t depth) {
  return Coder(what).decode(v, key, depth);
}

json::value encode_double(double d) {
  if (std::isfinite(d)) return d;
  std::string_view word =
      std::isnan(d) ? (std::signbit(d) ? kNegNaN : kNaN) : (d < 0 ? kNegInf : kInf);
  return json::object{{kJsonTagKey, word}};
}

std::optional<double> decode_double(const json::value& v) {
  if (v.is_double()) return v.get_double();
  if (v.is_int64()) return static_cast<double>(v.get_int64());
  if (v.is_uint64()) return static_cast<double>(v.get_uint64());
  if (!v.is_object() || v.get_object().size() != 1) return std::nullopt;
  const json::value* tag = v.get_object().if_contains(kJsonTagKey);
  if (tag == nullptr || !tag->is_string()) return std::nullopt;
  std::string_view word = tag->get_string();
  constexpr double kInfinity = std::numeric_limits<double>::infinity();
  constexpr double kQuietNaN = std::numeric_limits<double>::quiet_NaN();
  if (word == kNaN) return kQuietNaN;
  if (word == kNegNaN) return -kQuietNaN;
  if (word == kInf) return kInfinity;
  if (word == kNegInf) return -kInfinity;
  return std::nullopt;
}

bool is_valid_utf8(std::string_view s) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    unsigned c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    // RFC 3629, table 3-7 of the Unicode standard: no overlong forms, no surrogates, no code
    // point above U+10FFFF.
    std::size_t n = 0;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
    } else if (c == 0xE0) {
      n = 2, lo = 0xA0;
    } else if (c == 0xED) {
      n = 2, hi = 0x9F;
    } else if (c >= 0xE1 && c <= 0xEF) {
      n = 2;
    } else if (c == 0xF0) {
      n = 3, lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
      n = 3;
    } else if (c == 0xF4) {
      n = 3, hi = 0x8F;
    } else {
      return false;
    }
    if (static_cast<std::size_t>(end - p) <= n || p[1] < lo || p[1] > hi) return false;
    for (std::size_t i = 2; i <= n; ++i) {
      if ((p[i] & 0xC0) != 0x80) return false;
    }
    p += n + 1;
  }
  return true;
}

std::string json_key(const std::string& prefix, std::string_view key) {
  return prefix.empty() ? std::string(key) : prefix + "." + std::string(key);
}

std::string json_index(const std::string& prefix, std::size_t index) {
  return fmt::format("{}[{}]", prefix, index);
}

}  // namespace ckpt
