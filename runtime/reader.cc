// Checkpoint reader: restore into a template, read metadata, verify. Everything read from disk is
// untrusted: the manifest goes through decode_manifest, every other byte through its CRC32C.
#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <filesystem>
#include <future>
#include <unordered_map>

#include "io/durable.h"
#include "io/error.h"
#include "io/file.h"
#include "runtime/beside.h"
#include "runtime/checkpoint.h"
#include "runtime/crc32c.h"
#include "runtime/json.h"
#include "runtime/layout.h"
#include "runtime/limits.h"
#include "runtime/sharded_read.h"
#include "runtime/sharding.h"
#include "runtime/staged_read.h"
#include "runtime/template_match.h"
#include "runtime/unit_pipe.h"

namespace ckpt {

namespace fs = std::filesystem;

namespace {

// The bytes of dir's manifest.ckpt, after checking that dir is a committed checkpoint's.
io::FileBytes read_manifest_file(const std::string& dir, const std::string& path) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(Errc::not_found, "no checkpoint directory", dir);
  // A *.tmp-* directory is an unfinished write, even when its manifest is complete (a crash just
  // before the commit rename): it is never loaded (docs/design.md, "Commit protocol").
  fs::path name = fs::path(dir).lexically_normal();
  if (!name.has_filename()) name = name.parent_path();
  if (io::is_tmp_name(name.filename().string())) {
    throw Error(Errc::not_found, "not a committed checkpoint (an unfinished write)", dir);
  }
  if (!fs::exists(path, ec)) {
    throw Error(Errc::not_found, "not a checkpoint (no manifest.ckpt)", dir);
  }
  return io::read_file_bytes(path, kMaxManifestBytes);
}

std::string manifest_path(const std::string& dir) { return dir + "/" + std::string(kManifestName); }

// From this manifest size on (about 6,000 leaves), a restore checks the template's aliasing on a
// thread beside the manifest's decode.
constexpr std::size_t kAliasingBesideDecodeBytes = 1u << 20;
// Manifest bytes a leaf takes, at least (about 160 for short paths): sizes that check's list.
constexpr std::size_t kManifestBytesPerLeafHint = 128;

}  // namespace

Manifest read_manifest(const std::string& dir) {
  const std::string path = manifest_path(dir);
  return decode_manifest(read_manifest_file(dir, path).view(), path);
}

std::string read_checked_file(const std::string& dir, const Manifest& m, const std::string& name) {
  const FileInfo* info = m.json_file(name);
  std::string path = dir + "/" + name;
  if (info == nullptr) throw Error(Errc::not_found, "file not listed in the manifest", path);
  std::string text = io::read_small_file(path, info->size + 1);
  if (text.size() != info->size) {
    throw Error(Errc::corrupt,
                fmt::format("size {} differs from the manifest's {}", text.size(), info->size),
                path);
  }
  if (crc32c(text) != info->crc32c) throw Error(Errc::corrupt, "checksum mismatch", path);
  return text;
}

namespace {

boost::json::object parse_object(const std::string& text, const std::string& path) {
  boost::system::error_code ec;
  boost::json::value v = parse_json(text, ec);
  if (ec) throw Error(Errc::corrupt, "invalid JSON (" + ec.message() + ")", path);
  if (!v.is_object()) throw Error(Errc::corrupt, "JSON is not an object", path);
  return std::move(v.as_object());
}

// metadata.json, with the non-finite doubles the writer encoded decoded (runtime/json.h).
boost::json::object parse_metadata(const std::string& text, const std::string& path) {
  boost::json::value v;
  try {
    v = decode_json(parse_object(text, path), "metadata");
  } catch (const Error& e) {
    if (e.code() != Errc::invalid_argument) throw;
    throw Error(Errc::corrupt, e.what(), path);
  }
  if (!v.is_object()) throw Error(Errc::corrupt, "JSON is not an object", path);
  return std::move(v.as_object());
}

struct OpenData {
  std::vector<io::File> files;
  std::vector<io::File*> ptrs;
};

// Opens every data file and checks its size against the manifest.
OpenData open_data(const std::string& dir, const Manifest& m, bool allow_direct) {
  OpenData out;
  for (const auto& f : m.data_files) {
    out.files.push_back(io::open_direct(dir + "/" + f.name, io::OpenMode::read, allow_direct));
    std::uint64_t size = out.files.back().size();
    if (size != f.size) {
      throw Error(Errc::corrupt,
                  fmt::format("file is {} bytes, the manifest says {} (truncated or replaced)",
                              size, f.size),
                  out.files.back().path());
    }
  }
  for (auto& f : out.files) out.ptrs.push_back(&f);
  return out;
}

std::uint64_t unit_size(std::uint64_t requested, const Manifest& m) {
  return std::max<std::uint64_t>(io::align_up(requested, m.alignment), m.alignment);
}

// Units of whole blocks, so that each verifies on its own: at least the largest block.
std::uint64_t staged_unit_size(std::uint64_t requested, const Manifest& m) {
  std::uint64_t unit = unit_size(requested, m);
  for (const auto& b : m.blocks) unit = std::max(unit, b.length);
  return unit;
}

// The reads of a restore of every block, started before the tree is decoded (StagedRead): the
// blocks come from decode_layout, cut into the units plan_units gives for every block. Best
// effort: where it does not apply (format version 1, several processes' files, no staging, a
// data file that does not open or has the wrong size) it is not made, and the restore takes its
// usual path, which reports what is wrong in its usual order.
class Prefetch {
 public:
  static std::unique_ptr<Prefetch> start(io::Engine& engine, const std::string& dir,
                                         Manifest layout, const ReadOptions& options) {
    if (layout.format_version != kFormatVersion || layout.process_count > 1) return nullptr;
    auto p = std::unique_ptr<Prefetch>(new Prefetch());
    p->layout_ = std::move(layout);
    try {
      p->data_ = open_data(dir, p->layout_, options.allow_direct);
    } catch (const Error&) {
      return nullptr;
    }
    p->unit_ = staged_unit_size(options.unit_bytes, p->layout_);
    p->units_ = plan_units(p->layout_, p->unit_);
    if (p->units_.empty()) return nullptr;
    p->staging_.emplace(p->units_, p->unit_, options.staging_bytes, options.borrow,
                        options.give_back);
    if (p->staging_->buffers().empty()) return nullptr;
    p->read_.emplace(engine, p->units_, p->data_.ptrs, p->staging_->buffers(),
                     options.queue_depth);
    p->read_->start();
    // The blocks are checked as they arrive, beside the decode and the template match.
    p->read_->check_ahead(p->layout_, p->units_, staged_options(options));
    return p;
  }

  // The units of every leaf of `m` (decoded from the same bytes), planned on a thread of their
  // own beside the template match for a large manifest (about 10 ms at 100,000 leaves). The
  // future must not outlive `m`; an invalid one: finish() plans them.
  std::future<std::vector<Unit>> plan_beside(const Manifest& m, std::size_t manifest_bytes) const {
    if (manifest_bytes < kAliasingBesideDecodeBytes) return {};
    return start_beside([&m, unit = unit_] { return plan_units(m, unit, {}); });
  }

  // The restore of every leaf of `m` (decoded from the same bytes) into `targets`.
  void finish(const Manifest& m, const std::vector<const Array*>& targets,
              const ReadOptions& options, std::future<std::vector<Unit>>& planned) {
    std::vector<Unit> units = planned.valid() ? planned.get() : plan_units(m, unit_, {});
    StagedReadOptions staged = staged_options(options);
    staged.targets_disjoint = true;  // restore_checkpoint matched the template (no overlap)
    const ReadHow how = read_->finish(m, units, targets, staged);
    if (options.read_how != nullptr) *options.read_how = how;
  }

 private:
  Prefetch() = default;
  // Destroyed in reverse: the read (which waits for what is in flight) before its buffers,
  // files and layout.
  Manifest layout_;
  OpenData data_;
  std::uint64_t unit_ = 0;
  std::vector<Unit> units_;
  std::optional<ReadStaging> staging_;
  std::optional<StagedRead> read_;
};

}  // namespace

boost::json::object read_metadata(const std::string& dir) {
  Manifest m = read_manifest(dir);
  return parse_metadata(read_checked_file(dir, m, std::string(kMetadataName)),
                        dir + "/" + std::string(kMetadataName));
}

boost::json::object restore_checkpoint(io::Engine& engine, const std::string& dir, Tree& templ,
                                       bool partial, const ReadOptions& options) {
  const std::string path = manifest_path(dir);
  const io::FileBytes file = read_manifest_file(dir, path);
  const std::string_view bytes = file.view();
  const bool resharding = options.sharding != nullptr && !options.sharding->empty();
  // A whole restore reads every block: those reads start now, while the tree is decoded and the
  // template matched (at 100,000 leaves those take longer than a quarter of the reads).
  // Before the checksum and the whole Verifier: they take 15 ms at 100,000 leaves, and
  // decode_manifest below runs them before a byte read is used. A manifest decode_layout refuses
  // is not prefetched; decode_manifest names what is wrong with it.
  std::unique_ptr<Prefetch> prefetch;
  if (!partial && !resharding) {
    std::optional<Manifest> layout;
    try {
      layout = decode_layout(bytes, path);
    } catch (const Error&) {
    }
    if (layout) prefetch = Prefetch::start(engine, dir, std::move(*layout), options);
  }
  // The template's aliasing check needs no manifest: for a large one it runs on a thread of its
  // own beside the decode (about 5 ms at 100,000 leaves, off the restore's critical path). A
  // checkpoint sharded when saved is only known after the decode: its reader checks aliasing
  // itself, and this result goes unused. Where no thread can be started the match runs it.
  std::future<std::vector<std::string>> aliasing;
  if (!resharding && bytes.size() >= kAliasingBesideDecodeBytes) {
    const std::size_t leaves_hint = bytes.size() / kManifestBytesPerLeafHint;
    aliasing =
        start_beside([&templ, leaves_hint] { return aliasing_problems(templ, leaves_hint); });
  }
  bool sharded = false;
  Manifest m = decode_manifest(bytes, path, &sharded);
  boost::json::object metadata =
      parse_metadata(read_checked_file(dir, m, std::string(kMetadataName)),
                     dir + "/" + std::string(kMetadataName));
  if (sharded || resharding) {
    prefetch.reset();
    read_resharded(engine, dir, m, templ, options.sharding, partial, options);
    return metadata;
  }
  std::future<std::vector<Unit>> planned;  // declared after m: it reads m until it is ready
  if (prefetch) planned = prefetch->plan_beside(m, bytes.size());
  TemplateMatch match = aliasing.valid() ? match_template(m, templ, partial, aliasing.get())
                                         : match_template(m, templ, partial);
  if (!match.problems.empty()) {
    const auto& problems = match.problems;
    throw Error(
        Errc::mismatch,
        fmt::format("template does not match the checkpoint ({} difference{}):\n  {}",
                    problems.size(), problems.size() == 1 ? "" : "s", fmt::join(problems, "\n  ")),
        dir);
  }
  const std::vector<const Array*>& targets = match.targets;
  const std::vector<bool>& wanted = match.wanted;
  // The decoded manifest's frees, off the restore's return where the caller has somewhere to
  // run them (ReadOptions::dispose). The restore has succeeded: a hand-off that fails (out of
  // memory) frees it here instead.
  const auto dispose = [&options, &m] {
    if (!options.dispose) return;
    try {
      options.dispose([gone = std::make_shared<Manifest>(std::move(m))] {});
    } catch (...) {
    }
  };
  if (prefetch) {
    prefetch->finish(m, targets, options, planned);
    dispose();
    return metadata;
  }

  OpenData data = open_data(dir, m, options.allow_direct);
  std::uint64_t unit = unit_size(options.unit_bytes, m);
  std::uint64_t staged_unit = staged_unit_size(options.unit_bytes, m);
  std::vector<Unit> units = plan_units(m, staged_unit, wanted);
  // Beyond the staging, two passes in units of the requested size (a large block in pieces).
  std::vector<Unit> pass_units;
  if (staged_unit != unit) pass_units = plan_units(m, unit, wanted);
  read_into_targets(engine, m, units, staged_unit, data.ptrs, targets, options, pass_units, unit);
  dispose();
  return metadata;
}

Tree make_template(const Manifest& m) {
  // Nodes are in pre-order with forward child indices (checked by decode_manifest).
  std::vector<Tree> built(m.nodes.size());
  for (std::size_t i = m.nodes.size(); i-- > 0;) {
    const NodeInfo& n = m.nodes[i];
    if (n.kind == Tree::Kind::leaf) {
      built[i] = Tree(Array::zeros(m.leaves[n.leaf].dtype, m.leaves[n.leaf].shape));
    } else if (n.kind == Tree::Kind::list) {
      Tree t = Tree::list();
      for (std::uint32_t c : n.children) t.push_back(std::move(built[c]));
      built[i] = std::move(t);
    } else {
      Tree t;
      for (std::size_t k = 0; k < n.children.size(); ++k)
        t[n.keys[k]] = std::move(built[n.children[k]]);
      built[i] = std::move(t);
    }
  }
  return std::move(built[0]);
}

VerifyReport verify_checkpoint(io::Engine& engine, const std::string& dir,
                               const ReadOptions& options) {
  VerifyReport report;
  Manifest m;
  try {
    m = read_manifest(dir);
  } catch (const Error& e) {
    report.problems.push_back(e.what());
    return report;
  }
  report.leaves = m.leaves.size();
  if (m.json_file(kMetadataName) == nullptr) {
    report.problems.push_back(dir + "/" + std::string(kMetadataName) +
                              ": not listed in the manifest");
  }
  for (const auto& f : m.json_files) {
    try {
      std::string text = read_checked_file(dir, m, f.name);
      if (f.name == kMetadataName) {
        parse_metadata(text, dir + "/" + f.name);
      } else {
        parse_object(text, dir + "/" + f.name);
      }
      report.bytes_checked += text.size();
    } catch (const Error& e) {
      report.problems.push_back(e.what());
    }
  }
  // Each data file on its own, so that one bad file does not hide the state of the others.
  std::uint64_t unit = unit_size(options.unit_bytes, m);
  for (std::uint32_t fi = 0; fi < m.data_files.size(); ++fi) {
    std::string path = dir + "/" + m.data_files[fi].name;
    // A file an incremental save shares with the checkpoint that wrote it says so.
    std::string label = m.data_files[fi].origin.empty()
                            ? path
                            : path + " (shared, first written by " + m.data_files[fi].origin + ")";
    try {
      io::File file = io::open_direct(path, io::OpenMode::read, options.allow_direct);
      std::uint64_t size = file.size();
      if (size != m.data_files[fi].size) {
        throw Error(
            Errc::corrupt,
            fmt::format("file is {} bytes, the manifest says {}", size, m.data_files[fi].size),
            path);
      }
      std::vector<io::File*> files(m.data_files.size(), nullptr);
      files[fi] = &file;
      std::vector<Unit> units = plan_units(m, unit);
      std::erase_if(units, [&](const Unit& u) { return u.file != fi; });
      std::vector<std::uint32_t> crc(extent_slots(m));
      UnitPipe pipe(engine, unit, options.queue_depth);
      pipe.read_all(units, files, [&](const Unit& u, const std::byte* buf) {
        for (const Piece& p : verify_unit(u, buf, m, crc)) {
          report.problems.push_back(label + ": " + describe_bad_block(m, p.block));
        }
        report.bytes_checked += u.length;
      });
    } catch (const Error& e) {
      report.problems.push_back(label == path
                                    ? std::string(e.what())
                                    : std::string(e.what()) + " (shared, first written by " +
                                          m.data_files[fi].origin + ")");
    }
  }
  return report;
}

}  // namespace ckpt
