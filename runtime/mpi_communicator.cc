#include "runtime/mpi_communicator.h"

#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <fmt/format.h>
#include <limits>
#include <list>
#include <memory>
#include <mutex>
#include <thread>

#include "io/error.h"
#include "io/log.h"

namespace ckpt {

namespace {

std::string mpi_error(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return fmt::format("MPI error {}", code);
  return std::string(text, static_cast<std::size_t>(len));
}

const char* level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    default: return "MPI_THREAD_MULTIPLE";
  }
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(int* argc, char*** argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized == 0) {
      int provided = MPI_THREAD_SINGLE;
      int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
      if (rc != MPI_SUCCESS) throw Error(Errc::io, "MPI_Init_thread failed: " + mpi_error(rc));
      owns_mpi_ = true;
      level_ = provided;
    } else {
      MPI_Query_thread(&level_);
    }
    if (level_ < MPI_THREAD_SERIALIZED) {
      if (owns_mpi_) MPI_Finalize();
      throw Error(Errc::unsupported,
                  fmt::format("MPI provides {}; ckpt calls MPI from its own threads and needs at "
                              "least MPI_THREAD_SERIALIZED",
                              level_name(level_)));
    }
    if (level_ == MPI_THREAD_SERIALIZED) {
      log().warn("MPI runs at MPI_THREAD_SERIALIZED: the application must not call MPI while a "
                 "collective save or registration is in flight");
    }
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    void* ub = nullptr;
    int flag = 0;
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
    tag_ub_ = flag != 0 ? *static_cast<int*>(ub) : 32767;
    // Tags wrap at tag_ub: with a small one (the standard only promises 32767) a late message
    // of an old operation could be taken for a new one's. Open MPI and MPICH offer 2^31 - 1.
    if (tag_ub_ < (1 << 20)) {
      MPI_Comm_free(&comm_);
      if (owns_mpi_) MPI_Finalize();
      throw Error(Errc::unsupported,
                  fmt::format("this MPI's largest tag is {} (MPI_TAG_UB); ckpt needs at least "
                              "2^20 to keep the tags of its operations apart",
                              tag_ub_));
    }
  }

  ~MpiCommunicator() override {
    {
      std::lock_guard lock(mu_);
      reap_locked();
      // Sends a peer never took and receives given up on (it timed out or died): cancelled,
      // else MPI_Finalize waits on them.
      for (auto& p : pending_) {
        MPI_Cancel(&p->request);
        MPI_Request_free(&p->request);
      }
      MPI_Comm_free(&comm_);
    }
    if (owns_mpi_) {
      MPI_Finalize();
      pending_.clear();  // MPI no longer touches their buffers
    } else {
      // MPI lives on and a freed receive may still complete into its buffer: those few bytes
      // are left to the process.
      for (auto& p : pending_) static_cast<void>(p.release());
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string describe() const override {
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(version, &len);
    std::string v(version, static_cast<std::size_t>(len));
    if (auto nl = v.find_first_of(",\n"); nl != std::string::npos) v.resize(nl);
    return fmt::format("MPI ({}, {}), rank {} of {}", v, level_name(level_), rank_, size_);
  }

  // Returns as soon as the message is handed to MPI, as the interface promises: a large message
  // goes by rendezvous and completes only once the peer takes it, which may be after this
  // process has stopped waiting for anything (a report to a process 0 that is behind). Pending
  // sends complete in later calls' progress, or are cancelled when the communicator ends.
  void send(int dst, std::uint64_t tag, std::string bytes, Deadline /*deadline*/) override {
    if (bytes.size() > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
      throw Error(Errc::invalid_argument, "collective message larger than 2 GiB");
    }
    // On the heap: MPI reads the bytes until the request completes.
    auto p = std::make_unique<Pending>();
    p->bytes = std::move(bytes);
    std::lock_guard lock(mu_);
    reap_locked();
    check(MPI_Isend(p->bytes.data(), static_cast<int>(p->bytes.size()), MPI_BYTE, dst,
                    mpi_tag(tag), comm_, &p->request),
          "MPI_Isend", dst);
    int done = 0;
    check(MPI_Test(&p->request, &done, MPI_STATUS_IGNORE), "MPI_Test", dst);
    if (done == 0) pending_.push_back(std::move(p));
  }

  // Polls for the message, then receives it without blocking either: MPI_Mrecv of a rendezvous
  // message waits for the sender's progress, which a stopped sender never makes, and would hold
  // the mutex every other call of ckpt needs.
  std::string recv(int src, std::uint64_t tag, Deadline deadline) override {
    Backoff backoff;
    std::unique_ptr<Pending> in;
    for (;;) {
      {
        std::lock_guard lock(mu_);
        if (!in) {
          int flag = 0;
          MPI_Message message;
          MPI_Status status;
          check(MPI_Improbe(src, mpi_tag(tag), comm_, &flag, &message, &status), "MPI_Improbe",
                src);
          if (flag != 0) {
            int count = 0;
            MPI_Get_count(&status, MPI_BYTE, &count);
            in = std::make_unique<Pending>();
            in->bytes.assign(static_cast<std::size_t>(count), '\0');
            check(MPI_Imrecv(in->bytes.data(), count, MPI_BYTE, &message, &in->request),
                  "MPI_Imrecv", src);
          }
        }
        if (in) {
          int done = 0;
          check(MPI_Test(&in->request, &done, MPI_STATUS_IGNORE), "MPI_Test", src);
          if (done != 0) return std::move(in->bytes);
        }
        if (std::chrono::steady_clock::now() >= deadline) {
          if (in) pending_.push_back(std::move(in));  // MPI may still write into its buffer
          throw Error(Errc::timeout,
                      fmt::format("process {} did not answer before the deadline", src));
        }
      }
      backoff.wait();
    }
  }

 private:
  struct Pending {
    std::string bytes;
    MPI_Request request = MPI_REQUEST_NULL;
  };

  // Polling: MPI makes progress only inside MPI calls (Open MPI has no progress thread here), so
  // the first checks come quickly; then the sleep grows to 1 ms, which bounds the added latency.
  struct Backoff {
    std::chrono::microseconds sleep{0};
    void wait() {
      if (sleep.count() == 0) {
        std::this_thread::yield();
        sleep = std::chrono::microseconds(20);
        return;
      }
      std::this_thread::sleep_for(sleep);
      sleep = std::min(sleep * 2, std::chrono::microseconds(1000));
    }
  };

  int mpi_tag(std::uint64_t tag) const {
    return static_cast<int>(tag % static_cast<std::uint64_t>(tag_ub_));
  }

  void check(int rc, const char* what, int peer) const {
    if (rc != MPI_SUCCESS) {
      throw Error(Errc::io, fmt::format("{} with process {} failed: {}", what, peer, mpi_error(rc)));
    }
  }

  void reap_locked() {
    for (auto it = pending_.begin(); it != pending_.end();) {
      int done = 0;
      MPI_Test(&(*it)->request, &done, MPI_STATUS_IGNORE);
      it = done != 0 ? pending_.erase(it) : std::next(it);
    }
  }

  std::mutex mu_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  int level_ = MPI_THREAD_SINGLE;
  int tag_ub_ = 32767;
  bool owns_mpi_ = false;
  std::list<std::unique_ptr<Pending>> pending_;  // requests nobody waits for any more
};

}  // namespace

std::shared_ptr<Communicator> make_mpi_communicator(int* argc, char*** argv) {
  return std::make_shared<MpiCommunicator>(argc, argv);
}

bool launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr;
}

}  // namespace ckpt
