// demo: saves a small model-like tree into DIR/demo/run, restores it into a fresh template,
// checks every byte, moves `latest`, and prints what it did with the engine's throughput.
//   build/examples/demo --dir ./checkpoints [--mb 256] [--engine auto|uring|threads]
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <boost/json/serialize.hpp>
#include <chrono>
#include <cstring>

#include "io/engine.h"
#include "io/error.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

ckpt::Tree make_state(std::uint64_t mb, std::vector<std::vector<float>>& storage) {
  ckpt::Tree tree;
  const std::uint64_t layers = 8;
  const std::uint64_t width = 256;
  std::uint64_t per_layer = std::max<std::uint64_t>(mb * (1u << 20) / 4 / layers / width, 1);
  storage.reserve(2 * layers + 1);  // views point into these vectors: no reallocation
  auto& list = tree["params"]["layers"] = ckpt::Tree::list();
  for (std::uint64_t l = 0; l < layers; ++l) {
    auto& w = storage.emplace_back(per_layer * width);
    auto& b = storage.emplace_back(width);
    for (std::size_t i = 0; i < w.size(); ++i)
      w[i] = static_cast<float>((i * 31 + l) % 1000) / 1000.0f;
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(l);
    ckpt::Tree layer;
    layer["w"] = ckpt::Array::view(ckpt::DType::f32, {per_layer, width}, w.data());
    layer["b"] = ckpt::Array::view(ckpt::DType::f32, {width}, b.data());
    list.push_back(std::move(layer));
  }
  auto& step = storage.emplace_back(1, 0.0f);
  tree["opt"]["count"] = ckpt::Array::view(ckpt::DType::f32, {}, step.data());
  return tree;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ckpt demo: save, restore and verify one checkpoint"};
  std::string dir = "./checkpoints";
  std::uint64_t mb = 256;
  std::string engine_name = "auto";
  app.add_option("--dir", dir, "checkpoints directory");
  app.add_option("--mb", mb, "state size in MiB");
  app.add_option("--engine", engine_name, "auto | uring | threads");
  CLI11_PARSE(app, argc, argv);

  try {
    auto engine = ckpt::io::make_engine({ckpt::io::parse_engine_kind(engine_name)});
    std::vector<std::vector<float>> storage;
    ckpt::Tree state = make_state(mb, storage);
    std::uint64_t bytes = 0;
    state.for_each_leaf([&](const std::string&, const ckpt::Array& a) { bytes += a.nbytes(); });
    const std::string run_dir = dir + "/demo/run";
    const std::string suffix = "step/" + std::to_string(1);

    auto t0 = Clock::now();
    ckpt::save_checkpoint(*engine, run_dir + "/" + suffix, state, {{"step", 1}, {"note", "demo"}});
    double save_s = seconds_since(t0);
    ckpt::write_latest(run_dir, suffix);
    fmt::print("saved   {} leaves, {:.1f} MiB to {}/{} in {:.3f} s ({:.2f} GiB/s, engine {})\n",
               state.leaf_count(), bytes / 1048576.0, run_dir, suffix, save_s,
               bytes / save_s / (1u << 30), engine->name());

    ckpt::Tree restored = ckpt::make_template(ckpt::read_manifest(run_dir + "/" + suffix));
    auto t1 = Clock::now();
    auto metadata = ckpt::restore_checkpoint(*engine, run_dir + "/" + suffix, restored);
    double restore_s = seconds_since(t1);
    auto a = state.flatten();
    auto b = restored.flatten();
    bool same = a.size() == b.size();
    for (std::size_t i = 0; same && i < a.size(); ++i) {
      same = a[i].first == b[i].first &&
             std::memcmp(a[i].second.data(), b[i].second.data(), a[i].second.nbytes()) == 0;
    }
    fmt::print("restored {:.1f} MiB in {:.3f} s ({:.2f} GiB/s); bytes identical: {}; metadata {}\n",
               bytes / 1048576.0, restore_s, bytes / restore_s / (1u << 30), same ? "yes" : "NO",
               boost::json::serialize(metadata));
    auto report = ckpt::verify_checkpoint(*engine, run_dir + "/" + suffix);
    fmt::print("verify: {} ({} bytes checked); latest -> {}\n", report.ok() ? "ok" : "FAILED",
               report.bytes_checked, ckpt::read_latest(run_dir).value_or("(none)"));
    return same && report.ok() ? 0 : 1;
  } catch (const ckpt::Error& e) {
    fmt::print(stderr, "demo: {}\n", e.what());
    return 1;
  }
}
