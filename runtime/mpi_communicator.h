#pragma once
// The MPI implementation of the communicator seam (runtime/communicator.h), in the library
// ckpt_mpi, built only when CMake finds MPI (CKPT_HAVE_MPI is then defined for its users). This
// header has no MPI types: only runtime/mpi_communicator.cc includes <mpi.h>.
//
// Threading: MPI is initialized with MPI_THREAD_MULTIPLE when this creates it (docs/design.md,
// section 14). ckpt calls MPI from the thread that calls save() and from its copy threads (the
// commit), at any moment relative to the application's own MPI calls on its own threads, which
// only MULTIPLE allows. ckpt's own calls are serialized by one mutex, so an application that
// initialized MPI itself with MPI_THREAD_SERIALIZED is accepted (with one warning): it must then
// make no MPI call of its own while a collective save or registration is in flight. FUNNELED and
// SINGLE are refused.
//
// Messages are non-blocking point-to-point on a duplicate of MPI_COMM_WORLD (ckpt's tags never
// meet the application's), waited for by polling MPI_Test / MPI_Improbe with a short sleep, so
// that every wait has its deadline (Open MPI's blocking calls have none, and a stuck peer would
// block them forever).
#include <memory>

#include "runtime/communicator.h"

namespace ckpt {

// A communicator over MPI_COMM_WORLD. Initializes MPI if nobody has (argc/argv may be null), and
// then finalizes it when the returned communicator is destroyed: destroy it on the thread that
// created it, after every Runtime using it. Throws Error(unsupported) when the MPI library
// provides less than MPI_THREAD_SERIALIZED.
std::shared_ptr<Communicator> make_mpi_communicator(int* argc = nullptr, char*** argv = nullptr);

// True when the process was started by an MPI launcher (mpirun / mpiexec set OMPI_COMM_WORLD_SIZE
// or PMI_SIZE), without initializing MPI.
bool launched_by_mpirun();

}  // namespace ckpt
