#include "runtime/communicator.h"

#include <fmt/format.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <tuple>

#include "io/error.h"

namespace ckpt {

namespace {

void put_u64(std::string& out, std::uint64_t v) {
  char b[8];
  std::memcpy(b, &v, 8);
  out.append(b, 8);
}

std::uint64_t get_u64(std::string_view in, std::size_t& at) {
  if (in.size() - at < 8) throw Error(Errc::corrupt, "truncated collective message");
  std::uint64_t v;
  std::memcpy(&v, in.data() + at, 8);
  at += 8;
  return v;
}

}  // namespace

std::string pack_strings(const std::vector<std::string>& parts) {
  std::string out;
  put_u64(out, parts.size());
  for (const auto& p : parts) {
    put_u64(out, p.size());
    out += p;
  }
  return out;
}

std::vector<std::string> unpack_strings(std::string_view in) {
  std::size_t at = 0;
  std::uint64_t n = get_u64(in, at);
  if (n > in.size()) throw Error(Errc::corrupt, "bad collective message");
  std::vector<std::string> out;
  out.reserve(n);
  for (std::uint64_t i = 0; i < n; ++i) {
    std::uint64_t len = get_u64(in, at);
    if (len > in.size() - at) throw Error(Errc::corrupt, "truncated collective message");
    out.emplace_back(in.substr(at, len));
    at += len;
  }
  return out;
}

std::vector<std::string> Communicator::gather(std::uint64_t tag, std::string mine, int root,
                                              Deadline deadline) {
  if (rank() != root) {
    send(root, tag, std::move(mine), deadline);
    return {};
  }
  std::vector<std::string> all(static_cast<std::size_t>(size()));
  all[static_cast<std::size_t>(root)] = std::move(mine);
  for (int r = 0; r < size(); ++r) {
    if (r != root) all[static_cast<std::size_t>(r)] = recv(r, tag, deadline);
  }
  return all;
}

std::string Communicator::broadcast(std::uint64_t tag, std::string bytes, int root,
                                    Deadline deadline) {
  if (rank() != root) return recv(root, tag, deadline);
  for (int r = 0; r < size(); ++r) {
    if (r != root) send(r, tag, bytes, deadline);
  }
  return bytes;
}

std::vector<std::string> Communicator::allgather(std::uint64_t tag, std::string mine,
                                                 Deadline deadline) {
  // Gather to 0 and broadcast back: the two directions never match each other's messages.
  std::vector<std::string> all = gather(tag, std::move(mine), 0, deadline);
  return unpack_strings(broadcast(tag, rank() == 0 ? pack_strings(all) : std::string(), 0, deadline));
}

void Communicator::barrier(std::uint64_t tag, Deadline deadline) {
  allgather(tag, std::string(), deadline);
}

Agreement Communicator::agree(std::uint64_t tag, const Status& mine, Deadline deadline) {
  std::vector<std::string> all =
      allgather(tag, (mine.ok ? "1" : "0") + mine.message, deadline);
  Agreement out;
  for (std::size_t r = 0; r < all.size(); ++r) {
    if (!all[r].empty() && all[r][0] == '1') continue;
    out.ok = false;
    out.failed_rank = static_cast<int>(r);
    out.message = fmt::format("process {}: {}", r, all[r].empty() ? "" : all[r].substr(1));
    break;
  }
  return out;
}

void SingleProcessCommunicator::send(int dst, std::uint64_t, std::string, Deadline) {
  throw Error(Errc::invalid_argument,
              fmt::format("single-process communicator has no process {}", dst));
}

std::string SingleProcessCommunicator::recv(int src, std::uint64_t, Deadline) {
  throw Error(Errc::invalid_argument,
              fmt::format("single-process communicator has no process {}", src));
}

// ---- LocalGroup ------------------------------------------------------------------------------

struct LocalGroup::State {
  std::mutex mu;
  std::condition_variable cv;
  // (destination, source, tag) -> messages in order
  std::map<std::tuple<int, int, std::uint64_t>, std::deque<std::string>> boxes;
  std::set<int> silenced;
};

namespace {

class LocalMember final : public Communicator {
 public:
  LocalMember(std::shared_ptr<LocalGroup::State> s, int rank, int size)
      : state_(std::move(s)), rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string describe() const override {
    return fmt::format("in-process group of {} (rank {})", size_, rank_);
  }
  void send(int dst, std::uint64_t tag, std::string bytes, Deadline) override {
    std::lock_guard lock(state_->mu);
    if (state_->silenced.count(rank_) != 0) return;
    state_->boxes[{dst, rank_, tag}].push_back(std::move(bytes));
    state_->cv.notify_all();
  }
  std::string recv(int src, std::uint64_t tag, Deadline deadline) override {
    std::unique_lock lock(state_->mu);
    const auto key = std::make_tuple(rank_, src, tag);
    for (;;) {
      auto it = state_->boxes.find(key);
      if (it != state_->boxes.end() && !it->second.empty()) {
        std::string out = std::move(it->second.front());
        it->second.pop_front();
        if (it->second.empty()) state_->boxes.erase(it);
        return out;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        throw Error(Errc::timeout,
                    fmt::format("process {} did not answer before the deadline", src));
      }
      state_->cv.wait_until(lock, deadline);
    }
  }

 private:
  std::shared_ptr<LocalGroup::State> state_;
  int rank_;
  int size_;
};

}  // namespace

LocalGroup::LocalGroup(int count) : state_(std::make_shared<State>()) {
  for (int r = 0; r < count; ++r) members_.push_back(std::make_shared<LocalMember>(state_, r, count));
}

LocalGroup::~LocalGroup() = default;

std::shared_ptr<Communicator> LocalGroup::member(int rank) const {
  return members_.at(static_cast<std::size_t>(rank));
}

void LocalGroup::silence(int rank) {
  std::lock_guard lock(state_->mu);
  state_->silenced.insert(rank);
}

}  // namespace ckpt
