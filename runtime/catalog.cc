#include "runtime/catalog.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "io/durable.h"
#include "io/error.h"
#include "io/file.h"
#include "runtime/checkpoint.h"
#include "runtime/incremental.h"

namespace ckpt {

namespace fs = std::filesystem;

namespace {
bool is_control(char c) noexcept {
  auto u = static_cast<unsigned char>(c);
  return u < 0x20 || u == 0x7f;
}
bool has_control(std::string_view s) noexcept {
  return std::any_of(s.begin(), s.end(), is_control);
}
}  // namespace

bool is_valid_name_part(std::string_view part) noexcept {
  return !part.empty() && part.front() != '.' && part != kLatestName && !io::is_tmp_name(part) &&
         !has_control(part);
}

std::string escape_name(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (is_control(c) || c == '\\') {
      out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
    } else {
      out += c;
    }
  }
  return out;
}

void check_suffix(std::string_view suffix) {
  if (suffix.empty()) throw Error(Errc::invalid_argument, "empty checkpoint suffix");
  const std::string shown = escape_name(suffix);
  if (suffix.front() == '/') throw Error(Errc::path_escape, "checkpoint suffix is absolute", shown);
  std::size_t start = 0;
  while (start <= suffix.size()) {
    std::size_t end = suffix.find('/', start);
    if (end == std::string_view::npos) end = suffix.size();
    std::string_view part = suffix.substr(start, end - start);
    if (part == "..") throw Error(Errc::path_escape, "checkpoint suffix contains '..'", shown);
    if (!is_valid_name_part(part)) {
      throw Error(Errc::invalid_argument,
                  fmt::format("invalid checkpoint name part '{}' (parts may not be empty, start "
                              "with '.', contain '{}', be '{}' or hold control characters)",
                              escape_name(part), io::kTmpMarker, kLatestName),
                  shown);
    }
    start = end + 1;
  }
}

void check_checkpoint_dir_name(const std::string& dir) {
  std::string_view name = dir;
  while (name.size() > 1 && name.back() == '/') name.remove_suffix(1);
  // Above the checkpoint (where its run directory is not known) only what is never right: a
  // temporary's marker (cleanup would delete the checkpoint) or control characters.
  for (const auto& part : fs::path(std::string(name)).parent_path()) {
    const std::string p = part.string();
    if (io::is_tmp_name(p) || has_control(p)) {
      throw Error(Errc::invalid_argument,
                  fmt::format("invalid directory '{}' in a checkpoint path (it contains '{}' or "
                              "control characters)",
                              escape_name(p), io::kTmpMarker),
                  escape_name(dir));
    }
  }
  if (auto slash = name.rfind('/'); slash != std::string_view::npos) name.remove_prefix(slash + 1);
  if (!is_valid_name_part(name)) {
    throw Error(Errc::invalid_argument,
                fmt::format("invalid checkpoint name '{}' (it may not start with '.', contain "
                            "'{}', be '{}' or hold control characters)",
                            escape_name(name), io::kTmpMarker, kLatestName),
                escape_name(dir));
  }
}

std::string suffix_in_run_dir(const std::string& run_dir, const std::string& dir) {
  fs::path rel = fs::path(dir).lexically_relative(run_dir);
  if (rel.empty() || *rel.begin() == ".." || rel == ".") {
    throw Error(Errc::invalid_argument, "checkpoint is not inside its run directory " + run_dir,
                dir);
  }
  std::string suffix = rel.string();
  check_suffix(suffix);
  return suffix;
}

void require_committed_checkpoint(const std::string& run_dir, const std::string& suffix) {
  check_suffix(suffix);
  fs::path at(run_dir);
  for (const auto& part : fs::path(suffix)) {
    at /= part;
    std::error_code ec;
    fs::file_status st = fs::symlink_status(at, ec);
    if (fs::is_symlink(st)) {
      throw Error(Errc::path_escape, "checkpoint path goes through a symbolic link", at.string());
    }
    if (!fs::exists(st)) break;
  }
  std::error_code ec;
  if (!fs::is_regular_file(fs::symlink_status(fs::path(run_dir) / suffix / kManifestName, ec))) {
    throw Error(Errc::not_found, "no committed checkpoint '" + escape_name(suffix) + "'",
                (fs::path(run_dir) / suffix).string());
  }
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
      // Temporaries, hidden and reserved names are never checkpoints nor hold any.
      if (!is_valid_name_part(entry.path().filename().string())) continue;
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
        StorageReport storage = storage_report(info.path, m);
        info.owned_bytes = storage.owned;
        info.shared_bytes = storage.shared;
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
  if (!text.empty() && text.back() == '\n') text.pop_back();
  try {
    check_suffix(text);
  } catch (const Error& e) {
    throw Error(Errc::corrupt, "latest pointer is invalid: " + std::string(e.what()), path);
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
