// `ckpt inspect`: everything the manifest of one checkpoint says, with its metadata.
#include <fmt/format.h>

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <optional>
#include <string_view>

#include "io/error.h"
#include "runtime/checkpoint.h"
#include "runtime/incremental.h"
#include "runtime/json.h"
#include "tools/commands.h"
#include "tools/format.h"

namespace ckpt::tools {

namespace json = boost::json;

namespace {

// Data files have no whole-file checksum (schemas/checkpoint.fbs): their blocks carry theirs
// (format version 1: each extent is a block).
json::object file_json(const FileInfo& f, const char* kind) {
  bool data = std::string_view(kind) == "data";
  return {{"name", f.name},
          {"kind", kind},
          {"size", f.size},
          {"crc32c", data ? json::value(nullptr) : json::value(f.crc32c)}};
}

// A data file with its sharing: links (other checkpoints naming the same file) and origin.
json::object data_file_json(const FileInfo& f, std::uint64_t links) {
  json::object o = file_json(f, "data");
  o["links"] = links;
  o["shared"] = links > 1;
  o["origin"] = f.origin.empty() ? json::value(nullptr) : json::value(f.origin);
  return o;
}

std::string hash_hex(const ContentHash& h) { return fmt::format("{:016x}{:016x}", h.hi, h.lo); }

json::object leaf_json(const Manifest& m, const LeafInfo& leaf) {
  json::array shape;
  for (auto d : leaf.shape) shape.push_back(d);
  json::array extents;
  for (const auto& e : leaf.extents) {
    // decode_manifest checked that e.file indexes data_files.
    json::object x{{"file", m.data_files[e.file].name},
                   {"offset", e.offset},
                   {"length", e.length},
                   {"stored_length", e.stored_length},
                   {"crc32c", e.crc32c},
                   {"leaf_offset", e.leaf_offset},
                   {"process_index", e.process_index},
                   {"content_hash", e.has_hash ? json::value(hash_hex(e.hash)) : json::value(nullptr)}};
    if (!e.slice_shape.empty()) {  // a shard: the box of the global array it holds
      json::array start, box;
      for (auto d : e.slice_start) start.push_back(d);
      for (auto d : e.slice_shape) box.push_back(d);
      x["slice_start"] = std::move(start);
      x["slice_shape"] = std::move(box);
    }
    extents.push_back(std::move(x));
  }
  return {{"path", leaf.path},
          {"dtype", to_string(leaf.dtype)},
          {"shape", std::move(shape)},
          {"nbytes", leaf.nbytes},
          {"extents", std::move(extents)}};
}

void print_json(const std::string& dir, const Manifest& m, const StorageReport& storage,
                const std::optional<json::object>& metadata, const std::string& metadata_error) {
  json::object doc;
  doc["path"] = dir;
  doc["format_version"] = m.format_version;
  doc["writer"] = m.writer;
  doc["created_unix_ns"] = m.created_unix_ns;
  doc["created"] = local_time_iso8601(m.created_unix_ns);
  doc["total_bytes"] = m.total_bytes;
  doc["stored_bytes"] = m.stored_bytes();
  doc["owned_bytes"] = storage.owned;
  doc["shared_bytes"] = storage.shared;
  doc["alignment"] = m.alignment;
  doc["process_count"] = m.process_count;
  doc["leaf_count"] = m.leaves.size();
  // Encoded as metadata.json stores it: a NaN or infinity would not be JSON otherwise.
  doc["metadata"] = metadata ? encode_json(*metadata, "metadata") : json::value(nullptr);
  if (!metadata_error.empty()) doc["metadata_error"] = one_line(metadata_error);
  json::array files;
  for (std::size_t i = 0; i < m.data_files.size(); ++i)
    files.push_back(data_file_json(m.data_files[i], storage.links[i]));
  for (const auto& f : m.json_files) files.push_back(file_json(f, "json"));
  doc["files"] = std::move(files);
  json::array leaves;
  for (const auto& leaf : m.leaves) leaves.push_back(leaf_json(m, leaf));
  doc["leaves"] = std::move(leaves);
  json::array blocks;
  for (const auto& b : m.blocks) {
    blocks.push_back(json::object{{"file", m.data_files[b.file].name},
                                  {"offset", b.offset},
                                  {"length", b.length},
                                  {"crc32c", b.crc32c}});
  }
  doc["blocks"] = std::move(blocks);
  fmt::print("{}\n", json::serialize(doc));
}

std::string bytes_both(std::uint64_t n) {
  return n < 1024 ? fmt::format("{} B", n) : fmt::format("{} ({} bytes)", human_bytes(n), n);
}

void print_text(const std::string& dir, const Manifest& m, const StorageReport& storage,
                const std::optional<json::object>& metadata, const std::string& metadata_error) {
  Table summary({"checkpoint", dir});
  summary.add_row({"format version", std::to_string(m.format_version)});
  summary.add_row({"writer", m.writer});
  summary.add_row({"created", local_time_iso8601(m.created_unix_ns)});
  summary.add_row({"total bytes", bytes_both(m.total_bytes)});
  summary.add_row({"stored bytes", bytes_both(m.stored_bytes())});
  summary.add_row(
      {"owned bytes", bytes_both(storage.owned) + " (in files no other checkpoint names)"});
  summary.add_row(
      {"shared bytes", bytes_both(storage.shared) + " (in files other checkpoints name too)"});
  summary.add_row({"leaves", std::to_string(m.leaves.size())});
  summary.add_row({"checksummed blocks", std::to_string(m.blocks.size())});
  summary.add_row({"processes", std::to_string(m.process_count)});
  fmt::print("{}", summary.render());

  fmt::print("\nmetadata:\n");
  if (metadata) {
    fmt::print("  {}\n", pretty_json(*metadata, "  "));
  } else {
    fmt::print("  unreadable: {}\n", one_line(metadata_error));
  }

  fmt::print("\nfiles:\n");
  Table files({"NAME", "SIZE", "CRC32C", "LINKS", "FIRST WRITTEN BY"},
              {false, true, false, true, false});
  for (std::size_t i = 0; i < m.data_files.size(); ++i) {
    const FileInfo& f = m.data_files[i];
    files.add_row({f.name, std::to_string(f.size), "per block", std::to_string(storage.links[i]),
                   f.origin.empty() ? "this checkpoint" : f.origin});
  }
  for (const auto& f : m.json_files)
    files.add_row({f.name, std::to_string(f.size), crc_hex(f.crc32c), "", ""});
  fmt::print("{}", files.render("  "));

  fmt::print("\nleaves:\n");
  Table leaves({"PATH", "DTYPE", "SHAPE", "BYTES", "EXTENTS"}, {false, false, false, true, true});
  for (const auto& leaf : m.leaves) {
    leaves.add_row({leaf.path, std::string(to_string(leaf.dtype)), shape_to_string(leaf.shape),
                    human_bytes(leaf.nbytes), std::to_string(leaf.extents.size())});
  }
  fmt::print("{}", leaves.render("  "));

  if (!m.sharded()) return;
  // The shard layout: each leaf's boxes (global shape above), by process.
  fmt::print("\nshards:\n");
  Table shards({"PATH", "PROCESS", "START", "SHAPE", "FILE", "OFFSET", "BYTES"},
               {false, true, false, false, false, true, true});
  for (const auto& leaf : m.leaves) {
    for (const auto& e : leaf.extents) {
      bool whole = e.slice_shape.empty();
      shards.add_row({leaf.path, std::to_string(e.process_index),
                      whole ? std::string("replicated") : shape_to_string(e.slice_start),
                      shape_to_string(whole ? leaf.shape : e.slice_shape),
                      m.data_files[e.file].name, std::to_string(e.offset), human_bytes(e.length)});
    }
  }
  fmt::print("{}", shards.render("  "));
}

}  // namespace

int run_inspect(const std::string& dir, bool json_out) {
  require_directory(dir, "checkpoint directory");
  Manifest m = read_manifest(dir);
  std::optional<json::object> metadata;
  std::string metadata_error;
  try {
    metadata = read_metadata(dir);
  } catch (const Error& e) {
    metadata_error = e.what();
  }
  StorageReport storage = storage_report(dir, m);
  if (json_out) {
    print_json(dir, m, storage, metadata, metadata_error);
  } else {
    print_text(dir, m, storage, metadata, metadata_error);
  }
  return metadata ? kExitOk : kExitFailed;
}

}  // namespace ckpt::tools
