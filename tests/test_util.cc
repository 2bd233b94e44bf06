#include "tests/test_util.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace ckpt::test {

namespace fs = std::filesystem;

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string templ = std::string(base != nullptr ? base : "/tmp") + "/ckpt-test-XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  // Tests make directories read-only to provoke failures; make them writable to remove them.
  for (auto it = fs::recursive_directory_iterator(path_, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it->is_directory(ec))
      fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
  }
  fs::remove_all(path_, ec);
}

namespace {
std::uint64_t splitmix(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
}  // namespace

void fill_pattern(const Array& a, std::uint64_t seed) {
  std::byte* p = a.mutable_data();
  std::uint64_t state = seed;
  std::uint64_t n = a.nbytes();
  std::uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t v = splitmix(state);
    std::memcpy(p + i, &v, 8);
  }
  std::uint64_t v = splitmix(state);
  std::memcpy(p + i, &v, n - i);
}

bool has_pattern(const Array& a, std::uint64_t seed) {
  Array copy = Array::zeros(a.dtype(), a.shape());
  fill_pattern(copy, seed);
  return std::memcmp(copy.data(), a.data(), a.nbytes()) == 0;
}

Tree make_tree(std::size_t leaves, std::size_t floats, std::uint64_t seed) {
  Tree t;
  for (std::size_t i = 0; i < leaves; ++i) {
    Array a = Array::zeros(DType::f32, {floats});
    fill_pattern(a, seed + i);
    t["layer" + std::to_string(i)]["w"] = a;
  }
  return t;
}

bool trees_equal(const Tree& a, const Tree& b) {
  auto fa = a.flatten();
  auto fb = b.flatten();
  if (fa.size() != fb.size()) return false;
  for (std::size_t i = 0; i < fa.size(); ++i) {
    const auto& [pa, xa] = fa[i];
    const auto& [pb, xb] = fb[i];
    if (pa != pb || xa.dtype() != xb.dtype() || xa.shape() != xb.shape()) return false;
    if (xa.nbytes() != 0 && std::memcmp(xa.data(), xb.data(), xa.nbytes()) != 0) return false;
  }
  return a.leaf_count() == b.leaf_count();
}

Tree zeros_like(const Tree& t) {
  if (t.is_leaf()) return Tree(Array::zeros(t.array().dtype(), t.array().shape()));
  Tree out = t.is_list() ? Tree::list() : Tree::dict();
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (t.is_list())
      out.push_back(zeros_like(t.children()[i]));
    else
      out[t.keys()[i]] = zeros_like(t.children()[i]);
  }
  return out;
}

void flip_byte(const std::string& path, std::uint64_t offset) {
  int fd = ::open(path.c_str(), O_RDWR);
  if (fd < 0) throw std::runtime_error("open " + path);
  unsigned char c = 0;
  if (::pread(fd, &c, 1, static_cast<off_t>(offset)) != 1)
    throw std::runtime_error("pread " + path);
  c ^= 0x10;
  if (::pwrite(fd, &c, 1, static_cast<off_t>(offset)) != 1)
    throw std::runtime_error("pwrite " + path);
  ::fsync(fd);
  ::close(fd);
}

void truncate_file(const std::string& path, std::uint64_t size) {
  if (::truncate(path.c_str(), static_cast<off_t>(size)) != 0)
    throw std::runtime_error("truncate " + path);
}

std::uint64_t file_size(const std::string& path) { return fs::file_size(path); }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write_file(const std::string& path, std::string_view content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<std::string> find_tmp_entries(const std::string& dir) {
  std::vector<std::string> found;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.path().filename().string().find(".tmp-") != std::string::npos) {
      found.push_back(entry.path().string());
    }
  }
  return found;
}

std::string mpirun_prefix(const std::string& mpiexec) {
  const char* asan = std::getenv("ASAN_OPTIONS");
  const std::string before = asan != nullptr && *asan != 0 ? std::string(asan) + ":" : "";
  return "env ASAN_OPTIONS='" + before + "detect_leaks=0' " + mpiexec +
         " --allow-run-as-root --oversubscribe --mca btl self,vader"
         " --mca btl_vader_single_copy_mechanism none";
}

int run_command(const std::string& command, std::string* output) {
  std::string cmd = command + " 2>&1";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) return -1;
  std::array<char, 4096> buf{};
  std::string out;
  std::size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  int status = ::pclose(pipe);
  if (output != nullptr) *output = std::move(out);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::function<std::unique_ptr<io::Engine>(std::unique_ptr<io::Engine>)> wrap_in_faults(
    io::FaultEngine** out) {
  return [out](std::unique_ptr<io::Engine> inner) {
    auto f = std::make_unique<io::FaultEngine>(std::move(inner));
    *out = f.get();
    return std::unique_ptr<io::Engine>(std::move(f));
  };
}

}  // namespace ckpt::test
