#include "runtime/run_lock.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <thread>
#include <unordered_map>

#include "io/durable.h"
#include "io/error.h"
#include "io/file.h"
#include "io/log.h"

namespace ckpt {

using Clock = std::chrono::steady_clock;

namespace {

// Calls try_once() until it returns true, sleeping with backoff (from `pause` up to `max_pause`)
// in between; false once `wait` has passed without success.
template <typename TryOnce>
bool poll_until(std::chrono::milliseconds wait, std::chrono::microseconds pause,
                std::chrono::microseconds max_pause, const TryOnce& try_once) {
  const auto deadline = Clock::now() + wait;
  while (!try_once()) {
    const auto now = Clock::now();
    if (now >= deadline) return false;
    std::this_thread::sleep_for(std::min<std::chrono::microseconds>(
        pause, std::chrono::duration_cast<std::chrono::microseconds>(deadline - now) +
                   std::chrono::microseconds(1)));
    pause = std::min(pause * 2, max_pause);
  }
  return true;
}

struct flock byte_lock(short type, RunLockFile::Byte which) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<int>(which);
  fl.l_len = 1;
  fl.l_pid = 0;  // required by OFD locks
  return fl;
}

}  // namespace

RunLockFile::RunLockFile(const std::string& run_dir)
    : run_dir_(io::absolute_normal(run_dir)), path_(run_dir_ + "/" + kLockFileName) {
  // 0666 (less the umask): a lock file made by one user must not lock out the next.
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (fd_ < 0) throw sys_error("open the run directory's lock file", path_, errno);
}

RunLockFile::~RunLockFile() {
  if (fd_ >= 0) ::close(fd_);
}

bool RunLockFile::try_lock(Byte which) {
  struct flock fl = byte_lock(F_WRLCK, which);
  for (;;) {
    if (::fcntl(fd_, F_OFD_SETLK, &fl) == 0) return true;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EACCES) return false;
    throw sys_error("lock", path_, errno);
  }
}

void RunLockFile::lock(Byte which, std::chrono::milliseconds wait, const char* what) {
  if (poll_until(wait, std::chrono::microseconds(500), std::chrono::milliseconds(50),
                 [&] { return try_lock(which); })) {
    return;
  }
  // Who holds the lease is published; the mutation lock's holder is not known.
  std::string holder = which == Byte::lease
                           ? describe_holder(run_dir_)
                           : "another process (a ckpt gc pass, or the run's writer)";
  throw Error(Errc::busy,
              fmt::format("the run directory's {} is held by {} (waited {} ms)", what, holder,
                          wait.count()),
              run_dir_);
}

void RunLockFile::unlock(Byte which) noexcept {
  struct flock fl = byte_lock(F_UNLCK, which);
  while (::fcntl(fd_, F_OFD_SETLK, &fl) != 0 && errno == EINTR) {
  }
}

bool RunLockFile::held_elsewhere(Byte which) {
  struct flock fl = byte_lock(F_WRLCK, which);
  if (::fcntl(fd_, F_OFD_GETLK, &fl) != 0) throw sys_error("query lock", path_, errno);
  return fl.l_type != F_UNLCK;
}

std::optional<WriterState> read_writer_state(const std::string& run_dir) {
  std::string path = io::absolute_normal(run_dir) + "/" + kWriterFileName;
  std::string text;
  try {
    text = io::read_small_file(path, 1u << 26);
  } catch (const Error&) {
    return std::nullopt;
  }
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(text, ec);
  if (ec || !v.is_object()) return std::nullopt;
  WriterState state;
  const auto& o = v.as_object();
  if (const auto* pid = o.if_contains("pid"); pid != nullptr && pid->is_int64()) {
    state.pid = static_cast<long>(pid->as_int64());
  }
  if (const auto* holder = o.if_contains("holder"); holder != nullptr && holder->is_string()) {
    state.holder = std::string(holder->as_string());
  }
  if (const auto* list = o.if_contains("protect"); list != nullptr && list->is_array()) {
    for (const auto& s : list->as_array()) {
      if (s.is_string()) state.protect.insert(std::string(s.as_string()));
    }
  }
  return state;
}

std::string describe_holder(const std::string& run_dir) {
  auto state = read_writer_state(run_dir);
  if (!state || state->pid <= 0) return "another process";
  if (state->holder.empty()) return fmt::format("pid {}", state->pid);
  return fmt::format("pid {}, {}", state->pid, state->holder);
}

// ---- RunLease ------------------------------------------------------------------------------

namespace {
// Never destroyed: a Runtime held in a static (the jobs layer's default) releases its leases
// during static destruction, after function-local statics constructed later are gone.
struct LeaseSlot {
  std::mutex acquiring;  // one thread of this process takes a given run directory's lease
  std::weak_ptr<RunLease> lease;
};
std::mutex& leases_mu() {
  static auto* mu = new std::mutex;
  return *mu;
}
std::unordered_map<std::string, std::shared_ptr<LeaseSlot>>& leases() {
  static auto* map = new std::unordered_map<std::string, std::shared_ptr<LeaseSlot>>;
  return *map;
}
}  // namespace

RunLease::RunLease(const std::string& run_dir) : file_(run_dir) {}

std::shared_ptr<RunLease> RunLease::acquire(const std::string& run_dir,
                                            std::chrono::milliseconds wait) {
  std::string dir = io::absolute_normal(run_dir);
  std::shared_ptr<LeaseSlot> slot;
  {
    std::lock_guard lock(leases_mu());
    auto& s = leases()[dir];
    if (!s) s = std::make_shared<LeaseSlot>();
    slot = s;
  }
  // Waiting for another process happens under this run directory's slot only.
  std::lock_guard acquiring(slot->acquiring);
  if (auto held = slot->lease.lock()) return held;
  io::make_dirs(dir);
  auto lease = std::make_shared<RunLease>(dir);
  lease->file_.lock(RunLockFile::Byte::lease, wait, "writer lease");
  try {
    std::lock_guard state_lock(lease->mu_);
    lease->publish_locked();
  } catch (...) {
    lease->file_.unlock(RunLockFile::Byte::lease);
    throw;
  }
  lease->held_ = true;
  slot->lease = lease;
  log().debug("took the writer lease of {}", dir);
  return lease;
}

RunLease::~RunLease() {
  if (!held_) return;  // never taken: the published state is another process's
  // The published state goes before the lease: a successor may already be publishing its own.
  ::unlink((run_dir() + "/" + kWriterFileName).c_str());
  file_.unlock(RunLockFile::Byte::lease);
}

void RunLease::protect(const std::string& suffix) {
  std::lock_guard lock(mu_);
  if (protect_[suffix]++ > 0) return;
  try {
    publish_locked();
  } catch (...) {
    if (--protect_[suffix] == 0) protect_.erase(suffix);
    throw;
  }
}

void RunLease::release(const std::string& suffix) noexcept {
  std::lock_guard lock(mu_);
  auto it = protect_.find(suffix);
  if (it == protect_.end() || --it->second > 0) return;
  protect_.erase(it);
  try {
    publish_locked();  // a stale entry only over-protects: logged, not fatal
  } catch (const std::exception& e) {
    log().warn("could not update {}/{}: {}", run_dir(), kWriterFileName, e.what());
  }
}

std::set<std::string> RunLease::protected_now() {
  std::lock_guard lock(mu_);
  return protected_locked();
}

std::set<std::string> RunLease::protected_locked() const {
  std::set<std::string> out;
  for (const auto& [suffix, count] : protect_) out.insert(suffix);
  return out;
}

void RunLease::publish_locked() { publish_writer_state(run_dir(), protected_locked()); }

void publish_writer_state(const std::string& run_dir, const std::set<std::string>& protect,
                          const std::string& holder) {
  boost::json::object o;
  o["pid"] = static_cast<std::int64_t>(::getpid());
  if (!holder.empty()) o["holder"] = holder;
  boost::json::array list;
  for (const auto& suffix : protect) list.emplace_back(suffix);
  o["protect"] = std::move(list);
  const std::string text = boost::json::serialize(o) + "\n";
  const std::string path = io::absolute_normal(run_dir) + "/" + kWriterFileName;
  const std::string staged = path + ".new";  // only the lease holder writes it
  {
    int fd = ::open(staged.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) throw sys_error("open", staged, errno);
    io::File f(fd, staged, false);
    f.write_all(text);
    f.close();
  }
  if (::rename(staged.c_str(), path.c_str()) != 0) throw sys_error("rename", path, errno);
}

RunLease::Mutation RunLease::lock_mutations(std::chrono::milliseconds wait) {
  // Polled rather than std::timed_mutex: libstdc++ implements its timed wait with
  // pthread_mutex_clocklock, which ThreadSanitizer (g++ 12) does not see.
  const auto start = Clock::now();
  if (!poll_until(wait, std::chrono::microseconds(100), std::chrono::milliseconds(5),
                  [&] { return mutation_mu_.try_lock(); })) {
    throw Error(Errc::busy,
                fmt::format("the run directory's mutation lock is held by another thread of "
                            "this process (waited {} ms)",
                            wait.count()),
                run_dir());
  }
  try {
    auto left = wait - std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    file_.lock(RunLockFile::Byte::mutation, std::max(left, std::chrono::milliseconds(0)),
               "mutation lock");
  } catch (...) {
    mutation_mu_.unlock();
    throw;
  }
  return Mutation(*this);
}

RunLease::Mutation::~Mutation() {
  if (lease_ == nullptr) return;
  lease_->file_.unlock(RunLockFile::Byte::mutation);
  lease_->mutation_mu_.unlock();
}

}  // namespace ckpt
