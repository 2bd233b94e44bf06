// `ckpt verify`: every checksum of one checkpoint, or of every checkpoint in a run directory.
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

namespace {

// `head` (what was verified) followed by the outcome.
json::object report_json(json::object head, const VerifyReport& r) {
  json::array problems;
  for (const auto& p : r.problems) problems.push_back(json::string(one_line(p)));
  head["ok"] = r.ok();
  head["leaves"] = r.leaves;
  head["bytes_checked"] = r.bytes_checked;
  head["problems"] = std::move(problems);
  return head;
}

std::string checked_summary(const VerifyReport& r) {
  std::string bytes = fmt::format("{} bytes", r.bytes_checked);
  if (r.bytes_checked >= 1024) bytes += fmt::format(" ({})", human_bytes(r.bytes_checked));
  return fmt::format("{} leaves, {} checked", r.leaves, bytes);
}

// "OK <name>: ..." or "FAIL <name>: N problems" and one indented line per problem.
void print_report(const std::string& name, const VerifyReport& r) {
  if (r.ok()) {
    fmt::print("OK   {}: {}\n", name, checked_summary(r));
    return;
  }
  fmt::print("FAIL {}: {} problem{}\n", name, r.problems.size(), r.problems.size() == 1 ? "" : "s");
  for (const auto& p : r.problems) fmt::print("  {}\n", one_line(p));
}

int verify_one(io::Engine& engine, const std::string& dir, bool json_out) {
  VerifyReport r = verify_checkpoint(engine, dir);
  if (json_out) {
    fmt::print("{}\n", json::serialize(report_json({{"path", dir}}, r)));
  } else {
    print_report(dir, r);
  }
  return r.ok() ? kExitOk : kExitFailed;
}

int verify_run_dir(io::Engine& engine, const std::string& run_dir, bool json_out) {
  std::vector<CheckpointInfo> infos = list_checkpoints(run_dir);
  if (infos.empty()) {
    throw Error(Errc::not_found, "not a checkpoint (no manifest.ckpt) and no checkpoints below it",
                run_dir);
  }
  // `latest` must name one of the checkpoints; that it verifies is checked with the rest.
  std::optional<std::string> latest;
  std::string latest_problem;
  try {
    latest = read_latest(run_dir);
  } catch (const Error& e) {
    latest_problem = e.what();
  }
  if (latest && std::none_of(infos.begin(), infos.end(),
                             [&](const CheckpointInfo& c) { return c.suffix == *latest; })) {
    latest_problem = fmt::format("names '{}', which is not a committed checkpoint", *latest);
  }

  std::size_t failed = 0;
  json::array rows;
  for (const auto& c : infos) {
    VerifyReport r = verify_checkpoint(engine, c.path);
    bool is_latest = latest && c.suffix == *latest;
    if (!r.ok()) ++failed;
    if (json_out) {
      rows.push_back(
          report_json({{"suffix", c.suffix}, {"path", c.path}, {"latest", is_latest}}, r));
    } else {
      print_report(is_latest ? c.suffix + " (latest)" : c.suffix, r);
    }
  }
  bool ok = failed == 0 && latest_problem.empty();
  if (json_out) {
    json::object doc;
    doc["run_dir"] = run_dir;
    doc["ok"] = ok;
    doc["latest"] = latest ? json::value(*latest) : json::value(nullptr);
    if (!latest_problem.empty()) doc["latest_error"] = one_line(latest_problem);
    doc["checkpoints"] = std::move(rows);
    fmt::print("{}\n", json::serialize(doc));
  } else {
    if (!latest_problem.empty()) fmt::print("FAIL latest: {}\n", one_line(latest_problem));
    fmt::print("{} checkpoint{} verified in {}: {} ok, {} failed\n", infos.size(),
               infos.size() == 1 ? "" : "s", run_dir, infos.size() - failed, failed);
  }
  return ok ? kExitOk : kExitFailed;
}

}  // namespace

int run_verify(const std::string& path, bool json_out, io::EngineKind kind) {
  require_directory(path, "checkpoint or run directory");
  io::EngineOptions options;
  options.kind = kind;
  std::unique_ptr<io::Engine> engine = io::make_engine(options);
  std::error_code ec;
  if (fs::exists(fs::path(path) / kManifestName, ec)) return verify_one(*engine, path, json_out);
  return verify_run_dir(*engine, path, json_out);
}

}  // namespace ckpt::tools
