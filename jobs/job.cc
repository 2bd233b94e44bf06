#include "jobs/job.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <fmt/format.h>

#include <chrono>
#include <functional>
#include <mutex>

#include "io/error.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/json.h"
#include "runtime/wire_error.h"

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
  detail::check_processes(spec_, runtime_->options().communicator.get());
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

void check_processes(const ExecutionSpec& spec, const Communicator* comm) {
  if (spec.process_index >= spec.process_count) {
    throw Error(Errc::invalid_argument,
                fmt::format("ExecutionSpec: process_index {} is not below process_count {}",
                            spec.process_index, spec.process_count));
  }
  const int rank = comm != nullptr ? comm->rank() : 0;
  const int size = comm != nullptr ? comm->size() : 1;
  if (static_cast<std::int64_t>(spec.process_index) == rank &&
      static_cast<std::int64_t>(spec.process_count) == size) {
    return;
  }
  if (comm == nullptr) {
    throw Error(Errc::invalid_argument,
                fmt::format("ExecutionSpec names process {} of {}, but the job's Runtime has no "
                            "communicator (set RuntimeOptions::communicator, e.g. to "
                            "make_mpi_communicator())",
                            spec.process_index, spec.process_count));
  }
  throw Error(Errc::invalid_argument,
              fmt::format("ExecutionSpec names process {} of {}, but the job's Runtime's "
                          "communicator ({}) is process {} of {}",
                          spec.process_index, spec.process_count, comm->describe(), rank, size));
}

std::map<std::string, std::string> job_files(const JobBase& job) {
  boost::json::object meta = config_to_json(job.spec()).as_object();
  meta["key"] = job.job_key();
  return {{kJobFile, boost::json::serialize(meta)},
          {kConfigFile, boost::json::serialize(job.config_json())}};
}

std::pair<Tree, boost::json::object> load(Runtime& rt, const ExecutionSpec& spec,
                                          const std::string& rel_path, Tree templ,
                                          const Sharding& sharding, bool partial) {
  std::string path = resolve_rel_path(checkpoints_dir(spec), rel_path);
  boost::json::object metadata =
      sharding.empty() ? rt.restore(path, templ, partial) : rt.restore(path, templ, sharding, partial);
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

namespace {

// The deadline of the jobs layer's own collective steps that have no Runtime at hand.
std::chrono::milliseconds default_collective_timeout() { return RuntimeOptions().collective_timeout; }

// read() on process 0, its result (or its failure) on every process.
std::string from_process0(const ExecutionSpec& spec, const std::shared_ptr<Communicator>& comm,
                          const std::function<std::string()>& read) {
  check_processes(spec, comm.get());
  if (!comm || comm->size() == 1) return read();
  const auto deadline = std::chrono::steady_clock::now() + default_collective_timeout();
  const std::uint64_t tag = collective_tag(comm->next_sequence(), 0);
  std::string message;
  if (comm->rank() == 0) {
    try {
      message = "+" + read();
    } catch (...) {
      message = "-" + encode_failure(std::current_exception());
    }
  }
  message = comm->broadcast(tag, std::move(message), 0, deadline);
  if (message.empty() || message[0] != '+') {
    throw decode_failure(std::string_view(message).substr(message.empty() ? 0 : 1), "process 0: ");
  }
  return message.substr(1);
}

}  // namespace

std::vector<std::string> checkpoints(const ExecutionSpec& spec,
                                     const std::shared_ptr<Communicator>& comm) {
  return unpack_strings(from_process0(spec, comm, [&] { return pack_strings(checkpoints(spec)); }));
}

std::optional<std::string> latest(const ExecutionSpec& spec, const std::shared_ptr<Communicator>& comm) {
  std::string answer = from_process0(spec, comm, [&] {
    auto suffix = latest(spec);
    return suffix ? "+" + *suffix : std::string();
  });
  if (answer.empty()) return std::nullopt;
  return answer.substr(1);
}

void agree_on(Runtime* runtime, std::exception_ptr failure) {
  const std::shared_ptr<Communicator> comm =
      runtime != nullptr ? runtime->options().communicator : nullptr;
  if (!comm || comm->size() == 1) {
    if (failure) std::rethrow_exception(failure);
    return;
  }
  const auto deadline = std::chrono::steady_clock::now() + runtime->options().collective_timeout;
  const std::uint64_t tag = collective_tag(comm->next_sequence(), 0);
  auto reports = comm->allgather(tag, failure ? "-" + encode_failure(failure) : std::string("+"),
                                 deadline);
  for (std::size_t r = 0; r < reports.size(); ++r) {
    if (reports[r].empty() || reports[r][0] != '+') {
      throw decode_failure(std::string_view(reports[r]).substr(reports[r].empty() ? 0 : 1),
                           fmt::format("process {}: ", r));
    }
  }
}

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
