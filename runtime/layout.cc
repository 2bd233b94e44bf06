#include "runtime/layout.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "io/error.h"
#include "io/file.h"
#include "runtime/crc32c.h"
#include "runtime/limits.h"

namespace ckpt {

std::uint64_t leaf_alignment(std::uint64_t nbytes) {
  constexpr std::uint64_t kMaxLeafAlignment = 4096;
  if (nbytes == 0) return 1;
  return std::min<std::uint64_t>(nbytes & (~nbytes + 1), kMaxLeafAlignment);
}

void plan_extents(const FlatTree& leaves, std::uint64_t block_bytes, Manifest& m) {
  block_bytes = std::clamp<std::uint64_t>(io::align_up(block_bytes, m.alignment), m.alignment,
                                          kMaxBlockBytes);
  m.format_version = kFormatVersion;
  m.leaves.clear();
  m.leaves.reserve(leaves.size());
  std::uint64_t total = 0;
  for (const auto& [path, array] : leaves) {
    if (total + array.nbytes() < total ||
        total + array.nbytes() >
            static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) - m.alignment) {
      // Offsets are off_t on the way to the kernel.
      throw Error(Errc::invalid_argument,
                  "leaf '" + path + "': the data file would exceed 2^63 bytes");
    }
    total += array.nbytes();
    m.leaves.push_back(LeafInfo{path, array.dtype(), array.shape(), array.nbytes(), {}});
  }
  // By alignment, largest first, stable: every leaf then starts at a multiple of its alignment
  // with no padding before it (the sizes before it are multiples of that alignment).
  std::vector<std::uint32_t> order(leaves.size());
  for (std::uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
    return leaf_alignment(m.leaves[a].nbytes) > leaf_alignment(m.leaves[b].nbytes);
  });
  std::uint64_t offset = 0;
  for (std::uint32_t i : order) {
    LeafInfo& leaf = m.leaves[i];
    if (leaf.nbytes == 0) continue;
    offset = io::align_up(offset, leaf_alignment(leaf.nbytes));
    leaf.extents.push_back(ExtentInfo{0, offset, leaf.nbytes, leaf.nbytes, 0, 0, 0});
    offset += leaf.nbytes;
  }
  std::uint64_t size = io::align_up(offset, m.alignment);
  std::uint64_t blocks = (size + block_bytes - 1) / block_bytes;
  if (blocks + 2 * leaves.size() > kMaxManifestTables) {
    throw Error(Errc::invalid_argument,
                fmt::format("the tree needs more than the readers' limit of {} manifest tables",
                            kMaxManifestTables));
  }
  m.blocks.clear();
  m.blocks.reserve(blocks);
  for (std::uint64_t at = 0; at < size; at += block_bytes) {
    m.blocks.push_back(BlockInfo{0, at, std::min(block_bytes, size - at), 0});
  }
  m.total_bytes = total;
  m.data_files = {FileInfo{data_file_name(0), size, 0}};
}

std::uint32_t extent_slots(const Manifest& m) {
  return static_cast<std::uint32_t>(m.blocks.size());
}

namespace {

struct Placed {
  std::uint32_t file;
  std::uint64_t offset;
  std::uint64_t length;
  std::uint32_t leaf;
  std::uint64_t leaf_offset;
};

// The extents of the wanted leaves, in file order.
std::vector<Placed> placed_extents(const Manifest& m, const std::vector<bool>& wanted) {
  std::vector<Placed> out;
  // Sized first: growing it at a million extents would copy it and fault in fresh memory at
  // every doubling.
  std::size_t n = 0;
  for (std::uint32_t li = 0; li < m.leaves.size(); ++li) {
    if (wanted.empty() || wanted[li]) n += m.leaves[li].extents.size();
  }
  out.reserve(n);
  io::advise_huge_pages(out.data(), out.capacity() * sizeof(Placed));
  for (std::uint32_t li = 0; li < m.leaves.size(); ++li) {
    if (!wanted.empty() && !wanted[li]) continue;
    for (const auto& e : m.leaves[li].extents)
      out.push_back({e.file, e.offset, e.length, li, e.leaf_offset});
  }
  // Often in file order already (plan_extents places leaves by alignment, largest first, so a
  // tree of leaves of one alignment comes in leaf order): checked in one pass before a sort.
  auto in_file_order = [](const Placed& a, const Placed& b) {
    return a.file != b.file ? a.file < b.file : a.offset < b.offset;
  };
  if (!std::is_sorted(out.begin(), out.end(), in_file_order)) {
    std::sort(out.begin(), out.end(), in_file_order);
  }
  return out;
}

bool before(std::uint32_t fa, std::uint64_t oa, std::uint32_t fb, std::uint64_t ob) {
  return fa != fb ? fa < fb : oa < ob;
}

}  // namespace

std::vector<Unit> plan_units(const Manifest& m, std::uint64_t max_unit,
                             const std::vector<bool>& wanted) {
  max_unit = std::max<std::uint64_t>(io::align_up(max_unit, m.alignment), m.alignment);
  std::vector<Placed> placed = placed_extents(m, wanted);
  // Blocks in file order (decode_manifest and plan_extents keep them so).
  std::vector<std::uint32_t> blocks;
  if (wanted.empty()) {
    blocks.resize(m.blocks.size());
    for (std::uint32_t b = 0; b < blocks.size(); ++b) blocks[b] = b;
  } else {
    // The blocks that hold bytes of a wanted leaf (blocks are in file order; extents may
    // overlap in a hostile manifest: each one searches).
    std::vector<bool> want(m.blocks.size(), false);
    for (const Placed& p : placed) {
      auto first = std::partition_point(m.blocks.begin(), m.blocks.end(), [&](const BlockInfo& b) {
        return before(b.file, b.offset + b.length, p.file, p.offset + 1);
      });
      for (auto k = first;
           k != m.blocks.end() && k->file == p.file && k->offset < p.offset + p.length; ++k) {
        want[static_cast<std::size_t>(k - m.blocks.begin())] = true;
      }
    }
    for (std::uint32_t b = 0; b < want.size(); ++b) {
      if (want[b]) blocks.push_back(b);
    }
  }
  std::vector<Unit> units;
  for (std::uint32_t bi : blocks) {
    const BlockInfo& blk = m.blocks[bi];
    for (std::uint64_t start = 0; start < blk.length;) {
      std::uint64_t len = std::min(max_unit, blk.length - start);
      std::uint64_t file_offset = blk.offset + start;
      bool joins = !units.empty() && units.back().file == blk.file &&
                   units.back().offset + units.back().length == file_offset &&
                   units.back().length + len <= max_unit;
      if (!joins) units.push_back(Unit{blk.file, file_offset, 0, {}, {}});
      Unit& u = units.back();
      u.pieces.push_back(Piece{bi, start, len, start + len == blk.length});
      u.length += len;
      start += len;
    }
  }
  // Segments: each extent lies inside wanted blocks, so inside consecutive units. Each one
  // finds its first unit by binary search: a hostile manifest may have extents that overlap.
  for (const Placed& p : placed) {
    auto it = std::partition_point(units.begin(), units.end(), [&](const Unit& u) {
      return before(u.file, u.offset + u.length, p.file, p.offset + 1);
    });
    for (std::uint64_t at = 0; at < p.length; ++it) {
      std::uint64_t pos = p.offset + at;
      if (it == units.end() || it->file != p.file || it->offset > pos) {
        throw Error(Errc::corrupt, fmt::format("extent of leaf '{}' at offset {} lies outside the "
                                               "blocks read",
                                               m.leaves[p.leaf].path, pos));
      }
      std::uint64_t in_unit = pos - it->offset;
      std::uint64_t len = std::min(p.length - at, it->length - in_unit);
      it->segments.push_back(Segment{p.leaf, p.leaf_offset + at, in_unit, len});
      at += len;
    }
  }
  return units;
}

std::vector<const std::byte*> leaf_sources(const FlatTree& leaves) {
  std::vector<const std::byte*> out;
  out.reserve(leaves.size());
  for (const auto& [path, array] : leaves) out.push_back(array.data());
  return out;
}

void copy_unit(const Unit& unit, const std::vector<const std::byte*>& sources, std::byte* dst,
               Stores stores) {
  std::uint64_t at = 0;
  for (const Segment& s : unit.segments) {
    if (s.unit_offset > at) std::memset(dst + at, 0, s.unit_offset - at);
    copy_bytes(dst + s.unit_offset, sources[s.leaf] + s.leaf_offset, s.len, stores);
    at = s.unit_offset + s.len;
  }
  if (at < unit.length) std::memset(dst + at, 0, unit.length - at);
  if (stores == Stores::streaming) stream_fence();
}

void stage_unit(const Unit& unit, const std::vector<const std::byte*>& sources, std::byte* dst,
                Manifest& m, std::vector<std::uint32_t>& crc) {
  copy_unit(unit, sources, dst, Stores::cached);  // checksummed next: from the cache
  const std::byte* in = dst;
  for (const Piece& p : unit.pieces) {
    crc[p.block] = crc32c(in, p.len, p.start == 0 ? 0 : crc[p.block]);
    if (p.ends_block) m.blocks[p.block].crc32c = crc[p.block];
    in += p.len;
  }
}

void checksum_unit(const Unit& unit, const std::byte* src, std::vector<std::uint32_t>& block_crc) {
  const std::byte* in = src;
  for (const Piece& p : unit.pieces) {
    block_crc[p.block] = crc32c(in, p.len);
    in += p.len;
  }
}

std::vector<Piece> verify_unit(const Unit& unit, const std::byte* src, const Manifest& m,
                               std::vector<std::uint32_t>& crc) {
  std::vector<Piece> bad;
  const std::byte* in = src;
  for (const Piece& p : unit.pieces) {
    crc[p.block] = crc32c(in, p.len, p.start == 0 ? 0 : crc[p.block]);
    if (p.ends_block && crc[p.block] != m.blocks[p.block].crc32c) bad.push_back(p);
    in += p.len;
  }
  return bad;
}

std::uint64_t scattered_bytes(const std::vector<Unit>& units,
                              const std::vector<const Array*>& targets) {
  std::uint64_t bytes = 0;
  if (targets.empty()) return bytes;  // verified only: nothing is copied
  for (const Unit& u : units) {
    for (const Segment& s : u.segments) {
      if (targets[s.leaf] != nullptr) bytes += s.len;
    }
  }
  return bytes;
}

void scatter_unit(const Unit& unit, const std::byte* src, const std::vector<const Array*>& targets,
                  Stores stores) {
  for (const Segment& s : unit.segments) {
    const Array* target = targets.empty() ? nullptr : targets[s.leaf];
    if (target != nullptr)
      copy_bytes(target->mutable_data() + s.leaf_offset, src + s.unit_offset, s.len, stores);
  }
  if (stores == Stores::streaming) stream_fence();
}

std::string block_leaves(const Manifest& m, std::uint32_t block) {
  constexpr std::size_t kNamed = 4;
  const BlockInfo& b = m.blocks[block];
  std::vector<std::string> named;
  std::size_t count = 0;
  for (const auto& leaf : m.leaves) {
    for (const auto& e : leaf.extents) {
      if (e.file == b.file && e.offset < b.offset + b.length && b.offset < e.offset + e.length) {
        if (count++ < kNamed) named.push_back("'" + leaf.path + "'");
        break;
      }
    }
  }
  if (count == 0) return "no leaf (padding only)";
  std::string out = fmt::format("{} {}", count == 1 ? "leaf" : "leaves", fmt::join(named, ", "));
  if (count > kNamed) out += fmt::format(" and {} more", count - kNamed);
  return out;
}

}  // namespace ckpt
