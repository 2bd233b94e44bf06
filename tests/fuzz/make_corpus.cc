// Writes the manifest fuzzer's seed corpus (tests/fuzz/corpus/): the manifest.ckpt of a few real,
// tiny checkpoints saved by save_checkpoint, and split inputs (tests/fuzz/fuzz_input.h) that carry
// a manifest and its data file, planned with a small alignment so they stay a few KiB.
// Leaves hold pattern_byte(j) at byte j and the JSON files hold "{}", as the harness recreates
// them, so every seed verifies and restores in the fuzzer.
//   build/tests/make_corpus tests/fuzz/corpus
// Built with the tests, run by hand; commit what it writes. The corpus's regress_* files are
// inputs that found bugs, and its v1_* files the same seeds written by the format version 1
// writer (before format version 2), so that the version 1 reader stays fuzzed; both kept by hand.
#include <boost/json/object.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "io/engine.h"
#include "io/error.h"
#include "runtime/checkpoint.h"
#include "runtime/crc32c.h"
#include "runtime/layout.h"
#include "runtime/manifest.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

namespace fs = std::filesystem;
using namespace ckpt;

Array leaf(DType dtype, Shape shape) {
  Array a = Array::zeros(dtype, std::move(shape));
  for (std::uint64_t j = 0; j < a.nbytes(); ++j)
    a.mutable_data()[j] = std::byte{fuzz::pattern_byte(j)};
  return a;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write_seed(const std::string& out_dir, const std::string& name, const std::string& bytes) {
  std::ofstream(out_dir + "/" + name, std::ios::binary | std::ios::trunc) << bytes;
  std::printf("%-28s %6zu bytes\n", name.c_str(), bytes.size());
}

// A real checkpoint: its manifest is the seed.
void saved_seed(io::Engine& engine, const std::string& scratch, const std::string& out_dir,
                const std::string& name, const Tree& tree, WriteOptions options = {}) {
  options.allow_direct = false;
  std::string dir = scratch + "/" + name;
  save_checkpoint(engine, dir, tree, boost::json::object{}, options);
  write_seed(out_dir, name, read_file(dir + "/" + std::string(kManifestName)));
}

// A manifest planned with `alignment` and its data file, as one split input.
void split_seed(const std::string& out_dir, const std::string& name, const Tree& tree,
                std::uint32_t alignment, std::uint64_t extent_bytes) {
  Manifest m;
  m.alignment = alignment;
  m.writer = "make_corpus";
  describe_structure(tree, m);
  FlatTree leaves = tree.flatten();
  plan_extents(leaves, extent_bytes, m);
  std::string data(m.data_files[0].size, '\0');
  std::vector<std::uint32_t> crc(extent_slots(m));
  const auto sources = leaf_sources(leaves);
  for (const Unit& u : plan_units(m, extent_bytes)) {
    stage_unit(u, sources, reinterpret_cast<std::byte*>(data.data() + u.offset), m, crc);
  }
  std::string meta = fuzz::json_text(2);
  m.json_files.push_back({std::string(kMetadataName), meta.size(), crc32c(meta)});
  write_seed(out_dir, name, fuzz::split_input(encode_manifest(m), data));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus dir>\n", argv[0]);
    return 2;
  }
  std::string out_dir = argv[1];
  fs::create_directories(out_dir);
  std::string scratch = (fs::temp_directory_path() / "ckpt-make-corpus").string();
  fs::remove_all(scratch);
  try {
    auto engine = io::make_engine({io::EngineKind::threads, 8, 2});

    saved_seed(*engine, scratch, out_dir, "empty", Tree());
    {
      Tree t;
      t["w"] = leaf(DType::f32, {10});
      saved_seed(*engine, scratch, out_dir, "one_f32", t);
    }
    {
      Tree t;
      t["a"] = leaf(DType::f64, {2, 3});
      t["b"] = leaf(DType::i8, {5});
      t["c"] = leaf(DType::boolean, {7});
      saved_seed(*engine, scratch, out_dir, "three_leaves", t);
    }
    {
      Tree t;
      Tree& layers = t["params"]["layers"] = Tree::list();
      for (int i = 0; i < 2; ++i) {
        Tree layer;
        layer["w"] = leaf(DType::bf16, {4, 4});
        layer["b"] = leaf(DType::f16, {4});
        layers.push_back(std::move(layer));
      }
      t["step"] = leaf(DType::i64, {});
      t["opt"]["mu"] = leaf(DType::f8_e4m3, {3, 2});
      t["opt"]["nu"] = leaf(DType::f8_e5m2, {3, 2});
      saved_seed(*engine, scratch, out_dir, "nested", t);
    }
    {
      Tree t = Tree::list();
      t.push_back(leaf(DType::u8, {5000}));
      t.push_back(leaf(DType::i32, {3, 0}));
      t.push_back(leaf(DType::u16, {6000}));
      WriteOptions o;
      o.extent_bytes = 4096;  // several extents per leaf
      saved_seed(*engine, scratch, out_dir, "list_extents", t, o);
    }
    {
      Tree t;
      t["x"] = leaf(DType::u64, {2});
      t["y"] = leaf(DType::i16, {0});
      WriteOptions o;
      o.extra_files["job.json"] = "{}";
      o.extra_files["config.json"] = "{}";
      saved_seed(*engine, scratch, out_dir, "extra_files", t, o);
    }
    saved_seed(*engine, scratch, out_dir, "root_leaf", Tree(leaf(DType::u32, {3})));

    {
      Tree t;
      t["a"] = leaf(DType::f32, {37});
      t["b"] = Tree::list();
      t["b"].push_back(leaf(DType::u8, {300}));
      t["b"].push_back(leaf(DType::i64, {2, 0}));
      split_seed(out_dir, "split_small", t, 64, 128);
    }
    {
      Tree t;
      t["big"] = leaf(DType::u16, {1500});
      t["s"] = leaf(DType::i8, {1});
      split_seed(out_dir, "split_extents", t, 512, 1024);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "make_corpus: %s\n", e.what());
    fs::remove_all(scratch);
    return 1;
  }
  fs::remove_all(scratch);
  return 0;
}
