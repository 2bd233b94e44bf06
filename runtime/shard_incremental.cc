// One process's part of an incremental collective save; the protocol is stated at the top of
// runtime/shard_incremental.h.
#include "runtime/shard_incremental.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "io/error.h"
#include "io/file.h"
#include "io/log.h"

namespace ckpt {

ShardIncremental::ShardIncremental(const Manifest& local, const std::vector<Unit>& units,
                                   std::uint32_t processes)
    : local_(local),
      units_(units),
      processes_(processes),
      hashes_(local.leaves.size()),
      placed_(local.leaves.size(), -1),
      file_(local.leaves.size(), 0) {}

ShardIncremental::~ShardIncremental() {
  if (base_fd_ >= 0) ::close(base_fd_);
}

void ShardIncremental::attach_base(const std::string& base_dir, const std::string& origin) {
  try {
    ScopedFd dir(-1);
    std::vector<bool> shareable;
    std::shared_ptr<const Manifest> base =
        open_base(base_dir, nullptr, std::string(), dir, shareable);
    if (!base) return;
    for (const auto& leaf : base->leaves) {
      for (const auto& e : leaf.extents) {
        if (e.has_hash && shareable[e.file])
          index_[e.hash].push_back({e.length, Location{e.file, e.offset}});
      }
    }
    base_ = std::move(base);
    base_dir_ = base_dir;
    origin_ = origin;
    base_fd_ = std::exchange(dir.fd, -1);
  } catch (const Error& e) {
    log().warn("incremental save: cannot use the base {}: {}; writing everything", base_dir,
               e.what());
    index_.clear();
  }
}

void ShardIncremental::hash_leaf(std::size_t l, const std::vector<std::byte*>& chunks) {
  const LeafInfo& leaf = local_.leaves[l];
  if (leaf.extents.empty()) return;
  const std::uint64_t begin = leaf.extents[0].offset;
  const std::uint64_t end = begin + leaf.nbytes;
  auto u = std::partition_point(units_.begin(), units_.end(),
                                [&](const Unit& x) { return x.offset + x.length <= begin; });
  XXH3_state_t* state = XXH3_createState();
  if (state == nullptr) throw std::bad_alloc();
  XXH3_128bits_reset(state);
  for (; u != units_.end() && u->offset < end; ++u) {
    std::uint64_t from = std::max(begin, u->offset);
    std::uint64_t to = std::min(end, u->offset + u->length);
    XXH3_128bits_update(state,
                        chunks[static_cast<std::size_t>(u - units_.begin())] + (from - u->offset),
                        to - from);
  }
  XXH128_hash_t h = XXH3_128bits_digest(state);
  XXH3_freeState(state);
  hashes_[l] = ContentHash{h.low64, h.high64};
}

std::vector<ShardIncremental::Write> ShardIncremental::place(const std::string& tmp_dir) {
  // The matches, and the base files they need linked.
  std::vector<std::int64_t> match_file(local_.leaves.size(), -1);
  std::vector<std::uint64_t> match_offset(local_.leaves.size(), 0);
  std::vector<int> link_state(base_ ? base_->data_files.size() : 0, 0);  // 0 unknown, 1 ok, -1 no
  for (std::size_t l = 0; l < local_.leaves.size(); ++l) {
    const LeafInfo& leaf = local_.leaves[l];
    if (leaf.extents.empty() || index_.empty()) continue;
    auto it = index_.find(hashes_[l]);
    if (it == index_.end()) continue;
    for (const auto& [length, at] : it->second) {
      if (length != leaf.nbytes) continue;
      match_file[l] = at.file;
      match_offset[l] = at.offset;
      break;
    }
  }
  ScopedFd tmp(-1);
  for (std::size_t l = 0; l < local_.leaves.size(); ++l) {
    if (match_file[l] < 0) continue;
    const auto f = static_cast<std::uint32_t>(match_file[l]);
    if (link_state[f] == 0) {
      if (tmp.fd < 0) {
        tmp.fd = ::open(tmp_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (tmp.fd < 0) throw sys_error("open", tmp_dir, errno);
      }
      const FileInfo& bf = base_->data_files[f];
      const std::uint32_t index = processes_ + f;
      const std::string name = data_file_name(index);
      link_state[f] = -1;
      struct stat src {
      }, dst{};
      if (::fstatat(base_fd_, bf.name.c_str(), &src, 0) != 0 ||
          static_cast<std::uint64_t>(src.st_size) != bf.size) {
        log().info(
            "incremental save: {}/{} is gone or not the size its manifest says; its bytes "
            "are written again",
            base_dir_, bf.name);
      } else if (::linkat(base_fd_, bf.name.c_str(), tmp.fd, name.c_str(), 0) != 0 &&
                 errno != EEXIST) {
        log().info("incremental save: cannot link {}/{} ({}); its bytes are written again",
                   base_dir_, bf.name, std::strerror(errno));
      } else if (::fstatat(tmp.fd, name.c_str(), &dst, 0) != 0 || dst.st_ino != src.st_ino ||
                 dst.st_dev != src.st_dev) {
        // Another process linked another file under this name: never expected (every process
        // uses process 0's base), but never trusted either.
        log().warn("incremental save: {}/{} is not {}/{}; its bytes are written again", tmp_dir,
                   name, base_dir_, bf.name);
      } else {
        link_state[f] = 1;
        LinkedFile lf;
        lf.index = index;
        lf.info = FileInfo{name, bf.size, 0, bf.origin.empty() ? origin_ : bf.origin};
        for (const auto& b : base_->blocks) {
          if (b.file == f) lf.blocks.push_back({index, b.offset, b.length, b.crc32c});
        }
        links_.push_back(std::move(lf));
      }
    }
    if (link_state[f] == 1) {
      file_[l] = processes_ + f;
      placed_[l] = static_cast<std::int64_t>(match_offset[l]);
    }
  }
  // The rest: the pages of the planned layout holding them, in planned order, runs of pages
  // joined, each run at the next free offset of the own file.
  std::vector<std::size_t> changed;
  for (std::size_t l = 0; l < local_.leaves.size(); ++l) {
    if (!local_.leaves[l].extents.empty() && placed_[l] < 0) changed.push_back(l);
  }
  std::sort(changed.begin(), changed.end(), [&](std::size_t a, std::size_t b) {
    return local_.leaves[a].extents[0].offset < local_.leaves[b].extents[0].offset;
  });
  struct Run {
    std::uint64_t begin, end, at;  // planned range, its offset in the own file
  };
  std::vector<Run> runs;
  for (std::size_t l : changed) {
    const std::uint64_t offset = local_.leaves[l].extents[0].offset;
    std::uint64_t begin = offset / io::kAlignment * io::kAlignment;
    std::uint64_t end = io::align_up(offset + local_.leaves[l].nbytes, io::kAlignment);
    if (!runs.empty() && begin <= runs.back().end) {
      runs.back().end = std::max(runs.back().end, end);
    } else {
      runs.push_back({begin, end, own_size_});
    }
    own_size_ = runs.back().at + (runs.back().end - runs.back().begin);
    placed_[l] = static_cast<std::int64_t>(runs.back().at + (offset - runs.back().begin));
  }
  std::vector<Write> writes;
  auto u = units_.begin();
  for (const Run& r : runs) {
    u = std::partition_point(u, units_.end(),
                             [&](const Unit& x) { return x.offset + x.length <= r.begin; });
    for (auto k = u; k != units_.end() && k->offset < r.end; ++k) {
      std::uint64_t from = std::max(r.begin, k->offset);
      std::uint64_t to = std::min(r.end, k->offset + k->length);
      writes.push_back({static_cast<std::size_t>(k - units_.begin()), from - k->offset,
                        r.at + (from - r.begin), to - from});
      blocks_.push_back({0, r.at + (from - r.begin), to - from, 0});
    }
  }
  if (base_fd_ >= 0) ::close(std::exchange(base_fd_, -1));
  return writes;
}

std::uint64_t ShardIncremental::stored_bytes() const {
  std::uint64_t n = own_size_;
  for (const auto& l : links_) n += l.info.size;
  return n;
}

Manifest ShardIncremental::local_result() const {
  Manifest m = local_;
  for (std::size_t l = 0; l < m.leaves.size(); ++l) {
    LeafInfo& leaf = m.leaves[l];
    if (leaf.extents.empty()) continue;
    ExtentInfo e{file_[l], static_cast<std::uint64_t>(placed_[l]), leaf.nbytes, leaf.nbytes, 0, 0,
                 0};
    e.has_hash = true;
    e.hash = hashes_[l];
    leaf.extents = {e};
  }
  m.data_files = {FileInfo{data_file_name(0), own_size_, 0, {}}};
  m.blocks = blocks_;
  return m;
}

}  // namespace ckpt
