#pragma once
// Configs are plain structs described with Boost.Describe (BOOST_DESCRIBE_STRUCT) and converted
// to and from JSON here, strictly: an unknown key, a missing required shape or a wrong type is an
// Error(invalid_argument) that names the key by its full path ("optimizer.lr"). Keys missing from
// the JSON keep the struct's default. Supported members: bool, integers, floating point,
// std::string, std::vector, std::optional, std::map<std::string, T>, boost::json::value and
// nested described structs.
#include <boost/describe/members.hpp>
#include <boost/json.hpp>
#include <boost/mp11/algorithm.hpp>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "io/error.h"

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

}  // namespace detail

template <typename T>
boost::json::value config_to_json(const T& v);

template <typename T>
void config_from_json(const boost::json::value& j, T& out, const std::string& key = "");

template <typename T>
boost::json::value config_to_json(const T& v) {
  using namespace detail;
  if constexpr (std::is_same_v<T, bool> || std::is_arithmetic_v<T>) {
    return boost::json::value(v);
  } else if constexpr (std::is_same_v<T, std::string>) {
    return boost::json::value(v);
  } else if constexpr (std::is_same_v<T, boost::json::value>) {
    return v;
  } else if constexpr (is_optional<T>::value) {
    return v ? config_to_json(*v) : boost::json::value(nullptr);
  } else if constexpr (is_vector<T>::value) {
    boost::json::array a;
    for (const auto& e : v) a.push_back(config_to_json(e));
    return a;
  } else if constexpr (is_string_map<T>::value) {
    boost::json::object o;
    for (const auto& [k, e] : v) o[k] = config_to_json(e);
    return o;
  } else {
    static_assert(is_described_struct<T>, "config member type not supported");
    boost::json::object o;
    boost::mp11::mp_for_each<boost::describe::describe_members<T, boost::describe::mod_public>>(
        [&](auto d) { o[d.name] = config_to_json(v.*d.pointer); });
    return o;
  }
}

template <typename T>
void config_from_json(const boost::json::value& j, T& out, const std::string& key) {
  using namespace detail;
  if constexpr (std::is_same_v<T, bool>) {
    if (!j.is_bool()) type_error(key, "a boolean", j);
    out = j.as_bool();
  } else if constexpr (std::is_integral_v<T>) {
    std::int64_t n = 0;
    if (j.is_int64()) {
      n = j.as_int64();
    } else if (j.is_uint64() && j.as_uint64() <= static_cast<std::uint64_t>(INT64_MAX)) {
      n = static_cast<std::int64_t>(j.as_uint64());
    } else {
      type_error(key, "an integer", j);
    }
    if (n < static_cast<std::int64_t>(std::numeric_limits<T>::min()) ||
        (n > 0 && static_cast<std::uint64_t>(n) > static_cast<std::uint64_t>(std::numeric_limits<T>::max()))) {
      type_error(key, "an integer in range", j);
    }
    out = static_cast<T>(n);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (j.is_double()) out = static_cast<T>(j.as_double());
    else if (j.is_int64()) out = static_cast<T>(j.as_int64());
    else if (j.is_uint64()) out = static_cast<T>(j.as_uint64());
    else type_error(key, "a number", j);
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!j.is_string()) type_error(key, "a string", j);
    out = std::string(j.as_string());
  } else if constexpr (std::is_same_v<T, boost::json::value>) {
    out = j;
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

}  // namespace ckpt::jobs
