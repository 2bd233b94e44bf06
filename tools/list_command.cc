// `ckpt list` and `ckpt latest`: what a run directory holds and what `latest` names.
#include <fmt/format.h>

#include <algorithm>
#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <filesystem>
#include <optional>

#include "io/error.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "tools/commands.h"
#include "tools/format.h"

namespace ckpt::tools {

namespace fs = std::filesystem;
namespace json = boost::json;

void require_directory(const std::string& path, const char* what) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) throw sys_error("stat", path, ec.value());
  if (!fs::exists(st)) throw Error(Errc::not_found, fmt::format("no such {}", what), path);
  if (!fs::is_directory(st)) {
    throw Error(Errc::invalid_argument, fmt::format("not a directory (expected a {})", what), path);
  }
}

namespace {

// What `latest` says about the listed checkpoints: the suffix, and why it is unusable if it is.
struct LatestState {
  std::optional<std::string> suffix;
  std::string problem;
};

LatestState inspect_latest(const std::string& run_dir, const std::vector<CheckpointInfo>& infos) {
  LatestState state;
  try {
    state.suffix = read_latest(run_dir);
  } catch (const Error& e) {
    state.problem = e.what();
    return state;
  }
  if (!state.suffix) return state;
  auto it = std::find_if(infos.begin(), infos.end(),
                         [&](const CheckpointInfo& c) { return c.suffix == *state.suffix; });
  if (it == infos.end()) {
    state.problem =
        fmt::format("latest names '{}', which is not a committed checkpoint", *state.suffix);
  } else if (!it->error.empty()) {
    state.problem = fmt::format("latest names '{}', which cannot be read", *state.suffix);
  }
  return state;
}

json::object info_json(const CheckpointInfo& c, bool is_latest) {
  json::object o;
  o["suffix"] = c.suffix;
  o["path"] = c.path;
  o["latest"] = is_latest;
  if (c.error.empty()) {
    o["step"] = c.step ? json::value(*c.step) : json::value(nullptr);
    o["bytes"] = c.bytes;
    o["stored_bytes"] = c.stored_bytes;
    o["owned_bytes"] = c.owned_bytes;
    o["shared_bytes"] = c.shared_bytes;
    o["leaves"] = c.leaves;
    o["created_unix_ns"] = c.created_unix_ns;
    o["created"] = local_time_iso8601(c.created_unix_ns);
  } else {
    o["error"] = one_line(c.error);
  }
  return o;
}

}  // namespace

int run_list(const std::string& run_dir, bool json_out) {
  require_directory(run_dir, "run directory");
  std::vector<CheckpointInfo> infos = list_checkpoints(run_dir);
  LatestState latest = inspect_latest(run_dir, infos);
  auto is_latest = [&](const CheckpointInfo& c) {
    return latest.suffix && c.suffix == *latest.suffix;
  };

  if (json_out) {
    json::object doc;
    doc["run_dir"] = run_dir;
    doc["latest"] = latest.suffix ? json::value(*latest.suffix) : json::value(nullptr);
    if (!latest.problem.empty()) doc["latest_error"] = one_line(latest.problem);
    json::array rows;
    for (const auto& c : infos) rows.push_back(info_json(c, is_latest(c)));
    doc["checkpoints"] = std::move(rows);
    fmt::print("{}\n", json::serialize(doc));
    return kExitOk;
  }

  if (infos.empty()) {
    std::error_code ec;
    if (fs::exists(fs::path(run_dir) / kManifestName, ec)) {
      fmt::print("no checkpoints in {} (it is a checkpoint itself: try 'ckpt inspect')\n", run_dir);
    } else {
      fmt::print("no checkpoints in {}\n", run_dir);
    }
  } else {
    // OWNED: bytes of data files only this checkpoint names; SHARED: of files other checkpoints
    // name too (incremental saves).
    Table table({"", "SUFFIX", "STEP", "SIZE", "OWNED", "SHARED", "LEAVES", "CREATED"},
                {false, false, true, true, true, true, true, false});
    for (const auto& c : infos) {
      std::string mark = is_latest(c) ? "*" : "";
      if (!c.error.empty()) {
        table.add_row(
            {mark, c.suffix, "-", "-", "-", "-", "-", "unreadable: " + one_line(c.error)});
        continue;
      }
      table.add_row({mark, c.suffix, c.step ? std::to_string(*c.step) : "-", human_bytes(c.bytes),
                     human_bytes(c.owned_bytes), human_bytes(c.shared_bytes),
                     std::to_string(c.leaves), local_time_iso8601(c.created_unix_ns)});
    }
    fmt::print("{}", table.render());
  }
  if (!latest.problem.empty()) fmt::print("note: {}\n", one_line(latest.problem));
  return kExitOk;
}

int run_latest(const std::string& run_dir) {
  require_directory(run_dir, "run directory");
  std::optional<std::string> suffix = read_latest(run_dir);
  if (!suffix) throw Error(Errc::not_found, "no latest checkpoint (no 'latest' file)", run_dir);
  // The same rule as list and verify: no symbolic link, a committed checkpoint that reads.
  require_committed_checkpoint(run_dir, *suffix);
  read_manifest((fs::path(run_dir) / *suffix).string());
  fmt::print("{}\n", *suffix);
  return kExitOk;
}

}  // namespace ckpt::tools
