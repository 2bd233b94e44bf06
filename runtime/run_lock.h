#pragma once
// How processes share one run directory (docs/design.md, "Run directory lock").
//
// <run_dir>/.ckpt-lock is created on first use and never removed. Two open-file-description
// (OFD) byte-range locks on it coordinate every process that touches the run directory:
//
//  - byte 0, the writer lease: held exclusively, for as long as it may write there, by the one
//    process that writes into the run directory (saves with SaveOptions::run_dir,
//    register_latest, retention, a job from on_start). Every Runtime of that process shares the
//    lease. A second writer waits up to a deadline and then fails with Errc::busy naming the
//    holder. `ckpt gc` probes the lease to learn whether a writer is live, and holds it while it
//    removes leftovers, so that no writer starts meanwhile.
//  - byte 1, the mutation lock: held exclusively and briefly by whoever changes which
//    checkpoints exist or which one is current: moving `latest` (check that the checkpoint is
//    committed, then write the pointer), a retention pass, `ckpt gc` (list, read what the writer
//    protects, read `latest`, rename the doomed checkpoints away).
//
// <run_dir>/.ckpt-writer holds the lease holder's pid and the suffixes it protects: saves in
// flight and registrations not yet applied. The holder replaces it atomically (write a
// temporary, rename; no fsync: only a live holder's content means anything) before the state it
// describes can be observed: a save is protected before its directory can commit, a
// registration before register_latest returns. gc reads it under the mutation lock after listing
// the checkpoints, so a checkpoint it lists is either still protected or was released by its
// writer (registered as `latest`, which gc reads last, or dropped from the policy's care).
//
// The locks are advisory: processes that bypass ckpt (rm -rf) are not stopped. OFD locks are
// released by the kernel when the holder dies, so a crashed writer never blocks the next one.
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>

namespace ckpt {

inline constexpr const char* kLockFileName = ".ckpt-lock";
inline constexpr const char* kWriterFileName = ".ckpt-writer";

// One open descriptor of a run directory's lock file and the two locks on it.
class RunLockFile {
 public:
  // Opens (creating it and the run directory's lock file if needed) <run_dir>/.ckpt-lock.
  explicit RunLockFile(const std::string& run_dir);
  ~RunLockFile();
  RunLockFile(const RunLockFile&) = delete;
  RunLockFile& operator=(const RunLockFile&) = delete;

  enum class Byte : int { lease = 0, mutation = 1 };

  bool try_lock(Byte which);
  // Waits up to `wait` (polling); throws Error(busy) naming `what` and the holder's pid.
  void lock(Byte which, std::chrono::milliseconds wait, const char* what);
  void unlock(Byte which) noexcept;
  // True when another open file description holds `which`.
  bool held_elsewhere(Byte which);

  const std::string& run_dir() const noexcept { return run_dir_; }

 private:
  std::string run_dir_;
  std::string path_;
  int fd_ = -1;
};

// What the writer of a run directory has published in .ckpt-writer.
struct WriterState {
  long pid = 0;
  std::string holder;  // "" for a Runtime, "ckpt gc" while gc removes leftovers
  std::set<std::string> protect;
};
// Reads <run_dir>/.ckpt-writer; nullopt when there is none (or it is unreadable: the holder
// rewrites it before it can matter).
std::optional<WriterState> read_writer_state(const std::string& run_dir);
// "pid 1234" (", ckpt gc") from .ckpt-writer, or "another process" when unknown.
std::string describe_holder(const std::string& run_dir);
// Replaces <run_dir>/.ckpt-writer with this process's pid, `holder` and `protect` (write
// .ckpt-writer.new, rename; no fsync). Only the lease holder calls it.
void publish_writer_state(const std::string& run_dir, const std::set<std::string>& protect,
                          const std::string& holder = {});

// This process's writer lease on one run directory, shared by every Runtime of the process.
class RunLease {
 public:
  // Joins this process's lease on run_dir (absolute, normalized), or takes it, waiting up to
  // `wait` for another process to release it; throws Error(busy) naming the holder's pid.
  static std::shared_ptr<RunLease> acquire(const std::string& run_dir,
                                           std::chrono::milliseconds wait);
  ~RunLease();

  const std::string& run_dir() const noexcept { return file_.run_dir(); }

  // Counted: a suffix stays published while protect() calls outnumber release() calls.
  void protect(const std::string& suffix);
  void release(const std::string& suffix) noexcept;
  // What every Runtime of this process protects in the run directory now.
  std::set<std::string> protected_now();

  // The mutation lock, across processes and between this process's threads.
  class Mutation {
   public:
    explicit Mutation(RunLease& lease) : lease_(&lease) {}
    Mutation(Mutation&& o) noexcept : lease_(std::exchange(o.lease_, nullptr)) {}
    Mutation& operator=(Mutation&&) = delete;
    ~Mutation();

   private:
    RunLease* lease_;
  };
  Mutation lock_mutations(std::chrono::milliseconds wait);

  explicit RunLease(const std::string& run_dir);  // use acquire()

 private:
  std::set<std::string> protected_locked() const;
  void publish_locked();

  RunLockFile file_;
  bool held_ = false;  // the lease was taken (and the state published)
  std::mutex mu_;      // guards protect_ and the publication
  std::map<std::string, int> protect_;
  std::mutex mutation_mu_;  // this process's threads, before the file lock
};

}  // namespace ckpt
