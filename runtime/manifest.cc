#include "runtime/manifest.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <future>
#include <tuple>
#include <utility>

#include "io/error.h"
#include "io/file.h"
#include "runtime/beside.h"
#include "runtime/crc32c.h"
#include "runtime/limits.h"
#include "schemas/checkpoint_generated.h"

namespace ckpt {

namespace {

constexpr std::string_view kTrailerMagic = "CKPTMAN1";
constexpr std::size_t kTrailerSize = 16;

void put_u32(char* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
std::uint32_t get_u32(const char* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= static_cast<std::uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

[[noreturn]] void corrupt(const std::string& path, const std::string& why) {
  throw Error(Errc::corrupt, "invalid manifest (" + why + ")", path);
}

}  // namespace

std::string data_file_name(std::uint32_t index) { return fmt::format("data-{:05}.bin", index); }

const FileInfo* Manifest::json_file(std::string_view name) const {
  for (const auto& f : json_files) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

bool Manifest::sharded() const {
  if (process_count > 1) return true;
  for (const auto& l : leaves) {
    for (const auto& e : l.extents) {
      if (!e.slice_shape.empty()) return true;
    }
  }
  return false;
}

std::uint64_t Manifest::stored_bytes() const {
  std::uint64_t n = 0;
  for (const auto& f : data_files) n += f.size;
  return n;
}

void describe_structure(const Tree& tree, Manifest& manifest) {
  // Pre-order, children after their parent (what decode_manifest requires), leaves numbered in
  // flattening order; iterative, so a tree of any depth can be described (and then refused).
  auto& nodes = manifest.nodes;
  nodes.clear();
  struct Visit {
    const Tree* node;
    std::uint32_t parent;  // index in nodes; the root's is unused
    std::uint32_t slot;    // index among the parent's children
  };
  std::vector<Visit> stack{{&tree, 0, 0}};
  std::uint32_t next_leaf = 0;
  while (!stack.empty()) {
    Visit v = stack.back();
    stack.pop_back();
    auto index = static_cast<std::uint32_t>(nodes.size());
    if (v.node != &tree) nodes[v.parent].children[v.slot] = index;
    NodeInfo& info = nodes.emplace_back();
    info.kind = v.node->kind();
    if (v.node->is_leaf()) {
      info.leaf = next_leaf++;
      continue;
    }
    if (v.node->is_dict()) info.keys = v.node->keys();
    const auto& children = v.node->children();
    info.children.assign(children.size(), 0);
    for (std::size_t i = children.size(); i-- > 0;)
      stack.push_back({&children[i], index, static_cast<std::uint32_t>(i)});
  }
}

namespace {

[[noreturn]] void refuse(const std::string& why) { throw Error(Errc::invalid_argument, why); }

// A path for a message: whole when short, else its two ends.
std::string abbreviate(const std::string& path) {
  constexpr std::size_t kKeep = 120;
  if (path.size() <= 2 * kKeep + 3) return path;
  return path.substr(0, kKeep) + "..." + path.substr(path.size() - kKeep);
}

}  // namespace

namespace {

// Generous per-item bounds on flatbuffers' encoding: a table's vtable and fields with their
// alignment padding, a string's length prefix, terminator and padding, an offset in a vector.
// The head: everything but the tree part (the root, the blocks, the file lists).
std::uint64_t head_size_bound(const Manifest& m, const std::vector<FileInfo>& json_files) {
  std::uint64_t n = 4096 + m.writer.size() + 64 * m.blocks.size();
  for (const auto* files : {&m.data_files, &json_files}) {
    for (const auto& f : *files) n += 80 + f.name.size() + f.origin.size();
  }
  return n;
}

}  // namespace

std::uint64_t manifest_size_bound(const Manifest& m) {
  std::uint64_t n = head_size_bound(m, m.json_files);
  for (const auto& node : m.nodes) {
    n += 128 + 8 * node.children.size();
    for (const auto& k : node.keys) n += 16 + k.size();
  }
  for (const auto& l : m.leaves)
    n += 128 + l.path.size() + 8 * l.shape.size() + 112 * l.extents.size();
  return n;
}

void check_writable(const Manifest& m) {
  for (const auto& l : m.leaves) {
    if (l.shape.size() > kMaxRank) {
      refuse(fmt::format("leaf '{}': rank {} is above the readers' limit of {}", abbreviate(l.path),
                         l.shape.size(), kMaxRank));
    }
  }
  // Depth of every node, parents before children (pre-order).
  struct Up {
    std::uint32_t parent = 0;
    std::uint32_t slot = 0;
    std::size_t depth = 0;
  };
  std::vector<Up> up(m.nodes.size());
  for (std::size_t i = 0; i < m.nodes.size(); ++i) {
    const NodeInfo& n = m.nodes[i];
    for (std::size_t k = 0; k < n.children.size(); ++k) {
      Up& c = up[n.children[k]];
      c = {static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(k), up[i].depth + 1};
      if (c.depth <= kMaxTreeDepth) continue;
      std::vector<std::string> parts;
      for (std::uint32_t at = n.children[k]; at != 0; at = up[at].parent) {
        const NodeInfo& p = m.nodes[up[at].parent];
        parts.push_back(p.kind == Tree::Kind::dict ? p.keys[up[at].slot]
                                                   : std::to_string(up[at].slot));
      }
      std::reverse(parts.begin(), parts.end());
      refuse(fmt::format("tree node '{}': the tree is deeper than the readers' limit of {} levels",
                         abbreviate(fmt::format("{}", fmt::join(parts, "/"))), kMaxTreeDepth));
    }
  }
  std::size_t tables = 1 + m.nodes.size() + m.leaves.size() + m.data_files.size() +
                       m.json_files.size() + m.blocks.size();
  for (const auto& l : m.leaves) tables += l.extents.size();
  if (tables > kMaxManifestTables) {
    refuse(fmt::format("the tree needs {} manifest tables, above the readers' limit of {}", tables,
                       kMaxManifestTables));
  }
  // Room for the JSON files' entries, which are added when the checkpoint is finished.
  constexpr std::uint64_t kJsonFilesRoom = 1u << 20;
  if (manifest_size_bound(m) > kMaxManifestBytes - kJsonFilesRoom) {
    refuse(fmt::format("the manifest of this tree could exceed the readers' limit of {} bytes",
                       kMaxManifestBytes));
  }
}

std::string encode_manifest(const Manifest& m) {
  std::string out;
  encode_manifest(m, out);
  return out;
}

namespace {

namespace fb = ckpt::fb;
using NodeVector = flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<fb::Node>>>;
using LeafVector = flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<fb::Leaf>>>;

// The tree part: nodes, leaves and their extents, the bulk of a manifest.
std::pair<NodeVector, LeafVector> build_tree(flatbuffers::FlatBufferBuilder& b, const Manifest& m) {
  std::vector<flatbuffers::Offset<fb::Node>> nodes;
  nodes.reserve(m.nodes.size());
  for (const auto& n : m.nodes) {
    auto keys = b.CreateVectorOfStrings(n.keys);
    auto children = b.CreateVector(n.children);
    nodes.push_back(fb::CreateNode(b, static_cast<fb::NodeKind>(n.kind), keys, children, n.leaf));
  }
  std::vector<flatbuffers::Offset<fb::Leaf>> leaves;
  leaves.reserve(m.leaves.size());
  std::vector<flatbuffers::Offset<fb::Extent>> extents;
  for (const auto& l : m.leaves) {
    extents.clear();
    for (const auto& e : l.extents) {
      const fb::Hash128 hash(e.hash.lo, e.hash.hi);
      flatbuffers::Offset<flatbuffers::Vector<std::uint64_t>> start, shape;
      if (!e.slice_shape.empty()) {
        start = b.CreateVector(e.slice_start);
        shape = b.CreateVector(e.slice_shape);
      }
      extents.push_back(fb::CreateExtent(b, e.file, e.offset, e.length, e.stored_length, e.crc32c,
                                         e.leaf_offset, e.process_index, start, shape,
                                         e.has_hash ? &hash : nullptr));
    }
    auto path = b.CreateString(l.path);
    auto shape = b.CreateVector(l.shape);
    auto ext = b.CreateVector(extents);
    leaves.push_back(
        fb::CreateLeaf(b, path, static_cast<fb::DType>(l.dtype), shape, l.nbytes, ext));
  }
  return {b.CreateVector(nodes), b.CreateVector(leaves)};
}

// A builder that can take room for bytes it will never hold: the tree part of a manifest encoded
// from a cached EncodedTree. Everything pushed afterwards is placed at the offsets from the
// buffer's end it would have had if those bytes had been pushed, and the room itself is never
// touched, so its pages are never faulted in. The tree part was aligned relative to its builder's
// end and may hold 8-byte fields (shape vectors) when nothing pushed afterwards does: the finished
// buffer is padded to 8 in any case, so that its start keeps them aligned. (A plain encoding of
// the same manifest can be up to 4 bytes shorter; the two decode the same.)
class SkippingBuilder : public flatbuffers::FlatBufferBuilder {
 public:
  using flatbuffers::FlatBufferBuilder::FlatBufferBuilder;
  void skip(std::size_t n) {
    buf_.make_space(n);
    TrackMinAlign(alignof(std::uint64_t));
  }
};

// Everything after the tree part (pushed before it: the builder fills from the end): the blocks,
// the file lists and the root, with `parts` (when given) in place of the manifest's own creation
// time, block checksums and JSON files; then the buffer is finished.
void finish_manifest(flatbuffers::FlatBufferBuilder& b, const Manifest& m,
                     const ManifestParts* parts, NodeVector node_vec, LeafVector leaf_vec) {
  auto files = [&](const std::vector<FileInfo>& in) {
    std::vector<flatbuffers::Offset<fb::FileEntry>> out;
    for (const auto& f : in) {
      auto name = b.CreateString(f.name);
      flatbuffers::Offset<flatbuffers::String> origin;
      if (!f.origin.empty()) origin = b.CreateString(f.origin);
      out.push_back(fb::CreateFileEntry(b, name, f.size, f.crc32c, origin));
    }
    return b.CreateVector(out);
  };
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<fb::Block>>> blocks;
  if (m.format_version != kFormatVersion1) {
    const std::vector<std::uint32_t>* crc = parts != nullptr ? parts->block_crc : nullptr;
    std::vector<flatbuffers::Offset<fb::Block>> out;
    out.reserve(m.blocks.size());
    for (std::size_t i = 0; i < m.blocks.size(); ++i) {
      const BlockInfo& k = m.blocks[i];
      out.push_back(
          fb::CreateBlock(b, k.file, k.offset, k.length, crc != nullptr ? (*crc)[i] : k.crc32c));
    }
    blocks = b.CreateVector(out);
  }
  auto data_files = files(m.data_files);
  auto json_files = files(parts != nullptr ? *parts->json_files : m.json_files);
  auto writer = b.CreateString(m.writer);
  auto root = fb::CreateManifest(b, m.format_version, m.alignment,
                                 parts != nullptr ? parts->created_unix_ns : m.created_unix_ns,
                                 writer, m.total_bytes, node_vec, leaf_vec, data_files, json_files,
                                 m.process_count, blocks);
  fb::FinishManifestBuffer(b, root);
}

// The trailer of a manifest whose flatbuffer has `size` bytes and checksum `crc`.
std::string trailer(std::size_t size, std::uint32_t crc) {
  std::string t(kTrailerSize, '\0');
  std::memcpy(t.data(), kTrailerMagic.data(), 8);
  put_u32(t.data() + 8, static_cast<std::uint32_t>(size));
  put_u32(t.data() + 12, crc);
  return t;
}

}  // namespace

EncodedTree encode_tree(const Manifest& m) {
  flatbuffers::FlatBufferBuilder b(1024 + m.leaves.size() * 256);
  auto [nodes, leaves] = build_tree(b, m);
  EncodedTree out;
  out.bytes.assign(reinterpret_cast<const char*>(b.GetCurrentBufferPointer()), b.GetSize());
  out.nodes = nodes.o;
  out.leaves = leaves.o;
  out.crc32c = crc32c(out.bytes);
  return out;
}

void encode_manifest(const Manifest& m, std::string& out) {
  constexpr std::size_t kKeep = std::size_t{64} << 20;
  thread_local flatbuffers::FlatBufferBuilder kept;
  flatbuffers::FlatBufferBuilder fresh(1024 + m.leaves.size() * 256);
  const bool reuse = manifest_size_bound(m) <= kKeep;
  flatbuffers::FlatBufferBuilder& b = reuse ? kept : fresh;
  b.Clear();
  auto [node_vec, leaf_vec] = build_tree(b, m);
  finish_manifest(b, m, nullptr, node_vec, leaf_vec);
  out.reserve(b.GetSize() + kTrailerSize);
  out.assign(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize());
  out += trailer(b.GetSize(), crc32c(out));
}

ManifestPieces encode_manifest(const Manifest& skeleton, const ManifestParts& parts,
                               const EncodedTree& tree) {
  // Room for the tree part and a generous bound on the rest, so that the builder never grows
  // (growing would copy the room, touching it).
  SkippingBuilder b(tree.bytes.size() + head_size_bound(skeleton, *parts.json_files));
  b.skip(tree.bytes.size());
  finish_manifest(b, skeleton, &parts, NodeVector(tree.nodes), LeafVector(tree.leaves));
  ManifestPieces out;
  out.head.assign(reinterpret_cast<const char*>(b.GetBufferPointer()),
                  b.GetSize() - tree.bytes.size());
  out.tree = tree.bytes;
  out.trailer = trailer(b.GetSize(), crc32c_combine(crc32c(out.head), tree.crc32c,
                                                    tree.bytes.size()));
  return out;
}

std::string ManifestPieces::joined() const {
  std::string out;
  out.reserve(head.size() + tree.size() + trailer.size());
  out.append(head).append(tree).append(trailer);
  return out;
}

namespace {

// Rank, shape and size of any leaf.
void check_leaf_size(const LeafInfo& l, const std::string& path) {
  auto fail = [&](const std::string& why) { corrupt(path, "leaf '" + l.path + "': " + why); };
  if (l.shape.size() > kMaxRank) fail("rank too large");
  std::uint64_t nbytes = 0;
  try {
    nbytes = array_nbytes(l.dtype, l.shape);
  } catch (const Error&) {
    fail("shape " + shape_to_string(l.shape) + " overflows");
  }
  if (nbytes != l.nbytes) fail(fmt::format("nbytes {} does not match shape and dtype", l.nbytes));
}

// The `length` bytes of extent e lie inside its data file (which exists: checked before).
template <typename Fail>
void check_extent_in_file(const ExtentInfo& e, std::uint64_t length, const Manifest& m,
                          const Fail& fail) {
  std::uint64_t size = m.data_files[e.file].size;
  if (e.offset > size || length > size - e.offset) {
    fail(fmt::format("extent at offset {} runs past the end of {}", e.offset,
                     m.data_files[e.file].name));
  }
}

void check_leaf(const LeafInfo& l, const Manifest& m, const std::string& path) {
  auto fail = [&](const std::string& why) { corrupt(path, "leaf '" + l.path + "': " + why); };
  check_leaf_size(l, path);
  std::uint64_t expect = 0;
  for (const auto& e : l.extents) {
    if (e.file >= m.data_files.size()) fail("extent names a missing data file");
    if (e.leaf_offset != expect) fail("extents do not tile the leaf");
    if (e.length == 0 || e.length > l.nbytes - e.leaf_offset) fail("extent length out of range");
    if (m.format_version == kFormatVersion1) {
      if (e.stored_length != io::align_up(e.length, m.alignment))
        fail("stored length is not padded");
      if (e.offset % m.alignment != 0) fail("extent offset is not aligned");
    } else if (e.stored_length != e.length || e.crc32c != 0) {
      fail("extent has a stored length or checksum of its own");
    }
    check_extent_in_file(e, e.stored_length, m, fail);
    expect += e.length;
  }
  if (expect != l.nbytes) fail("extents do not cover the leaf");
}

// A vector of u64 from the manifest; the Verifier aligns a vector's length, not its elements.
Shape read_u64s(const flatbuffers::Vector<std::uint64_t>* v, const std::string& leaf,
                const std::string& path) {
  Shape out;
  if (v == nullptr || v->size() == 0) return out;
  if (reinterpret_cast<std::uintptr_t>(v->data()) % alignof(std::uint64_t) != 0) {
    corrupt(path, "leaf '" + leaf + "': misaligned vector");
  }
  if (v->size() > kMaxRank) corrupt(path, "leaf '" + leaf + "': rank too large");
  out.assign(v->begin(), v->end());
  return out;
}

// A leaf of a sharded manifest (format version 2, docs/design.md, section 14): each extent is the
// row-major bytes of one box (its slice; no slice: the whole array), and the boxes tile the array.
void check_sharded_leaf(const LeafInfo& l, const Manifest& m, const std::string& path) {
  auto fail = [&](const std::string& why) { corrupt(path, "leaf '" + l.path + "': " + why); };
  if (m.format_version == kFormatVersion1) fail("sharded extents in a version 1 manifest");
  check_leaf_size(l, path);
  std::uint64_t covered = 0;
  const std::uint32_t processes = std::max<std::uint32_t>(m.process_count, 1);
  for (const auto& e : l.extents) {
    if (e.file >= m.data_files.size()) fail("extent names a missing data file");
    if (e.process_index >= processes) fail("extent names a process beyond the process count");
    if (e.stored_length != e.length || e.crc32c != 0 || e.leaf_offset != 0) {
      fail("sharded extent has a stored length, checksum or leaf offset of its own");
    }
    std::uint64_t box_bytes = l.nbytes;
    if (e.slice_start.empty() && e.slice_shape.empty() && l.extents.size() != 1) {
      fail("an extent without a box is not the leaf's only one");
    }
    if (!e.slice_start.empty() || !e.slice_shape.empty()) {
      if (e.slice_start.size() != l.shape.size() || e.slice_shape.size() != l.shape.size())
        fail("slice rank differs from the leaf's");
      for (std::size_t d = 0; d < l.shape.size(); ++d) {
        if (e.slice_start[d] > l.shape[d] || e.slice_shape[d] > l.shape[d] - e.slice_start[d])
          fail("slice outside the global shape");
      }
      box_bytes = array_nbytes(l.dtype, e.slice_shape);  // inside the shape: no overflow
    }
    if (e.length == 0 || e.length != box_bytes) fail("extent length differs from its box's");
    check_extent_in_file(e, e.length, m, fail);
    covered += e.length;
  }
  if (covered != l.nbytes) fail("the boxes do not cover the leaf exactly");
  // Sizes add up; with few boxes also check they are disjoint (a reader never writes outside a
  // box either way: overlaps could only make a hostile manifest's data wrong, never unsafe).
  constexpr std::size_t kPairwise = 64;
  if (l.extents.size() <= kPairwise) {
    for (std::size_t a = 0; a < l.extents.size(); ++a) {
      for (std::size_t b = a + 1; b < l.extents.size(); ++b) {
        const auto& x = l.extents[a];
        const auto& y = l.extents[b];
        if (x.slice_shape.empty() || y.slice_shape.empty()) fail("boxes overlap");
        bool apart = false;
        for (std::size_t d = 0; d < l.shape.size() && !apart; ++d) {
          apart = x.slice_start[d] >= y.slice_start[d] + y.slice_shape[d] ||
                  y.slice_start[d] >= x.slice_start[d] + x.slice_shape[d];
        }
        if (!apart) fail("boxes overlap");
      }
    }
  }
}

void check_structure(const Manifest& m, const std::string& path) {
  if (m.nodes.empty()) corrupt(path, "no tree");
  // Pre-order with children after parents: an index must point forward, once, so the tree is a
  // tree (no cycles, no sharing) and recursion over it terminates.
  std::vector<bool> seen(m.nodes.size(), false);
  std::vector<bool> leaf_seen(m.leaves.size(), false);
  seen[0] = true;
  for (std::size_t i = 0; i < m.nodes.size(); ++i) {
    const NodeInfo& n = m.nodes[i];
    if (!seen[i]) corrupt(path, "unreachable tree node");
    if (n.kind == Tree::Kind::leaf) {
      if (n.leaf >= m.leaves.size() || leaf_seen[n.leaf]) corrupt(path, "bad leaf index");
      leaf_seen[n.leaf] = true;
      continue;
    }
    if (n.kind == Tree::Kind::dict && n.keys.size() != n.children.size()) {
      corrupt(path, "dict keys and children differ in number");
    }
    for (std::size_t k = 0; k < n.keys.size(); ++k) {
      if (n.keys[k].empty() || n.keys[k].find('/') != std::string::npos ||
          (k > 0 && !(n.keys[k - 1] < n.keys[k]))) {
        corrupt(path, "bad dict key '" + n.keys[k] + "'");
      }
    }
    for (std::uint32_t c : n.children) {
      if (c <= i || c >= m.nodes.size() || seen[c]) corrupt(path, "bad tree node index");
      seen[c] = true;
    }
  }
  for (bool s : leaf_seen) {
    if (!s) corrupt(path, "leaf not in the tree");
  }
  // Each leaf's path must be the one its place in the tree gives (iterative: no recursion depth
  // for a hostile manifest to exhaust; one path buffer, extended and cut back: no string per node).
  if (m.nodes[0].kind == Tree::Kind::leaf) {
    if (!m.leaves[m.nodes[0].leaf].path.empty()) {
      corrupt(path, "leaf path '" + m.leaves[m.nodes[0].leaf].path + "' does not match the tree");
    }
    return;
  }
  struct Frame {
    std::uint32_t index;
    std::size_t next;  // the child to visit next
    std::size_t mark;  // prefix length before this node's own part
  };
  std::string prefix;
  std::vector<Frame> stack{{0, 0, 0}};
  while (!stack.empty()) {
    Frame& f = stack.back();
    const NodeInfo& n = m.nodes[f.index];
    if (f.next == n.children.size()) {
      prefix.resize(f.mark);
      stack.pop_back();
      continue;
    }
    const std::size_t k = f.next++;
    // The child's depth is the stack's size (the root is at depth 0).
    if (stack.size() > kMaxTreeDepth) {
      corrupt(path, "tree deeper than " + std::to_string(kMaxTreeDepth));
    }
    const std::size_t mark = prefix.size();
    if (n.kind == Tree::Kind::dict) {
      append_path_part(prefix, n.keys[k]);
    } else {
      append_path_part(prefix, k);
    }
    const std::uint32_t c = n.children[k];
    if (m.nodes[c].kind == Tree::Kind::leaf) {
      const std::string& leaf_path = m.leaves[m.nodes[c].leaf].path;
      if (leaf_path != prefix) corrupt(path, "leaf path '" + leaf_path + "' does not match the tree");
      prefix.resize(mark);
    } else {
      stack.push_back({c, 0, mark});
    }
  }
}

// Version 1: every byte of every data file must belong to exactly one extent, so that the
// extents' checksums cover the files completely; each extent becomes a block.
void blocks_from_extents(Manifest& m, const std::string& path) {
  m.blocks.clear();
  for (const auto& l : m.leaves) {
    for (const auto& e : l.extents)
      m.blocks.push_back({e.file, e.offset, e.stored_length, e.crc32c});
  }
  std::sort(m.blocks.begin(), m.blocks.end(), [](const BlockInfo& a, const BlockInfo& b) {
    return a.file != b.file ? a.file < b.file : a.offset < b.offset;
  });
  std::vector<std::uint64_t> at(m.data_files.size(), 0);
  for (const auto& b : m.blocks) {
    if (b.offset != at[b.file]) {
      corrupt(path, "extents of " + m.data_files[b.file].name + " overlap or leave gaps");
    }
    at[b.file] += b.length;
  }
  for (std::size_t f = 0; f < at.size(); ++f) {
    if (at[f] != m.data_files[f].size)
      corrupt(path, "extents do not cover " + m.data_files[f].name);
  }
}

// Version 2: the blocks tile every data file in file order, each aligned, so that their
// checksums cover the files completely.
void check_blocks(const Manifest& m, const std::string& path) {
  std::uint32_t file = 0;
  std::uint64_t at = 0;
  auto close_file = [&](std::uint32_t next) {
    for (; file < next; ++file, at = 0) {
      if (at != m.data_files[file].size)
        corrupt(path, "blocks do not cover " + m.data_files[file].name);
    }
  };
  for (const auto& b : m.blocks) {
    if (b.file >= m.data_files.size()) corrupt(path, "block names a missing data file");
    if (b.file < file) corrupt(path, "blocks are not in file order");
    close_file(b.file);
    if (b.length == 0 || b.length % m.alignment != 0 || b.offset % m.alignment != 0) {
      corrupt(path, fmt::format("block at offset {} of {} is not aligned", b.offset,
                                m.data_files[b.file].name));
    }
    if (b.length > kMaxBlockBytes) {
      corrupt(path, fmt::format("block at offset {} of {} is longer than {} bytes", b.offset,
                                m.data_files[b.file].name, kMaxBlockBytes));
    }
    if (b.offset != at)
      corrupt(path, "blocks of " + m.data_files[b.file].name + " overlap or leave gaps");
    at += b.length;
  }
  close_file(static_cast<std::uint32_t>(m.data_files.size()));
}

std::vector<FileInfo> read_files(const flatbuffers::Vector<flatbuffers::Offset<fb::FileEntry>>* v) {
  std::vector<FileInfo> out;
  if (v == nullptr) return out;
  for (const auto* f : *v) {
    out.push_back({f->name() ? f->name()->str() : std::string(), f->size(), f->crc32c(),
                   f->origin() ? f->origin()->str() : std::string()});
  }
  return out;
}

}  // namespace

namespace {

// The flatbuffers Verifier over only what decode_layout reads: the root table's scalars, its
// writer, its file lists and its blocks, not the tree (nodes, leaves), which it never touches.
// The generated Manifest::Verify with the tree's two vectors left out.
bool verify_layout_fields(flatbuffers::Verifier& v, const std::uint8_t* data) {
  const flatbuffers::uoffset_t root = v.VerifyOffset(0);
  if (root == 0) return false;
  const auto* t = reinterpret_cast<const flatbuffers::Table*>(data + root);
  const auto* fm = reinterpret_cast<const fb::Manifest*>(data + root);
  using M = fb::Manifest;
  return t->VerifyTableStart(v) && t->VerifyField<std::uint32_t>(v, M::VT_FORMAT_VERSION, 4) &&
         t->VerifyField<std::uint32_t>(v, M::VT_ALIGNMENT, 4) &&
         t->VerifyField<std::int64_t>(v, M::VT_CREATED_UNIX_NS, 8) &&
         t->VerifyOffset(v, M::VT_WRITER) && v.VerifyString(fm->writer()) &&
         t->VerifyField<std::uint64_t>(v, M::VT_TOTAL_BYTES, 8) &&
         t->VerifyOffset(v, M::VT_DATA_FILES) && v.VerifyVector(fm->data_files()) &&
         v.VerifyVectorOfTables(fm->data_files()) && t->VerifyOffset(v, M::VT_JSON_FILES) &&
         v.VerifyVector(fm->json_files()) && v.VerifyVectorOfTables(fm->json_files()) &&
         t->VerifyField<std::uint32_t>(v, M::VT_PROCESS_COUNT, 4) &&
         t->VerifyOffset(v, M::VT_BLOCKS) && v.VerifyVector(fm->blocks()) &&
         v.VerifyVectorOfTables(fm->blocks()) && v.EndTable();
}

// How much of the buffer a decode checks before reading it.
enum class Checks {
  whole,   // the checksum and the Verifier over everything
  layout,  // decode_layout: the Verifier over what it reads, and no checksum
};

// What every decode starts with: the trailer, the checksum, the file identifier and the
// flatbuffers Verifier over the whole buffer (copied into `aligned` when misaligned), then the
// header fields and the file lists. With Checks::layout, no checksum and the Verifier over only
// the fields decode_layout reads.
const fb::Manifest* open_manifest(std::string_view bytes, const std::string& path,
                                  std::vector<std::uint64_t>& aligned, Manifest& m,
                                  Checks checks = Checks::whole) {
  if (bytes.size() < kTrailerSize) corrupt(path, "file too short");
  const char* trailer = bytes.data() + bytes.size() - kTrailerSize;
  if (std::string_view(trailer, 8) != kTrailerMagic) {
    corrupt(path, "no ckpt manifest trailer; not a ckpt manifest or truncated");
  }
  std::uint32_t len = get_u32(trailer + 8);
  if (len != bytes.size() - kTrailerSize)
    corrupt(path, "length in trailer does not match the file");
  std::string_view body = bytes.substr(0, len);
  // The root offset and the file identifier, read before the Verifier runs.
  if (body.size() < sizeof(flatbuffers::uoffset_t) + flatbuffers::kFileIdentifierLength) {
    corrupt(path, "no flatbuffer before the trailer");
  }
  [[maybe_unused]] const bool crc_ok =
      checks == Checks::layout || crc32c(body) == get_u32(trailer + 12);
#if !defined(FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION)
  // Only the fuzzer's build (tests/fuzz) lets a wrong checksum through, so that mutated
  // manifests reach the checks below.
  if (!crc_ok) corrupt(path, "checksum mismatch");
#endif

  // flatbuffers wants its buffer aligned to its largest scalar (8 bytes); a file read into a
  // std::string usually is (malloc's alignment), else it is copied.
  const auto* data = reinterpret_cast<const std::uint8_t*>(body.data());
  if (reinterpret_cast<std::uintptr_t>(data) % alignof(std::uint64_t) != 0) {
    aligned.resize((body.size() + 7) / 8);
    std::memcpy(aligned.data(), body.data(), body.size());
    data = reinterpret_cast<const std::uint8_t*>(aligned.data());
  }
  if (!fb::ManifestBufferHasIdentifier(data)) corrupt(path, "wrong file identifier");
  flatbuffers::Verifier verifier(data, body.size(), kMaxManifestNesting, kMaxManifestTables);
  const bool verified = checks == Checks::whole ? fb::VerifyManifestBuffer(verifier)
                                                : verify_layout_fields(verifier, data);
  if (!verified) corrupt(path, "flatbuffers verification failed");
  const fb::Manifest* fm = fb::GetManifest(data);

  m.format_version = fm->format_version();
  if (m.format_version != kFormatVersion && m.format_version != kFormatVersion1) {
    throw Error(
        Errc::unsupported,
        fmt::format("manifest format version {} is not supported (this build reads {} and {})",
                    m.format_version, kFormatVersion1, kFormatVersion),
        path);
  }
  m.alignment = fm->alignment();
  if (m.alignment == 0 || m.alignment > (1u << 24) || (m.alignment & (m.alignment - 1)) != 0) {
    corrupt(path, "bad alignment");
  }
  m.created_unix_ns = fm->created_unix_ns();
  m.writer = fm->writer() ? fm->writer()->str() : std::string();
  m.total_bytes = fm->total_bytes();
  m.process_count = fm->process_count();
  m.data_files = read_files(fm->data_files());
  m.json_files = read_files(fm->json_files());
  for (const auto& f : m.data_files) {
    if (f.name != data_file_name(static_cast<std::uint32_t>(&f - m.data_files.data()))) {
      corrupt(path, "unexpected data file name '" + f.name + "'");
    }
  }
  for (const auto& f : m.json_files) {
    if (f.name.empty() || f.name.find('/') != std::string::npos || f.name[0] == '.') {
      corrupt(path, "bad file name '" + f.name + "'");
    }
  }
  return fm;
}

// Version 2's blocks, which must tile the data files.
void read_blocks(const fb::Manifest* fm, Manifest& m, const std::string& path) {
  if (fm->blocks()) {
    m.blocks.reserve(fm->blocks()->size());
    for (const auto* b : *fm->blocks())
      m.blocks.push_back({b->file(), b->offset(), b->length(), b->crc32c()});
  }
  check_blocks(m, path);
}

// The tree's nodes, as decoded; throws Error(corrupt) at a node of unknown kind (the rest of
// their rules are check_structure's).
std::vector<NodeInfo> read_nodes(const fb::Manifest* fm, const std::string& path) {
  std::vector<NodeInfo> nodes;
  if (!fm->nodes()) return nodes;
  nodes.reserve(fm->nodes()->size());
  io::advise_huge_pages(nodes.data(), nodes.capacity() * sizeof(NodeInfo));
  for (const auto* n : *fm->nodes()) {
    NodeInfo info;
    auto kind = static_cast<std::uint8_t>(n->kind());
    if (kind > static_cast<std::uint8_t>(Tree::Kind::leaf)) corrupt(path, "unknown node kind");
    info.kind = static_cast<Tree::Kind>(kind);
    if (n->keys()) {
      info.keys.reserve(n->keys()->size());
      for (const auto* k : *n->keys()) info.keys.push_back(k->str());
    }
    if (n->children()) info.children.assign(n->children()->begin(), n->children()->end());
    info.leaf = n->leaf();
    nodes.push_back(std::move(info));
  }
  return nodes;
}

// One extent as decoded; true when it has a box (a slice of a sharded leaf).
bool read_extent(const fb::Extent* e, ExtentInfo& x, const std::string& leaf,
                 const std::string& path) {
  x.file = e->file();
  x.offset = e->offset();
  x.length = e->length();
  x.stored_length = e->stored_length();
  x.crc32c = e->crc32c();
  x.leaf_offset = e->leaf_offset();
  x.process_index = e->process_index();
  x.slice_start = read_u64s(e->slice_start(), leaf, path);
  x.slice_shape = read_u64s(e->slice_shape(), leaf, path);
  if (const fb::Hash128* h = e->content_hash()) {
    x.has_hash = true;
    x.hash = {h->lo(), h->hi()};
  }
  return !x.slice_start.empty() || !x.slice_shape.empty();
}

// One leaf as decoded into `info`; true when one of its extents has a box. Throws Error at an
// unknown dtype or a misaligned shape.
bool read_leaf(const fb::Leaf* l, LeafInfo& info, const std::string& path) {
  info.path = l->path() ? l->path()->str() : std::string();
  auto dt = static_cast<std::uint8_t>(l->dtype());
  if (dt >= kDTypeCount) {
    throw Error(Errc::unsupported, fmt::format("leaf '{}' has unknown dtype {}", info.path, dt),
                path);
  }
  info.dtype = static_cast<DType>(dt);
  if (const auto* shape = l->shape()) {
    // The Verifier aligns a vector's length, not its elements: a forged buffer can put the u64
    // dimensions at 4 mod 8, where reading them is undefined behaviour. (The builder does not
    // align an empty vector: a scalar's shape may sit anywhere.)
    if (shape->size() > 0 &&
        reinterpret_cast<std::uintptr_t>(shape->data()) % alignof(std::uint64_t) != 0) {
      corrupt(path, "leaf '" + info.path + "': misaligned shape");
    }
    info.shape.assign(shape->begin(), shape->end());
  }
  info.nbytes = l->nbytes();
  bool any_box = false;
  if (l->extents()) {
    info.extents.reserve(l->extents()->size());
    for (const auto* e : *l->extents()) {
      any_box = read_extent(e, info.extents.emplace_back(), info.path, path) || any_box;
    }
  }
  return any_box;
}

// What read_leaves learns beyond the leaves themselves.
struct LeavesRead {
  std::uint64_t total = 0;       // their bytes
  bool any_box = false;          // an extent has a box: the manifest is sharded
  std::exception_ptr first_bad;  // the first unsharded check that failed, before any box
};

// The tree's leaves, into m.leaves (built in place: no move of a leaf and its inline extent).
// Whether the manifest is sharded (Manifest::sharded, or an extent with a box) is known only
// once every leaf is read. Until one shows it is, each leaf gets its unsharded check as it is
// read, while its record is in cache; the caller throws the first failure once the manifest
// proves unsharded (the same leaf and message as checking them in a pass after).
LeavesRead read_leaves(const fb::Manifest* fm, Manifest& m, const std::string& path) {
  LeavesRead r;
  if (!fm->leaves()) return r;
  m.leaves.reserve(fm->leaves()->size());
  io::advise_huge_pages(m.leaves.data(), m.leaves.capacity() * sizeof(LeafInfo));
  for (const auto* l : *fm->leaves()) {
    LeafInfo& info = m.leaves.emplace_back();
    r.any_box = read_leaf(l, info, path) || r.any_box;
    if (r.total + info.nbytes < r.total) corrupt(path, "total bytes overflow");
    r.total += info.nbytes;
    if (m.process_count <= 1 && !r.any_box && !r.first_bad) {
      try {
        check_leaf(info, m, path);
      } catch (const Error&) {
        r.first_bad = std::current_exception();
      }
    }
  }
  return r;
}

// Nodes from which decode_manifest decodes them beside the leaves (a thread costs about 0.1 ms;
// 100,000 leaves' nodes take several).
constexpr std::size_t kNodesBesideLeaves = 16384;

}  // namespace

Manifest decode_layout(std::string_view bytes, const std::string& path) {
  std::vector<std::uint64_t> aligned;
  Manifest m;
  const fb::Manifest* fm = open_manifest(bytes, path, aligned, m, Checks::layout);
  if (m.format_version != kFormatVersion1) read_blocks(fm, m, path);
  return m;
}

Manifest decode_manifest(std::string_view bytes, const std::string& path, bool* sharded_out) {
  std::vector<std::uint64_t> aligned;
  Manifest m;
  const fb::Manifest* fm = open_manifest(bytes, path, aligned, m);
  // The nodes and the leaves are separate vectors: a large tree's nodes are decoded on a thread
  // of their own beside its leaves. A node that fails still wins over a leaf that fails, as
  // when the nodes came first; where no thread starts they do.
  std::future<std::vector<NodeInfo>> nodes_beside;
  if (fm->nodes() && fm->nodes()->size() >= kNodesBesideLeaves)
    nodes_beside = start_beside([fm, &path] { return read_nodes(fm, path); });
  if (!nodes_beside.valid()) m.nodes = read_nodes(fm, path);
  LeavesRead leaves;
  std::exception_ptr leaves_failed;
  try {
    leaves = read_leaves(fm, m, path);
  } catch (...) {
    leaves_failed = std::current_exception();
  }
  if (nodes_beside.valid()) m.nodes = nodes_beside.get();  // rethrows a node's error
  if (leaves_failed) std::rethrow_exception(leaves_failed);
  // A manifest is sharded as a whole (Manifest::sharded): then every leaf's extents are boxes,
  // one extent for a leaf without slices, as the resharding reader takes them.
  const bool sharded = m.process_count > 1 || leaves.any_box;
  if (sharded) {
    for (const auto& l : m.leaves) check_sharded_leaf(l, m, path);
  } else if (leaves.first_bad) {
    std::rethrow_exception(leaves.first_bad);
  }
  if (leaves.total != m.total_bytes) corrupt(path, "total_bytes does not match the leaves");
  // Also makes the leaf paths unique: each is its place in the tree (no set of them is kept).
  check_structure(m, path);
  if (m.format_version == kFormatVersion1) {
    if (fm->blocks() && fm->blocks()->size() > 0) corrupt(path, "blocks in a version 1 manifest");
    blocks_from_extents(m, path);
  } else {
    read_blocks(fm, m, path);
  }
  if (sharded_out != nullptr) *sharded_out = sharded;
  return m;
}

}  // namespace ckpt
