#pragma once
// Small helpers shared by the benchmarks: a clock, percentiles, process counters (page faults,
// peak RSS) and a description of the machine, so every figure says where it was measured.
#include <boost/json/object.hpp>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace ckpt::bench {

using Clock = std::chrono::steady_clock;

inline double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

inline double to_ms(std::chrono::nanoseconds d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// Nearest-rank percentiles of a sample (q in (0, 1]); 0 for an empty sample.
struct Summary {
  double p50 = 0, p90 = 0, p99 = 0, max = 0, min = 0, mean = 0;
  std::size_t n = 0;
};
Summary summarize(std::vector<double> samples);
// {"p50", "p90", "max"} (and "p99" when with_p99) in milliseconds.
boost::json::object to_json(const Summary& s, bool with_p99 = false);

// Minor + major page faults of the whole process so far (getrusage RUSAGE_SELF).
std::uint64_t page_faults();
// Peak resident set size in bytes since the process started or reset_peak_rss() (VmHWM).
std::uint64_t peak_rss_bytes();
// Resets the peak RSS to the current RSS (writes 5 to /proc/self/clear_refs); false if refused.
bool reset_peak_rss();

// CPU model, hardware threads, memory, kernel, and the file system holding `dir`.
boost::json::object describe_machine(const std::string& dir);
std::string machine_line(const boost::json::object& machine);  // one line for the table

}  // namespace ckpt::bench
