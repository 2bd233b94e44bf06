// libFuzzer target over the manifest reader and the restore path.
//
// Each input is a manifest.ckpt (or a manifest and a data file, tests/fuzz/fuzz_input.h).
// decode_manifest must accept it or throw ckpt::Error; anything else (another exception, a crash,
// a sanitizer report, a leak) is a finding. When the manifest decodes and its data files are
// small, the harness builds a checkpoint directory around it and runs verify_checkpoint (which
// must report, never throw) and restore_checkpoint into make_template(manifest), and checks the
// properties the readers promise:
//   - a checkpoint that verifies restores;
//   - a restore that succeeds read data files of the manifest's sizes and returns, for every
//     leaf, the payload bytes its extents name;
//   - then a partial restore into an empty template succeeds, a full one fails with a mismatch
//     unless the checkpoint has no leaves.
// A decoded manifest is trusted by the readers, so its invariants are checked here too: every
// leaf byte lies under an extent, hence the leaves hold no more bytes than the data files.
//
// Built with -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, which makes decode_manifest skip the
// comparison of the trailer's CRC32C (random mutations would never get past it).
// Build and run: `make test-fuzz` (tests/fuzz/CMakeLists.txt).
#include <fcntl.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/engine.h"
#include "io/error.h"
#include "io/log.h"
#include "runtime/checkpoint.h"
#include "runtime/manifest.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

namespace fs = std::filesystem;
using ckpt::fuzz::kSplitMagic;

// Inputs whose data files exceed this only exercise the decoder (keeps runs fast, memory small).
constexpr std::uint64_t kMaxStoredBytes = 4u << 20;
// JSON files declared larger than this get "{}" only (their size check fails, as it should).
constexpr std::uint64_t kMaxJsonBytes = 64u << 10;

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "manifest_fuzz: %s\n", what.c_str());
  std::abort();
}

// One scratch directory per process, reused by every input; removed at exit.
struct Scratch {
  std::string root;
  std::string dir;  // the checkpoint directory (its name must not look like a *.tmp-* one)
  std::unique_ptr<ckpt::io::Engine> engine;

  Scratch() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/ckpt-fuzz-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) finding("mkdtemp failed");
    root = pattern;
    dir = root + "/ckpt";
    // Threads, not io_uring: the fuzzer runs where rings may be refused, and the readers' logic
    // does not depend on the driver.
    engine = ckpt::io::make_engine({ckpt::io::EngineKind::threads, 8, 2});
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(root, ec);
  }
};

Scratch& scratch() {
  static Scratch s;
  return s;
}

// Best effort: a name the file system refuses (too long, say) stays missing, and the reader
// reports it.
void write_file(const std::string& path, std::string_view bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n <= 0) break;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  ::close(fd);
}

std::uint32_t get_u32(std::string_view p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= static_cast<std::uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

// Sum of the data file sizes, or nullopt when it exceeds kMaxStoredBytes.
std::optional<std::uint64_t> small_stored_bytes(const ckpt::Manifest& m) {
  std::uint64_t n = 0;
  for (const auto& f : m.data_files) {
    if (f.size > kMaxStoredBytes - n) return std::nullopt;
    n += f.size;
  }
  return n;
}

void check_invariants(const ckpt::Manifest& m, std::uint64_t stored) {
  std::uint64_t covered = 0;
  for (const auto& l : m.leaves) {
    for (const auto& e : l.extents) {
      if (e.stored_length < e.length) {
        finding("decoded extent of leaf '" + l.path + "' stores fewer bytes than its length");
      }
      covered += e.length;
    }
  }
  if (m.total_bytes > stored || covered != m.total_bytes) {
    finding("decoded manifest has " + std::to_string(m.total_bytes) + " leaf bytes, " +
            std::to_string(covered) + " under extents, " + std::to_string(stored) +
            " bytes of data files");
  }
}

// The data files as the harness writes them: data-00000.bin from the split input when there is
// one, the others (and every file of a plain input) as a saver would write pattern-filled leaves.
std::vector<std::string> make_data_files(const ckpt::Manifest& m,
                                         std::optional<std::string_view> data0) {
  std::vector<std::string> files;
  for (const auto& f : m.data_files) files.emplace_back(f.size, '\0');
  for (const auto& l : m.leaves) {
    for (const auto& e : l.extents) {
      for (std::uint64_t j = 0; j < e.length; ++j) {
        files[e.file][e.offset + j] =
            static_cast<char>(ckpt::fuzz::pattern_byte(e.leaf_offset + j));
      }
    }
  }
  if (data0 && !files.empty()) files[0] = std::string(*data0);
  return files;
}

void write_checkpoint(const Scratch& s, std::string_view manifest_bytes, const ckpt::Manifest& m,
                      const std::vector<std::string>& data) {
  std::error_code ec;
  fs::remove_all(s.dir, ec);
  fs::create_directory(s.dir, ec);
  if (ec) finding("cannot create " + s.dir + ": " + ec.message());
  std::map<std::string, std::string> files;
  for (const auto& f : m.json_files) {
    files[f.name] = ckpt::fuzz::json_text(f.size <= kMaxJsonBytes ? f.size : 0);
  }
  if (m.json_file(ckpt::kMetadataName) == nullptr) {
    files[std::string(ckpt::kMetadataName)] = "{}";
  }
  // Data files and the manifest win over JSON files listed under the same names.
  for (std::size_t i = 0; i < data.size(); ++i) files[m.data_files[i].name] = data[i];
  files[std::string(ckpt::kManifestName)] = std::string(manifest_bytes);
  for (const auto& [name, bytes] : files) write_file(s.dir + "/" + name, bytes);
}

// The bytes restore must put in each leaf: its extents' payloads in the data files.
// Compares each element of the extent's box (element by element: fuzzed arrays are small) with
// its place in the restored global array.
bool boxes_match(const ckpt::Array& a, const ckpt::LeafInfo& l, const ckpt::ExtentInfo& e,
                 const std::string& file) {
  const std::size_t esize = ckpt::dtype_size(l.dtype);
  const std::size_t rank = l.shape.size();
  std::uint64_t n = 1;
  for (auto d : e.slice_shape) n *= d;
  std::vector<std::uint64_t> idx(rank, 0);
  for (std::uint64_t local = 0; local < n; ++local) {
    std::uint64_t g = 0;
    for (std::size_t d = 0; d < rank; ++d) g = g * l.shape[d] + e.slice_start[d] + idx[d];
    if (std::memcmp(a.data() + g * esize, file.data() + e.offset + local * esize, esize) != 0) {
      return false;
    }
    for (std::size_t d = rank; d-- > 0;) {
      if (++idx[d] < e.slice_shape[d]) break;
      idx[d] = 0;
    }
  }
  return true;
}

void check_restored(const ckpt::Manifest& m, const std::vector<std::string>& data,
                    const ckpt::Tree& templ) {
  for (std::size_t i = 0; i < data.size(); ++i) {
    if (data[i].size() != m.data_files[i].size) {
      finding("restore accepted " + m.data_files[i].name + " of " + std::to_string(data[i].size()) +
              " bytes, not the manifest's " + std::to_string(m.data_files[i].size));
    }
  }
  std::map<std::string, ckpt::Array, std::less<>> restored;
  for (auto& [path, array] : templ.flatten()) restored.emplace(path, array);
  for (const auto& l : m.leaves) {
    auto it = restored.find(l.path);
    if (it == restored.end()) finding("restored tree lacks leaf '" + l.path + "'");
    const ckpt::Array& a = it->second;
    if (a.nbytes() != l.nbytes) finding("restored leaf '" + l.path + "' has the wrong size");
    for (const auto& e : l.extents) {
      if (e.slice_shape.empty()) {
        if (std::memcmp(a.data() + e.leaf_offset, data[e.file].data() + e.offset, e.length) != 0) {
          finding("restore returned wrong bytes in leaf '" + l.path + "'");
        }
        continue;
      }
      // A box of a sharded leaf: its row-major bytes go to their places in the global array.
      if (!boxes_match(a, l, e, data[e.file])) {
        finding("restore returned wrong bytes in a box of leaf '" + l.path + "'");
      }
    }
  }
}

void fuzz_restore(std::string_view manifest_bytes, const ckpt::Manifest& m,
                  std::optional<std::string_view> data0) {
  std::optional<std::uint64_t> stored = small_stored_bytes(m);
  if (!stored) return;
  check_invariants(m, *stored);
  Scratch& s = scratch();
  std::vector<std::string> data = make_data_files(m, data0);
  write_checkpoint(s, manifest_bytes, m, data);

  ckpt::ReadOptions options;
  options.allow_direct = false;
  // Small units so that extents are cut into pieces and several reads are in flight.
  options.unit_bytes = 8192;
  options.queue_depth = 4;
  ckpt::VerifyReport report = ckpt::verify_checkpoint(*s.engine, s.dir, options);

  ckpt::Tree templ = ckpt::make_template(m);
  try {
    (void)ckpt::restore_checkpoint(*s.engine, s.dir, templ, false, options);
  } catch (const ckpt::Error& e) {
    if (report.ok()) finding(std::string("verified checkpoint does not restore: ") + e.what());
    return;
  }
  check_restored(m, data, templ);

  // An empty template of the root's kind: a partial restore reads nothing and succeeds; a full
  // one is a mismatch unless the checkpoint's root is empty too. (A root leaf has no empty form.)
  const ckpt::NodeInfo& root = m.nodes.front();
  if (root.kind == ckpt::Tree::Kind::leaf) return;
  ckpt::Tree empty = root.kind == ckpt::Tree::Kind::list ? ckpt::Tree::list() : ckpt::Tree::dict();
  try {
    (void)ckpt::restore_checkpoint(*s.engine, s.dir, empty, true, options);
  } catch (const ckpt::Error& e) {
    finding(std::string("partial restore into an empty template failed: ") + e.what());
  }
  try {
    (void)ckpt::restore_checkpoint(*s.engine, s.dir, empty, false, options);
    if (!root.children.empty()) finding("restore into an empty template succeeded");
  } catch (const ckpt::Error& e) {
    if (root.children.empty() || e.code() != ckpt::Errc::mismatch) {
      finding(std::string("restore into an empty template: ") + e.what());
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // The library's logger, silenced but still formatting every message it is given.
  auto logger =
      std::make_shared<spdlog::logger>("ckpt", std::make_shared<spdlog::sinks::null_sink_mt>());
  logger->set_level(spdlog::level::trace);
  spdlog::register_logger(logger);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::string_view manifest_bytes = input;
  std::optional<std::string_view> data0;
  if (input.starts_with(kSplitMagic) && input.size() >= kSplitMagic.size() + 4) {
    std::string_view rest = input.substr(kSplitMagic.size() + 4);
    std::size_t n = std::min<std::size_t>(get_u32(input.substr(kSplitMagic.size())), rest.size());
    manifest_bytes = rest.substr(0, n);
    data0 = rest.substr(n);
  }
  // decode_layout (what a whole restore reads by before the full decode) accepts what
  // decode_manifest accepts, with the same blocks.
  std::optional<ckpt::Manifest> layout;
  try {
    layout = ckpt::decode_layout(manifest_bytes, "fuzz/manifest.ckpt");
  } catch (const ckpt::Error&) {
  }
  ckpt::Manifest m;
  try {
    m = ckpt::decode_manifest(manifest_bytes, "fuzz/manifest.ckpt");
  } catch (const ckpt::Error&) {
    return 0;
  }
  if (!layout || layout->data_files.size() != m.data_files.size() ||
      (m.format_version != ckpt::kFormatVersion1 && layout->blocks.size() != m.blocks.size())) {
    std::abort();
  }
  fuzz_restore(manifest_bytes, m, data0);
  return 0;
}
