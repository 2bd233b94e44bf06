#pragma once
// The manifest in memory, and its encoding (schemas/checkpoint.fbs).
//
// manifest.ckpt = flatbuffer bytes, then a 16-byte trailer: the magic "CKPTMAN1", the flatbuffer's
// length (u32 little-endian) and its CRC32C (u32 little-endian). decode_manifest() treats the
// file as hostile: it checks the trailer and checksum, runs the flatbuffers Verifier, rejects
// format versions it does not know, and then checks every invariant the readers rely on (tree
// indices in range, dtype known, shape without overflow, extents inside their data file, tiling
// each leaf's bytes exactly, blocks tiling each data file). Code that holds a decoded Manifest may
// trust it, whichever version it was.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <boost/container/small_vector.hpp>

#include "runtime/array.h"
#include "runtime/dtype.h"
#include "runtime/tree.h"

namespace ckpt {

// The version the writer writes; decode_manifest reads it and kFormatVersion1.
inline constexpr std::uint32_t kFormatVersion = 2;
inline constexpr std::uint32_t kFormatVersion1 = 1;
inline constexpr std::string_view kManifestName = "manifest.ckpt";
inline constexpr std::string_view kMetadataName = "metadata.json";

std::string data_file_name(std::uint32_t index);  // "data-00000.bin"

// A 128-bit content hash (XXH3-128) of an extent's bytes: incremental saves (runtime/incremental.h).
struct ContentHash {
  std::uint64_t lo = 0;
  std::uint64_t hi = 0;
  friend bool operator==(const ContentHash&, const ContentHash&) = default;
};

struct ExtentInfo {
  std::uint32_t file = 0;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::uint64_t stored_length = 0;
  std::uint32_t crc32c = 0;
  std::uint64_t leaf_offset = 0;
  std::uint32_t process_index = 0;
  bool has_hash = false;  // content_hash is set (saves with incremental on)
  ContentHash hash;
  // A shard of a sharded leaf (docs/design.md, section 14): the box of the global array these
  // bytes hold, row-major; empty for the whole array (a replicated leaf, or any unsharded one).
  Shape slice_start;
  Shape slice_shape;
};

// A checksummed range of a data file (format version 2's Block; for version 1, decode_manifest
// makes one per extent: its stored bytes and CRC).
struct BlockInfo {
  std::uint32_t file = 0;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::uint32_t crc32c = 0;
};

struct LeafInfo {
  std::string path;
  DType dtype = DType::u8;
  Shape shape;
  std::uint64_t nbytes = 0;
  // Unsharded leaves have one extent: inline, so that decoding 100,000 leaves allocates 100,000
  // blocks fewer (and freeing them costs glibc that much less consolidation).
  boost::container::small_vector<ExtentInfo, 1> extents;
};

struct NodeInfo {
  Tree::Kind kind = Tree::Kind::dict;
  std::vector<std::string> keys;
  std::vector<std::uint32_t> children;
  std::uint32_t leaf = 0;
};

struct FileInfo {
  std::string name;
  std::uint64_t size = 0;
  std::uint32_t crc32c = 0;
  // Data files an incremental save linked from an earlier checkpoint: the checkpoint that first
  // wrote it (informational, schemas/checkpoint.fbs).
  std::string origin;
};

struct Manifest {
  std::uint32_t format_version = kFormatVersion;
  std::uint32_t alignment = 4096;
  std::int64_t created_unix_ns = 0;
  std::string writer;
  std::uint64_t total_bytes = 0;
  std::uint32_t process_count = 1;
  std::vector<NodeInfo> nodes;
  std::vector<LeafInfo> leaves;
  std::vector<FileInfo> data_files;
  std::vector<FileInfo> json_files;
  std::vector<BlockInfo> blocks;  // tile each data file, in file order

  const FileInfo* json_file(std::string_view name) const;
  // Written by a collective save: several processes' data files, or extents that are boxes.
  bool sharded() const;
  std::uint64_t stored_bytes() const;  // sum of data file sizes
};

// Fills `nodes` from the tree's structure; leaf indices follow flattening order.
void describe_structure(const Tree& tree, Manifest& manifest);

// The writer's half of decode_manifest: throws Error(invalid_argument), naming the leaf or node,
// when `manifest` (planned: structure, leaves and extents) breaks a limit of runtime/limits.h that
// decode_manifest enforces (rank, tree depth, table count, manifest size), so that a save is
// refused before it writes instead of committing what no reader accepts. The other rules of
// decode_manifest hold by construction (Tree keys, plan_extents).
void check_writable(const Manifest& manifest);
// An upper bound on the bytes encode_manifest produces for `manifest`.
std::uint64_t manifest_size_bound(const Manifest& manifest);

std::string encode_manifest(const Manifest& manifest);
// The same into `out` (replacing its content, keeping its capacity). On one thread, encodings
// reuse the memory of the previous ones, up to 64 MiB: a steady state of saves maps nothing.
void encode_manifest(const Manifest& manifest, std::string& out);

// The tree part of an encoded manifest (nodes, leaves, extents): its bulk, the same for every save
// of one structure, so a save can reuse it (runtime/plan_cache.h).
struct EncodedTree {
  std::string bytes;        // the flatbuffer builder's bytes after the tree part
  std::uint32_t nodes = 0;  // offsets (from the buffer's end) of the node and leaf vectors
  std::uint32_t leaves = 0;
  std::uint32_t crc32c = 0;  // of `bytes`
};
EncodedTree encode_tree(const Manifest& manifest);

// What one save adds to a shared manifest skeleton.
struct ManifestParts {
  std::int64_t created_unix_ns = 0;
  const std::vector<std::uint32_t>* block_crc = nullptr;  // per block
  const std::vector<FileInfo>* json_files = nullptr;
};
// A manifest file as the pieces to write in order: `head`, then the cached tree part (not
// copied), then the trailer.
struct ManifestPieces {
  std::string head;       // the flatbuffer up to the tree part: header, blocks, file lists
  std::string_view tree;  // EncodedTree::bytes, whose owner must outlive this
  std::string trailer;
  std::string joined() const;  // the whole file
};
// `skeleton` with `parts` in place of its own creation time, block checksums and JSON files, and
// with `tree` (encode_tree(skeleton)) as its tree part. The file's checksum extends the tree
// part's own, so a save costs the blocks and file lists, whatever the number of leaves.
ManifestPieces encode_manifest(const Manifest& skeleton, const ManifestParts& parts,
                               const EncodedTree& tree);
// `path` names the file in errors. Throws Error(corrupt | unsupported). `sharded`, when given,
// is set to the result's sharded(), which the decode learns at no cost.
Manifest decode_manifest(std::string_view bytes, const std::string& path,
                         bool* sharded = nullptr);
// Only the part of decode_manifest that says where the bytes are: the trailer, the header, the
// file lists and (version 2) the blocks, checked to tile the data files; no tree, no leaves. What
// a restore of every block needs to start reading while the rest is decoded. Memory-safe on any
// input (the flatbuffers Verifier runs over the fields it reads), but it does not check the
// checksum: the bytes are to be trusted only once decode_manifest accepted them, which a restore
// does before it uses anything it read.
Manifest decode_layout(std::string_view bytes, const std::string& path);

}  // namespace ckpt
