#pragma once
// Shared test helpers: scratch directories and deterministic trees.
#include <cstdint>
#include <string>

#include "runtime/tree.h"

namespace ckpt::test {

// A fresh directory under $TMPDIR (default /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

// Fills every byte of `a` from a deterministic generator seeded by `seed`.
void fill_pattern(const Array& a, std::uint64_t seed);
// True when every byte of `a` equals what fill_pattern(seed) wrote.
bool has_pattern(const Array& a, std::uint64_t seed);
// Same paths, dtypes, shapes and bytes.
bool trees_equal(const Tree& a, const Tree& b);
// A copy of the structure with zero-filled owned arrays.
Tree zeros_like(const Tree& t);

// Flips one bit of the file at `offset` (pwrite, fsync).
void flip_byte(const std::string& path, std::uint64_t offset);
void truncate_file(const std::string& path, std::uint64_t size);
std::uint64_t file_size(const std::string& path);

// Runs a shell command, returns its exit status and captures stdout+stderr.
int run_command(const std::string& command, std::string* output = nullptr);

}  // namespace ckpt::test
