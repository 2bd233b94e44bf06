#pragma once
// The crash model of the power-loss explorer (docs/design.md, "Power loss"): a recording of
// file-system operations (tests/powerloss/trace_shim.cc) replayed onto an image of the directory
// it started from, and the crash states a conservative file system allows after any prefix of it.
//
// Model. A crash after the first k recorded operations persists:
//  - every operation some completed fsync forces: a write or truncate of a file, when an fsync of
//    that file started after it completed and returned before the crash; a create, mkdir, link,
//    unlink, rmdir or rename in a directory, when an fsync of that directory did (a rename
//    between two directories needs both); everything before a completed sync()/syncfs();
//  - any subset of the other operations, a write split at 4 KiB file blocks, each block on its
//    own; they apply in recorded order, and one whose precondition fails in the crash state (a
//    rename whose source entry did not persist, an rmdir of a directory that is not empty, a
//    create of a name still taken) is not applied.
// Nothing else: fsync of a file does not persist its name, fsync of a directory persists neither
// its files' data nor the entries of its subdirectories, and a rename persists atomically or not.
// A hard link is a directory entry like any other, for an existing file (node): its data is that
// node's, whichever of its names persisted; a file with several names in the starting directory
// is one node.
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace ckpt::powerloss {

struct Node {
  bool dir = false;
  std::string data;                    // a file's bytes
  std::map<std::string, int> entries;  // a directory's names → node ids
  std::string name;                    // where the run first saw it, relative to the root
};
using Image = std::vector<Node>;  // node 0 is the root

enum class OpKind { create, mkdir, link, rename, unlink, rmdir, write, trunc, fsync, sync_all, mark };

struct Op {
  OpKind kind = OpKind::mark;
  int dir = -1, dir2 = -1;  // entry operations: the directory (rename: source, destination)
  std::string name, name2;
  int node = -1;   // created, moved, removed, written or synced node
  int node2 = -1;  // exchange: the node at the destination
  unsigned flags = 0;
  std::uint64_t offset = 0, length = 0, data_at = 0;
  std::size_t begin = 0;  // fsync, sync_all: operations before this index completed before it
  std::string text;       // mark: the text; rename, link: "src -> dst" relative to the root
  std::string src;        // rename: source path relative to the root
};

struct Recording {
  Image base;  // the directory before the run (treated as durable), plus every node created
  std::vector<Op> ops;
  std::string blob;  // the bytes of the writes
};

// Reads the directory tree at `root` (regular files and directories only; the names of one file,
// hard links, are one node).
Image read_image(const std::string& root);
// Replays the shim's log (whose paths are absolute, below `root`) onto `base`; throws
// std::runtime_error on an operation the model does not cover.
Recording replay(Image base, const std::string& root, const std::string& log, std::string blob);

// One line for people; nodes named by where the run first saw them.
std::string describe(const Recording& rec, const Op& op);

// The crash states after the first k operations.
class CrashStates {
 public:
  CrashStates(const Recording& rec);
  // Which persisted-or-not choices to try after k operations: each a vector over units(k).
  // Every subset when there are at most `cap`; else `cap` of them: all persisted, none, each
  // entry operation alone lost and alone kept, each file's blocks all lost, all kept, one lost,
  // then random subsets drawn with `rng`.
  struct Unit {
    std::size_t op;
    std::uint64_t begin, end;  // a write's block: file byte range; else 0, 0
  };
  std::vector<Unit> units(std::size_t k) const;
  std::vector<std::vector<bool>> choices(const std::vector<Unit>& units, std::size_t cap,
                                         std::mt19937_64& rng) const;
  // The image after k operations with `persisted` (over units(k)) applied.
  Image build(std::size_t k, const std::vector<Unit>& units, const std::vector<bool>& persisted) const;
  bool forced(std::size_t op, std::size_t k) const { return forced_at_[op] < k; }

 private:
  const Recording& rec_;
  std::vector<std::size_t> forced_at_;  // index of the fsync that forces op i; SIZE_MAX: none
};

// Writes the reachable tree of `image` into `dir` (which must not exist).
void materialize(const Image& image, const std::string& dir);
// A digest of the reachable tree.
std::uint64_t digest(const Image& image);

}  // namespace ckpt::powerloss
