#pragma once
// JSON as checkpoints store it: metadata.json here, config.json through jobs/config_json.h.
//
// Boost.JSON 1.81 does not read back everything it writes:
//  - its serializer writes NaN and ±Infinity as the bare words NaN, Infinity, -Infinity, which its
//    parser (like every strict JSON parser) rejects, and it has no option for them;
//  - its parser turns decimals into doubles with two roundings: about one double in ten comes back
//    one ulp off;
//  - its parser refuses nesting deeper than 32 and strings that are not UTF-8, both of which its
//    serializer writes.
// So the writer encodes non-finite doubles (encode_json) and refuses, naming the key, what no
// reader accepts; parse_json reads numbers exactly and enforces the same limits (runtime/limits.h);
// decode_json undoes encode_json.
//
// The encoding (docs/design.md, "JSON files"): a non-finite double is the object
// {"$ckpt": "NaN"} ("-NaN", "Infinity", "-Infinity"; a NaN's payload is not kept). A user object
// that has the key "$ckpt" itself is wrapped as {"$ckpt": "object", "value": {...its members}},
// so no user data can be mistaken for a tag. Everything else is plain JSON, as Boost writes it.
#include <boost/json/value.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace ckpt {

inline constexpr std::string_view kJsonTagKey = "$ckpt";

// Parses `text` as the readers do: at most kMaxJsonDepth deep, strict UTF-8, doubles correctly
// rounded (std::from_chars). Sets `ec` on failure.
boost::json::value parse_json(std::string_view text, boost::system::error_code& ec);

// `v` with non-finite doubles and objects holding "$ckpt" encoded. Throws Error(invalid_argument)
// "<what> key 'a.b[2]': ..." for a string or key that is not UTF-8, or nesting deeper than
// kMaxJsonDepth once encoded. `what` names the document in errors ("metadata"); `key` and `depth`
// place `v` in a larger document (its key, and the arrays and objects around it).
boost::json::value encode_json(const boost::json::value& v, std::string_view what,
                               const std::string& key = {}, std::size_t depth = 0);
// The inverse of encode_json. Throws Error(invalid_argument) naming the key of a malformed tag or
// of nesting deeper than kMaxJsonDepth.
boost::json::value decode_json(const boost::json::value& v, std::string_view what,
                               const std::string& key = {}, std::size_t depth = 0);

// One double as encode_json writes it: a number, or the tag object when it is not finite.
boost::json::value encode_double(double d);
// The double a number or a non-finite tag stands for; nullopt for anything else.
std::optional<double> decode_double(const boost::json::value& v);

// Whether `s` is UTF-8 as RFC 3629 defines it (what the parser accepts).
bool is_valid_utf8(std::string_view s) noexcept;

// Keys in error messages: "a.b", "a.b[2]"; the root is "(root)".
std::string json_key(const std::string& prefix, std::string_view key);
std::string json_index(const std::string& prefix, std::size_t index);

}  // namespace ckpt
