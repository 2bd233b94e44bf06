#include "io/crash_point.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <mutex>

#include "io/error.h"
#include "io/log.h"

namespace ckpt::io {

namespace detail {
std::atomic<bool> crash_points_armed_flag{false};
}

namespace {

struct Armed {
  std::string name;        // empty: not armed
  int error = 0;           // fault: the errno thrown
  std::uint64_t nth = 0;   // 0: every time (faults only)
  std::uint64_t hits = 0;  // times the point was reached since arming
};

std::mutex mu;
Armed crash_at;
Armed fault_at;

std::uint64_t parse_count(std::string_view text, std::string_view var) {
  std::uint64_t n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || end != text.data() + text.size() || n == 0) {
    throw Error(Errc::invalid_argument,
                std::string(var) + ": bad count '" + std::string(text) + "'");
  }
  return n;
}

int parse_errno(std::string_view text) {
  static constexpr std::pair<std::string_view, int> kNames[] = {
      {"EIO", EIO},       {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT},      {"EROFS", EROFS},
      {"EACCES", EACCES}, {"EPERM", EPERM},   {"ENOENT", ENOENT},      {"EEXIST", EEXIST},
      {"EXDEV", EXDEV},   {"EINVAL", EINVAL}, {"ETIMEDOUT", ETIMEDOUT}};
  for (const auto& [name, value] : kNames) {
    if (text == name) return value;
  }
  return static_cast<int>(parse_count(text, "CKPT_FAULT_AT errno"));
}

// "name[:a[:b]]" split on ':'.
std::vector<std::string_view> split(std::string_view text) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  for (;;) {
    std::size_t colon = text.find(':', start);
    parts.push_back(text.substr(start, colon - start));
    if (colon == std::string_view::npos) return parts;
    start = colon + 1;
  }
}

Armed parse_crash(const char* value) {
  Armed a;
  if (value == nullptr || *value == '\0') return a;
  auto parts = split(value);
  if (parts.size() > 2 || parts[0].empty()) {
    throw Error(Errc::invalid_argument,
                std::string("CKPT_CRASH_AT: expected name[:n], got '") + value + "'");
  }
  a.name = parts[0];
  a.nth = parts.size() == 2 ? parse_count(parts[1], "CKPT_CRASH_AT") : 1;
  return a;
}

Armed parse_fault(const char* value) {
  Armed a;
  if (value == nullptr || *value == '\0') return a;
  auto parts = split(value);
  if (parts.size() < 2 || parts.size() > 3 || parts[0].empty()) {
    throw Error(Errc::invalid_argument,
                std::string("CKPT_FAULT_AT: expected name:errno[:n], got '") + value + "'");
  }
  a.name = parts[0];
  a.error = parse_errno(parts[1]);
  a.nth = parts.size() == 3 ? parse_count(parts[2], "CKPT_FAULT_AT") : 0;
  return a;
}

// Counts a hit of `name` against `a`; true when this hit fires.
bool fires(Armed& a, std::string_view name) {
  if (a.name.empty() || a.name != name) return false;
  ++a.hits;
  return a.nth == 0 || a.hits == a.nth;
}

[[noreturn]] void crash(std::string_view name) {
  std::string line = "ckpt: crash point " + std::string(name) + " reached: SIGKILL\n";
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
  ::kill(::getpid(), SIGKILL);
  ::_exit(137);
}

#if defined(CKPT_CRASH_POINTS_ENABLED)
// Arms from the environment at start-up; a malformed value is reported and ignored.
[[maybe_unused]] const bool armed_at_start = [] {
  try {
    reload_crash_points();
  } catch (const Error& e) {
    log().error("crash points not armed: {}", e.what());
  }
  return true;
}();
#endif

}  // namespace

void reload_crash_points() {
  Armed crash = parse_crash(std::getenv("CKPT_CRASH_AT"));
  Armed fault = parse_fault(std::getenv("CKPT_FAULT_AT"));
  std::lock_guard lock(mu);
  crash_at = std::move(crash);
  fault_at = std::move(fault);
  detail::crash_points_armed_flag.store(!crash_at.name.empty() || !fault_at.name.empty());
}

bool fsync_dropped([[maybe_unused]] std::string_view site) {
#if defined(CKPT_FSYNC_DROP_ENABLED)
  static const std::string dropped = [] {
    const char* v = std::getenv("CKPT_DROP_FSYNC");
    return std::string(v == nullptr ? "" : v);
  }();
  if (dropped.empty() || dropped != site) return false;
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) log().warn("CKPT_DROP_FSYNC: skipping every fsync of site {}", site);
  return true;
#else
  return false;
#endif
}

void crash_point_reached(std::string_view name) {
  std::unique_lock lock(mu);
  if (fires(crash_at, name)) crash(name);
}

void fault_point_reached(std::string_view name, const std::string& path) {
  std::unique_lock lock(mu);
  if (fires(crash_at, name)) crash(name);
  if (fires(fault_at, name)) {
    int err = fault_at.error;
    lock.unlock();
    throw sys_error(std::string(name) + " (injected fault)", path, err);
  }
}

}  // namespace ckpt::io
