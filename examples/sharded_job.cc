#include "examples/sharded_job.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "io/error.h"
#include "jobs/registry.h"
#include "runtime/communicator.h"
#include "runtime/crc32c.h"

using namespace ckpt;
using namespace ckpt::jobs;
using train::splitmix;

namespace {

constexpr std::uint64_t kCols = 64;
constexpr std::uint64_t kPadMax = 16u << 20;  // bytes per padding array at most

// A value in [-1, 1) of `key` alone (no state: any process computes any element's).
float uniform_of(std::uint64_t key) {
  std::uint64_t s = key;
  return train::uniform(s);
}
std::uint64_t mix(std::uint64_t a, std::uint64_t b) {
  std::uint64_t s = a ^ (b * 0xd6e8feb86659fd93ULL);
  return splitmix(s);
}

std::uint64_t elements(const Shape& shape) {
  std::uint64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::chrono::steady_clock::time_point deadline_of(Runtime& rt) {
  return std::chrono::steady_clock::now() + rt.options().collective_timeout;
}

}  // namespace

ShardedTrainJob::ShardedTrainJob(ExecutionSpec spec, ShardedConfig config)
    : LoopJob(std::move(spec), std::move(config)) {
  const auto& c = args();
  if (c.mode != "sync" && c.mode != "overlapped") {
    throw Error(Errc::invalid_argument, "config key 'mode': expected sync or overlapped");
  }
  if (c.steps < 0 || c.save_every < 0 || c.state_mb < 0) {
    throw Error(Errc::invalid_argument, "steps, save_every and state_mb must not be negative");
  }
  const std::uint64_t want = static_cast<std::uint64_t>(c.state_mb) << 20;
  // w and its momentum take up to an eighth of the state each (at most 1 MiB); padding the rest.
  const std::uint64_t rows = std::clamp<std::uint64_t>(want / 8 / (kCols * 4), 1, 4096);
  w_ = make_part("params/w", {rows, kCols}, 1);
  gain_ = make_part("params/gain", {3}, 2);
  w_m_ = make_part("opt/momentum/w", {rows, kCols}, 0);
  gain_m_ = make_part("opt/momentum/gain", {3}, 0);
  for (auto [part, target, id] : {std::tuple{&w_, &w_target_, 3}, std::tuple{&gain_, &gain_target_, 4}}) {
    target->resize(part->values.size());
    for (std::size_t i = 0; i < target->size(); ++i) {
      (*target)[i] = uniform_of(mix(mix(c.seed, static_cast<std::uint64_t>(id)), part->first + i));
    }
  }
  const std::uint64_t model = 2 * (rows * kCols + 3) * 4;
  std::uint64_t k = 0;
  for (std::uint64_t left = want > model ? want - model : 0; left >= 4; ++k) {
    const std::uint64_t bytes = std::min(left, kPadMax);
    pads_.push_back(make_part("pad/" + std::to_string(k), {bytes / 4}, 100 + k));
    left -= bytes / 4 * 4;
  }
  for (const Part* p : {&w_, &gain_, &w_m_, &gain_m_}) sharding_.shard(p->path, p->global_shape, p->start);
  for (const Part& p : pads_) sharding_.shard(p.path, p.global_shape, p.start);
  RetentionPolicy retention;
  retention.max_to_keep = static_cast<std::size_t>(std::max<std::int64_t>(c.keep, 1));
  retention.prefix = "step/";
  set_retention(retention);
}

ShardedTrainJob::Part ShardedTrainJob::make_part(std::string path, Shape global_shape, std::uint64_t id) {
  Part p;
  p.path = std::move(path);
  p.global_shape = std::move(global_shape);
  std::tie(p.start, p.shape) =
      split_box(p.global_shape, 0, spec().process_index, spec().process_count);
  p.first = p.start[0] * (elements(p.global_shape) / std::max<std::uint64_t>(p.global_shape[0], 1));
  p.values.reserve(1);  // a box may be empty: its view still needs an address
  p.values.resize(elements(p.shape), 0.0f);
  if (id != 0) {  // 0: zeros (momentum)
    const std::uint64_t key = mix(args().seed, id);
    for (std::size_t i = 0; i < p.values.size(); ++i) p.values[i] = uniform_of(mix(key, p.first + i));
  }
  return p;
}

Tree ShardedTrainJob::state() {
  Tree t;
  auto view = [](Part& p) { return Array::view(DType::f32, p.shape, p.values.data()); };
  t["params"]["w"] = view(w_);
  t["params"]["gain"] = view(gain_);
  t["opt"]["momentum"]["w"] = view(w_m_);
  t["opt"]["momentum"]["gain"] = view(gain_m_);
  for (std::size_t k = 0; k < pads_.size(); ++k) t["pad"][std::to_string(k)] = view(pads_[k]);
  t["step"] = Array::view(DType::i64, {}, &step_);  // replicated
  return t;
}

double ShardedTrainJob::forward() {
  double loss = 0;
  for (auto [p, target] : {std::pair{&w_, &w_target_}, std::pair{&gain_, &gain_target_}}) {
    for (std::size_t i = 0; i < p->values.size(); ++i) {
      const double d = double(p->values[i]) - double((*target)[i]);
      loss += d * d;
    }
  }
  return loss;
}

double ShardedTrainJob::reported_loss(double loss) {
  // Sum of every process's part, in process order, over the global element count.
  std::uint64_t total = elements(w_.global_shape) + elements(gain_.global_shape);
  if (auto comm = communicator(); comm && comm->size() > 1) {
    std::string mine(sizeof loss, '\0');
    std::memcpy(mine.data(), &loss, sizeof loss);
    auto parts = comm->allgather(collective_tag(comm->next_sequence(), 0), mine, deadline_of(runtime()));
    loss = 0;
    for (const auto& part : parts) {
      double v = 0;
      if (part.size() != sizeof v) throw Error(Errc::corrupt, "bad loss message");
      std::memcpy(&v, part.data(), sizeof v);
      loss += v;
    }
  }
  return loss / double(total);
}

void ShardedTrainJob::update_params(Part& p, Part& m, const std::vector<float>& target,
                                    std::uint64_t noise_key) {
  const auto lr = static_cast<float>(args().lr), mu = static_cast<float>(args().momentum);
  for (std::size_t i = 0; i < p.values.size(); ++i) {
    const float noise = 0.1f * uniform_of(mix(noise_key, p.first + i));
    const float grad = (p.values[i] - target[i]) + noise;
    m.values[i] = mu * m.values[i] + grad;
    p.values[i] -= lr * m.values[i];
  }
}

void ShardedTrainJob::apply_update() {
  const std::uint64_t step_key = mix(args().seed ^ 0x5eed, static_cast<std::uint64_t>(step_));
  update_params(w_, w_m_, w_target_, mix(step_key, 1));
  update_params(gain_, gain_m_, gain_target_, mix(step_key, 2));
  // The padding stands for optimizer state too large to model here; each step changes one
  // element of each array (on the process that holds it), or every element with --sweep.
  for (std::size_t k = 0; k < pads_.size(); ++k) {
    Part& p = pads_[k];
    const std::uint64_t n = p.global_shape[0];
    const std::uint64_t g = mix(step_key, 100 + k) % n;
    if (g >= p.first && g - p.first < p.values.size()) p.values[g - p.first] += 1.0f;
    if (args().sweep) {
      for (float& x : p.values) x = x * 0.999999f + 1e-6f;
    }
  }
}

std::string ShardedTrainJob::digest() {
  // Each process's piece of each leaf, in tree order: where its box begins in the global array's
  // bytes (a box cut along the first axis is one contiguous range of them), its length and its
  // CRC32C. A replicated leaf is process 0's alone. Process 0 puts each leaf's pieces in order,
  // checks that they tile it, and chains their checksums.
  struct Piece {
    std::uint64_t at = 0, len = 0, crc = 0;
  };
  std::vector<std::string> pieces;
  std::vector<std::uint64_t> global_bytes;
  const int rank = static_cast<int>(spec().process_index);
  state().for_each_leaf([&](const std::string& path, const Array& a) {
    Piece p{0, a.nbytes(), crc32c(a.data(), a.nbytes())};
    global_bytes.push_back(a.nbytes());
    if (const Box* box = sharding_.find(path)) {
      global_bytes.back() = array_nbytes(a.dtype(), box->global_shape);
      p.at = box->start[0] * (global_bytes.back() / std::max<std::uint64_t>(box->global_shape[0], 1));
    } else if (rank != 0) {
      pieces.emplace_back();  // replicated: process 0 covers it
      return;
    }
    pieces.emplace_back(reinterpret_cast<const char*>(&p), sizeof p);
  });
  std::vector<std::string> all{pack_strings(pieces)};
  if (auto comm = communicator(); comm && comm->size() > 1) {
    all = comm->gather(collective_tag(comm->next_sequence(), 0), all.front(), 0, deadline_of(runtime()));
  }
  if (rank != 0) return {};
  std::vector<std::vector<std::string>> by_process;
  for (const auto& message : all) by_process.push_back(unpack_strings(message));
  std::uint32_t crc = 0;
  for (std::size_t leaf = 0; leaf < pieces.size(); ++leaf) {
    std::vector<Piece> parts;
    for (const auto& process : by_process) {
      if (leaf >= process.size()) throw Error(Errc::corrupt, "digest: the processes' trees differ");
      if (process[leaf].size() != sizeof(Piece)) continue;  // replicated, not this process's
      Piece p;
      std::memcpy(&p, process[leaf].data(), sizeof p);
      parts.push_back(p);
    }
    std::sort(parts.begin(), parts.end(), [](const Piece& a, const Piece& b) {
      return a.at != b.at ? a.at < b.at : a.len < b.len;  // an empty box first
    });
    std::uint64_t end = 0;
    for (const Piece& p : parts) {
      if (p.at != end) throw Error(Errc::corrupt, "digest: the processes' boxes do not tile a leaf");
      crc = crc32c_combine(crc, static_cast<std::uint32_t>(p.crc), p.len);
      end += p.len;
    }
    if (end != global_bytes[leaf]) throw Error(Errc::corrupt, "digest: a leaf is not covered");
  }
  return fmt::format("{:08x}", crc);
}

CKPT_REGISTER_JOB(ShardedTrainJob, "train_loop_sharded");
