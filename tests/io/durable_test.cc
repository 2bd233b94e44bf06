// The durable building blocks of the commit protocol (io/durable.h).
#include "io/durable.h"

#include <doctest/doctest.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "io/error.h"
#include "tests/test_util.h"

namespace ckpt::io {
namespace {

namespace fs = std::filesystem;
using test::catch_error;
using test::contains;
using test::TempDir;

TEST_CASE("atomic_replace_file creates and replaces content and leaves no temporary file") {
  TempDir tmp;
  const std::string path = tmp / "latest";
  atomic_replace_file(path, "first\n");
  CHECK(test::read_file(path) == "first\n");
  atomic_replace_file(path, "second, longer content\n");
  CHECK(test::read_file(path) == "second, longer content\n");
  atomic_replace_file(path, "");
  CHECK(test::read_file(path).empty());
  CHECK(test::list_dir(tmp.path()) == std::vector<std::string>{"latest"});
}

TEST_CASE("atomic_replace_file into a missing directory fails naming the path and leaves nothing") {
  TempDir tmp;
  auto e = catch_error([&] { atomic_replace_file(tmp / "missing/latest", "x"); });
  REQUIRE(e);
  CHECK(contains(e->what(), tmp / "missing/latest"));
  CHECK(test::list_dir(tmp.path()).empty());
}

TEST_CASE("write_new_file refuses to overwrite an existing file") {
  TempDir tmp;
  write_new_file(tmp / "a", "one");
  auto e = catch_error([&] { write_new_file(tmp / "a", "two"); });
  REQUIRE(e);
  CHECK(contains(e->what(), tmp / "a"));
  CHECK(test::read_file(tmp / "a") == "one");
}

TEST_CASE("commit_directory renames a temporary directory to a new name") {
  TempDir tmp;
  const std::string staged = tmp / ("ckpt" + std::string(kTmpMarker) + unique_tag());
  make_dirs(staged);
  test::write_file(staged + "/a", "new");
  commit_directory(staged, tmp / "ckpt");
  CHECK(test::read_file(tmp / "ckpt/a") == "new");
  CHECK(test::list_dir(tmp.path()) == std::vector<std::string>{"ckpt"});
}

TEST_CASE("commit_directory over an existing directory replaces its content and leaves no tmp") {
  TempDir tmp;
  make_dirs(tmp / "ckpt/sub");
  test::write_file(tmp / "ckpt/old", "old");
  test::write_file(tmp / "ckpt/sub/old2", "old");
  const std::string staged = tmp / ("ckpt" + std::string(kTmpMarker) + unique_tag());
  make_dirs(staged);
  test::write_file(staged + "/new", "new");
  commit_directory(staged, tmp / "ckpt");
  CHECK(test::list_dir(tmp / "ckpt") == std::vector<std::string>{"new"});
  CHECK(test::read_file(tmp / "ckpt/new") == "new");
  CHECK(test::list_dir(tmp.path()) == std::vector<std::string>{"ckpt"});
  CHECK(test::find_tmp_entries(tmp.path()).empty());
}

TEST_CASE("commit_directory of a missing source fails naming the destination") {
  TempDir tmp;
  auto e = catch_error([&] { commit_directory(tmp / "nothing.tmp-1", tmp / "ckpt"); });
  REQUIRE(e);
  CHECK(contains(e->what(), tmp / "ckpt"));
  CHECK_FALSE(fs::exists(tmp / "ckpt"));
}

TEST_CASE("remove_leftovers removes temporary files and directories at any depth") {
  TempDir tmp;
  const std::string root = tmp / "run";
  make_dirs(root + "/step/100");
  make_dirs(root + "/b.tmp-2/inner");
  make_dirs(root + "/nested/deeper/dir.tmp-4/x");
  test::write_file(root + "/a.tmp-1", "garbage");
  test::write_file(root + "/b.tmp-2/inner/file", "garbage");
  test::write_file(root + "/nested/x.tmp-3", "garbage");
  test::write_file(root + "/nested/keep.txt", "keep");
  test::write_file(root + "/latest", "step/100\n");
  test::write_file(root + "/step/100/manifest.ckpt", "m");
  test::write_file(root + "/step/100/data-00000.bin", "d");
  // Inside a committed checkpoint nothing is touched: remove_leftovers does not descend there.
  test::write_file(root + "/step/100/inside.tmp-5", "not ours to judge");

  std::vector<std::string> removed = remove_leftovers(root);
  std::set<std::string> got(removed.begin(), removed.end());
  std::set<std::string> want{root + "/a.tmp-1", root + "/b.tmp-2", root + "/nested/x.tmp-3",
                             root + "/nested/deeper/dir.tmp-4"};
  CHECK(got == want);
  CHECK(removed.size() == want.size());
  for (const auto& p : want) CHECK_FALSE(fs::exists(p));
  CHECK(fs::exists(root + "/nested/keep.txt"));
  CHECK(fs::is_directory(root + "/nested/deeper"));
  CHECK(fs::exists(root + "/latest"));
  CHECK(fs::exists(root + "/step/100/manifest.ckpt"));
  CHECK(fs::exists(root + "/step/100/data-00000.bin"));
  CHECK(fs::exists(root + "/step/100/inside.tmp-5"));

  CHECK(remove_leftovers(root).empty());  // idempotent
  CHECK(remove_leftovers(tmp / "does-not-exist").empty());
}

TEST_CASE("remove_leftovers does not follow symbolic links") {
  TempDir tmp;
  make_dirs(tmp / "run");
  make_dirs(tmp / "elsewhere");
  test::write_file(tmp / "elsewhere/victim.tmp-1", "keep me");
  fs::create_directory_symlink(tmp / "elsewhere", tmp / "run/link");
  remove_leftovers(tmp / "run");
  CHECK(fs::exists(tmp / "elsewhere/victim.tmp-1"));
}

TEST_CASE("make_dirs creates nested directories and accepts existing ones") {
  TempDir tmp;
  make_dirs(tmp / "a/b/c/d");
  CHECK(fs::is_directory(tmp / "a/b/c/d"));
  CHECK_NOTHROW(make_dirs(tmp / "a/b/c/d"));
  CHECK_NOTHROW(make_dirs(tmp / "a/b/"));
  CHECK_NOTHROW(make_dirs(tmp.path()));
  make_dirs(tmp / "a/b/x/../y");
  CHECK(fs::is_directory(tmp / "a/b/y"));
}

TEST_CASE("make_dirs fails naming the path when a component is a regular file") {
  TempDir tmp;
  test::write_file(tmp / "file", "x");
  auto e = catch_error([&] { make_dirs(tmp / "file/sub/dir"); });
  REQUIRE(e);
  CHECK(contains(e->what(), tmp / "file"));
  CHECK(e->sys_errno() == ENOTDIR);
  CHECK(test::read_file(tmp / "file") == "x");

  auto e2 = catch_error([&] { make_dirs(tmp / "file"); });
  REQUIRE(e2);
  CHECK(contains(e2->what(), tmp / "file"));
}

TEST_CASE("unique_tag never repeats and is_tmp_name recognizes the marker") {
  std::set<std::string> tags;
  for (int i = 0; i < 1000; ++i) tags.insert(unique_tag());
  CHECK(tags.size() == 1000);
  CHECK(is_tmp_name("step.tmp-123-4-5"));
  CHECK(is_tmp_name("latest.tmp-x"));
  CHECK_FALSE(is_tmp_name("step"));
  CHECK_FALSE(is_tmp_name("a.tmp"));
  CHECK_FALSE(is_tmp_name("tmp-1"));
}

}  // namespace
}  // namespace ckpt::io
