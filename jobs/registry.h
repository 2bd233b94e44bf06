#pragma once
// Job classes register under a key (one line per class, CKPT_REGISTER_JOB); the key goes into
// each checkpoint's job.json so that from_checkpoint_path rebuilds the right class.
#include <boost/json/value.hpp>
#include <functional>
#include <memory>
#include <string>
#include <typeindex>

#include "jobs/config_json.h"
#include "jobs/spec.h"

namespace ckpt::jobs {

class JobBase;

using JobFactory =
    std::function<std::unique_ptr<JobBase>(const ExecutionSpec&, const boost::json::value& config)>;

// Throws Error(invalid_argument) when the key or the type is registered already.
void register_job(const std::string& key, std::type_index type, JobFactory factory);
const JobFactory* find_job_factory(const std::string& key);
// The key `type` registered under, or "" when it did not.
std::string job_key_of(std::type_index type);

template <typename Job>
bool register_job_class(const std::string& key) {
  register_job(key, typeid(Job), [](const ExecutionSpec& spec, const boost::json::value& config) {
    return std::unique_ptr<JobBase>(
        std::make_unique<Job>(spec, config_from_json<typename Job::Config>(config)));
  });
  return true;
}

}  // namespace ckpt::jobs

#define CKPT_JOBS_CONCAT2(a, b) a##b
#define CKPT_JOBS_CONCAT(a, b) CKPT_JOBS_CONCAT2(a, b)
// Registers job class `Class` (constructible from (ExecutionSpec, Class::Config)) under `key`.
#define CKPT_REGISTER_JOB(Class, key)                                              \
  [[maybe_unused]] static const bool CKPT_JOBS_CONCAT(ckpt_job_registered_, __LINE__) = \
      ::ckpt::jobs::register_job_class<Class>(key)
