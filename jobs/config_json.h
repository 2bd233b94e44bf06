#pragma once
// Configs are plain structs described with Boost.Describe (BOOST_DESCRIBE_STRUCT) and converted
// to and from JSON here, strictly: an unknown key, a missing required shape or a wrong type is an
// Error(invalid_argument) that names the key by its full path ("optimizer.lr"). Keys missing from
// the JSON keep the struct's default. Supported members: bool, integers, floating point,
// std::string, std::vector, std::optional, std::map<std::string, T>, boost::json::value and
// nested described structs.
//
// Every value a config holds converts to JSON and back exactly (with a reader that parses as
// ckpt::parse_json does), or config_to_json refuses it naming the key: integers keep their full
// range (uint64 above 2^63 included), non-finite floating point values use the encoding of
// runtime/json.h ({"$ckpt": "NaN"}, as metadata does), strings must be UTF-8, and config.json
// may nest at most kMaxJsonDepth deep. overlay_config applies a runtime_cfg patch the way a
// Python caller means it: null empties an optional and is an error anywhere else.
#include <boost/describe/members.hpp>
#include <boost/json.hpp>
#include <boost/mp11/algorithm.hpp>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "io/error.h"
#include "runtime/json.h"
#include "runtime/limits.h"

namespace ckpt::jobs {

namespace detail {

template <typename T> struct is_vector : std::false_type {};
template <typename T> struct is_vector<std::vector<T>> : std::true_type {};
template <typename T> struct is_optional : std::false_type {};
template <typename T> struct is_optional<std::optional<T>> : std::true_type {};
template <typename T> struct is_string_map : std::false_type {};
template <typename T> struct is_string_map<std::map<std::string, T>> : std::true_type {};

template <typename T>
constexpr bool is_described_struct =
    boost::describe::has_describe_members<T>::value && std::is_class_v<T>;

[[noreturn]] inline void type_error(const std::string& key, const char* expected,
                                    const boost::json::value& got) {
  throw Error(Errc::invalid_argument, "config key '" + key + "': expected " + expected + ", got " +
                                          boost::json::serialize(got));
}

inline std::string join_key(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

inline constexpr std::string_view kConfigWhat = "config";

[[noreturn]] inline void refuse(const std::string& key, const std::string& why) {
  throw Error(Errc::invalid_argument,
              "config key '" + (key.empty() ? std::string("(root)") : key) + "': " + why);
}

inline void check_depth(const std::string& key, std::size_t depth) {
  if (depth > kMaxJsonDepth) {
    refuse(key, "config nests deeper than " + std::to_string(kMaxJsonDepth) +
                    " arrays and objects (the readers' limit)");
  }
}

inline void check_utf8(const std::string& key, std::string_view s, const char* what) {
  if (is_valid_utf8(s)) return;
  // Built in place: `std::string(what) + "..."` draws a false -Warray-bounds from g++ 12 at -O1
  // when this header follows the tests' precompiled header.
  std::string why = what;
  why += " is not valid UTF-8";
  refuse(key, why);
}

// `depth`: the arrays and objects around v in config.json.
template <typename T>
boost::json::value to_json(const T& v, const std::string& key, std::size_t depth) {
  if constexpr (std::is_same_v<T, bool> || std::is_integral_v<T>) {
    return boost::json::value(v);
  } else if constexpr (std::is_floating_point_v<T>) {
    static_assert(sizeof(T) <= sizeof(double), "long double config members are not supported");
    if (!std::isfinite(v)) check_depth(key, depth + 1);
    return encode_double(static_cast<double>(v));
  } else if constexpr (std::is_same_v<T, std::string>) {
    check_utf8(key, v, "string");
    return boost::json::value(v);
  } else if constexpr (std::is_same_v<T, boost::json::value>) {
    return encode_json(v, kConfigWhat, key, depth);
  } else if constexpr (is_optional<T>::value) {
    return v ? to_json(*v, key, depth) : boost::json::value(nullptr);
  } else if constexpr (is_vector<T>::value) {
    check_depth(key, depth + 1);
    boost::json::array a;
    std::size_t i = 0;
    for (const auto& e : v)
      a.push_back(to_json(e, key + "[" + std::to_string(i++) + "]", depth + 1));
    return a;
  } else if constexpr (is_string_map<T>::value) {
    check_depth(key, depth + 1);
    boost::json::object o;
    for (const auto& [k, e] : v) {
      std::string sub = join_key(key, k);
      check_utf8(sub, k, "key");
      o[k] = to_json(e, sub, depth + 1);
    }
    return o;
  } else {
    static_assert(is_described_struct<T>, "config member type not supported");
    check_depth(key, depth + 1);
    boost::json::object o;
    boost::mp11::mp_for_each<boost::describe::describe_members<T, boost::describe::mod_public>>(
        [&](auto d) { o[d.name] = to_json(v.*d.pointer, join_key(key, d.name), depth + 1); });
    return o;
  }
}

}  // namespace detail

template <typename T>
boost::json::value config_to_json(const T& v);

template <typename T>
void config_from_json(const boost::json::value& j, T& out, const std::string& key = "");

// Throws Error(invalid_argument) naming the key of a value that could not be read back.
template <typename T>
boost::json::value config_to_json(const T& v) {
  return detail::to_json(v, std::string(), 0);
}

template <typename T>
void config_from_json(const boost::json::value& j, T& out, const std::string& key) {
  using namespace detail;
  if constexpr (std::is_same_v<T, bool>) {
    if (!j.is_bool()) type_error(key, "a boolean", j);
    out = j.as_bool();
  } else if constexpr (std::is_integral_v<T>) {
    // Compared as the JSON holds them: int64, or uint64 above INT64_MAX.
    bool in_range = false;
    if (j.is_int64()) {
      std::int64_t n = j.get_int64();
      in_range = std::is_signed_v<T>
                     ? n >= static_cast<std::int64_t>(std::numeric_limits<T>::min()) &&
                           n <= static_cast<std::int64_t>(std::numeric_limits<T>::max())
                     : n >= 0 && static_cast<std::uint64_t>(n) <=
                                     static_cast<std::uint64_t>(std::numeric_limits<T>::max());
      if (in_range) out = static_cast<T>(n);
    } else if (j.is_uint64()) {
      std::uint64_t n = j.get_uint64();
      in_range = n <= static_cast<std::uint64_t>(std::numeric_limits<T>::max());
      if (in_range) out = static_cast<T>(n);
    } else {
      type_error(key, "an integer", j);
    }
    if (!in_range) type_error(key, "an integer in range", j);
  } else if constexpr (std::is_floating_point_v<T>) {
    std::optional<double> d = decode_double(j);
    if (!d) type_error(key, "a number", j);
    if (std::isfinite(*d) && std::fabs(*d) > static_cast<double>(std::numeric_limits<T>::max())) {
      type_error(key, "a number in range", j);
    }
    out = static_cast<T>(*d);
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!j.is_string()) type_error(key, "a string", j);
    out = std::string(j.as_string());
  } else if constexpr (std::is_same_v<T, boost::json::value>) {
    out = decode_json(j, kConfigWhat, key);
  } else if constexpr (is_optional<T>::value) {
    if (j.is_null()) {
      out.reset();
    } else {
      typename T::value_type inner{};
      config_from_json(j, inner, key);
      out = std::move(inner);
    }
  } else if constexpr (is_vector<T>::value) {
    if (!j.is_array()) type_error(key, "an array", j);
    T result;
    std::size_t i = 0;
    for (const auto& e : j.as_array()) {
      typename T::value_type item{};
      config_from_json(e, item, key + "[" + std::to_string(i++) + "]");
      result.push_back(std::move(item));
    }
    out = std::move(result);
  } else if constexpr (is_string_map<T>::value) {
    if (!j.is_object()) type_error(key, "an object", j);
    T result;
    for (const auto& [k, e] : j.as_object()) {
      typename T::mapped_type item{};
      config_from_json(e, item, join_key(key, std::string(k)));
      result.emplace(std::string(k), std::move(item));
    }
    out = std::move(result);
  } else {
    static_assert(is_described_struct<T>, "config member type not supported");
    if (!j.is_object()) type_error(key.empty() ? std::string("(root)") : key, "an object", j);
    const auto& o = j.as_object();
    for (const auto& [k, e] : o) {
      bool known = false;
      boost::mp11::mp_for_each<boost::describe::describe_members<T, boost::describe::mod_public>>(
          [&](auto d) { known = known || k == d.name; });
      if (!known) {
        throw Error(Errc::invalid_argument,
                    "unknown config key '" + join_key(key, std::string(k)) + "'");
      }
    }
    boost::mp11::mp_for_each<boost::describe::describe_members<T, boost::describe::mod_public>>(
        [&](auto d) {
          if (const auto* e = o.if_contains(d.name)) {
            config_from_json(*e, out.*d.pointer, join_key(key, d.name));
          }
        });
  }
}

template <typename T>
T config_from_json(const boost::json::value& j) {
  T out{};
  config_from_json(j, out);
  return out;
}

// RFC 7386 JSON merge patch: objects merge key by key, null removes a key, anything else
// replaces the target.
boost::json::value merge_patch(const boost::json::value& target, const boost::json::value& patch);

namespace detail {

// Overlays `patch` on `base` (the JSON of a T, or null) as a T's JSON.
template <typename T>
boost::json::value overlay(const boost::json::value* base, const boost::json::value& patch,
                           const std::string& key) {
  if constexpr (is_optional<T>::value) {
    if (patch.is_null()) return nullptr;
    return overlay<typename T::value_type>(base != nullptr && base->is_null() ? nullptr : base,
                                           patch, key);
  } else if constexpr (std::is_same_v<T, boost::json::value>) {
    return merge_patch(base != nullptr ? *base : boost::json::value(nullptr), patch);
  } else if constexpr (is_string_map<T>::value || is_described_struct<T>) {
    if (!patch.is_object())
      type_error(key.empty() ? std::string("(root)") : key, "an object", patch);
    boost::json::object result;
    if (base != nullptr && base->is_object()) result = base->get_object();
    for (const auto& [k, e] : patch.get_object()) {
      std::string sub = join_key(key, std::string(k));
      if constexpr (is_string_map<T>::value) {
        using M = typename T::mapped_type;
        if (e.is_null() && !is_optional<M>::value) {
          result.erase(k);  // a map entry set to null is removed, as in a merge patch
        } else {
          boost::json::value merged = overlay<M>(result.if_contains(k), e, sub);
          result[k] = std::move(merged);
        }
      } else {
        bool known = false;
        boost::mp11::mp_for_each<boost::describe::describe_members<T, boost::describe::mod_public>>(
            [&](auto d) {
              if (k != d.name) return;
              known = true;
              using M = std::remove_cvref_t<decltype(std::declval<T&>().*d.pointer)>;
              if (e.is_null() && !is_optional<M>::value && !std::is_same_v<M, boost::json::value>) {
                refuse(sub, "null, but only an optional member can be set to none");
              }
              boost::json::value merged = overlay<M>(result.if_contains(k), e, sub);
              result[k] = std::move(merged);
            });
        if (!known) throw Error(Errc::invalid_argument, "unknown config key '" + sub + "'");
      }
    }
    return result;
  } else {
    if (patch.is_null()) refuse(key, "null, but only an optional member can be set to none");
    return patch;  // scalars, strings and arrays are replaced whole
  }
}

}  // namespace detail

// The JSON of a T: `config` (a T's JSON, as saved in config.json) with `patch` applied the way a
// runtime_cfg is meant. Objects of described structs and maps merge key by key; null sets an
// std::optional member to none (not back to its default), removes an entry of a map, and is an
// Error(invalid_argument) naming the key for any other member; a boost::json::value member
// takes the patch as an RFC 7386 merge patch; anything else replaces the value. Unknown keys are
// errors naming the key; wrong types are left to config_from_json, which names them.
template <typename T>
boost::json::value overlay_config(const boost::json::value& config,
                                  const boost::json::value& patch) {
  return detail::overlay<T>(&config, patch, std::string());
}
}  // namespace ckpt::jobs
