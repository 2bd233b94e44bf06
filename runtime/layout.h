#pragma once
// Where each leaf's bytes go in the data file, how the file is covered by checksummed blocks, and
// how it is cut into IO units.
//
// Layout rules of format version 2 (the writer's; docs/design.md, section 2): leaves are packed
// back to back in data-00000.bin, each at its natural alignment, the largest power of two that
// divides its size, capped at 4096 (so a leaf whose size is a multiple of 64 starts on a 64-byte
// boundary, one whose size is a multiple of 4096 on a page). Leaves are laid out by alignment,
// largest first, in flattening order within one alignment: each then starts exactly where the
// previous one ended, so the file holds no padding but the zeros that round it up to the
// manifest's alignment. A leaf has one extent (its whole bytes), 0-byte leaves none. The file is
// covered by blocks: a grid of block_bytes, the last block shorter; each block carries the CRC32C
// of its bytes. So every byte of the file is under exactly one checksum, and many small leaves
// share one.
//
// Version 1 (still read): every leaf started aligned, padded to the alignment, cut into extents at
// the grid, each extent with its own CRC. decode_manifest turns those extents into blocks, so
// readers see one model: blocks for checksums, extents for where leaf bytes are.
//
// An IO unit is one read or write request: a contiguous file range made of whole blocks, or a
// piece of a block larger than the unit size. Pieces of one block must be processed in file
// order (their CRC is chained); whole-block units are independent of each other. A unit also
// lists the leaf segments it holds, in file order.
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "runtime/array.h"
#include "runtime/manifest.h"
#include "runtime/stream_copy.h"

namespace ckpt {

using FlatTree = std::vector<std::pair<std::string, Array>>;

// A checksummed block, or the part of one, inside a unit.
struct Piece {
  std::uint32_t block = 0;  // index into manifest.blocks (and into per-block CRC state)
  std::uint64_t start = 0;  // offset within the block
  std::uint64_t len = 0;    // bytes of this piece
  bool ends_block = false;  // this piece is the last of its block
};

// Bytes of one leaf inside a unit.
struct Segment {
  std::uint32_t leaf = 0;
  std::uint64_t leaf_offset = 0;  // where they start within the leaf's row-major bytes
  std::uint64_t unit_offset = 0;  // where they start within the unit
  std::uint64_t len = 0;
};

struct Unit {
  std::uint32_t file = 0;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::vector<Piece> pieces;      // cover the unit, in order
  std::vector<Segment> segments;  // by unit_offset; what lies between them is zeros
};

// The alignment a leaf of `nbytes` is packed at (format version 2).
std::uint64_t leaf_alignment(std::uint64_t nbytes);

// Fills manifest.leaves (one extent per leaf), manifest.blocks (without checksums), total_bytes
// and data_files[0].size, in format version 2. block_bytes is rounded up to the alignment.
void plan_extents(const FlatTree& leaves, std::uint64_t block_bytes, Manifest& manifest);

// Cuts the blocks holding bytes of the leaves with wanted[leaf] (all when `wanted` is empty) into
// units of at most max_unit bytes (a multiple of the alignment), in file order; each unit lists
// the segments of wanted leaves it holds.
std::vector<Unit> plan_units(const Manifest& manifest, std::uint64_t max_unit,
                             const std::vector<bool>& wanted = {});

// Number of blocks across the manifest (the size of per-block CRC state).
std::uint32_t extent_slots(const Manifest& manifest);

// Where each leaf's bytes are, in flattening order (what copy_unit reads).
std::vector<const std::byte*> leaf_sources(const FlatTree& leaves);

// Write side: copies the unit's leaf bytes from `sources` into dst (zeros between them) and
// chains each piece's CRC into crc[block]; when a piece ends its block, stores the CRC in the
// manifest. `dst` holds unit.length bytes.
void stage_unit(const Unit& unit, const std::vector<const std::byte*>& sources, std::byte* dst,
                Manifest& manifest, std::vector<std::uint32_t>& crc);

// The two halves of stage_unit, for the asynchronous pipeline where the copy is the caller's
// stall and the checksum runs in the background. checksum_unit requires units made of whole
// blocks (every piece starts and ends its block); it stores each block's CRC in block_crc.
// Streaming, copy_unit fences its stores before it returns (runtime/stream_copy.h).
void copy_unit(const Unit& unit, const std::vector<const std::byte*>& sources, std::byte* dst,
               Stores stores);
void checksum_unit(const Unit& unit, const std::byte* src, std::vector<std::uint32_t>& block_crc);

// Read side: chains each piece's CRC into crc[block]; returns the pieces whose block ended with a
// CRC mismatch.
std::vector<Piece> verify_unit(const Unit& unit, const std::byte* src, const Manifest& manifest,
                               std::vector<std::uint32_t>& crc);
// The bytes scatter_unit copies out of the units into `targets`, in all (a partial or resharded
// read copies less than it reads).
std::uint64_t scattered_bytes(const std::vector<Unit>& units,
                              const std::vector<const Array*>& targets);
// Copies the unit's segments into targets[leaf] (skipping null targets); streaming, fences its
// stores before it returns.
void scatter_unit(const Unit& unit, const std::byte* src, const std::vector<const Array*>& targets,
                  Stores stores);

// "leaf 'a/b'" or "leaves 'a/b' and 41 more": what a block of the data file holds, for messages.
std::string block_leaves(const Manifest& manifest, std::uint32_t block);

}  // namespace ckpt
