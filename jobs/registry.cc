#include "jobs/registry.h"

#include <map>
#include <mutex>

#include "io/error.h"

namespace ckpt::jobs {

namespace {
struct Registry {
  std::mutex mu;
  std::map<std::string, JobFactory> factories;
  std::map<std::type_index, std::string> keys;
};
Registry& registry() {
  static Registry r;
  return r;
}
}  // namespace

void register_job(const std::string& key, std::type_index type, JobFactory factory) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  if (key.empty()) throw Error(Errc::invalid_argument, "empty job key");
  if (r.factories.contains(key)) throw Error(Errc::invalid_argument, "job key '" + key + "' registered twice");
  if (r.keys.contains(type)) throw Error(Errc::invalid_argument, "job class registered twice (key '" + key + "')");
  r.factories.emplace(key, std::move(factory));
  r.keys.emplace(type, key);
}

const JobFactory* find_job_factory(const std::string& key) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  auto it = r.factories.find(key);
  return it == r.factories.end() ? nullptr : &it->second;
}

std::string job_key_of(std::type_index type) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  auto it = r.keys.find(type);
  return it == r.keys.end() ? std::string() : it->second;
}

}  // namespace ckpt::jobs
