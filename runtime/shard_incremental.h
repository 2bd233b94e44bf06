#pragma once
// Incremental collective saves: each process dedupes its own shards (docs/design.md, sections 13
// and 14).
//
// Protocol, for one process of a collective save with incremental on:
//  - Every process uses the same base, chosen by process 0 at the check of step 1
//    (runtime/collective_commit.h), opened here through a directory descriptor; its manifest is
//    decoded and the hashed extents of its files worth sharing are indexed (runtime/incremental.h,
//    worth_sharing).
//  - The unit of sharing is a leaf's bytes in this process's data file: a shard's box or a
//    replicated leaf, one extent each (a sharded manifest's extents are whole boxes, which the
//    resharding reader relies on). After the whole snapshot copy, each one is hashed (XXH3-128,
//    streamed across the units it spans) on the copy threads.
//  - A leaf whose hash and length match an extent of base file f is not written: base file f is
//    hard-linked into the shared temporary directory as data-<P + f>.bin (P: the process count),
//    a name every process derives alike, so processes that need the same base file share one link
//    (EEXIST on a name that is the same inode is fine; another inode, or a failed link, just means
//    that file is unavailable and the leaf is written). Names below P are the processes' own files.
//  - The other leaves are written to data-<rank>.bin: the 4096-byte pages of the planned layout
//    that hold them, in planned order, each run of pages at the next free offset, cut at unit
//    boundaries into blocks (one write and one CRC32C each). The file is truncated to what was
//    used.
//  - The process reports its extents (its own file or a link's index), its blocks, and for every
//    link it uses the base file's size, origin, blocks and CRCs. Process 0 merges one data-file
//    table: own files 0..P-1, then the links some extent uses, renumbered densely in index order
//    (renamed in the temporary directory in ascending order, so a target name is always free), and
//    removes links nothing uses.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/incremental.h"
#include "runtime/layout.h"
#include "runtime/manifest.h"

namespace ckpt {

// A base data file linked into the shared temporary directory as data_file_name(index).
struct LinkedFile {
  std::uint32_t index = 0;
  FileInfo info;                  // the base's size and origin (name: the link's)
  std::vector<BlockInfo> blocks;  // the base's blocks of that file (file = index)
};

class ShardIncremental {
 public:
  // `local`: this process's planned layout (one extent per leaf, in data file 0 of the plan);
  // `units` its IO units (unit i is block i). `processes`: the process count P.
  ShardIncremental(const Manifest& local, const std::vector<Unit>& units, std::uint32_t processes);
  ~ShardIncremental();
  ShardIncremental(const ShardIncremental&) = delete;
  ShardIncremental& operator=(const ShardIncremental&) = delete;

  // Opens base_dir and indexes its hashed extents. A base that cannot be used (missing,
  // unreadable, no hashes) is logged and ignored: everything is then written. `origin`: how
  // linked files name the base when they have no origin of their own.
  void attach_base(const std::string& base_dir, const std::string& origin);

  std::size_t leaf_count() const { return hashes_.size(); }
  // Hashes leaf l's bytes, which lie in the chunks of the units it spans (different leaves may
  // be hashed concurrently).
  void hash_leaf(std::size_t l, const std::vector<std::byte*>& chunks);

  // One write of data-<rank>.bin: `length` bytes of unit `unit`'s chunk from `unit_offset`, at
  // `file_offset`. Each is one block.
  struct Write {
    std::size_t unit = 0;
    std::uint64_t unit_offset = 0;
    std::uint64_t file_offset = 0;
    std::uint64_t length = 0;
  };
  // After every leaf is hashed: links the base files the matches need into tmp_dir and lays out
  // the rest. Runs once.
  std::vector<Write> place(const std::string& tmp_dir);
  // The CRC32C of write k's bytes (its block's).
  void set_crc(std::size_t k, std::uint32_t crc) { blocks_[k].crc32c = crc; }

  std::uint64_t own_size() const { return own_size_; }
  std::uint64_t stored_bytes() const;  // own file and the linked files this process uses
  // The local manifest as the fragment reports it: each leaf's extent in the own file (file 0) or
  // a link (file = its index >= P), with its hash; the own file's blocks with their CRCs.
  Manifest local_result() const;
  const std::vector<LinkedFile>& links() const { return links_; }

 private:
  struct Location {
    std::uint32_t file = 0;  // the base's
    std::uint64_t offset = 0;
  };

  const Manifest& local_;
  const std::vector<Unit>& units_;
  const std::uint32_t processes_;
  int base_fd_ = -1;
  std::string base_dir_;
  std::string origin_;
  std::shared_ptr<const Manifest> base_;
  std::unordered_map<ContentHash, std::vector<std::pair<std::uint64_t, Location>>,
                     ContentHashHasher>
      index_;                         // hash -> (length, where)
  std::vector<ContentHash> hashes_;   // per leaf
  std::vector<std::int64_t> placed_;  // per leaf: its offset (own file or link)
  std::vector<std::uint32_t> file_;   // per leaf: 0 own, else link index
  std::vector<BlockInfo> blocks_;     // of the own file, in file order
  std::vector<LinkedFile> links_;
  std::uint64_t own_size_ = 0;
};

}  // namespace ckpt
