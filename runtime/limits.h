#pragma once
// What a reader of this build accepts, in one place for both sides: decode_manifest and the JSON
// readers enforce these limits on what they read, and the writer refuses (Errc::invalid_argument,
// naming the leaf or key) anything beyond them before it writes a byte, so that a save that
// succeeds can always be read back (docs/design.md, "Limits").
#include <cstddef>
#include <cstdint>

namespace ckpt {

// Dimensions of one array.
inline constexpr std::size_t kMaxRank = 64;
// Edges from the root to the deepest node of a tree; code that walks trees recursively (bindings,
// users) stays within the stack.
inline constexpr std::size_t kMaxTreeDepth = 512;
// Bytes of manifest.ckpt, trailer included; read_manifest reads no more.
inline constexpr std::uint64_t kMaxManifestBytes = std::uint64_t{1} << 30;
// Tables in the manifest's flatbuffer (the Verifier's bound): nodes + leaves + extents + blocks +
// files + 1.
inline constexpr std::size_t kMaxManifestTables = 100'000'000;
// Bytes of one checksummed block of a data file (format version 2): a reader holds a whole block
// in memory to verify it.
inline constexpr std::uint64_t kMaxBlockBytes = std::uint64_t{1} << 30;
// The flatbuffers Verifier's nesting bound; the schema nests 4 deep whatever the tree.
inline constexpr std::size_t kMaxManifestNesting = 64;
// Nesting of arrays and objects in a JSON file of a checkpoint, the outermost object counting 1.
// Boost.JSON's default, so a plain boost::json::parse reads every file the writer writes.
inline constexpr std::size_t kMaxJsonDepth = 32;

}  // namespace ckpt
