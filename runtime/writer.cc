// Synchronous checkpoint writer. The commit protocol is the one of io/durable.h:
//   <dir>.tmp-<tag>/data-00000.bin   written with O_DIRECT through the engine, fsynced
//   <dir>.tmp-<tag>/metadata.json    (and extra JSON files) written, fsynced
//   <dir>.tmp-<tag>/manifest.ckpt    written last, fsynced; it checksums everything above
//                                    (the Runtime's full saves write these two steps while their
//                                    data writes are in flight: write_checkpoint_files)
//   fsync <dir>.tmp-<tag>/, rename to <dir>, fsync the parent   <- commit point
// A crash before the rename leaves only a *.tmp-* directory, which readers ignore and the next
// writer removes; a crash after it leaves a complete checkpoint.
#include <sys/stat.h>

#include <boost/json/serialize.hpp>
#include <chrono>
#include <filesystem>

#include "io/crash_point.h"
#include "io/durable.h"
#include "io/error.h"
#include "io/file.h"
#include "io/log.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/commit.h"
#include "runtime/crc32c.h"
#include "runtime/json.h"
#include "runtime/layout.h"
#include "runtime/unit_pipe.h"

namespace ckpt {

namespace fs = std::filesystem;

std::string clean_checkpoint_dir(const std::string& dir) {
  if (dir.empty()) throw Error(Errc::invalid_argument, "empty checkpoint directory");
  // Absolute and normal, so that two spellings of one directory compare equal.
  std::error_code ec;
  fs::path abs = fs::absolute(dir, ec);
  if (ec) throw Error(Errc::invalid_argument, "cannot make the path absolute", dir);
  std::string out = abs.lexically_normal().string();
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  if (out == "/") throw Error(Errc::invalid_argument, "not a checkpoint directory", dir);
  return out;
}

void check_extra_files(const std::map<std::string, std::string>& extra_files) {
  for (const auto& [name, text] : extra_files) {
    if (name.empty() || name.find('/') != std::string::npos || name[0] == '.' ||
        name == kManifestName || name == kMetadataName || name.starts_with("data-") ||
        io::is_tmp_name(name)) {
      throw Error(Errc::invalid_argument, "invalid extra file name '" + name + "'");
    }
    // Readers and `ckpt verify` hold every JSON file of a checkpoint to be a JSON object, read
    // as they read it.
    boost::system::error_code ec;
    boost::json::value v = parse_json(text, ec);
    if (ec) {
      throw Error(
          Errc::invalid_argument,
          "extra file '" + name + "' is not JSON the readers accept (" + ec.message() + ")");
    }
    if (!v.is_object()) {
      throw Error(Errc::invalid_argument, "extra file '" + name + "' is not a JSON object");
    }
  }
}

namespace {
std::string serialize_metadata(const boost::json::object& metadata) {
  return boost::json::serialize(encode_json(metadata, "metadata"));
}
}  // namespace

void check_metadata(const boost::json::object& metadata) { encode_json(metadata, "metadata"); }

SavePlan plan_save(const Tree& tree, std::uint64_t extent_bytes, std::uint64_t unit_bytes) {
  SavePlan plan;
  plan.leaves = tree.flatten();
  Manifest& m = plan.manifest;
  m.created_unix_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  m.writer = "ckpt 0.1.0";
  describe_structure(tree, m);
  plan_extents(plan.leaves, extent_bytes, m);
  check_writable(m);
  plan.units = plan_units(m, unit_bytes);
  return plan;
}

std::string make_tmp_dir(const std::string& final_dir, const std::string& shared_tag) {
  // A checkpoint never nests inside another one (it would be neither listed nor kept), and a
  // save never replaces a directory that is not a checkpoint (the exchange would delete it).
  std::error_code ec;
  for (fs::path p = fs::path(final_dir).parent_path(); !p.empty() && p != p.parent_path();
       p = p.parent_path()) {
    if (fs::exists(p / kManifestName, ec)) {
      throw Error(Errc::invalid_argument, "cannot save inside the checkpoint " + p.string(),
                  final_dir);
    }
  }
  if (fs::exists(final_dir, ec) &&
      (!fs::is_directory(final_dir, ec) ||
       (!fs::exists(fs::path(final_dir) / kManifestName, ec) && !fs::is_empty(final_dir, ec)))) {
    throw Error(Errc::invalid_argument, "refusing to replace something that is not a checkpoint",
                final_dir);
  }
  std::string parent = fs::path(final_dir).parent_path().string();
  if (!parent.empty()) io::make_dirs(parent);
  std::string tmp = final_dir + std::string(io::kTmpMarker) +
                    (shared_tag.empty() ? io::unique_tag() : shared_tag);
  io::note_live_tmp(tmp);  // before it exists, until committed or abandoned: cleanup spares it
  if (::mkdir(tmp.c_str(), 0755) != 0 && (shared_tag.empty() || errno != EEXIST)) {
    int err = errno;
    io::forget_live_tmp(tmp);
    throw sys_error("mkdir", tmp, err);
  }
  return tmp;
}

namespace {
FileInfo write_json_file(const std::string& dir, const std::string& name, const std::string& text) {
  io::write_new_file(dir + "/" + name, text);
  return FileInfo{name, text.size(), crc32c(text)};
}
}  // namespace

namespace {

std::vector<FileInfo> write_json_files(const std::string& tmp, const boost::json::object& metadata,
                                       const std::map<std::string, std::string>& extra_files) {
  std::vector<FileInfo> out;
  out.push_back(write_json_file(tmp, std::string(kMetadataName), serialize_metadata(metadata)));
  for (const auto& [name, text] : extra_files) out.push_back(write_json_file(tmp, name, text));
  return out;
}

std::string manifest_file(const std::string& tmp) { return tmp + "/" + std::string(kManifestName); }

void write_manifest(const std::string& tmp, const Manifest& m) {
  // Kept per thread: a steady state of saves maps no memory for their manifests.
  thread_local std::string encoded;
  encode_manifest(m, encoded);
  io::write_new_file(manifest_file(tmp), encoded);
  if (encoded.capacity() > (std::size_t{64} << 20)) std::string().swap(encoded);
}

}  // namespace

void finish_checkpoint(const std::string& tmp, const std::string& final_dir, Manifest& m,
                       const boost::json::object& metadata,
                       const std::map<std::string, std::string>& extra_files) {
  write_checkpoint_files(tmp, m, metadata, extra_files);
  commit_checkpoint(tmp, final_dir);
}

void write_checkpoint_files(const std::string& tmp, Manifest& m,
                            const boost::json::object& metadata,
                            const std::map<std::string, std::string>& extra_files) {
  m.json_files = write_json_files(tmp, metadata, extra_files);
  write_manifest(tmp, m);
}

void write_checkpoint_files(const std::string& tmp, const Manifest& skeleton, ManifestParts parts,
                            const EncodedTree& tree, const boost::json::object& metadata,
                            const std::map<std::string, std::string>& extra_files) {
  const std::vector<FileInfo> json_files = write_json_files(tmp, metadata, extra_files);
  parts.json_files = &json_files;
  // The tree part, the bulk, is written from the plan's cached bytes, not copied.
  const ManifestPieces pieces = encode_manifest(skeleton, parts, tree);
  io::write_new_file(manifest_file(tmp), {pieces.head, pieces.tree, pieces.trailer});
}

void commit_checkpoint(const std::string& tmp, const std::string& final_dir) {
  io::fsync_dir(tmp, "checkpoint_dir");
  io::commit_directory(tmp, final_dir);
  io::forget_live_tmp(tmp);
}

void abandon_tmp_dir(const std::string& tmp) noexcept {
  try {
    io::remove_tree(tmp);
  } catch (const std::exception& e) {
    log().error("could not remove {} after a failed save: {}", tmp, e.what());
  }
  try {
    io::forget_live_tmp(tmp);  // what could not be removed is a leftover for the next cleanup
  } catch (...) {
  }
}

void save_checkpoint(io::Engine& engine, const std::string& dir, const Tree& tree,
                     const boost::json::object& metadata, const WriteOptions& options) {
  const std::string final_dir = clean_checkpoint_dir(dir);
  check_checkpoint_dir_name(final_dir);
  check_extra_files(options.extra_files);
  check_metadata(metadata);
  SavePlan plan = plan_save(tree, options.extent_bytes, options.unit_bytes);
  const std::string tmp = make_tmp_dir(final_dir);
  try {
    io::File data = io::open_direct(tmp + "/" + data_file_name(0), io::OpenMode::write_new,
                                    options.allow_direct);
    data.truncate(plan.manifest.data_files[0].size);  // direct writes that extend serialize
    std::vector<std::uint32_t> crc(extent_slots(plan.manifest));
    UnitPipe pipe(engine, options.unit_bytes, options.queue_depth);
    const auto sources = leaf_sources(plan.leaves);
    pipe.write_all(plan.units, {&data}, [&](const Unit& u, std::byte* buf) {
      stage_unit(u, sources, buf, plan.manifest, crc);
    });
    if (!io::fsync_dropped("data_file")) io::sync_file(engine, data.fd(), data.path());
    data.close();
    finish_checkpoint(tmp, final_dir, plan.manifest, metadata, options.extra_files);
  } catch (...) {
    abandon_tmp_dir(tmp);
    throw;
  }
}

}  // namespace ckpt
