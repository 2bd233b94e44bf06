#pragma once
// The communicator seam of multi-process (sharded) checkpoints (docs/design.md, section 14).
//
// A Communicator connects the processes of one job: rank() in [0, size()). The collective saves of
// the Runtime use it for a handful of small messages per save (the structure check at save(), the
// commit's gather and outcome, register_latest's outcome). Rules every implementation keeps:
//  - Messages are matched by (source, tag), never by call order: a save's commit and another
//    save's structure check may run at the same time on different threads, and each uses tags of
//    its own. Tags come from a sequence number every process assigns in program order (the n-th
//    collective save of a Runtime has the same number everywhere), so no extra round is needed
//    to agree on them.
//  - Every wait has a deadline. A peer that does not answer in time is an Error(timeout) naming
//    that peer, never a hang: a stuck process fails the others' saves instead of blocking them.
//  - Any thread may call, several at once (the implementations serialize what they must).
// The single-process implementation is the default and needs no MPI; the MPI one lives in
// runtime/mpi_communicator.h, built only when MPI is found.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ckpt {

using Deadline = std::chrono::steady_clock::time_point;

// A process's verdict in a collective step: ok, or its error message.
struct Status {
  bool ok = true;
  std::string message;
  static Status failure(std::string why) { return Status{false, std::move(why)}; }
};

// The outcome of agree(): ok when every process was; otherwise the lowest failed rank and its
// message ("process 2: write: ...: Input/output error").
struct Agreement {
  bool ok = true;
  int failed_rank = -1;
  std::string message;  // names the process
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "single process", "MPI (Open MPI 4.1.4, MPI_THREAD_SERIALIZED)", ...
  virtual std::string describe() const = 0;

  // Point-to-point, the primitives the collectives below are built from. send() returns once the
  // message is on its way (buffered); recv() waits for the message of (src, tag).
  // Both throw Error(timeout) at the deadline, naming the peer.
  virtual void send(int dst, std::uint64_t tag, std::string bytes, Deadline deadline) = 0;
  virtual std::string recv(int src, std::uint64_t tag, Deadline deadline) = 0;

  // Collectives: every process calls each with the same tag. Linear (the root talks to every
  // process in turn): the messages are small and process counts modest.
  // gather: the root gets every process's bytes, in rank order; the others get an empty vector.
  std::vector<std::string> gather(std::uint64_t tag, std::string mine, int root, Deadline deadline);
  std::vector<std::string> allgather(std::uint64_t tag, std::string mine, Deadline deadline);
  // The root's `bytes` on every process (the others' argument is ignored).
  std::string broadcast(std::uint64_t tag, std::string bytes, int root, Deadline deadline);
  void barrier(std::uint64_t tag, Deadline deadline);
  // Every process's status, agreed: the same Agreement on every process.
  Agreement agree(std::uint64_t tag, const Status& mine, Deadline deadline);

  // The number of the next collective operation (its tags: collective_tag(number, step)). Every
  // process numbers its operations in program order, whichever Runtime makes them, so the n-th
  // collective save or registration of each process belongs together.
  std::uint64_t next_sequence() noexcept { return sequence_.fetch_add(1); }

 private:
  std::atomic<std::uint64_t> sequence_{0};
};

// size() == 1: every collective returns the caller's own contribution at once.
class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string describe() const override { return "single process"; }
  // There is no peer: both throw Error(invalid_argument). The collectives never call them here.
  void send(int dst, std::uint64_t tag, std::string bytes, Deadline deadline) override;
  std::string recv(int src, std::uint64_t tag, Deadline deadline) override;
};

// `count` communicators joined in memory, one per thread: several "processes" inside one test
// process, so the collective protocol runs under the sanitizers and without a launcher.
// hang(rank) makes that member's sends vanish (a peer that stopped answering).
class LocalGroup {
 public:
  explicit LocalGroup(int count);
  ~LocalGroup();
  std::shared_ptr<Communicator> member(int rank) const;
  void silence(int rank);  // from now on, messages from `rank` are dropped

  struct State;

 private:
  std::shared_ptr<State> state_;
  std::vector<std::shared_ptr<Communicator>> members_;
};

// A list of byte strings as one message (length-prefixed), and back; unpack_strings throws
// Error(corrupt) on a message that is not one.
std::string pack_strings(const std::vector<std::string>& parts);
std::vector<std::string> unpack_strings(std::string_view message);

// Tags of one collective operation: its sequence number and a step within it.
inline std::uint64_t collective_tag(std::uint64_t seq, std::uint32_t step) {
  return seq * 8 + step;
}

}  // namespace ckpt
