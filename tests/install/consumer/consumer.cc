// Saves a two-leaf tree through an installed ckpt's Runtime, registers it as latest, restores it
// into a fresh template and checks every value. Exit 0 and "consumer: ok" on success.
//   consumer <run_dir>
#include <cstdio>
#include <optional>
#include <vector>

#include "runtime/catalog.h"
#include "runtime/runtime.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer <run_dir>\n");
    return 2;
  }
  const std::string run_dir = argv[1];
  std::vector<float> weights(1000);
  for (std::size_t i = 0; i < weights.size(); ++i) weights[i] = static_cast<float>(i) * 0.5f;
  std::vector<std::int64_t> step{42};
  ckpt::Tree tree;
  tree["w"] = ckpt::Array::view(ckpt::DType::f32, {weights.size()}, weights.data());
  tree["step"] = ckpt::Array::view(ckpt::DType::i64, {}, step.data());
  try {
    ckpt::Runtime runtime;
    runtime.save(run_dir + "/step/42", tree, {{"note", "consumer"}}).wait();
    runtime.register_latest(run_dir, "step/42").wait();
    std::vector<float> w_back(weights.size());
    std::vector<std::int64_t> step_back(1);
    ckpt::Tree templ;
    templ["w"] = ckpt::Array::view(ckpt::DType::f32, {w_back.size()}, w_back.data());
    templ["step"] = ckpt::Array::view(ckpt::DType::i64, {}, step_back.data());
    std::optional<std::string> latest = ckpt::read_latest(run_dir);
    if (!latest) {
      std::fprintf(stderr, "consumer: no latest in %s\n", run_dir.c_str());
      return 1;
    }
    auto metadata = runtime.restore(run_dir + "/" + *latest, templ);
    if (w_back != weights || step_back != step || metadata.at("note") != "consumer") {
      std::fprintf(stderr, "consumer: restored values differ\n");
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
  std::puts("consumer: ok");
  return 0;
}
