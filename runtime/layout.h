#pragma once
// Where each leaf's bytes go in the data file, and how the file is cut into IO units.
//
// Layout rules (format version 1): leaves are laid out in flattening order in data-00000.bin,
// each starting at a multiple of the alignment and zero-padded up to the next one; a leaf is cut
// into extents wherever it crosses a multiple of extent_bytes in the file (a grid), so no extent
// is longer than extent_bytes and no extent straddles a grid line. Extents follow each other
// without gaps: the file is exactly the concatenation of the stored extents and every byte is
// under a CRC32C. With the grid, cutting the file into units of extent_bytes gives units made of
// whole extents with no wasted staging: the asynchronous pipeline stages and checksums one unit
// per buffer, independently of the others. (Readers do not rely on the grid; only the manifest's
// invariants, checked by decode_manifest.)
//
// An IO unit is one read or write request: a contiguous file range made of whole extents, or a
// piece of an extent larger than the unit size. Pieces of one extent must be processed in file
// order (their CRC is chained); whole-extent units are independent of each other.
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "runtime/array.h"
#include "runtime/manifest.h"

namespace ckpt {

using FlatTree = std::vector<std::pair<std::string, Array>>;

struct Piece {
  std::uint32_t leaf = 0;
  std::uint32_t extent = 0;  // index within the leaf
  std::uint32_t slot = 0;    // index of the extent across the manifest (for per-extent state)
  std::uint64_t start = 0;   // offset within the extent's stored bytes
  std::uint64_t len = 0;     // bytes of this piece (stored bytes, padding included)
  bool ends_extent = false;  // this piece is the last of its extent
};

struct Unit {
  std::uint32_t file = 0;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::vector<Piece> pieces;
};

// Fills manifest.leaves (extents without checksums), total_bytes and data_files[0].size.
// extent_bytes is rounded up to the alignment.
void plan_extents(const FlatTree& leaves, std::uint64_t extent_bytes, Manifest& manifest);

// Cuts the extents of the leaves with wanted[leaf] (all when `wanted` is empty) into units of at
// most max_unit bytes (a multiple of the alignment), in file order.
std::vector<Unit> plan_units(const Manifest& manifest, std::uint64_t max_unit,
                             const std::vector<bool>& wanted = {});

// Number of extents across the manifest (the size of per-slot state).
std::uint32_t extent_slots(const Manifest& manifest);

// Write side: copies the unit's payload from `leaves` into dst (zero padding included) and
// chains each piece's CRC into crc[slot]; when a piece ends its extent, stores the CRC in the
// manifest. `dst` holds unit.length bytes.
void stage_unit(const Unit& unit, const FlatTree& leaves, std::byte* dst, Manifest& manifest,
                std::vector<std::uint32_t>& crc);

// The two halves of stage_unit, for the asynchronous pipeline where the copy is the caller's
// stall and the checksum runs in the background. checksum_unit requires units made of whole
// extents (every piece starts and ends its extent).
void copy_unit(const Unit& unit, const FlatTree& leaves, std::byte* dst, const Manifest& manifest);
void checksum_unit(const Unit& unit, const std::byte* src, Manifest& manifest);

// Read side: chains each piece's CRC into crc[slot]; copies payload bytes into targets[leaf] when
// it is not null. Returns the pieces whose extent ended with a CRC mismatch.
std::vector<Piece> check_unit(const Unit& unit, const std::byte* src, const Manifest& manifest,
                              const std::vector<const Array*>& targets,
                              std::vector<std::uint32_t>& crc);

}  // namespace ckpt
