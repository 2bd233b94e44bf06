#include "runtime/incremental.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "io/durable.h"
#include "io/error.h"
#include "io/file.h"
#include "io/log.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/commit.h"
#include "runtime/crc32c.h"
#include "runtime/limits.h"

namespace ckpt {

namespace fs = std::filesystem;

namespace {

using Fd = ScopedFd;

constexpr std::size_t kTrailerBytes = 16;  // runtime/manifest.h

// Up to `n` bytes of fd from `offset` (fewer at the end of the file).
std::string read_range(int fd, std::uint64_t offset, std::size_t n, const std::string& path) {
  std::string out(n, '\0');
  std::size_t at = 0;
  while (at < out.size()) {
    ssize_t got = ::pread(fd, out.data() + at, out.size() - at, static_cast<off_t>(offset + at));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw sys_error("read", path, errno);
    if (got == 0) break;
    at += static_cast<std::size_t>(got);
  }
  out.resize(at);
  return out;
}

// The alignment a segment keeps when packed: what its offset in the planned layout had, at
// most 4096 (the planned layout gives every leaf its natural alignment, section 2).
std::uint64_t kept_alignment(std::uint64_t file_offset) {
  constexpr std::uint64_t kMax = 4096;
  if (file_offset == 0) return kMax;
  return std::min<std::uint64_t>(file_offset & (~file_offset + 1), kMax);
}

}  // namespace

ScopedFd::~ScopedFd() {
  if (fd >= 0) ::close(fd);
}

bool worth_sharing(std::uint64_t file_size, std::uint64_t used) {
  if (file_size == 0 || used == 0) return false;
  std::uint64_t dead = file_size > used ? file_size - used : 0;
  return dead <= std::max<std::uint64_t>(used, io::kAlignment);
}

IncrementalSave::IncrementalSave(const Manifest& /*skeleton*/, const std::vector<Unit>& units)
    : units_(units), out_(units.size()) {
  for (std::size_t i = 0; i < units.size(); ++i) out_[i].segments.resize(units[i].segments.size());
}

void IncrementalSave::attach_base(const std::string& base_dir, const std::string& tmp_dir,
                                  const std::string& run_dir) {
  try {
    Fd dir(-1);
    std::vector<bool> shareable;
    std::shared_ptr<const Manifest> held =
        open_base(base_dir, cached_, cached_trailer_, dir, shareable);
    if (!held) return;
    const Manifest& base = *held;
    std::string origin_of_base = base_dir;
    if (!run_dir.empty()) {
      try {
        origin_of_base = suffix_in_run_dir(run_dir, base_dir);
      } catch (const Error&) {
      }
    }
    Fd tmp(::open(tmp_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (tmp.fd < 0) throw sys_error("open", tmp_dir, errno);
    std::vector<std::int64_t> mapped(base.data_files.size(), -1);  // base file -> ours
    for (std::uint32_t f = 0; f < base.data_files.size(); ++f) {
      const FileInfo& bf = base.data_files[f];
      if (!shareable[f]) continue;
      auto index = static_cast<std::uint32_t>(1 + linked_files_.size());
      std::string name = data_file_name(index);
      if (::linkat(dir.fd, bf.name.c_str(), tmp.fd, name.c_str(), 0) != 0) {
        int err = errno;
        log().info("incremental save: cannot link {}/{} ({}); its bytes are written again",
                   base_dir, bf.name, std::strerror(err));
        continue;
      }
      // The link is the file the base's manifest describes: same directory, and a committed
      // checkpoint's files never change. Its size is checked once more all the same.
      struct stat st {};
      if (::fstatat(tmp.fd, name.c_str(), &st, 0) != 0 ||
          static_cast<std::uint64_t>(st.st_size) != bf.size) {
        ::unlinkat(tmp.fd, name.c_str(), 0);
        log().warn("incremental save: {}/{} does not have the size its manifest says; not shared",
                   base_dir, bf.name);
        continue;
      }
      mapped[f] = index;
      linked_files_.push_back(
          FileInfo{name, bf.size, 0, bf.origin.empty() ? origin_of_base : bf.origin});
    }
    for (const auto& b : base.blocks) {
      if (mapped[b.file] >= 0)
        linked_blocks_.push_back(
            {static_cast<std::uint32_t>(mapped[b.file]), b.offset, b.length, b.crc32c});
    }
    for (const auto& leaf : base.leaves) {
      for (const auto& e : leaf.extents) {
        if (e.has_hash && mapped[e.file] >= 0)
          index_.try_emplace(
              e.hash, Location{static_cast<std::uint32_t>(mapped[e.file]), e.offset, e.length});
      }
    }
  } catch (const Error& e) {
    // Links made so far are names in the temporary directory that no extent will use:
    // drop_unused_links removes them before the commit.
    log().warn("incremental save: cannot use the base {}: {}; writing everything", base_dir,
               e.what());
    index_.clear();
  }
}

std::shared_ptr<const Manifest> read_manifest_at(int dir_fd, const std::string& dir,
                                                 const std::shared_ptr<const Manifest>& cached,
                                                 const std::string& cached_trailer) {
  const std::string path = dir + "/" + std::string(kManifestName);
  Fd f(::openat(dir_fd, kManifestName.data(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) throw sys_error("open", path, errno);
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) throw sys_error("fstat", path, errno);
  auto size = static_cast<std::uint64_t>(st.st_size);
  if (size > kMaxManifestBytes) throw Error(Errc::corrupt, "manifest too large", path);
  if (cached && size >= kTrailerBytes && cached_trailer.size() == kTrailerBytes &&
      read_range(f.fd, size - kTrailerBytes, kTrailerBytes, path) == cached_trailer) {
    return cached;
  }
  return std::make_shared<const Manifest>(
      decode_manifest(read_range(f.fd, 0, static_cast<std::size_t>(size), path), path));
}

std::shared_ptr<const Manifest> open_base(const std::string& base_dir,
                                          const std::shared_ptr<const Manifest>& cached,
                                          const std::string& cached_trailer, ScopedFd& dir,
                                          std::vector<bool>& shareable) {
  dir.fd = ::open(base_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir.fd < 0) {
    if (errno == ENOENT) {
      log().info("incremental save: the base {} is gone; writing everything", base_dir);
      return nullptr;
    }
    throw sys_error("open", base_dir, errno);
  }
  std::shared_ptr<const Manifest> base = read_manifest_at(dir.fd, base_dir, cached, cached_trailer);
  bool hashed = false;
  shareable = shareable_files(*base, hashed);
  if (!hashed) {
    log().info(
        "incremental save: the base {} has no content hashes (not an incremental save); "
        "writing everything",
        base_dir);
    return nullptr;
  }
  return base;
}

std::vector<bool> shareable_files(const Manifest& base, bool& hashed) {
  // Live bytes per base file: what the base's own leaves use of it.
  std::vector<std::uint64_t> live(base.data_files.size(), 0);
  hashed = false;
  for (const auto& leaf : base.leaves) {
    for (const auto& e : leaf.extents) {
      live[e.file] += e.length;
      hashed = hashed || e.has_hash;
    }
  }
  std::vector<bool> out(base.data_files.size(), false);
  for (std::size_t f = 0; f < out.size(); ++f) out[f] = worth_sharing(base.data_files[f].size, live[f]);
  return out;
}

std::string manifest_trailer(const std::string& dir) {
  const std::string path = dir + "/" + std::string(kManifestName);
  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st {};
  if (f.fd < 0 || ::fstat(f.fd, &st) != 0 ||
      static_cast<std::uint64_t>(st.st_size) < kTrailerBytes) {
    return {};
  }
  try {
    return read_range(f.fd, static_cast<std::uint64_t>(st.st_size) - kTrailerBytes, kTrailerBytes,
                      path);
  } catch (const Error&) {
    return {};
  }
}

const IncrementalSave::Location* IncrementalSave::find(const ContentHash& h,
                                                       std::uint64_t len) const {
  auto it = index_.find(h);
  return it != index_.end() && it->second.length == len ? &it->second : nullptr;
}

void IncrementalSave::pack(std::size_t i, std::byte* buf,
                           const std::vector<const std::byte*>* sources) {
  const Unit& u = units_[i];
  UnitOut& out = out_[i];
  std::uint64_t cursor = 0;  // end of the packed bytes
  for (std::size_t k = 0; k < u.segments.size(); ++k) {
    const Segment& s = u.segments[k];
    Placed& p = out.segments[k];
    const std::byte* src =
        sources != nullptr ? (*sources)[s.leaf] + s.leaf_offset : buf + s.unit_offset;
    p.hash = content_hash(src, s.len);
    if (const Location* at = find(p.hash, s.len)) {
      p.file = at->file;
      p.offset = at->offset;
      continue;
    }
    out.changed = true;
    // Packed in file order, each at the alignment it had: the destination never passes the
    // source (both grow with the same alignments), so moving in order overwrites nothing unread.
    std::uint64_t dst = io::align_up(cursor, kept_alignment(u.offset + s.unit_offset));
    if (dst > cursor) std::memset(buf + cursor, 0, dst - cursor);
    if (sources != nullptr) {
      std::memcpy(buf + dst, src, s.len);
    } else if (dst != s.unit_offset) {
      std::memmove(buf + dst, src, s.len);
    }
    p.file = 0;
    p.offset = dst;
    cursor = dst + s.len;
  }
  out.packed_end = cursor;
}

IncrementalSave::Write IncrementalSave::process_unit(std::size_t i, std::byte* buf) {
  pack(i, buf, nullptr);
  return place_packed(i, buf);
}

bool IncrementalSave::pack_from_sources(std::size_t i, const std::vector<const std::byte*>& sources,
                                        std::byte* buf) {
  pack(i, buf, &sources);
  return out_[i].changed;
}

IncrementalSave::Write IncrementalSave::place_packed(std::size_t i, std::byte* buf) {
  UnitOut& out = out_[i];
  const std::uint64_t cursor = out.packed_end;
  std::uint64_t length = io::align_up(cursor, io::kAlignment);
  if (length == 0) return {};
  if (length > cursor) std::memset(buf + cursor, 0, length - cursor);
  out.crc = crc32c(buf, length);
  out.length = length;
  out.offset = own_end_.fetch_add(length);
  for (Placed& p : out.segments) {
    if (p.file == 0) p.offset += out.offset;
  }
  return {out.offset, out.length};
}

IncrementalSave::Write IncrementalSave::reserve_whole(std::size_t i) {
  UnitOut& out = out_[i];
  out.length = units_[i].length;
  out.offset = own_end_.fetch_add(out.length);
  return {out.offset, out.length};
}

void IncrementalSave::hash_whole(std::size_t i, const std::byte* buf) {
  const Unit& u = units_[i];
  UnitOut& out = out_[i];
  for (std::size_t k = 0; k < u.segments.size(); ++k) {
    const Segment& s = u.segments[k];
    Placed& p = out.segments[k];
    p.hash = content_hash(buf + s.unit_offset, s.len);
    p.file = 0;
    p.offset = out.offset + s.unit_offset;
    if (find(p.hash, s.len) == nullptr) out.changed = true;
  }
  out.crc = crc32c(buf, out.length);
}

void IncrementalSave::drop_unused_links(const std::string& tmp_dir) {
  if (linked_files_.empty()) return;
  std::vector<bool> used(1 + linked_files_.size(), false);
  for (const auto& o : out_) {
    for (const auto& p : o.segments) used[p.file] = true;
  }
  // New indices are dense and never above the old ones: renaming in ascending order always
  // finds the target name free.
  std::vector<std::uint32_t> remap(used.size(), 0);
  std::vector<FileInfo> kept;
  for (std::uint32_t k = 1; k < used.size(); ++k) {
    const std::string old_path = tmp_dir + "/" + linked_files_[k - 1].name;
    if (!used[k]) {
      if (::unlink(old_path.c_str()) != 0) throw sys_error("unlink", old_path, errno);
      continue;
    }
    auto index = static_cast<std::uint32_t>(1 + kept.size());
    remap[k] = index;
    FileInfo f = linked_files_[k - 1];
    f.name = data_file_name(index);
    if (index != k) {
      const std::string new_path = tmp_dir + "/" + f.name;
      if (::rename(old_path.c_str(), new_path.c_str()) != 0)
        throw sys_error("rename", old_path, errno);
    }
    kept.push_back(std::move(f));
  }
  linked_files_ = std::move(kept);
  std::erase_if(linked_blocks_, [&](const BlockInfo& b) { return !used[b.file]; });
  for (auto& b : linked_blocks_) b.file = remap[b.file];
  for (auto& o : out_) {
    for (auto& p : o.segments) p.file = remap[p.file];
  }
}

std::vector<std::uint8_t> IncrementalSave::changed_units() const {
  // Without a base nothing was compared: that says nothing about what changes.
  std::vector<std::uint8_t> out(out_.size(), 0);
  if (!has_base()) return out;
  for (std::size_t i = 0; i < out_.size(); ++i) out[i] = out_[i].changed ? 1 : 0;
  return out;
}

Manifest IncrementalSave::build_manifest(const Manifest& skeleton) const {
  Manifest m = skeleton;  // its tree; the extents, data files and blocks are this save's
  for (auto& l : m.leaves) l.extents.clear();
  // Units are in file order and a leaf is contiguous in the planned layout, so its segments
  // come in leaf order.
  for (std::size_t i = 0; i < units_.size(); ++i) {
    const Unit& u = units_[i];
    for (std::size_t k = 0; k < u.segments.size(); ++k) {
      const Segment& s = u.segments[k];
      const Placed& p = out_[i].segments[k];
      ExtentInfo e{p.file, p.offset, s.len, s.len, 0, s.leaf_offset, 0};
      e.has_hash = true;
      e.hash = p.hash;
      m.leaves[s.leaf].extents.push_back(e);
    }
  }
  m.data_files = {FileInfo{data_file_name(0), own_end_.load(), 0, {}}};
  for (const auto& f : linked_files_) m.data_files.push_back(f);
  std::vector<BlockInfo> own;
  for (const auto& o : out_) {
    if (o.length > 0) own.push_back({0, o.offset, o.length, o.crc});
  }
  std::sort(own.begin(), own.end(),
            [](const BlockInfo& a, const BlockInfo& b) { return a.offset < b.offset; });
  m.blocks = std::move(own);
  m.blocks.insert(m.blocks.end(), linked_blocks_.begin(), linked_blocks_.end());
  check_writable(m);
  return m;
}

std::uint64_t IncrementalSave::stored_bytes() const {
  std::uint64_t n = own_end_.load();
  for (const auto& f : linked_files_) n += f.size;
  return n;
}

StorageReport storage_report(const std::string& dir, const Manifest& m) {
  StorageReport r;
  r.referenced = m.total_bytes;
  for (const auto& f : m.data_files) {
    struct stat st {};
    std::string path = dir + "/" + f.name;
    if (::stat(path.c_str(), &st) != 0) {
      r.links.push_back(0);
      continue;
    }
    r.links.push_back(st.st_nlink);
    (st.st_nlink > 1 ? r.shared : r.owned) += f.size;
  }
  return r;
}

void export_checkpoint(const std::string& src_dir, const std::string& dst_dir) {
  const std::string src = clean_checkpoint_dir(src_dir);
  const std::string dst = clean_checkpoint_dir(dst_dir);
  if (src == dst) throw Error(Errc::invalid_argument, "export onto itself", dst);
  Manifest m = read_manifest(src);
  const std::string tmp = make_tmp_dir(dst);
  try {
    // Data files: copied block by block, each block's CRC32C checked on the way.
    std::size_t next_block = 0;
    for (std::uint32_t f = 0; f < m.data_files.size(); ++f) {
      const std::string in_path = src + "/" + m.data_files[f].name;
      io::File in = io::open_buffered(in_path, io::OpenMode::read);
      if (in.size() != m.data_files[f].size) {
        throw Error(
            Errc::corrupt,
            fmt::format("file is {} bytes, the manifest says {}", in.size(), m.data_files[f].size),
            in_path);
      }
      io::File out = io::open_buffered(tmp + "/" + m.data_files[f].name, io::OpenMode::write_new);
      for (; next_block < m.blocks.size() && m.blocks[next_block].file == f; ++next_block) {
        const BlockInfo& b = m.blocks[next_block];
        const std::string block = read_range(in.fd(), b.offset, b.length, in_path);
        if (block.size() < b.length) {
          throw Error(Errc::corrupt, "file shorter than its blocks", in_path);
        }
        if (crc32c(block.data(), b.length) != b.crc32c) {
          throw Error(
              Errc::corrupt,
              fmt::format("checksum mismatch in the block at offset {} ({} bytes) holding {}",
                          b.offset, b.length,
                          block_leaves(m, static_cast<std::uint32_t>(next_block))),
              in_path);
        }
        out.write_all(block);
      }
      out.sync();
      out.close();
    }
    for (const auto& f : m.json_files) {
      io::write_new_file(tmp + "/" + f.name, read_checked_file(src, m, f.name));
    }
    for (auto& f : m.data_files) f.origin.clear();
    io::write_new_file(tmp + "/" + std::string(kManifestName), encode_manifest(m));
    io::fsync_dir(tmp, "checkpoint_dir");
    io::commit_directory(tmp, dst);
    io::forget_live_tmp(tmp);
  } catch (...) {
    abandon_tmp_dir(tmp);
    throw;
  }
}

}  // namespace ckpt
