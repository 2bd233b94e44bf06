#include "io/tracking_engine.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace ckpt::io {

namespace {

// Never destroyed: abandoned requests may complete during static destruction, and whatever they
// touch must still be there.
struct Graveyard {
  std::mutex mu;
  std::vector<std::unique_ptr<Engine>> engines;
  std::vector<AlignedBuffer> memory;
};
Graveyard& graveyard() {
  static auto* g = new Graveyard;
  return *g;
}

std::string fd_path(int fd) {
  char buf[4096];
  ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : "fd " + std::to_string(fd);
}

}  // namespace

TrackingEngine::TrackingEngine(std::unique_ptr<Engine> inner) : inner_(std::move(inner)) {}

TrackingEngine::~TrackingEngine() = default;

void TrackingEngine::submit(const Request& request, Completion done) {
  std::uint64_t id;
  {
    std::lock_guard lock(state_->mu);
    id = state_->next++;
    state_->in_flight.emplace(id, Entry{request, std::chrono::steady_clock::now()});
  }
  inner_->submit(request, [state = state_, id, done = std::move(done)](std::int64_t result) {
    done(result);
    std::lock_guard lock(state->mu);
    state->in_flight.erase(id);
    if (state->in_flight.empty()) state->idle.notify_all();
  });
}

bool TrackingEngine::register_buffers(std::span<const iovec> buffers) {
  return inner_->register_buffers(buffers);
}

void TrackingEngine::unregister_buffers() { inner_->unregister_buffers(); }

std::size_t TrackingEngine::in_flight() const {
  std::lock_guard lock(state_->mu);
  return state_->in_flight.size();
}

bool TrackingEngine::wait_idle(std::chrono::steady_clock::time_point deadline) const {
  std::unique_lock lock(state_->mu);
  return state_->idle.wait_until(lock, deadline, [&] { return state_->in_flight.empty(); });
}

std::vector<std::string> TrackingEngine::describe_in_flight() const {
  std::vector<std::pair<std::uint64_t, Entry>> entries;
  {
    std::lock_guard lock(state_->mu);
    entries.assign(state_->in_flight.begin(), state_->in_flight.end());
  }
  std::sort(entries.begin(), entries.end(), [](auto& a, auto& b) { return a.first < b.first; });
  const auto now = std::chrono::steady_clock::now();
  std::vector<std::string> out;
  for (const auto& [id, e] : entries) {
    const Request& r = e.request;
    const char* op = r.op == Request::Op::read ? "read" : r.op == Request::Op::write ? "write" : "fsync";
    char age[32];
    std::snprintf(age, sizeof age, "%.3f s", std::chrono::duration<double>(now - e.since).count());
    std::string line = op;
    if (r.op != Request::Op::fsync) {
      line += " of " + std::to_string(r.len) + " bytes at offset " + std::to_string(r.offset);
    }
    out.push_back(line + " of " + fd_path(r.fd) + ", in flight for " + age);
  }
  return out;
}

void abandon_engine(std::unique_ptr<Engine> engine) {
  auto& g = graveyard();
  std::lock_guard lock(g.mu);
  g.engines.push_back(std::move(engine));
}

void abandon_memory(std::vector<AlignedBuffer> memory) {
  auto& g = graveyard();
  std::lock_guard lock(g.mu);
  for (auto& m : memory) g.memory.push_back(std::move(m));
}

}  // namespace ckpt::io
