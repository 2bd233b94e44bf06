#pragma once
// Incremental saves: content-addressed extents, shared between checkpoints through hard links.
//
// Protocol (docs/design.md, section 13, says why this storage scheme):
//  - With incremental on, every segment of a save (a leaf's bytes inside one IO unit of the
//    planned layout) gets an XXH3-128 content hash, on a copy thread after the snapshot copy; or,
//    in a sync save once the base is attached, in the caller's stall straight from the leaves,
//    instead of copying them (pack_from_sources: only what the base lacks is then copied). The
//    hash is recorded with the segment's extent in the manifest.
//  - The base is a committed checkpoint (the previous one of the run directory, or an explicit
//    one). It is opened through a directory descriptor, so its manifest and files are those of one
//    directory even if it is renamed away (removed) meanwhile.
//  - Before any unit is processed, every data file of the base that is worth sharing is
//    hard-linked into the save's temporary directory as data-0000k.bin (k >= 1). A file is worth
//    sharing when the bytes the base's own leaves do not use in it are at most those they use
//    (or one page), which bounds the dead bytes a chain of saves can keep alive; a link that fails
//    (another file system, EMLINK, a file system without hard links, a base removed meanwhile) just
//    makes that file unavailable, and its segments are written again.
//  - A segment whose hash (and length) matches an extent of an available base file is not
//    written: its extent points into the linked file. The other segments of the unit are packed
//    to the front of its staging chunk, each keeping the alignment it had in the planned layout,
//    zero-padded to 4096, checksummed as one block and written at the next free offset of
//    data-00000.bin, which is truncated to what was used before its fsync.
//  - Linked files that no extent uses in the end are removed again before the commit.
//  - A unit that changed in each of the last two saves of the same run directory and plan is
//    "speculative": it is written whole as soon as it is copied, as in a full save (so a save
//    where everything changes costs what a full save costs), and hashed afterwards.
//  - Every file a checkpoint reads is a name in its own directory. Deleting any checkpoint (by
//    retention, `ckpt gc`, or rm -rf) removes names only; the file system frees a file when its
//    last name goes, atomically with that unlink. No reference count is kept anywhere by ckpt,
//    and restore, verify, gc and retention need no knowledge of sharing.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/layout.h"
#include "runtime/manifest.h"

namespace ckpt {

// XXH3-128 of `n` bytes.
ContentHash content_hash(const void* data, std::size_t n);

// A base file is linked (shared) only when its bytes the base's leaves do not use are at most
// the ones they use, or at most one page.
bool worth_sharing(std::uint64_t file_size, std::uint64_t used);

// A descriptor closed on scope exit.
struct ScopedFd {
  int fd = -1;
  explicit ScopedFd(int f) : fd(f) {}
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd();
};

// The manifest of the checkpoint whose directory is open as dir_fd (`dir` names it in errors):
// `cached` when its manifest.ckpt still ends with `cached_trailer` (the trailer holds the CRC32C
// of the whole flatbuffer: the same trailer, the same manifest), else decoded from the file.
std::shared_ptr<const Manifest> read_manifest_at(int dir_fd, const std::string& dir,
                                                 const std::shared_ptr<const Manifest>& cached,
                                                 const std::string& cached_trailer);

// Per data file of `base`: worth_sharing(its size, the bytes its leaves use). `hashed`: whether
// any extent has a content hash (without one there is nothing to find).
std::vector<bool> shareable_files(const Manifest& base, bool& hashed);

// Opens base_dir into `dir` and reads its manifest (read_manifest_at) and which of its files are
// worth sharing. Null, logged, when the base is gone or has no content hashes (the save then
// writes everything); throws Error when it cannot be read.
std::shared_ptr<const Manifest> open_base(const std::string& base_dir,
                                          const std::shared_ptr<const Manifest>& cached,
                                          const std::string& cached_trailer, ScopedFd& dir,
                                          std::vector<bool>& shareable);

struct ContentHashHasher {
  std::size_t operator()(const ContentHash& h) const noexcept {
    return static_cast<std::size_t>(h.lo ^ (h.hi * 0x9E3779B97F4A7C15ull));
  }
};

// The incremental part of one save. attach_base runs once, before any process_unit /
// speculative_unit; those run concurrently for different units; the rest runs after them all.
class IncrementalSave {
 public:
  // `skeleton` and `units`: the planned full layout (one file, unit i covers block i).
  IncrementalSave(const Manifest& skeleton, const std::vector<Unit>& units);

  // The base's manifest as this Runtime committed it, and the 16-byte trailer of its
  // manifest.ckpt (magic, length, CRC32C): attach_base uses it instead of decoding the file when
  // the file's trailer is still that one.
  void use_cached_base(std::shared_ptr<const Manifest> manifest, std::string trailer) {
    cached_ = std::move(manifest);
    cached_trailer_ = std::move(trailer);
  }

  // Opens base_dir, links the base's files worth sharing into tmp_dir and indexes their hashed
  // extents. A base that cannot be used (missing, unreadable, no hashes) is logged and ignored:
  // the save then writes everything. `run_dir` (may be empty) names origins relative to it.
  void attach_base(const std::string& base_dir, const std::string& tmp_dir,
                   const std::string& run_dir);
  bool has_base() const { return !index_.empty(); }

  struct Write {
    std::uint64_t offset = 0;  // in data-00000.bin
    std::uint64_t length = 0;  // 0: nothing to write
  };
  // Unit i is in buf (units[i].length bytes): hashes its segments, packs the ones the base lacks
  // to the front of buf, checksums them and reserves their place in data-00000.bin.
  Write process_unit(std::size_t i, std::byte* buf);
  // A sync save's unit, in the caller's stall and only once the base is attached: hashes unit
  // i's segments straight from the leaves' bytes (`sources`, as copy_unit reads them) and copies
  // into buf only the ones the base lacks, packed as process_unit packs them; what the base has
  // is never copied. place_packed(i, buf) then checksums them and reserves their place, off the
  // stall. Together they do what copying the unit and process_unit do.
  // Returns whether some segment changed (was copied).
  bool pack_from_sources(std::size_t i, const std::vector<const std::byte*>& sources,
                         std::byte* buf);
  Write place_packed(std::size_t i, std::byte* buf);
  // Unit i is written whole: reserves its place now (before its hashes are known).
  Write reserve_whole(std::size_t i);
  // ... and later hashes and checksums it where it lies (buf holds it, unchanged).
  void hash_whole(std::size_t i, const std::byte* buf);

  // After every unit: removes from tmp_dir the linked files no extent ended up using (the base
  // was linked before anything was hashed) and renumbers the others densely.
  void drop_unused_links(const std::string& tmp_dir);

  // Bytes of data-00000.bin used (what it is truncated to before its fsync).
  std::uint64_t own_size() const { return own_end_.load(); }
  // Per unit: some segment was not found in the base (what the next save speculates on).
  std::vector<std::uint8_t> changed_units() const;

  // The save's manifest: the skeleton's tree with this save's extents, data files and blocks.
  Manifest build_manifest(const Manifest& skeleton) const;
  std::uint64_t stored_bytes() const;  // data-00000.bin and the linked files

 private:
  struct Location {
    std::uint32_t file = 0;  // in this save's data files (1.. for linked ones)
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
  };
  struct Placed {
    std::uint32_t file = 0;
    std::uint64_t offset = 0;  // own file: within the unit's packed block until reserved
    ContentHash hash;
  };
  struct UnitOut {
    std::vector<Placed> segments;  // parallel to units[i].segments
    std::uint64_t offset = 0;      // its block in data-00000.bin
    std::uint64_t length = 0;      // 0: nothing written
    std::uint32_t crc = 0;
    bool changed = false;
    std::uint64_t packed_end = 0;  // after pack: the end of the packed bytes in the chunk
  };

  const Location* find(const ContentHash& h, std::uint64_t len) const;
  // Hashes unit i's segments (from `sources` when given, else where they lie in buf) and packs
  // the ones the base lacks to the front of buf; sets packed_end.
  void pack(std::size_t i, std::byte* buf, const std::vector<const std::byte*>* sources);

  const std::vector<Unit>& units_;
  std::shared_ptr<const Manifest> cached_;
  std::string cached_trailer_;
  std::vector<UnitOut> out_;
  std::atomic<std::uint64_t> own_end_{0};
  std::unordered_map<ContentHash, Location, ContentHashHasher> index_;
  std::vector<FileInfo> linked_files_;    // data-00001.bin, ... (with origin)
  std::vector<BlockInfo> linked_blocks_;  // their blocks, file indices of this save
};

// What a checkpoint's data files hold, from its manifest and the file system: bytes only it
// names (`owned`) and bytes in files other checkpoints name too (`shared`, link count > 1), and
// the bytes its leaves use.
struct StorageReport {
  std::uint64_t owned = 0;
  std::uint64_t shared = 0;
  std::uint64_t referenced = 0;      // leaf bytes (total_bytes)
  std::vector<std::uint64_t> links;  // per data file: its link count (0: could not stat)
};
StorageReport storage_report(const std::string& dir, const Manifest& m);

// The last 16 bytes of dir/manifest.ckpt (its trailer: magic, length, CRC32C); "" when unreadable.
std::string manifest_trailer(const std::string& dir);

// Writes a self-contained copy of the checkpoint `src` at `dst` (created through a temporary
// directory and committed like a save; an existing checkpoint at dst is replaced): every file
// copied, not linked, and the manifest without origins. The source is verified as it is read:
// a corrupt block fails the export before anything is committed.
void export_checkpoint(const std::string& src, const std::string& dst);

}  // namespace ckpt
