#include "jobs/job.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <mutex>

#include "io/error.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/json.h"

namespace ckpt::jobs {

namespace {
std::mutex default_mu;
std::shared_ptr<Runtime>& default_slot() {
  log();  // the logger must outlive the runtime, which logs while it shuts down
  static std::shared_ptr<Runtime> runtime;
  return runtime;
}
}  // namespace

std::shared_ptr<Runtime> default_runtime() {
  std::lock_guard lock(default_mu);
  auto& slot = default_slot();
  if (!slot) slot = std::make_shared<Runtime>();
  return slot;
}

void set_default_runtime(std::shared_ptr<Runtime> runtime) {
  std::lock_guard lock(default_mu);
  default_slot() = std::move(runtime);
}

Runtime& JobBase::runtime() {
  if (!runtime_) runtime_ = default_runtime();
  return *runtime_;
}

boost::asio::awaitable<void> JobBase::operator()() {
  if (done()) co_return;
  on_start();
  co_await run();
}

void run_blocking(JobBase& job) {
  boost::asio::io_context ctx;
  auto future = boost::asio::co_spawn(ctx, job(), boost::asio::use_future);
  ctx.run();
  future.get();
}

namespace detail {

std::map<std::string, std::string> job_files(const JobBase& job) {
  boost::json::object meta = config_to_json(job.spec()).as_object();
  meta["key"] = job.job_key();
  return {{kJobFile, boost::json::serialize(meta)},
          {kConfigFile, boost::json::serialize(job.config_json())}};
}

std::pair<Tree, boost::json::object> load(Runtime& rt, const ExecutionSpec& spec,
                                          const std::string& rel_path, Tree templ, bool partial) {
  std::string path = resolve_rel_path(checkpoints_dir(spec), rel_path);
  boost::json::object metadata = rt.restore(path, templ, partial);
  return {std::move(templ), std::move(metadata)};
}

boost::json::object load_metadata(const ExecutionSpec& spec, const std::string& rel_path) {
  return read_metadata(resolve_rel_path(checkpoints_dir(spec), rel_path));
}

namespace {
boost::json::value parse_file(const std::string& dir, const Manifest& m, const std::string& name) {
  std::string path = dir + "/" + name;
  if (m.json_file(name) == nullptr) {
    throw Error(Errc::not_found, "checkpoint has no " + name + " (not saved by a job?)", path);
  }
  boost::system::error_code ec;
  boost::json::value v = parse_json(read_checked_file(dir, m, name), ec);  // doubles exact
  if (ec) throw Error(Errc::corrupt, "invalid JSON (" + ec.message() + ")", path);
  return v;
}
}  // namespace

SavedJob read_saved_job(const std::string& dir) {
  Manifest m = read_manifest(dir);
  boost::json::value job = parse_file(dir, m, kJobFile);
  SavedJob saved;
  saved.config = parse_file(dir, m, kConfigFile);
  if (!job.is_object()) throw Error(Errc::corrupt, "job.json is not an object", dir + "/" + kJobFile);
  boost::json::object spec = job.as_object();
  if (const auto* key = spec.if_contains("key"); key != nullptr && key->is_string()) {
    saved.key = std::string(key->as_string());
  }
  spec.erase("key");
  try {
    config_from_json(spec, saved.spec);
  } catch (const Error& e) {
    throw Error(Errc::corrupt, std::string("bad job.json: ") + e.what(), dir + "/" + kJobFile);
  }
  return saved;
}

std::vector<std::string> checkpoints(const ExecutionSpec& spec) {
  std::vector<std::string> out;
  for (const auto& c : list_checkpoints(run_dir(spec))) {
    if (c.error.empty()) out.push_back(c.suffix);
  }
  return out;
}

std::optional<std::string> latest(const ExecutionSpec& spec) { return read_latest(run_dir(spec)); }

void claim_and_clean(Runtime& rt, const ExecutionSpec& spec) {
  // A collective job (a Runtime with a communicator): process 0 alone holds the run directory
  // and cleans it. The others' first save cannot create anything before process 0 took part in
  // its check (docs/design.md, section 14), so the cleaning never meets their temporaries.
  if (const auto& comm = rt.options().communicator; comm && comm->rank() != 0) return;
  const std::string dir = run_dir(spec);
  rt.claim_run_dir(dir);
  for (const auto& path : clean_run_dir(dir)) {
    log().info("removed the leftover of an interrupted save: {}", path);
  }
}

}  // namespace detail
}  // namespace ckpt::jobs
