#include "runtime/layout.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "io/error.h"
#include "io/file.h"
#include "runtime/crc32c.h"
#include "runtime/limits.h"

namespace ckpt {

void plan_extents(const FlatTree& leaves, std::uint64_t extent_bytes, Manifest& m) {
  extent_bytes = std::max<std::uint64_t>(io::align_up(extent_bytes, m.alignment), m.alignment);
  m.leaves.clear();
  m.leaves.reserve(leaves.size());
  std::uint64_t offset = 0;
  std::uint64_t total = 0;
  std::uint64_t extents = 0;
  for (const auto& [path, array] : leaves) {
    // Refused before the extents are made: a huge view would otherwise fill memory with them.
    extents += array.nbytes() / extent_bytes + 2;
    if (extents > kMaxManifestTables) {
      throw Error(Errc::invalid_argument,
                  "leaf '" + path + "': the tree needs more extents than the readers' limit of " +
                      std::to_string(kMaxManifestTables) + " manifest tables");
    }
    LeafInfo leaf{path, array.dtype(), array.shape(), array.nbytes(), {}};
    for (std::uint64_t at = 0; at < array.nbytes();) {
      std::uint64_t to_grid = extent_bytes - offset % extent_bytes;
      ExtentInfo e;
      e.file = 0;
      e.offset = offset;
      e.length = std::min(to_grid, array.nbytes() - at);
      e.stored_length = io::align_up(e.length, m.alignment);
      e.leaf_offset = at;
      offset += e.stored_length;
      at += e.length;
      leaf.extents.push_back(e);
    }
    // Offsets are off_t on the way to the kernel.
    if (offset > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      throw Error(Errc::invalid_argument,
                  "leaf '" + path + "': the data file would exceed 2^63 bytes");
    }
    total += array.nbytes();
    m.leaves.push_back(std::move(leaf));
  }
  m.total_bytes = total;
  m.data_files = {FileInfo{data_file_name(0), offset, 0}};
}

std::uint32_t extent_slots(const Manifest& m) {
  std::uint32_t n = 0;
  for (const auto& l : m.leaves) n += static_cast<std::uint32_t>(l.extents.size());
  return n;
}

std::vector<Unit> plan_units(const Manifest& m, std::uint64_t max_unit,
                             const std::vector<bool>& wanted) {
  max_unit = std::max<std::uint64_t>(io::align_up(max_unit, m.alignment), m.alignment);
  struct Ref {
    std::uint32_t file;
    std::uint64_t offset;
    std::uint32_t leaf, extent, slot;
  };
  std::vector<Ref> refs;
  std::uint32_t slot = 0;
  for (std::uint32_t li = 0; li < m.leaves.size(); ++li) {
    const auto& leaf = m.leaves[li];
    for (std::uint32_t ei = 0; ei < leaf.extents.size(); ++ei, ++slot) {
      if (!wanted.empty() && !wanted[li]) continue;
      refs.push_back({leaf.extents[ei].file, leaf.extents[ei].offset, li, ei, slot});
    }
  }
  std::sort(refs.begin(), refs.end(), [](const Ref& a, const Ref& b) {
    return a.file != b.file ? a.file < b.file : a.offset < b.offset;
  });
  std::vector<Unit> units;
  for (const Ref& r : refs) {
    const ExtentInfo& e = m.leaves[r.leaf].extents[r.extent];
    for (std::uint64_t start = 0; start < e.stored_length;) {
      std::uint64_t len = std::min(max_unit, e.stored_length - start);
      std::uint64_t file_offset = e.offset + start;
      bool joins = !units.empty() && units.back().file == r.file &&
                   units.back().offset + units.back().length == file_offset &&
                   units.back().length + len <= max_unit;
      if (!joins) units.push_back(Unit{r.file, file_offset, 0, {}});
      Unit& u = units.back();
      u.pieces.push_back(
          Piece{r.leaf, r.extent, r.slot, start, len, start + len == e.stored_length});
      u.length += len;
      start += len;
    }
  }
  return units;
}

void stage_unit(const Unit& unit, const FlatTree& leaves, std::byte* dst, Manifest& m,
                std::vector<std::uint32_t>& crc) {
  copy_unit(unit, leaves, dst, m);
  const std::byte* in = dst;
  for (const Piece& p : unit.pieces) {
    crc[p.slot] = crc32c(in, p.len, p.start == 0 ? 0 : crc[p.slot]);
    if (p.ends_extent) m.leaves[p.leaf].extents[p.extent].crc32c = crc[p.slot];
    in += p.len;
  }
}

void copy_unit(const Unit& unit, const FlatTree& leaves, std::byte* dst, const Manifest& m) {
  std::byte* out = dst;
  for (const Piece& p : unit.pieces) {
    const ExtentInfo& e = m.leaves[p.leaf].extents[p.extent];
    const Array& a = leaves[p.leaf].second;
    std::uint64_t payload = p.start < e.length ? std::min(p.len, e.length - p.start) : 0;
    if (payload > 0) std::memcpy(out, a.data() + e.leaf_offset + p.start, payload);
    if (payload < p.len) std::memset(out + payload, 0, p.len - payload);
    out += p.len;
  }
}

void checksum_unit(const Unit& unit, const std::byte* src, Manifest& m) {
  const std::byte* in = src;
  for (const Piece& p : unit.pieces) {
    m.leaves[p.leaf].extents[p.extent].crc32c = crc32c(in, p.len);
    in += p.len;
  }
}

std::vector<Piece> check_unit(const Unit& unit, const std::byte* src, const Manifest& m,
                              const std::vector<const Array*>& targets,
                              std::vector<std::uint32_t>& crc) {
  std::vector<Piece> bad;
  const std::byte* in = src;
  for (const Piece& p : unit.pieces) {
    const ExtentInfo& e = m.leaves[p.leaf].extents[p.extent];
    crc[p.slot] = crc32c(in, p.len, p.start == 0 ? 0 : crc[p.slot]);
    const Array* target = targets.empty() ? nullptr : targets[p.leaf];
    std::uint64_t payload = p.start < e.length ? std::min(p.len, e.length - p.start) : 0;
    if (target != nullptr && payload > 0) {
      std::memcpy(target->mutable_data() + e.leaf_offset + p.start, in, payload);
    }
    if (p.ends_extent && crc[p.slot] != e.crc32c) bad.push_back(p);
    in += p.len;
  }
  return bad;
}

}  // namespace ckpt
