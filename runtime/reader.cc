// Checkpoint reader: restore into a template, read metadata, verify. Everything read from disk is
// untrusted: the manifest goes through decode_manifest, every other byte through its CRC32C.
#include <fmt/format.h>

#include <boost/json/parse.hpp>
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <utility>

#include "io/durable.h"
#include "io/error.h"
#include "io/file.h"
#include "runtime/checkpoint.h"
#include "runtime/crc32c.h"
#include "runtime/layout.h"
#include "runtime/unit_pipe.h"

namespace ckpt {

namespace fs = std::filesystem;

Manifest read_manifest(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(Errc::not_found, "no checkpoint directory", dir);
  // A *.tmp-* directory is an unfinished write, even when its manifest is complete (a crash just
  // before the commit rename): it is never loaded (docs/design.md, "Commit protocol").
  fs::path name = fs::path(dir).lexically_normal();
  if (!name.has_filename()) name = name.parent_path();
  if (io::is_tmp_name(name.filename().string())) {
    throw Error(Errc::not_found, "not a committed checkpoint (an unfinished write)", dir);
  }
  std::string path = dir + "/" + std::string(kManifestName);
  if (!fs::exists(path, ec)) {
    throw Error(Errc::not_found, "not a checkpoint (no manifest.ckpt)", dir);
  }
  return decode_manifest(io::read_small_file(path, 1u << 30), path);
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
  boost::json::value v = boost::json::parse(text, ec);
  if (ec) throw Error(Errc::corrupt, "invalid JSON (" + ec.message() + ")", path);
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

std::string describe_bad(const Manifest& m, const Piece& p) {
  const ExtentInfo& e = m.leaves[p.leaf].extents[p.extent];
  return fmt::format("checksum mismatch in leaf '{}' (extent at offset {}, {} bytes)",
                     m.leaves[p.leaf].path, e.offset, e.stored_length);
}

std::uint64_t unit_size(std::uint64_t requested, const Manifest& m) {
  return std::max<std::uint64_t>(io::align_up(requested, m.alignment), m.alignment);
}

// ---- template matching ----------------------------------------------------------------------
//
// The template and the manifest's tree are walked together from the root, so that the kind of
// every node is compared, not only the flattened leaf paths: a dict {"0": x} and a list [x] both
// flatten to "0", and an empty dict or list flattens to nothing at all. A node whose kinds differ
// is one difference; what lies below it is not compared further (nor listed again).
// `partial` lets the template leave out dict keys and list items; whatever it does name must be
// there, with the same kind, dtype and shape.

struct TemplateMatch {
  std::vector<std::string> problems;
  std::vector<const Array*> targets;  // per checkpoint leaf: where its bytes go, or nullptr
  std::vector<bool> wanted;           // per checkpoint leaf: to be read
};

std::string show_path(const std::string& path) {
  return path.empty() ? std::string("(root)") : "'" + path + "'";
}

std::string child_path(const std::string& path, std::string_view part) {
  return path.empty() ? std::string(part) : path + "/" + std::string(part);
}

std::string describe_kind(Tree::Kind kind, std::size_t children) {
  switch (kind) {
    case Tree::Kind::dict:
      return children == 0 ? "an empty dict"
                           : fmt::format("a dict of {} key{}", children, children == 1 ? "" : "s");
    case Tree::Kind::list:
      return children == 0 ? "an empty list"
                           : fmt::format("a list of {} item{}", children, children == 1 ? "" : "s");
    case Tree::Kind::leaf:
      break;
  }
  return "a leaf";
}

std::string describe_template(const Tree& t) {
  if (t.is_leaf()) {
    return fmt::format("a leaf ({} {})", to_string(t.array().dtype()),
                       shape_to_string(t.array().shape()));
  }
  return describe_kind(t.kind(), t.size());
}

std::string describe_saved(const Manifest& m, std::uint32_t node) {
  const NodeInfo& n = m.nodes[node];
  if (n.kind == Tree::Kind::leaf) {
    const LeafInfo& leaf = m.leaves[n.leaf];
    return fmt::format("a leaf ({} {})", to_string(leaf.dtype), shape_to_string(leaf.shape));
  }
  return describe_kind(n.kind, n.children.size());
}

class Matcher {
 public:
  Matcher(const Manifest& m, bool partial) : m_(m), partial_(partial) {
    out_.targets.assign(m.leaves.size(), nullptr);
    out_.wanted.assign(m.leaves.size(), false);
  }

  TemplateMatch run(const Tree& templ) {
    match(templ, 0, std::string());
    check_aliasing(templ);
    return std::move(out_);
  }

 private:
  void problem(std::string text) { out_.problems.push_back(std::move(text)); }

  void match(const Tree& t, std::uint32_t node, const std::string& path) {
    const NodeInfo& n = m_.nodes[node];
    if (t.kind() != n.kind) {
      problem(fmt::format("{}: {} in the template, {} in the checkpoint", show_path(path),
                          describe_template(t), describe_saved(m_, node)));
      return;
    }
    if (t.is_leaf()) {
      match_leaf(t.array(), n.leaf, path);
    } else if (t.is_dict()) {
      // Both key lists are sorted (Tree keeps them so; decode_manifest checks it): one merge.
      const auto& keys = t.keys();
      std::size_t i = 0;
      std::size_t k = 0;
      while (i < keys.size() || k < n.keys.size()) {
        if (k == n.keys.size() || (i < keys.size() && keys[i] < n.keys[k])) {
          only_in_template(t.children()[i], child_path(path, keys[i]));
          ++i;
        } else if (i == keys.size() || n.keys[k] < keys[i]) {
          only_in_checkpoint(n.children[k], child_path(path, n.keys[k]));
          ++k;
        } else {
          match(t.children()[i], n.children[k], child_path(path, keys[i]));
          ++i;
          ++k;
        }
      }
    } else {
      std::size_t both = std::min(t.size(), n.children.size());
      for (std::size_t i = 0; i < both; ++i)
        match(t.children()[i], n.children[i], child_path(path, std::to_string(i)));
      for (std::size_t i = both; i < t.size(); ++i)
        only_in_template(t.children()[i], child_path(path, std::to_string(i)));
      for (std::size_t i = both; i < n.children.size(); ++i)
        only_in_checkpoint(n.children[i], child_path(path, std::to_string(i)));
    }
  }

  void match_leaf(const Array& array, std::uint32_t index, const std::string& path) {
    const LeafInfo& leaf = m_.leaves[index];
    if (leaf.dtype != array.dtype()) {
      problem(fmt::format("{}: dtype {} in the template, {} in the checkpoint", show_path(path),
                          to_string(array.dtype()), to_string(leaf.dtype)));
    }
    if (leaf.shape != array.shape()) {
      problem(fmt::format("{}: shape {} in the template, {} in the checkpoint", show_path(path),
                          shape_to_string(array.shape()), shape_to_string(leaf.shape)));
    }
    if (array.read_only()) problem(fmt::format("{}: template array is read-only", show_path(path)));
    out_.targets[index] = &array;
    out_.wanted[index] = true;
  }

  // Every leaf and every empty dict or list below a template node the checkpoint lacks: partial
  // or not, the template asks for them.
  void only_in_template(const Tree& t, const std::string& path) {
    if (t.is_leaf()) {
      problem(fmt::format("{}: not in the checkpoint", show_path(path)));
    } else if (t.size() == 0) {
      problem(fmt::format("{}: {} in the template, not in the checkpoint", show_path(path),
                          describe_template(t)));
    } else {
      for (std::size_t i = 0; i < t.size(); ++i) {
        only_in_template(t.children()[i],
                         child_path(path, t.is_dict() ? t.keys()[i] : std::to_string(i)));
      }
    }
  }

  // Every leaf and every empty dict or list below a checkpoint node the template lacks, unless
  // `partial`. Recursion depth is bounded by decode_manifest's depth limit.
  void only_in_checkpoint(std::uint32_t node, const std::string& path) {
    if (partial_) return;
    const NodeInfo& n = m_.nodes[node];
    if (n.kind == Tree::Kind::leaf) {
      const LeafInfo& leaf = m_.leaves[n.leaf];
      problem(fmt::format("{}: in the checkpoint ({} {}), not in the template", show_path(path),
                          to_string(leaf.dtype), shape_to_string(leaf.shape)));
    } else if (n.children.empty()) {
      problem(fmt::format("{}: {} in the checkpoint, not in the template", show_path(path),
                          describe_saved(m_, node)));
    } else {
      for (std::size_t i = 0; i < n.children.size(); ++i) {
        std::string part = n.kind == Tree::Kind::dict ? n.keys[i] : std::to_string(i);
        only_in_checkpoint(n.children[i], child_path(path, part));
      }
    }
  }

  // Two writable template leaves over overlapping memory would each receive their own bytes,
  // and the last write would win: the restored state would silently mix both.
  void check_aliasing(const Tree& templ) {
    struct Span {
      std::uintptr_t begin;
      std::uintptr_t end;
      std::size_t order;  // flattening order, so that messages name the pair stably
      std::string path;
    };
    std::vector<Span> spans;
    templ.for_each_leaf([&](const std::string& path, const Array& a) {
      if (a.read_only() || a.nbytes() == 0) return;
      auto begin = reinterpret_cast<std::uintptr_t>(a.data());
      spans.push_back({begin, begin + a.nbytes(), spans.size(), path});
    });
    std::sort(spans.begin(), spans.end(),
              [](const Span& a, const Span& b) { return a.begin < b.begin; });
    // Each overlapping leaf is named with the earlier one reaching furthest into it: enough to
    // find every aliased leaf without listing all pairs of a leaf repeated many times.
    const Span* reach = nullptr;  // of the spans so far, the one that ends last
    std::vector<std::pair<const Span*, const Span*>> pairs;
    for (const Span& s : spans) {
      if (reach != nullptr && s.begin < reach->end) {
        pairs.emplace_back(reach->order < s.order ? reach : &s,
                           reach->order < s.order ? &s : reach);
      }
      if (reach == nullptr || s.end > reach->end) reach = &s;
    }
    std::sort(pairs.begin(), pairs.end(), [](const auto& a, const auto& b) {
      return std::pair(a.first->order, a.second->order) <
             std::pair(b.first->order, b.second->order);
    });
    for (const auto& [a, b] : pairs) {
      problem(
          fmt::format("{} and {}: template arrays share memory (restoring into both would mix "
                      "their data)",
                      show_path(a->path), show_path(b->path)));
    }
  }

  const Manifest& m_;
  const bool partial_;
  TemplateMatch out_;
};

TemplateMatch match_template(const Manifest& m, const Tree& templ, bool partial) {
  return Matcher(m, partial).run(templ);
}

}  // namespace

boost::json::object read_metadata(const std::string& dir) {
  Manifest m = read_manifest(dir);
  return parse_object(read_checked_file(dir, m, std::string(kMetadataName)),
                      dir + "/" + std::string(kMetadataName));
}

boost::json::object restore_checkpoint(io::Engine& engine, const std::string& dir, Tree& templ,
                                       bool partial, const ReadOptions& options) {
  Manifest m = read_manifest(dir);
  boost::json::object metadata = parse_object(read_checked_file(dir, m, std::string(kMetadataName)),
                                              dir + "/" + std::string(kMetadataName));
  TemplateMatch match = match_template(m, templ, partial);
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

  OpenData data = open_data(dir, m, options.allow_direct);
  std::uint64_t unit = unit_size(options.unit_bytes, m);
  std::vector<Unit> units = plan_units(m, unit, wanted);
  std::vector<std::uint32_t> crc(extent_slots(m));
  UnitPipe pipe(engine, unit, options.queue_depth, options.buffers);
  pipe.read_all(units, data.ptrs, [&](const Unit& u, const std::byte* buf) {
    auto bad = check_unit(u, buf, m, targets, crc);
    if (!bad.empty())
      throw Error(Errc::corrupt, describe_bad(m, bad.front()), data.files[u.file].path());
  });
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
      parse_object(text, dir + "/" + f.name);
      report.bytes_checked += text.size();
    } catch (const Error& e) {
      report.problems.push_back(e.what());
    }
  }
  // Each data file on its own, so that one bad file does not hide the state of the others.
  std::uint64_t unit = unit_size(options.unit_bytes, m);
  for (std::uint32_t fi = 0; fi < m.data_files.size(); ++fi) {
    std::string path = dir + "/" + m.data_files[fi].name;
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
        for (const Piece& p : check_unit(u, buf, m, {}, crc)) {
          report.problems.push_back(path + ": " + describe_bad(m, p));
        }
        report.bytes_checked += u.length;
      });
    } catch (const Error& e) {
      report.problems.push_back(e.what());
    }
  }
  return report;
}

}  // namespace ckpt
