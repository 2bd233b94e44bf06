#pragma once
// What the manifest fuzzer (tests/fuzz/manifest_fuzz.cc) makes of one input, shared with the
// corpus generator (tests/fuzz/make_corpus.cc) so that seeds restore cleanly.
//
// Plain input: the bytes of manifest.ckpt. The harness writes each data file the manifest lists
// as a saver would have written a tree whose byte j of every leaf is pattern_byte(j): the payload
// of each extent from the pattern, its padding zeros. Every JSON file it lists holds "{}" padded
// with spaces to the declared size (so a saved checkpoint with metadata {} and extra files "{}"
// matches its checksums).
//
// Split input: kSplitMagic, a u32 little-endian length n, n bytes of manifest.ckpt, then the
// bytes of data-00000.bin as they are (a size other than the manifest's is a truncated or
// replaced file), so that the fuzzer mutates data bytes too.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ckpt::fuzz {

inline constexpr std::string_view kSplitMagic = "CKPTSPLT";

inline std::uint8_t pattern_byte(std::uint64_t j) {
  return static_cast<std::uint8_t>((j * 31 + 7) ^ (j >> 8));
}

inline std::string json_text(std::uint64_t size) {
  std::string text = "{}";
  if (size > text.size()) text.append(size - text.size(), ' ');
  return text;
}

inline std::string split_input(std::string_view manifest, std::string_view data) {
  std::string out(kSplitMagic);
  auto n = static_cast<std::uint32_t>(manifest.size());
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out.append(manifest);
  out.append(data);
  return out;
}

}  // namespace ckpt::fuzz
