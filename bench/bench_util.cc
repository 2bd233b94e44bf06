#include "bench/bench_util.h"

#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <thread>

namespace ckpt::bench {

Summary summarize(std::vector<double> samples) {
  Summary s;
  s.n = samples.size();
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  auto rank = [&](double q) {
    auto i = static_cast<std::size_t>(std::ceil(q * static_cast<double>(samples.size())));
    return samples[std::clamp<std::size_t>(i, 1, samples.size()) - 1];
  };
  s.p50 = rank(0.50);
  s.p90 = rank(0.90);
  s.p99 = rank(0.99);
  s.min = samples.front();
  s.max = samples.back();
  s.mean = std::accumulate(samples.begin(), samples.end(), 0.0) / static_cast<double>(s.n);
  return s;
}

boost::json::object to_json(const Summary& s, bool with_p99) {
  boost::json::object o{{"p50", s.p50}, {"p90", s.p90}, {"max", s.max}};
  if (with_p99) o["p99"] = s.p99;
  return o;
}

std::uint64_t page_faults() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<std::uint64_t>(ru.ru_minflt) + static_cast<std::uint64_t>(ru.ru_majflt);
}

std::uint64_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;  // kB
  }
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<std::uint64_t>(ru.ru_maxrss) * 1024;
}

bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return f.good();
}

namespace {

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown";
}

std::string fs_name(const std::string& dir) {
  struct statfs st {};
  if (::statfs(dir.c_str(), &st) != 0) return "unknown";
  switch (static_cast<unsigned long>(st.f_type)) {
    case 0xEF53:
      return "ext4";
    case 0x58465342:
      return "xfs";
    case 0x9123683E:
      return "btrfs";
    case 0x01021994:
      return "tmpfs";
    case 0x794c7630:
      return "overlayfs";
    default:
      return fmt::format("0x{:x}", static_cast<unsigned long>(st.f_type));
  }
}

}  // namespace

boost::json::object describe_machine(const std::string& dir) {
  utsname u{};
  ::uname(&u);
  long pages = ::sysconf(_SC_PHYS_PAGES);
  long page = ::sysconf(_SC_PAGESIZE);
  return {{"cpu", cpu_model()},
          {"hardware_threads", std::thread::hardware_concurrency()},
          {"memory_bytes", static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page)},
          {"kernel", std::string(u.release)},
          {"fs", fs_name(dir)},
          {"dir", dir}};
}

std::string machine_line(const boost::json::object& m) {
  return fmt::format("{}, {} hardware threads, {:.1f} GiB RAM, Linux {}, {} at {}",
                     m.at("cpu").as_string().c_str(),
                     m.at("hardware_threads").to_number<std::int64_t>(),
                     static_cast<double>(m.at("memory_bytes").as_uint64()) / (1u << 30),
                     m.at("kernel").as_string().c_str(), m.at("fs").as_string().c_str(),
                     m.at("dir").as_string().c_str());
}

}  // namespace ckpt::bench
