// Whole-file reads and the huge-page advice (io/file.h).
#include "io/file.h"

#include <doctest/doctest.h>

#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "io/error.h"
#include "tests/test_util.h"

namespace ckpt::io {
namespace {

using test::catch_error;
using test::contains;
using test::TempDir;

std::string patterned(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + i / 4096) & 0xff);
  return s;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

TEST_CASE("read_file_bytes returns a small file's bytes from the heap and a large one's from "
          "huge-page memory, the same either way") {
  TempDir tmp;
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{4097}, kAdviseHugeFrom - 1,
                        kAdviseHugeFrom, kAdviseHugeFrom + 12345}) {
    CAPTURE(n);
    const std::string path = tmp / ("f" + std::to_string(n));
    const std::string want = patterned(n);
    write_file(path, want);
    FileBytes got = read_file_bytes(path, std::size_t{1} << 30);
    CHECK(got.view().size() == n);
    CHECK(got.view() == want);
    CHECK(read_small_file(path, std::size_t{1} << 30) == want);
    // A decoder needs 8-byte alignment; both kinds of buffer give it. From kAdviseHugeFrom on the
    // bytes are in a mapping of their own (page-aligned), not on the heap.
    CHECK(reinterpret_cast<std::uintptr_t>(got.view().data()) % 8 == 0);
    if (n >= kAdviseHugeFrom) CHECK(reinterpret_cast<std::uintptr_t>(got.view().data()) % 4096 == 0);
    FileBytes moved = std::move(got);
    CHECK(moved.view() == want);
  }
}

TEST_CASE("read_file_bytes names the file when it is missing or larger than allowed") {
  TempDir tmp;
  const std::string path = tmp / "big";
  write_file(path, patterned(kAdviseHugeFrom + 1));
  auto e = catch_error([&] { read_file_bytes(path, kAdviseHugeFrom); });
  REQUIRE(e);
  CHECK(e->code() == Errc::corrupt);
  CHECK(contains(e->what(), path));
  CHECK(contains(e->what(), "larger than"));
  e = catch_error([&] { read_file_bytes(tmp / "absent", 100); });
  REQUIRE(e);
  CHECK(contains(e->what(), tmp / "absent"));
}

TEST_CASE("advise_huge_pages leaves the contents of small, unaligned and large vectors intact") {
  std::vector<std::uint64_t> small(100, 7);
  advise_huge_pages(small.data(), small.size() * sizeof(std::uint64_t));
  advise_huge_pages(reinterpret_cast<const char*>(small.data()) + 3, 17);
  CHECK(small[99] == 7);
  std::vector<std::uint64_t> big;
  big.reserve(kAdviseHugeFrom / sizeof(std::uint64_t) + 1000);
  advise_huge_pages(big.data(), big.capacity() * sizeof(std::uint64_t));
  for (std::size_t i = 0; i < big.capacity(); ++i) big.push_back(i);
  CHECK(big.front() == 0);
  CHECK(big.back() == big.size() - 1);
}

}  // namespace
}  // namespace ckpt::io
