#include "runtime/catalog.h"

#include <algorithm>
#include <filesystem>

#include "io/durable.h"
#include "io/error.h"
#include "io/file.h"
#include "runtime/checkpoint.h"

namespace ckpt {

namespace fs = std::filesystem;

void check_suffix(std::string_view suffix) {
  if (suffix.empty()) throw Error(Errc::invalid_argument, "empty checkpoint suffix");
  if (suffix.front() == '/') {
    throw Error(Errc::path_escape, "checkpoint suffix is absolute", std::string(suffix));
  }
  std::size_t start = 0;
  while (start <= suffix.size()) {
    std::size_t end = suffix.find('/', start);
    if (end == std::string_view::npos) end = suffix.size();
    std::string_view part = suffix.substr(start, end - start);
    if (part == "..")
      throw Error(Errc::path_escape, "checkpoint suffix contains '..'", std::string(suffix));
    if (part.empty() || part == ".") {
      throw Error(Errc::invalid_argument, "checkpoint suffix has an empty or '.' part",
                  std::string(suffix));
    }
    if (io::is_tmp_name(part)) {
      throw Error(Errc::invalid_argument, "checkpoint suffix contains '.tmp-'",
                  std::string(suffix));
    }
    start = end + 1;
  }
  if (suffix == kLatestName)
    throw Error(Errc::invalid_argument, "'latest' is reserved", std::string(suffix));
}

std::vector<CheckpointInfo> list_checkpoints(const std::string& run_dir) {
  std::vector<CheckpointInfo> out;
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) return out;
  std::vector<fs::path> stack{fs::path(run_dir)};
  while (!stack.empty()) {
    fs::path dir = stack.back();
    stack.pop_back();
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      if (entry.is_symlink(ec) || !entry.is_directory(ec)) continue;
      if (io::is_tmp_name(entry.path().filename().string())) continue;
      if (!fs::exists(entry.path() / kManifestName, ec)) {
        stack.push_back(entry.path());
        continue;
      }
      CheckpointInfo info;
      info.path = entry.path().string();
      info.suffix = entry.path().lexically_relative(run_dir).string();
      try {
        Manifest m = read_manifest(info.path);
        info.bytes = m.total_bytes;
        info.stored_bytes = m.stored_bytes();
        info.leaves = m.leaves.size();
        info.created_unix_ns = m.created_unix_ns;
        info.metadata = read_metadata(info.path);
        const auto& metadata = info.metadata;
        if (auto* step = metadata.if_contains("step"); step != nullptr && step->is_int64()) {
          info.step = step->as_int64();
        } else if (step != nullptr && step->is_uint64()) {
          info.step = static_cast<std::int64_t>(step->as_uint64());
        }
      } catch (const Error& e) {
        info.error = e.what();
      }
      out.push_back(std::move(info));
    }
  }
  std::sort(out.begin(), out.end(), [](const CheckpointInfo& a, const CheckpointInfo& b) {
    auto key = [](const CheckpointInfo& c) {
      return std::tuple(c.step.value_or(INT64_MIN), c.created_unix_ns, c.suffix);
    };
    return key(a) < key(b);
  });
  return out;
}

std::optional<std::string> read_latest(const std::string& run_dir) {
  std::string path = run_dir + "/" + std::string(kLatestName);
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  std::string text = io::read_small_file(path, 4096);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  try {
    check_suffix(text);
  } catch (const Error& e) {
    throw Error(Errc::corrupt, std::string("latest pointer is invalid: ") + e.what(), path);
  }
  return text;
}

void write_latest(const std::string& run_dir, const std::string& suffix) {
  check_suffix(suffix);
  io::atomic_replace_file(run_dir + "/" + std::string(kLatestName), suffix + "\n", "latest");
}

std::vector<std::string> clean_run_dir(const std::string& run_dir) {
  return io::remove_leftovers(run_dir);
}

}  // namespace ckpt
