// Run under mpirun: a collective save of one array split over the processes through an installed
// ckpt's MPI communicator (ckpt::ckpt_mpi), registered as latest, then every process restores the
// whole array (a resharding restore to one box) and checks it. Process 0 prints "consumer_mpi: ok
// (N processes)" on success.
//   mpirun -np N consumer_mpi <run_dir>
#include <cstdio>
#include <optional>
#include <vector>

#include "runtime/catalog.h"
#include "runtime/mpi_communicator.h"
#include "runtime/runtime.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: mpirun -np N consumer_mpi <run_dir>\n");
    return 2;
  }
  const std::string run_dir = argv[1];
  int rc = 0;
  std::shared_ptr<ckpt::Communicator> comm = ckpt::make_mpi_communicator(&argc, &argv);
  try {
    const ckpt::Shape global{1000};
    auto [start, shape] = ckpt::split_box(global, 0, static_cast<std::uint64_t>(comm->rank()),
                                          static_cast<std::uint64_t>(comm->size()));
    std::vector<float> mine(shape[0]);
    for (std::size_t i = 0; i < mine.size(); ++i) mine[i] = static_cast<float>(start[0] + i) * 0.5f;
    ckpt::Tree tree;
    tree["w"] = ckpt::Array::view(ckpt::DType::f32, shape, mine.data());
    ckpt::SaveOptions options;
    options.sharding.shard("w", global, start);
    {
      ckpt::RuntimeOptions ro;
      ro.communicator = comm;
      ckpt::Runtime runtime(ro);
      runtime.save(run_dir + "/step/1", tree, {{"note", "consumer_mpi"}}, options).wait();
      runtime.register_latest(run_dir, "step/1").wait();
    }
    std::optional<std::string> latest = ckpt::read_latest(run_dir);
    std::vector<float> whole(global[0]);
    ckpt::Tree templ;
    templ["w"] = ckpt::Array::view(ckpt::DType::f32, global, whole.data());
    ckpt::Sharding all;
    all.shard("w", global, {0});
    ckpt::Runtime reader;
    reader.restore(run_dir + "/" + latest.value_or("?"), templ, all);
    for (std::size_t i = 0; i < whole.size(); ++i) {
      if (whole[i] != static_cast<float>(i) * 0.5f) {
        std::fprintf(stderr, "consumer_mpi: element %zu differs\n", i);
        rc = 1;
        break;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer_mpi: process %d: %s\n", comm->rank(), e.what());
    rc = 1;
  }
  if (rc == 0 && comm->rank() == 0) std::printf("consumer_mpi: ok (%d processes)\n", comm->size());
  comm.reset();  // finalizes MPI
  return rc;
}
