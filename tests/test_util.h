#pragma once
// Shared test helpers: scratch directories and deterministic trees.
#include <spdlog/sinks/ostream_sink.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "io/engine.h"
#include "io/error.h"
#include "io/fault_engine.h"
#include "io/log.h"
#include "runtime/tree.h"

namespace ckpt::test {

// A fresh directory under $TMPDIR (default /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

// Fills every byte of `a` from a deterministic generator seeded by `seed`.
void fill_pattern(const Array& a, std::uint64_t seed);
// True when every byte of `a` equals what fill_pattern(seed) wrote.
bool has_pattern(const Array& a, std::uint64_t seed);
// A tree of `leaves` owned f32 arrays ("layer<i>/w") of `floats` elements, leaf i filled by
// fill_pattern(seed + i).
Tree make_tree(std::size_t leaves, std::size_t floats, std::uint64_t seed);
// Same paths, dtypes, shapes and bytes.
bool trees_equal(const Tree& a, const Tree& b);
// A copy of the structure with zero-filled owned arrays.
Tree zeros_like(const Tree& t);

// Flips one bit of the file at `offset` (pwrite, fsync).
void flip_byte(const std::string& path, std::uint64_t offset);
void truncate_file(const std::string& path, std::uint64_t size);
std::uint64_t file_size(const std::string& path);

// Whole-file read and (over)write, for tests that inspect or forge files.
std::string read_file(const std::string& path);
void write_file(const std::string& path, std::string_view content);
// Names of the entries of `dir`, sorted.
std::vector<std::string> list_dir(const std::string& dir);
// Every path below `dir` (recursively) whose name holds the temporary marker ".tmp-".
std::vector<std::string> find_tmp_entries(const std::string& dir);

inline bool contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
}

// Runs `fn` and returns the ckpt::Error it throws, or nullopt when it throws nothing. Any other
// exception propagates (and fails the test).
template <typename Fn>
std::optional<Error> catch_error(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e;
  }
  return std::nullopt;
}

// A RuntimeOptions::wrap_engine that wraps the Runtime's engine in an io::FaultEngine and stores
// it in *out for the test to arm (`out` must outlive the Runtime's construction).
std::function<std::unique_ptr<io::Engine>(std::unique_ptr<io::Engine>)> wrap_in_faults(
    io::FaultEngine** out);

// An engine that passes everything to `inner`: a base for test engines that watch or act on
// some requests (they override submit and call ForwardingEngine::submit).
class ForwardingEngine : public io::Engine {
 public:
  explicit ForwardingEngine(std::unique_ptr<io::Engine> inner) : inner_(std::move(inner)) {}
  std::string_view name() const noexcept override { return inner_->name(); }
  void submit(const io::Request& request, io::Completion done) override {
    inner_->submit(request, std::move(done));
  }
  bool register_buffers(std::span<const iovec> buffers) override {
    return inner_->register_buffers(buffers);
  }
  void unregister_buffers() override { inner_->unregister_buffers(); }

 protected:
  std::unique_ptr<io::Engine> inner_;
};

// Counts the reads it forwards, and their bytes (a two-pass restore reads every unit twice).
class CountingEngine final : public ForwardingEngine {
 public:
  CountingEngine() : ForwardingEngine(io::make_engine()) {}
  void submit(const io::Request& r, io::Completion done) override {
    if (r.op == io::Request::Op::read) {
      ++reads_;
      read_bytes_ += r.len;
    }
    ForwardingEngine::submit(r, std::move(done));
  }
  std::uint64_t reads() const { return reads_; }
  std::uint64_t read_bytes() const { return read_bytes_; }

 private:
  std::atomic<std::uint64_t> reads_{0};
  std::atomic<std::uint64_t> read_bytes_{0};
};

// Holds every read until release_burst(), then passes them all on together: a disk that
// completes its whole queue at once, as this VM's virtio disk does. Other requests pass.
class BurstEngine final : public ForwardingEngine {
 public:
  explicit BurstEngine(std::unique_ptr<io::Engine> inner) : ForwardingEngine(std::move(inner)) {}
  // The inner engine first: it waits for the completions in flight, which use the members.
  ~BurstEngine() override { inner_.reset(); }
  void submit(const io::Request& r, io::Completion done) override {
    if (r.op != io::Request::Op::read) return ForwardingEngine::submit(r, std::move(done));
    std::lock_guard lock(mu_);
    held_.push_back({r, std::move(done)});
    cv_.notify_all();
  }
  // Waits up to `timeout` until a request is held and every one released before has completed
  // (so that what their completions submitted is held too), then releases what is held. Returns
  // how many it released: 0 on timeout.
  std::size_t release_burst(std::chrono::milliseconds timeout) {
    std::vector<Held> burst;
    {
      std::unique_lock lock(mu_);
      if (!cv_.wait_for(lock, timeout, [&] { return !held_.empty() && outstanding_ == 0; })) {
        return 0;
      }
      burst.swap(held_);
      outstanding_ = burst.size();
    }
    for (Held& h : burst) {
      ForwardingEngine::submit(h.request, [this, done = std::move(h.done)](std::int64_t res) {
        done(res);
        std::lock_guard lock(mu_);
        --outstanding_;
        cv_.notify_all();
      });
    }
    return burst.size();
  }
  // Releases bursts until `total` reads were released, or one wait timed out; returns each
  // burst's size.
  std::vector<std::size_t> release_until(std::size_t total, std::chrono::milliseconds timeout) {
    std::vector<std::size_t> bursts;
    for (std::size_t released = 0; released < total;) {
      const std::size_t n = release_burst(timeout);
      if (n == 0) break;
      bursts.push_back(n);
      released += n;
    }
    return bursts;
  }

 private:
  struct Held {
    io::Request request;
    io::Completion done;
  };
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Held> held_;
  std::size_t outstanding_ = 0;
};

// Captures what the `ckpt` logger writes while it lives.
struct LogCapture {
  std::ostringstream out;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink =
      std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  LogCapture() { ckpt::log().sinks().push_back(sink); }
  ~LogCapture() {
    auto& sinks = ckpt::log().sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink), sinks.end());
  }
  std::string text() {
    ckpt::log().flush();
    return out.str();
  }
};

// Runs fn() in a forked child (which must not touch doctest) and returns its exit status, or
// 128 + the signal that ended it.
template <typename Fn>
int in_child(Fn&& fn) {
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) ::_exit(fn());
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 255;
}

// Runs a shell command, returns its exit status and captures stdout+stderr.
int run_command(const std::string& command, std::string* output = nullptr);

// The start of a shell command running `mpiexec` as this machine needs it (docs/design.md,
// section 14, "Sanitizers and mpirun"): as root, more processes than cores, one node over shared
// memory only (TCP costs start-up time and shows lock-order inversions inside Open MPI under
// ThreadSanitizer) without vader's single-copy mechanism (CMA needs ptrace rights containers
// often lack), and no LeakSanitizer in the processes (Open MPI keeps memory until exit).
std::string mpirun_prefix(const std::string& mpiexec);

}  // namespace ckpt::test
