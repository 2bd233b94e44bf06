#pragma once
// train_loop --sharded (examples/train_loop.cc): a job whose every array is cut across the
// processes of the run (split_box along the first axis, process i holding part i of N), saved
// collectively and restored with resharding, so a run may be resumed under any process count.
//
// The model: parameters w (R x 64) and gain (3 elements; with 4 processes one box is empty) pulled
// by SGD with momentum towards fixed targets, under noise; padding arrays up to --state-mb stand
// for optimizer state. Every element's update reads only its own value, the seed, the step and its
// global index, and is the same float arithmetic on every process: the state after step n is the
// same bytes for any decomposition, and so is the digest, the CRC32C of the concatenated global
// arrays (in tree order), combined from each process's boxes (crc32c_combine) by process 0.
// The loss shown is the sum of the processes' parts (collective at each save): its last digits
// may differ between process counts; the digest does not.
#include <boost/describe/class.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "examples/loop_job.h"
#include "runtime/sharding.h"

struct ShardedConfig {
  std::int64_t steps = 2000;
  std::int64_t save_every = 200;
  std::int64_t state_mb = 64;  // the global state, padded with extra arrays up to this size
  std::uint64_t seed = 0;
  std::string mode = "sync";  // sync | overlapped
  std::int64_t keep = 3;      // retention: checkpoints kept (besides latest)
  double lr = 0.05;
  double momentum = 0.9;
  bool sweep = false;  // every step writes every element of the padding
};
BOOST_DESCRIBE_STRUCT(ShardedConfig, (),
                      (steps, save_every, state_mb, seed, mode, keep, lr, momentum, sweep))

class ShardedTrainJob : public train::LoopJob<ShardedConfig> {
 public:
  // This process's boxes: part spec.process_index of spec.process_count.
  ShardedTrainJob(ckpt::jobs::ExecutionSpec spec, ShardedConfig config);

  ckpt::Tree state() override;
  ckpt::Sharding sharding() const override { return sharding_; }
  // Collective: every process calls it; process 0 returns the digest, the others "".
  std::string digest() override;

 protected:
  double forward() override;
  void apply_update() override;
  double reported_loss(double loss) override;  // collective: the sum over the processes

 private:
  // A global array's box on this process: its values and where they sit in the global array.
  struct Part {
    std::string path;
    ckpt::Shape global_shape;
    ckpt::Shape start;  // the box's start (only the first axis is cut)
    ckpt::Shape shape;  // the box's shape
    std::uint64_t first = 0;  // global index of the box's first element
    std::vector<float> values;
  };
  Part make_part(std::string path, ckpt::Shape global_shape, std::uint64_t id);
  void update_params(Part& p, Part& m, const std::vector<float>& target, std::uint64_t noise_key);

  Part w_, gain_, w_m_, gain_m_;
  std::vector<Part> pads_;
  std::vector<float> w_target_, gain_target_;  // derived from the seed, not checkpointed
  ckpt::Sharding sharding_;
};
