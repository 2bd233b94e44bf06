#include "io/durable.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <mutex>
#include <random>
#include <unordered_map>

#include "io/crash_point.h"
#include "io/error.h"
#include "io/file.h"
#include "io/log.h"

namespace ckpt::io {

namespace fs = std::filesystem;

std::string unique_tag() {
  static std::atomic<std::uint64_t> counter{0};
  static const std::uint64_t salt = std::random_device{}();
  return std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1)) + "-" +
         std::to_string(salt % 1000000);
}

bool is_tmp_name(std::string_view name) noexcept {
  return name.find(kTmpMarker) != std::string_view::npos;
}

namespace {
// Never destroyed: saves may still end during static destruction.
std::mutex& live_mu = *new std::mutex;
std::unordered_map<std::string, int>& live_tmps() {
  static auto* live = new std::unordered_map<std::string, int>;
  return *live;
}
}  // namespace

std::string absolute_normal(const std::string& path) {
  std::error_code ec;
  fs::path abs = fs::absolute(path, ec);
  std::string out = (ec ? fs::path(path) : abs).lexically_normal().string();
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

void note_live_tmp(const std::string& path) {
  std::string key = absolute_normal(path);
  std::lock_guard lock(live_mu);
  ++live_tmps()[key];
}

void forget_live_tmp(const std::string& path) {
  std::string key = absolute_normal(path);
  std::lock_guard lock(live_mu);
  auto it = live_tmps().find(key);
  if (it != live_tmps().end() && --it->second == 0) live_tmps().erase(it);
}

bool is_live_tmp(const std::string& path) {
  std::string key = absolute_normal(path);
  std::lock_guard lock(live_mu);
  return live_tmps().contains(key);
}

void fsync_dir(const std::string& dir) { fsync_dir(dir, {}); }

void fsync_dir(const std::string& dir, std::string_view site) {
  if (!site.empty() && fsync_dropped(site)) return;
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw sys_error("open directory", dir, errno);
  File f(fd, dir, false);
  f.sync();
  f.close();
}

namespace {
std::string parent_of(const std::string& path) {
  fs::path p = fs::path(path).parent_path();
  return p.empty() ? std::string(".") : p.string();
}
}  // namespace

void make_dirs(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  if (p.empty()) return;
  std::vector<fs::path> created;
  for (fs::path cur = p; !cur.empty(); cur = cur.parent_path()) {
    struct stat st {};
    if (::stat(cur.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) {
        throw Error(Errc::invalid_argument, "not a directory", cur.string(), ENOTDIR);
      }
      break;
    }
    created.push_back(cur);
    if (cur == cur.parent_path()) break;
  }
  for (auto it = created.rbegin(); it != created.rend(); ++it) {
    if (::mkdir(it->c_str(), 0755) != 0 && errno != EEXIST) {
      throw sys_error("mkdir", it->string(), errno);
    }
    fsync_dir(parent_of(it->string()), "make_dirs_parent");
  }
}

namespace {
void write_synced_file(const std::string& path, std::initializer_list<std::string_view> pieces,
                       std::string_view site) {
  File f = open_buffered(path, OpenMode::write_new);
  for (std::string_view piece : pieces) f.write_all(piece);
  if (!fsync_dropped(site)) f.sync();
  f.close();
}
}  // namespace

void write_new_file(const std::string& path, std::string_view content) {
  write_synced_file(path, {content}, "new_file");
}

void write_new_file(const std::string& path, std::initializer_list<std::string_view> pieces) {
  write_synced_file(path, pieces, "new_file");
}

// point_tag is unused when crash points are compiled out.
void atomic_replace_file(const std::string& path, std::string_view content,
                         [[maybe_unused]] std::string_view point_tag) {
  std::string tmp = path + std::string(kTmpMarker) + unique_tag();
  note_live_tmp(tmp);
  try {
    write_synced_file(tmp, {content}, std::string(point_tag) + "_file");
    CKPT_FAULT_POINT("before_" + std::string(point_tag) + "_rename", path);
    if (::rename(tmp.c_str(), path.c_str()) != 0) throw sys_error("rename", path, errno);
  } catch (...) {
    ::unlink(tmp.c_str());
    forget_live_tmp(tmp);
    throw;
  }
  forget_live_tmp(tmp);
  CKPT_FAULT_POINT("after_" + std::string(point_tag) + "_rename", path);
  fsync_dir(parent_of(path), std::string(point_tag) + "_parent");
}

void commit_directory(const std::string& tmp_dir, const std::string& final_dir) {
  CKPT_FAULT_POINT("before_dir_rename", final_dir);
  int rc = static_cast<int>(::syscall(SYS_renameat2, AT_FDCWD, tmp_dir.c_str(), AT_FDCWD,
                                      final_dir.c_str(), RENAME_NOREPLACE));
  if (rc != 0 && errno == EEXIST) {
    // Overwrite: swap atomically, then the old checkpoint (now at tmp_dir) goes away.
    rc = static_cast<int>(::syscall(SYS_renameat2, AT_FDCWD, tmp_dir.c_str(), AT_FDCWD,
                                    final_dir.c_str(), RENAME_EXCHANGE));
    if (rc != 0) throw sys_error("rename (exchange)", final_dir, errno);
    CKPT_FAULT_POINT("after_dir_rename", final_dir);
    fsync_dir(parent_of(final_dir), "commit_parent");
    remove_tree(tmp_dir);  // the old checkpoint; still a live temporary of the caller's
  } else if (rc != 0) {
    throw sys_error("rename", final_dir, errno);
  } else {
    CKPT_FAULT_POINT("after_dir_rename", final_dir);
  }
  fsync_dir(parent_of(final_dir), "commit_parent");
}

void remove_tree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) throw Error(Errc::io, "remove failed: " + ec.message(), path, ec.value());
}

std::vector<std::string> remove_leftovers(const std::string& root) {
  std::vector<std::string> removed;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return removed;
  std::vector<fs::path> stack{fs::path(root)};
  while (!stack.empty()) {
    fs::path dir = stack.back();
    stack.pop_back();
    bool changed = false;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      std::string name = entry.path().filename().string();
      if (is_tmp_name(name)) {
        if (is_live_tmp(entry.path().string())) continue;  // ours, in use right now
        log().info("removing leftover of an interrupted write: {}", entry.path().string());
        remove_tree(entry.path().string());
        removed.push_back(entry.path().string());
        changed = true;
      } else if (entry.is_directory(ec) && !entry.is_symlink(ec) &&
                 !fs::exists(entry.path() / "manifest.ckpt", ec)) {
        stack.push_back(entry.path());
      }
    }
    if (changed) fsync_dir(dir.string());
  }
  return removed;
}

}  // namespace ckpt::io
