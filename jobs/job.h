#pragma once
// The job API of the seed (shared/seed/job-api.txt), in C++.
//
//   BasicJob<C>        spec, config args(), coroutine run(), done()/finish(), operator() that
//                      skips a done job
//   CheckpointedJob<C> save/load pairs: every *_from_path(rel_path, ...) addresses any checkpoint
//                      under checkpoints_dir; the plain forms derive rel_path =
//                      project/group/name/suffix from the job's spec
//   RestoreableJob<C>  restore_from_path (yours to write), restore, register_latest (the seed's
//                      `register`), latest(spec), checkpoints(spec); from_checkpoint_path<Job> /
//                      from_checkpoint<Job> rebuild a job from a checkpoint
//
// Saves go through a ckpt::Runtime (set_runtime, or a process-wide default) and return its
// awaitable SaveHandle. Every checkpoint a job saves carries job.json (the registered key and
// the spec) and config.json (the config), so from_checkpoint_path can rebuild the job.
//
// A job of several processes (ExecutionSpec::process_count > 1; docs/design.md, section 7) runs
// one job object per process, each with a Runtime whose RuntimeOptions::communicator joins them
// (make_mpi_communicator(), or LocalGroup in tests); the spec's process_index/process_count must
// be that communicator's rank/size, else every call that needs the Runtime throws
// Error(invalid_argument) saying both. Then save_tree_and_metadata and register_latest are
// collective (every process calls them in the same order; SaveOptions::sharding names the
// tree's shard leaves); job.json and config.json are written once, by process 0 (its spec);
// get_tree_and_metadata with a Sharding restores this process's boxes from a checkpoint saved
// by any number of processes; latest(spec, comm) / checkpoints(spec, comm) give every process
// process 0's answer; from_checkpoint_path agrees on the outcome of every process's restore.
#include <boost/asio/awaitable.hpp>
#include <boost/json.hpp>
#include <memory>
#include <optional>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include "io/log.h"
#include "jobs/config_json.h"
#include "jobs/paths.h"
#include "jobs/registry.h"
#include "jobs/spec.h"
#include "runtime/communicator.h"
#include "runtime/runtime.h"
#include "runtime/sharding.h"
#include "runtime/tree.h"

namespace ckpt::jobs {

inline constexpr const char* kJobFile = "job.json";
inline constexpr const char* kConfigFile = "config.json";

// The Runtime jobs use unless given one: the one set with set_default_runtime, else one created
// on first use with default options.
std::shared_ptr<Runtime> default_runtime();
void set_default_runtime(std::shared_ptr<Runtime> runtime);

class JobBase {
 public:
  explicit JobBase(ExecutionSpec spec) : spec_(std::move(spec)) {}
  virtual ~JobBase() = default;
  JobBase(const JobBase&) = delete;
  JobBase& operator=(const JobBase&) = delete;

  const ExecutionSpec& spec() const noexcept { return spec_; }
  virtual boost::asio::awaitable<void> run() = 0;
  // Runs the job unless it is done already (on_start() first).
  boost::asio::awaitable<void> operator()();
  bool done() const noexcept { return done_; }
  void finish() noexcept { done_ = true; }

  // The key this class registered under ("" when it did not).
  std::string job_key() const { return job_key_of(typeid(*this)); }
  virtual boost::json::value config_json() const = 0;

  // The job's Runtime (the default one unless set_runtime gave another). Throws
  // Error(invalid_argument) when the spec's process_index/process_count disagree with its
  // communicator (none counts as process 0 of 1).
  Runtime& runtime();
  void set_runtime(std::shared_ptr<Runtime> runtime) { runtime_ = std::move(runtime); }
  // The communicator of the job's processes: its Runtime's; null for a single-process job.
  std::shared_ptr<Communicator> communicator() { return runtime().options().communicator; }

 protected:
  // Called by operator() before run(): CheckpointedJob removes the leftovers of interrupted
  // saves from its run directory (commit protocol, step 5).
  virtual void on_start() {}

 private:
  ExecutionSpec spec_;
  bool done_ = false;
  std::shared_ptr<Runtime> runtime_;
};

// Runs job() on a fresh io_context until it completes; rethrows its exception.
void run_blocking(JobBase& job);

template <typename C>
class BasicJob : public JobBase {
 public:
  using Config = C;
  BasicJob(ExecutionSpec spec, C config) : JobBase(std::move(spec)), config_(std::move(config)) {}
  const C& args() const noexcept { return config_; }
  C& args() noexcept { return config_; }
  boost::json::value config_json() const override { return config_to_json(config_); }

 private:
  C config_;
};

namespace detail {
// Throws Error(invalid_argument) unless spec names process `rank` of `size` of comm (null: 0 of 1).
void check_processes(const ExecutionSpec& spec, const Communicator* comm);
// Non-template halves of CheckpointedJob.
std::map<std::string, std::string> job_files(const JobBase& job);
std::pair<Tree, boost::json::object> load(Runtime& rt, const ExecutionSpec& spec,
                                          const std::string& rel_path, Tree templ,
                                          const Sharding& sharding, bool partial);
boost::json::object load_metadata(const ExecutionSpec& spec, const std::string& rel_path);
struct SavedJob {
  std::string key;
  ExecutionSpec spec;
  boost::json::value config;
};
SavedJob read_saved_job(const std::string& checkpoint_dir);
std::vector<std::string> checkpoints(const ExecutionSpec& spec);
std::optional<std::string> latest(const ExecutionSpec& spec);
std::vector<std::string> checkpoints(const ExecutionSpec& spec, const std::shared_ptr<Communicator>& comm);
std::optional<std::string> latest(const ExecutionSpec& spec, const std::shared_ptr<Communicator>& comm);
void claim_and_clean(Runtime& rt, const ExecutionSpec& spec);
// Collective when `runtime` has a communicator of more than one process: every process reports
// `failure` (null: it succeeded); if any failed, every process throws the same Error, the lowest
// failed process's code and message, naming it ("process 2: ..."). Alone, rethrows `failure`.
// `runtime` may be null when failure is set (only with one process).
void agree_on(Runtime* runtime, std::exception_ptr failure);
}  // namespace detail

template <typename C>
class CheckpointedJob : public BasicJob<C> {
 public:
  using BasicJob<C>::BasicJob;

  // Restores into template_tree's arrays (same paths, dtypes, shapes; `partial`: only the
  // template's leaves) and returns that tree with the checkpoint's metadata.
  std::pair<Tree, boost::json::object> get_tree_and_metadata_from_path(const std::string& rel_path,
                                                                        Tree template_tree,
                                                                        bool partial = false) {
    return get_tree_and_metadata_from_path(rel_path, std::move(template_tree), Sharding(), partial);
  }
  std::pair<Tree, boost::json::object> get_tree_and_metadata(const std::string& suffix,
                                                             Tree template_tree,
                                                             bool partial = false) {
    return get_tree_and_metadata_from_path(rel_path(this->spec(), suffix), std::move(template_tree),
                                           partial);
  }
  // The same into a template whose leaves named by `sharding` are boxes of the global arrays
  // (runtime/sharding.h; the others whole arrays), from a checkpoint saved by any number of
  // processes in any decomposition. Not collective: each process reads what its boxes need.
  std::pair<Tree, boost::json::object> get_tree_and_metadata_from_path(const std::string& rel_path,
                                                                        Tree template_tree,
                                                                        const Sharding& sharding,
                                                                        bool partial = false) {
    return detail::load(this->runtime(), this->spec(), rel_path, std::move(template_tree), sharding,
                        partial);
  }
  std::pair<Tree, boost::json::object> get_tree_and_metadata(const std::string& suffix,
                                                             Tree template_tree,
                                                             const Sharding& sharding,
                                                             bool partial = false) {
    return get_tree_and_metadata_from_path(rel_path(this->spec(), suffix), std::move(template_tree),
                                           sharding, partial);
  }

  // Starts a save; returns its awaitable handle (see runtime/handles.h). In a job of several
  // processes the save is collective (options.sharding names the tree's shard leaves; the rest
  // are replicated) and every process's handle completes with the same result. Under
  // Backpressure::block it blocks its thread until staging is free, so on the thread that runs
  // the Runtime (a job whose Runtime was built on the job's own executor) it throws
  // Error(invalid_argument) instead of deadlocking: coroutines use async_save_tree_and_metadata.
  SaveHandle save_tree_and_metadata_from_path(const std::string& rel_path, const Tree& tree,
                                              const boost::json::object& metadata,
                                              SaveOptions options = SaveOptions()) {
    std::string path = prepare_save(rel_path, options);
    return this->runtime().save(path, tree, metadata, options);
  }
  // The save takes the run directory's writer lease and is protected from `ckpt gc` until it
  // ends (runtime/run_lock.h).
  SaveHandle save_tree_and_metadata(const std::string& suffix, const Tree& tree,
                                    const boost::json::object& metadata,
                                    SaveOptions options = SaveOptions()) {
    std::string rel = prepare_run_save(suffix, options);
    return save_tree_and_metadata_from_path(rel, tree, metadata, std::move(options));
  }

  // The same for coroutines: admission waits asynchronously, so the thread that runs the Runtime
  // is never blocked, whichever executor that is. Completes with void(std::exception_ptr,
  // SaveHandle) once save_tree_and_metadata would have returned (admitted; in sync mode,
  // snapshotted):  SaveHandle h = co_await job.async_save_tree_and_metadata(suffix, tree, md,
  // SaveOptions(), asio::use_awaitable);  Arguments are copied before it returns (the tree's
  // arrays are not: they are read by the snapshot, as with save).
  template <typename Token>
  auto async_save_tree_and_metadata_from_path(const std::string& rel_path, const Tree& tree,
                                              const boost::json::object& metadata,
                                              SaveOptions options, Token&& token) {
    std::string path = prepare_save(rel_path, options);
    return this->runtime().async_save(std::move(path), tree, metadata, std::move(options),
                                      std::forward<Token>(token));
  }
  template <typename Token>
  auto async_save_tree_and_metadata(const std::string& suffix, const Tree& tree,
                                    const boost::json::object& metadata, SaveOptions options,
                                    Token&& token) {
    std::string rel = prepare_run_save(suffix, options);
    return async_save_tree_and_metadata_from_path(rel, tree, metadata, std::move(options),
                                                  std::forward<Token>(token));
  }

  boost::json::object get_metadata_from_path(const std::string& rel_path) {
    return detail::load_metadata(this->spec(), rel_path);
  }
  boost::json::object get_metadata(const std::string& suffix) {
    return get_metadata_from_path(rel_path(this->spec(), suffix));
  }

  // checkpoints_dir/project/group/name/suffix (the seed's _get_checkpoint_path).
  static std::string get_checkpoint_path(const ExecutionSpec& spec, const std::string& suffix) {
    return checkpoint_path(spec, suffix);
  }

  // Retention applied to this job's run directory after each save_tree_and_metadata, and once
  // more when its saves and registrations drain. Set policy.prefix (e.g. "step/") to rotate
  // only those checkpoints; without it, max_to_keep counts every checkpoint of the run.
  void set_retention(RetentionPolicy policy) { retention_ = std::move(policy); }
  // Incremental saves for this job (SaveOptions::incremental, runtime/incremental.h): each save
  // writes only what changed since the previous checkpoint of its run and shares the rest.
  // A save's own SaveOptions::incremental wins.
  void set_incremental(bool on) { incremental_ = on; }

 protected:
  // Takes the run directory's writer lease (a second writer fails here with Error(busy) naming
  // the first one's pid), then removes leftovers of interrupted saves: never this process's own
  // saves in flight (a job run again after a failure keeps them).
  void on_start() override { detail::claim_and_clean(this->runtime(), this->spec()); }

 private:
  // The absolute checkpoint path of rel_path; adds job.json and config.json to options.
  std::string prepare_save(const std::string& rel_path, SaveOptions& options) {
    std::string path = resolve_rel_path(checkpoints_dir(this->spec()), rel_path);
    auto files = detail::job_files(*this);
    options.extra_files.insert(files.begin(), files.end());
    if (!options.incremental && incremental_) options.incremental = *incremental_;
    return path;
  }
  // The rel_path of suffix in this job's run; sets the run directory and retention of options.
  std::string prepare_run_save(const std::string& suffix, SaveOptions& options) {
    options.run_dir = run_dir(this->spec());
    if (retention_.active()) options.retention = retention_;
    return rel_path(this->spec(), suffix);
  }

  RetentionPolicy retention_;
  std::optional<bool> incremental_;
};

template <typename C>
class RestoreableJob : public CheckpointedJob<C> {
 public:
  using CheckpointedJob<C>::CheckpointedJob;

  // Restores the job's state from rel_path under checkpoints_dir.
  virtual void restore_from_path(const std::string& rel_path) = 0;
  void restore(const std::string& suffix) { restore_from_path(rel_path(this->spec(), suffix)); }

  // Points this job's `latest` at suffix once that save is durable (the seed's `register`).
  // Collective in a job of several processes: process 0 writes `latest`.
  RegisterHandle register_latest(const std::string& suffix) {
    return this->runtime().register_latest(run_dir(this->spec()), suffix);
  }

  // The suffix `latest` names for spec's run, or nullopt when there is none.
  static std::optional<std::string> latest(const ExecutionSpec& spec) { return detail::latest(spec); }
  // Committed checkpoints of spec's run (nested suffixes such as step/100 included), oldest first.
  static std::vector<std::string> checkpoints(const ExecutionSpec& spec) {
    return detail::checkpoints(spec);
  }
  // Collective forms for a job of several processes: process 0 reads, and every process returns
  // its answer (or throws its error, "process 0: ..."), so all agree even while process 0's
  // retention removes old checkpoints. spec must name comm's rank and size. With a null
  // communicator they are the forms above.
  static std::optional<std::string> latest(const ExecutionSpec& spec,
                                           const std::shared_ptr<Communicator>& comm) {
    return detail::latest(spec, comm);
  }
  static std::vector<std::string> checkpoints(const ExecutionSpec& spec,
                                              const std::shared_ptr<Communicator>& comm) {
    return detail::checkpoints(spec, comm);
  }
};

// Rebuilds a job from the checkpoint at rel_path: the class recorded in its job.json (falling
// back to Job, with a warning, when that key is unknown or not a Job), with the saved config
// overlaid by runtime_cfg (overlay_config: a merge patch in which null empties an optional member
// and is an error naming the key for any other; unknown keys and wrong types are errors naming
// the key), then calls restore_from_path(rel_path). resume = true continues the saved run
// (its project/group/name, so new checkpoints and `latest` land beside the old ones); false
// starts a new run under `spec` from the checkpoint's state. The job uses `runtime` (null: the
// default one). Any process count may restore what any other saved: the processes are always
// `spec`'s (process_index/process_count), never the saved job's. In a job of several processes
// it is collective: each process rebuilds its job and restores its part, then they agree, and
// if any failed every process throws the same error naming the first that failed.
template <typename Job>
std::pair<std::unique_ptr<Job>, typename Job::Config> from_checkpoint_path(
    const std::string& rel_path, const ExecutionSpec& spec,
    const std::optional<boost::json::value>& runtime_cfg = std::nullopt, bool resume = false,
    std::shared_ptr<Runtime> runtime = nullptr) {
  using Config = typename Job::Config;
  // Only a job of several processes needs the Runtime before restore_from_path would take it.
  if (!runtime && spec.process_count > 1) runtime = default_runtime();
  std::unique_ptr<Job> job;
  std::optional<Config> config;
  std::exception_ptr failure;
  try {
    if (runtime) detail::check_processes(spec, runtime->options().communicator.get());
    std::string path = resolve_rel_path(checkpoints_dir(spec), rel_path);
    detail::SavedJob saved = detail::read_saved_job(path);
    boost::json::value merged =
        runtime_cfg ? overlay_config<Config>(saved.config, *runtime_cfg) : saved.config;
    config = config_from_json<Config>(merged);
    ExecutionSpec job_spec = spec;
    if (resume) {
      job_spec.project = saved.spec.project;
      job_spec.group = saved.spec.group;
      job_spec.name = saved.spec.name;
    }
    if (const JobFactory* factory = find_job_factory(saved.key)) {
      std::unique_ptr<JobBase> base = (*factory)(job_spec, merged);
      if (auto* typed = dynamic_cast<Job*>(base.get())) {
        base.release();
        job.reset(typed);
      } else {
        log().warn("checkpoint {} was saved by job '{}', which is not a {}; using {}", path,
                   saved.key, typeid(Job).name(), typeid(Job).name());
      }
    } else {
      log().warn("checkpoint {} was saved by job '{}', which is not registered; using {}", path,
                 saved.key, typeid(Job).name());
    }
    if (!job) job = std::make_unique<Job>(job_spec, *config);
    if (runtime) job->set_runtime(runtime);
    job->restore_from_path(rel_path);
  } catch (...) {
    failure = std::current_exception();
  }
  detail::agree_on(runtime.get(), failure);
  return {std::move(job), std::move(*config)};
}

template <typename Job>
std::pair<std::unique_ptr<Job>, typename Job::Config> from_checkpoint(
    const std::string& suffix, const ExecutionSpec& spec,
    const std::optional<boost::json::value>& runtime_cfg = std::nullopt, bool resume = false,
    std::shared_ptr<Runtime> runtime = nullptr) {
  return from_checkpoint_path<Job>(rel_path(spec, suffix), spec, runtime_cfg, resume,
                                   std::move(runtime));
}

}  // namespace ckpt::jobs
