#pragma once
// The steps of writing one checkpoint that the synchronous writer and the asynchronous pipeline
// share. The protocol they implement is described at the top of runtime/writer.cc.
#include <boost/json/object.hpp>
#include <map>
#include <string>
#include <vector>

#include "runtime/layout.h"
#include "runtime/manifest.h"
#include "runtime/tree.h"

namespace ckpt {

struct SavePlan {
  FlatTree leaves;
  Manifest manifest;        // layout planned, checksums not yet filled
  std::vector<Unit> units;  // write units in file order
};

// Throws Error(invalid_argument), naming the leaf, for a tree no reader would accept
// (check_writable in runtime/manifest.h); nothing is written before.
SavePlan plan_save(const Tree& tree, std::uint64_t extent_bytes, std::uint64_t unit_bytes);

// Normalizes a checkpoint directory path; throws Error(invalid_argument) for "", "." or "/".
std::string clean_checkpoint_dir(const std::string& dir);
// Checks names of extra JSON files (no '/', no leading '.', not a reserved name).
// and that each is a JSON object the readers accept.
void check_extra_files(const std::map<std::string, std::string>& extra_files);
// Throws Error(invalid_argument) naming the key when metadata.json could not be read back
// (runtime/json.h: strings that are not UTF-8, nesting deeper than kMaxJsonDepth).
void check_metadata(const boost::json::object& metadata);

// Creates the parents of final_dir durably and the temporary directory beside it; returns it.
// With `shared_tag` (a collective save's, runtime/collective_commit.h) the directory is
// `<final_dir>.tmp-<shared_tag>`, which another process of the save may have created already.
std::string make_tmp_dir(const std::string& final_dir, const std::string& shared_tag = {});

// Writes metadata.json, the extra files and the manifest into tmp_dir, fsyncs it and renames it
// to final_dir (the commit point). The data files must be written and fsynced already.
void finish_checkpoint(const std::string& tmp_dir, const std::string& final_dir, Manifest& manifest,
                       const boost::json::object& metadata,
                       const std::map<std::string, std::string>& extra_files);

// finish_checkpoint's two halves, for a save whose manifest is complete before its data is
// durable (the Runtime's single-process saves write it while their data writes are in flight):
// writes metadata.json, the extra files and the manifest into tmp_dir, each fsynced; then, once
// the data files are written and fsynced too, fsyncs tmp_dir and renames it to final_dir.
// This first form takes a manifest that is a shared skeleton (runtime/plan_cache.h) completed
// with the save's own parts (creation time, block checksums); `tree` is the skeleton's encoded
// tree part.
void write_checkpoint_files(const std::string& tmp_dir, const Manifest& skeleton,
                            ManifestParts parts, const EncodedTree& tree,
                            const boost::json::object& metadata,
                            const std::map<std::string, std::string>& extra_files);
// (The same with a whole manifest, whose json_files it fills.)
void write_checkpoint_files(const std::string& tmp_dir, Manifest& manifest,
                            const boost::json::object& metadata,
                            const std::map<std::string, std::string>& extra_files);
void commit_checkpoint(const std::string& tmp_dir, const std::string& final_dir);

// Removes a temporary directory after a failure; logs, never throws.
void abandon_tmp_dir(const std::string& tmp_dir) noexcept;

}  // namespace ckpt
