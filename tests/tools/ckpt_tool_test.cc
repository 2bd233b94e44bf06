// The `ckpt` command-line tool, run as a process on checkpoints written by save_checkpoint:
// its reports, its JSON and its exit codes (0 ok, 1 corrupt/missing/failed, 2 usage).
#include <doctest/doctest.h>

#include <algorithm>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "io/engine.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/manifest.h"
#include "runtime/runtime.h"
#include "tests/test_util.h"

#ifndef CKPT_TOOL_PATH
#error "CKPT_TOOL_PATH must name the built ckpt binary"
#endif

namespace ckpt {
namespace {

using test::TempDir;

enum class Stream { both, out, err };

struct Run {
  int rc = -1;
  std::string text;
};

// Runs `ckpt <args>` and captures the chosen streams.
Run ckpt_tool(const std::string& args, Stream stream = Stream::both) {
  std::string cmd = std::string("'") + CKPT_TOOL_PATH + "' " + args;
  if (stream == Stream::out) cmd = "{ " + cmd + " 2>/dev/null; }";
  if (stream == Stream::err) cmd = "{ " + cmd + " >/dev/null; }";
  Run r;
  r.rc = test::run_command(cmd, &r.text);
  return r;
}

std::string q(const std::string& path) { return "'" + path + "'"; }

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

std::string line_with(const std::string& text, const std::string& needle) {
  for (const auto& line : lines_of(text)) {
    if (line.find(needle) != std::string::npos) return line;
  }
  return {};
}

Tree small_tree(std::uint64_t seed) {
  Tree tree;
  tree["w"] = Array::zeros(DType::f32, {4, 4});
  tree["layers"]["b"] = Array::zeros(DType::f32, {8});
  tree["layers"]["n"] = Array::zeros(DType::i64, {3});
  for (const auto& [path, array] : tree.flatten()) test::fill_pattern(array, seed++);
  return tree;
}

void save(const std::string& dir, std::int64_t step) {
  auto engine = io::make_engine();
  boost::json::object metadata{{"step", step}, {"loss", 0.5}};
  save_checkpoint(*engine, dir, small_tree(static_cast<std::uint64_t>(step)), metadata);
}

// The data-file offset of leaf `path`'s first extent.
std::uint64_t leaf_offset(const std::string& dir, const std::string& path) {
  Manifest m = read_manifest(dir);
  for (const auto& leaf : m.leaves) {
    if (leaf.path == path) return leaf.extents.at(0).offset;
  }
  FAIL("no leaf " << path);
  return 0;
}

TEST_CASE("list marks the latest checkpoint and shows steps") {
  TempDir run;
  save(run / "step/100", 100);
  save(run / "step/200", 200);
  write_latest(run.path(), "step/100");

  Run r = ckpt_tool("list " + q(run.path()));
  INFO(r.text);
  CHECK(r.rc == 0);
  std::string first = line_with(r.text, "step/100");
  std::string second = line_with(r.text, "step/200");
  REQUIRE(!first.empty());
  REQUIRE(!second.empty());
  CHECK(first.front() == '*');
  CHECK(second.front() != '*');
  CHECK(first.find(" 100 ") != std::string::npos);
  CHECK(second.find(" 200 ") != std::string::npos);
  CHECK(first.find(" 3 ") != std::string::npos);  // leaves
  CHECK(first.find("B") != std::string::npos);    // a size with its unit
  CHECK(r.text.find("note:") == std::string::npos);
}

TEST_CASE("list --json is one JSON document with the latest flagged") {
  TempDir run;
  save(run / "a", 1);
  save(run / "b", 2);
  write_latest(run.path(), "b");

  Run r = ckpt_tool("list --json " + q(run.path()), Stream::out);
  INFO(r.text);
  REQUIRE(r.rc == 0);
  boost::json::value doc = boost::json::parse(r.text);
  CHECK(doc.at("latest").as_string() == "b");
  const auto& rows = doc.at("checkpoints").as_array();
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].at("suffix").as_string() == "a");
  CHECK(rows[0].at("step").as_int64() == 1);
  CHECK(rows[0].at("latest").as_bool() == false);
  CHECK(rows[1].at("suffix").as_string() == "b");
  CHECK(rows[1].at("latest").as_bool() == true);
  CHECK(rows[1].at("leaves").to_number<std::uint64_t>() == 3);
  CHECK(rows[1].at("bytes").to_number<std::uint64_t>() == 4 * 16 + 4 * 8 + 8 * 3);
}

TEST_CASE("list of an empty run directory says so and succeeds") {
  TempDir run;
  Run r = ckpt_tool("list " + q(run.path()));
  CHECK(r.rc == 0);
  CHECK(r.text == "no checkpoints in " + run.path() + "\n");
}

TEST_CASE("list of a missing run directory fails with one line on stderr") {
  TempDir run;
  Run out = ckpt_tool("list " + q(run / "nope"), Stream::out);
  CHECK(out.rc == 1);
  CHECK(out.text.empty());
  Run err = ckpt_tool("list " + q(run / "nope"), Stream::err);
  CHECK(err.rc == 1);
  CHECK(lines_of(err.text).size() == 1);
  CHECK(err.text.rfind("ckpt: ", 0) == 0);
  CHECK(err.text.find(run / "nope") != std::string::npos);
}

TEST_CASE("list shows an unreadable checkpoint with its error and a dangling latest") {
  TempDir run;
  save(run / "good", 1);
  save(run / "bad", 2);
  test::flip_byte(run / "bad/manifest.ckpt", 8);
  write_latest(run.path(), "gone");

  Run r = ckpt_tool("list " + q(run.path()));
  INFO(r.text);
  CHECK(r.rc == 0);
  CHECK(line_with(r.text, "bad").find("unreadable") != std::string::npos);
  CHECK(line_with(r.text, "good").find("unreadable") == std::string::npos);
  CHECK(line_with(r.text, "note:").find("'gone'") != std::string::npos);

  Run j = ckpt_tool("list --json " + q(run.path()), Stream::out);
  boost::json::value doc = boost::json::parse(j.text);
  CHECK(doc.at("latest_error").as_string().find("gone") != boost::json::string::npos);
}

TEST_CASE("inspect --json has the summary, metadata, files and leaves") {
  TempDir run;
  save(run / "c", 7);
  Run r = ckpt_tool("inspect --json " + q(run / "c"), Stream::out);
  INFO(r.text);
  REQUIRE(r.rc == 0);
  boost::json::value doc = boost::json::parse(r.text);
  CHECK(doc.at("format_version").as_int64() == 2);
  CHECK(doc.at("leaf_count").to_number<int>() == 3);
  REQUIRE(doc.at("blocks").as_array().size() == 1);
  CHECK(doc.at("blocks").at(0).at("length").to_number<int>() == 4096);
  CHECK(doc.at("metadata").at("step").as_int64() == 7);
  const auto& files = doc.at("files").as_array();
  CHECK(std::any_of(files.begin(), files.end(),
                    [](const auto& f) { return f.at("name").as_string() == "data-00000.bin"; }));
  CHECK(std::any_of(files.begin(), files.end(),
                    [](const auto& f) { return f.at("name").as_string() == "metadata.json"; }));
  const auto& leaves = doc.at("leaves").as_array();
  REQUIRE(leaves.size() == 3);
  const boost::json::value* w = nullptr;
  for (const auto& leaf : leaves) {
    if (leaf.at("path").as_string() == "w") w = &leaf;
  }
  REQUIRE(w != nullptr);
  CHECK(w->at("dtype").as_string() == "float32");
  CHECK(w->at("shape") == boost::json::value{4, 4});
  CHECK(w->at("nbytes").to_number<int>() == 64);
  const auto& extents = w->at("extents").as_array();
  REQUIRE(extents.size() == 1);
  CHECK(extents[0].at("file").as_string() == "data-00000.bin");
  CHECK(extents[0].at("length").to_number<int>() == 64);
  CHECK(extents[0].as_object().contains("crc32c"));
}

TEST_CASE("inspect shows the format version of a version 1 checkpoint") {
  Run r = ckpt_tool("inspect --json " + q(std::string(CKPT_FIXTURES) + "/format_v1"), Stream::out);
  INFO(r.text);
  REQUIRE(r.rc == 0);
  boost::json::value doc = boost::json::parse(r.text);
  CHECK(doc.at("format_version").as_int64() == 1);
  CHECK(doc.at("blocks").as_array().size() == 10);  // one per extent
  // Its metadata holds a NaN: printed the way metadata.json stores it, so the output parses.
  CHECK(doc.at("metadata").at("nan").at("$ckpt").as_string() == "NaN");
  Run t = ckpt_tool("inspect " + q(std::string(CKPT_FIXTURES) + "/format_v1"));
  CHECK(line_with(t.text, "format version").find("1") != std::string::npos);
  Run v = ckpt_tool("verify " + q(std::string(CKPT_FIXTURES) + "/format_v1"));
  CHECK(v.rc == 0);
}

TEST_CASE("inspect prints the summary, metadata and leaf table") {
  TempDir run;
  save(run / "c", 7);
  Run r = ckpt_tool("inspect " + q(run / "c"));
  INFO(r.text);
  REQUIRE(r.rc == 0);
  CHECK(line_with(r.text, "format version").find("2") != std::string::npos);
  CHECK(line_with(r.text, "writer").find("ckpt") != std::string::npos);
  CHECK(line_with(r.text, "\"step\"").find("7") != std::string::npos);
  CHECK(!line_with(r.text, "data-00000.bin").empty());
  std::string w = line_with(r.text, "  w ");
  CHECK(w.find("float32") != std::string::npos);
  CHECK(w.find("[4, 4]") != std::string::npos);
  CHECK(line_with(r.text, "layers/b").find("[8]") != std::string::npos);
}

TEST_CASE("inspect of a directory without a manifest fails") {
  TempDir run;
  Run r = ckpt_tool("inspect " + q(run.path()), Stream::err);
  CHECK(r.rc == 1);
  CHECK(r.text.find("manifest.ckpt") != std::string::npos);
  CHECK(lines_of(r.text).size() == 1);
}

TEST_CASE("verify accepts a good checkpoint") {
  TempDir run;
  save(run / "c", 1);
  Run r = ckpt_tool("verify " + q(run / "c"));
  INFO(r.text);
  CHECK(r.rc == 0);
  CHECK(r.text.rfind("OK", 0) == 0);
  CHECK(r.text.find("3 leaves") != std::string::npos);

  Run t = ckpt_tool("verify --engine threads " + q(run / "c"));
  CHECK(t.rc == 0);
}

TEST_CASE("verify names the data file and the leaf after a flipped byte") {
  TempDir run;
  save(run / "c", 1);
  test::flip_byte(run / "c/data-00000.bin", leaf_offset(run / "c", "layers/b") + 5);
  Run r = ckpt_tool("verify " + q(run / "c"));
  INFO(r.text);
  CHECK(r.rc == 1);
  CHECK(r.text.rfind("FAIL", 0) == 0);
  std::string problem = line_with(r.text, "data-00000.bin");
  // The checksum covers a block, here holding every leaf (packed): it names them all.
  CHECK(problem.find("'layers/b'") != std::string::npos);
  CHECK(problem.find("block at offset 0") != std::string::npos);

  Run j = ckpt_tool("verify --json " + q(run / "c"), Stream::out);
  CHECK(j.rc == 1);
  boost::json::value doc = boost::json::parse(j.text);
  CHECK(doc.at("ok").as_bool() == false);
  REQUIRE(doc.at("problems").as_array().size() == 1);
  CHECK(doc.at("problems").as_array()[0].as_string().find("layers/b") != boost::json::string::npos);
}

TEST_CASE("verify names metadata.json after a flipped byte there") {
  TempDir run;
  save(run / "c", 1);
  test::flip_byte(run / "c/metadata.json", 3);
  Run r = ckpt_tool("verify " + q(run / "c"));
  INFO(r.text);
  CHECK(r.rc == 1);
  CHECK(!line_with(r.text, "metadata.json").empty());
  CHECK(line_with(r.text, "data-00000.bin").empty());
}

TEST_CASE("verify fails on a truncated data file") {
  TempDir run;
  save(run / "c", 1);
  std::string data = run / "c/data-00000.bin";
  test::truncate_file(data, test::file_size(data) / 2);
  Run r = ckpt_tool("verify " + q(run / "c"));
  INFO(r.text);
  CHECK(r.rc == 1);
  CHECK(!line_with(r.text, "data-00000.bin").empty());
}

TEST_CASE("verify of a path that does not exist fails with a clear message") {
  TempDir run;
  Run r = ckpt_tool("verify " + q(run / "missing"), Stream::err);
  CHECK(r.rc == 1);
  CHECK(lines_of(r.text).size() == 1);
  CHECK(r.text.rfind("ckpt: no such", 0) == 0);
  CHECK(r.text.find(run / "missing") != std::string::npos);
}

TEST_CASE("verify of a run directory checks every checkpoint") {
  TempDir run;
  save(run / "step/1", 1);
  save(run / "step/2", 2);
  write_latest(run.path(), "step/2");

  Run ok = ckpt_tool("verify " + q(run.path()));
  INFO(ok.text);
  CHECK(ok.rc == 0);
  CHECK(line_with(ok.text, "step/1").rfind("OK", 0) == 0);
  CHECK(line_with(ok.text, "step/2").rfind("OK", 0) == 0);

  test::flip_byte(run / "step/1/data-00000.bin", leaf_offset(run / "step/1", "w"));
  Run bad = ckpt_tool("verify " + q(run.path()));
  INFO(bad.text);
  CHECK(bad.rc == 1);
  CHECK(line_with(bad.text, "step/1").rfind("FAIL", 0) == 0);
  CHECK(line_with(bad.text, "step/2").rfind("OK", 0) == 0);

  Run j = ckpt_tool("verify --json " + q(run.path()), Stream::out);
  CHECK(j.rc == 1);
  boost::json::value doc = boost::json::parse(j.text);
  CHECK(doc.at("ok").as_bool() == false);
  CHECK(doc.at("checkpoints").as_array().size() == 2);
}

TEST_CASE("verify of a directory without checkpoints fails") {
  TempDir run;
  Run r = ckpt_tool("verify " + q(run.path()), Stream::err);
  CHECK(r.rc == 1);
  CHECK(r.text.find("no checkpoints") != std::string::npos);
}

TEST_CASE("usage errors exit 2 and --help exits 0") {
  TempDir run;
  CHECK(ckpt_tool("").rc == 2);
  Run unknown = ckpt_tool("frobnicate", Stream::err);
  CHECK(unknown.rc == 2);
  CHECK(unknown.text.find("unknown command 'frobnicate'") != std::string::npos);
  CHECK(ckpt_tool("verify").rc == 2);
  CHECK(ckpt_tool("list --bogus " + q(run.path())).rc == 2);
  CHECK(ckpt_tool("verify --engine warp " + q(run.path())).rc == 2);
  Run help = ckpt_tool("--help", Stream::out);
  CHECK(help.rc == 0);
  CHECK(help.text.find("verify") != std::string::npos);
  Run sub = ckpt_tool("verify --help", Stream::out);
  CHECK(sub.rc == 0);
  CHECK(sub.text.find("--engine") != std::string::npos);
}

TEST_CASE("latest prints the suffix the pointer names") {
  TempDir run;
  save(run / "step/5", 5);
  write_latest(run.path(), "step/5");
  Run r = ckpt_tool("latest " + q(run.path()));
  CHECK(r.rc == 0);
  CHECK(r.text == "step/5\n");
}

TEST_CASE("latest fails without a pointer or with one that names nothing") {
  TempDir run;
  Run none = ckpt_tool("latest " + q(run.path()), Stream::err);
  CHECK(none.rc == 1);
  CHECK(none.text.rfind("ckpt: ", 0) == 0);

  save(run / "step/5", 5);
  write_latest(run.path(), "step/5");
  std::filesystem::remove_all(run / "step/5");
  Run gone = ckpt_tool("latest " + q(run.path()), Stream::err);
  CHECK(gone.rc == 1);
  CHECK(gone.text.find("step/5") != std::string::npos);
  CHECK(lines_of(gone.text).size() == 1);
}

}  // namespace

TEST_CASE("gc keeps the newest checkpoints, the one latest names and period multiples") {
  TempDir run;
  for (int s = 1; s <= 6; ++s) save(run / ("step/" + std::to_string(s)), s);
  write_latest(run.path(), "step/2");
  Run dry = ckpt_tool("gc " + q(run.path()) + " --keep 2 --dry-run");
  INFO(dry.text);
  CHECK(dry.rc == 0);
  CHECK(dry.text.find("would remove step/1") != std::string::npos);
  CHECK(list_checkpoints(run.path()).size() == 6);  // a dry run removes nothing

  Run r = ckpt_tool("gc " + q(run.path()) + " --keep 2 --keep-period 3 --json", Stream::out);
  INFO(r.text);
  CHECK(r.rc == 0);
  auto out = boost::json::parse(r.text).as_object();
  // Period multiples (3, 6) are kept besides the 2 newest others (5, 4); 2 is latest.
  CHECK(out.at("removed").as_array().size() == 1);
  std::vector<std::string> left;
  for (const auto& c : list_checkpoints(run.path())) left.push_back(c.suffix);
  CHECK(left == std::vector<std::string>{"step/2", "step/3", "step/4", "step/5", "step/6"});
  CHECK(read_latest(run.path()) == "step/2");
}

TEST_CASE("gc removes leftovers only when asked and rejects a keep of zero") {
  TempDir run;
  save(run / "step/1", 1);
  std::filesystem::create_directories(run / "step/2.tmp-9-9-9");
  CHECK(ckpt_tool("gc " + q(run.path()) + " --keep 1").rc == 0);
  CHECK(std::filesystem::exists(run / "step/2.tmp-9-9-9"));
  Run r = ckpt_tool("gc " + q(run.path()) + " --keep 1 --leftovers");
  CHECK(r.rc == 0);
  CHECK_FALSE(std::filesystem::exists(run / "step/2.tmp-9-9-9"));
  CHECK(ckpt_tool("gc " + q(run.path()) + " --keep 0").rc == 2);
}

TEST_CASE("gc refuses a negative keep period with a usage error") {
  TempDir run;
  save(run / "step/1", 1);
  Run r = ckpt_tool("gc " + q(run.path()) + " --keep 1 --keep-period -5", Stream::err);
  CHECK(r.rc == 2);
  CHECK(r.text.find("keep-period") != std::string::npos);
}

TEST_CASE("gc with an unreadable latest removes nothing and exits 1 saying why") {
  TempDir run;
  for (int s = 1; s <= 3; ++s) save(run / ("step/" + std::to_string(s)), s);
  test::write_file(run / "latest", "/etc\n");
  Run r = ckpt_tool("gc " + q(run.path()) + " --keep 1", Stream::err);
  CHECK(r.rc == 1);
  CHECK(r.text.find("nothing removed") != std::string::npos);
  CHECK(list_checkpoints(run.path()).size() == 3);
}

TEST_CASE("gc with a prefix rotates only those checkpoints") {
  TempDir run;
  save(run / "eval/best", 0);
  for (int s = 1; s <= 4; ++s) save(run / ("step/" + std::to_string(s)), s);
  CHECK(ckpt_tool("gc " + q(run.path()) + " --keep 1 --prefix step/").rc == 0);
  std::vector<std::string> left;
  for (const auto& c : list_checkpoints(run.path())) left.push_back(c.suffix);
  CHECK(left == std::vector<std::string>{"eval/best", "step/4"});
}

TEST_CASE(
    "latest refuses a pointer through a symbolic link out of the run directory, as list does") {
  TempDir run;
  TempDir elsewhere;
  save(elsewhere / "x/ckpt", 1);
  std::filesystem::create_directory_symlink(elsewhere / "x", run / "step");
  write_latest(run.path(), "step/ckpt");
  Run r = ckpt_tool("latest " + q(run.path()), Stream::err);
  CHECK(r.rc == 1);
  CHECK(r.text.find("symbolic link") != std::string::npos);
  CHECK(list_checkpoints(run.path()).empty());
}

TEST_CASE("latest with a NUL or control characters is reported corrupt, escaped, on one line") {
  TempDir run;
  save(run / "step/1", 1);
  test::write_file(run / "latest", std::string("step/1\0\x1b[2J\n", 12));
  Run r = ckpt_tool("latest " + q(run.path()), Stream::err);
  CHECK(r.rc == 1);
  CHECK(r.text.find("\\x00") != std::string::npos);
  CHECK(r.text.find('\x1b') == std::string::npos);
  CHECK(lines_of(r.text).size() == 1);
}

TEST_CASE("inspect and list show owned and shared bytes, and export makes a self-contained copy") {
  TempDir run;
  {
    RuntimeOptions o;
    o.engine = io::EngineKind::threads;
    o.staging_budget = 8u << 20;
    o.incremental = true;
    Runtime rt(o);
    SaveOptions so;
    so.run_dir = run.path();
    Tree tree = small_tree(1);
    boost::json::object md{{"step", 1}};
    rt.save(run / "a", tree, md, so).wait();
    test::fill_pattern(tree.flatten().at(0).second, 99);  // one leaf changes
    md["step"] = 2;
    rt.save(run / "b", tree, md, so).wait();
  }
  Run r = ckpt_tool("inspect --json " + q(run / "b"), Stream::out);
  INFO(r.text);
  REQUIRE(r.rc == 0);
  boost::json::value doc = boost::json::parse(r.text);
  CHECK(doc.at("shared_bytes").to_number<std::uint64_t>() == 4096);
  CHECK(doc.at("owned_bytes").to_number<std::uint64_t>() == 4096);
  const auto& files = doc.at("files").as_array();
  CHECK(std::any_of(files.begin(), files.end(), [](const auto& f) {
    return f.at("name").as_string() == "data-00001.bin" && f.at("origin").as_string() == "a" &&
           f.at("links").template to_number<int>() == 2;
  }));
  CHECK(doc.at("leaves").at(0).at("extents").at(0).at("content_hash").is_string());
  Run text = ckpt_tool("inspect " + q(run / "b"), Stream::out);
  CHECK(text.text.find("shared bytes") != std::string::npos);
  Run list = ckpt_tool("list --json " + q(run.path()), Stream::out);
  REQUIRE(list.rc == 0);
  boost::json::value rows = boost::json::parse(list.text).at("checkpoints");
  CHECK(rows.at(1).at("shared_bytes").to_number<std::uint64_t>() == 4096);

  TempDir out;
  Run e = ckpt_tool("export " + q(run / "b") + " " + q(out / "copy"));
  INFO(e.text);
  REQUIRE(e.rc == 0);
  std::filesystem::remove_all(run / "a");
  std::filesystem::remove_all(run / "b");
  CHECK(ckpt_tool("verify " + q(out / "copy")).rc == 0);
  Run after = ckpt_tool("inspect --json " + q(out / "copy"), Stream::out);
  CHECK(boost::json::parse(after.text).at("shared_bytes").to_number<std::uint64_t>() == 0);
  Run bad = ckpt_tool("export " + q(run / "b") + " " + q(out / "again"), Stream::err);
  CHECK(bad.rc == 1);
}

}  // namespace ckpt
