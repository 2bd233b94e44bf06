#include "jobs/config_json.h"

namespace ckpt::jobs {

boost::json::value merge_patch(const boost::json::value& target, const boost::json::value& patch) {
  if (!patch.is_object()) return patch;
  boost::json::object result = target.is_object() ? target.as_object() : boost::json::object();
  for (const auto& [key, value] : patch.as_object()) {
    if (value.is_null()) {
      result.erase(key);
    } else {
      const auto* existing = result.if_contains(key);
      result[key] = merge_patch(existing ? *existing : boost::json::value(nullptr), value);
    }
  }
  return result;
}

}  // namespace ckpt::jobs
