#include "io/fault_engine.h"

#include <algorithm>
#include <optional>

#include "io/file.h"

namespace ckpt::io {

FaultEngine::FaultEngine(std::unique_ptr<Engine> inner) : inner_(std::move(inner)) {}

FaultEngine::~FaultEngine() {
  std::vector<Held> hung;
  {
    std::unique_lock lock(mu_);
    released_.wait(lock, [&] {
      return std::none_of(hung_.begin(), hung_.end(), [](const Held& h) { return h.stuck; });
    });
    hung.swap(hung_);
  }
  for (auto& h : hung) h.done(-ECANCELED);
  // inner_ is destroyed after this body: it waits for the requests it still has in flight.
}

void FaultEngine::submit(const Request& request, Completion done) {
  std::optional<FaultKind> fault;
  int error = 0;
  {
    std::lock_guard lock(mu_);
    std::uint64_t seen = ++seen_[static_cast<int>(request.op)];
    if (armed_ && request.op == spec_.op &&
        (seen == spec_.nth || (spec_.sticky && seen > spec_.nth))) {
      ++injected_;
      fault = spec_.kind;
      error = spec_.error;
      if (*fault == FaultKind::hang || *fault == FaultKind::stuck) {
        hung_.push_back(Held{request, std::move(done), *fault == FaultKind::stuck});
        return;
      }
    }
  }
  if (!fault) {
    inner_->submit(request, std::move(done));
  } else if (*fault == FaultKind::error) {
    done(-error);
  } else {  // short_transfer
    Request half = request;
    half.len = request.len / 2 / kAlignment * kAlignment;
    if (half.len == 0 || request.op == Request::Op::fsync) {
      done(0);
    } else {
      inner_->submit(half, std::move(done));
    }
  }
}

bool FaultEngine::register_buffers(std::span<const iovec> buffers) {
  return inner_->register_buffers(buffers);
}

void FaultEngine::unregister_buffers() { inner_->unregister_buffers(); }

void FaultEngine::arm(const FaultSpec& spec) {
  std::lock_guard lock(mu_);
  spec_ = spec;
  armed_ = true;
  for (auto& n : seen_) n = 0;
}

void FaultEngine::disarm() {
  std::lock_guard lock(mu_);
  armed_ = false;
}

std::size_t FaultEngine::release_hung() {
  std::size_t n;
  {
    // Forwarded under the lock, so that a destructor waiting for stuck requests cannot destroy
    // inner_ before they reach it (the drivers' submit() never runs a completion inline).
    // Notified under the lock too: once it is released, this call touches nothing of *this.
    std::lock_guard lock(mu_);
    n = hung_.size();
    for (auto& h : hung_) inner_->submit(h.request, std::move(h.done));
    hung_.clear();
    released_.notify_all();
  }
  return n;
}

std::size_t FaultEngine::hung() const {
  std::lock_guard lock(mu_);
  return hung_.size();
}

std::uint64_t FaultEngine::injected() const {
  std::lock_guard lock(mu_);
  return injected_;
}

}  // namespace ckpt::io
