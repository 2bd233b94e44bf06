#include "io/file.h"

#include <fcntl.h>
#include <linux/stat.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "io/error.h"
#include "io/log.h"

namespace ckpt::io {

namespace {
#ifdef MADV_POPULATE_WRITE
constexpr int kMadvPopulateWrite = MADV_POPULATE_WRITE;
#else
constexpr int kMadvPopulateWrite = 23;  // Linux 5.14
#endif
}  // namespace

File::File(File&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)), direct_(other.direct_) {}

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
    direct_ = other.direct_;
  }
  return *this;
}

File::~File() {
  if (fd_ >= 0 && ::close(fd_) != 0) {
    log().warn("close {}: {}", path_, std::strerror(errno));
  }
}

std::uint64_t File::size() const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) throw sys_error("fstat", path_, errno);
  return static_cast<std::uint64_t>(st.st_size);
}

void File::truncate(std::uint64_t size) {
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) throw sys_error("ftruncate", path_, errno);
}

void File::write_all(std::string_view data) {
  std::size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd_, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw sys_error("write", path_, errno);
    }
    done += static_cast<std::size_t>(n);
  }
}

void File::sync() {
  if (::fsync(fd_) != 0) throw sys_error("fsync", path_, errno);
}

void File::close() {
  if (fd_ < 0) return;
  int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) throw sys_error("close", path_, errno);
}

namespace {

int open_flags(OpenMode mode) {
  return mode == OpenMode::read ? (O_RDONLY | O_CLOEXEC)
                                : (O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC);
}

// Direct-IO alignment the file system demands for the file open at `fd`, 0 when unknown.
std::uint32_t dio_alignment(int fd) {
  struct statx stx {};
  if (::syscall(SYS_statx, fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) != 0) return 0;
  if (!(stx.stx_mask & STATX_DIOALIGN)) return 0;
  return std::max(stx.stx_dio_mem_align, stx.stx_dio_offset_align);
}

void warn_buffered_once(const std::string& path, std::string_view why) {
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {
    log().warn("O_DIRECT unavailable for {} ({}); using buffered IO with fsync", path, why);
  }
}

}  // namespace

File open_buffered(const std::string& path, OpenMode mode) {
  int fd = ::open(path.c_str(), open_flags(mode), 0644);
  if (fd < 0) throw sys_error(mode == OpenMode::read ? "open" : "create", path, errno);
  return File(fd, path, false);
}

File open_direct(const std::string& path, OpenMode mode, bool allow_direct) {
  if (!allow_direct) return open_buffered(path, mode);
  int fd = ::open(path.c_str(), open_flags(mode) | O_DIRECT, 0644);
  if (fd < 0 && errno == EINVAL) {
    // The file system refuses O_DIRECT. For write_new, open() may have created the file already.
    warn_buffered_once(path, "EINVAL");
    int flags = open_flags(mode) & ~O_EXCL;
    fd = ::open(path.c_str(), flags, 0644);
    if (fd < 0) throw sys_error("open", path, errno);
    return File(fd, path, false);
  }
  if (fd < 0) throw sys_error(mode == OpenMode::read ? "open" : "create", path, errno);
  std::uint32_t need = dio_alignment(fd);
  if (need > kAlignment || (need != 0 && kAlignment % need != 0)) {
    warn_buffered_once(path, "alignment " + std::to_string(need));
    int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_DIRECT) != 0) {
      int err = errno;
      ::close(fd);
      throw sys_error("fcntl", path, err);
    }
    return File(fd, path, false);
  }
  return File(fd, path, true);
}

namespace {

File open_limited(const std::string& path, std::size_t max_bytes, std::uint64_t& size) {
  File f = open_buffered(path, OpenMode::read);
  size = f.size();
  if (size > max_bytes) {
    throw Error(Errc::corrupt, "file larger than " + std::to_string(max_bytes) + " bytes", path);
  }
  return f;
}

// Reads up to `size` bytes from the start of `f` into `out`; returns how many (fewer at its end).
std::size_t read_all(const File& f, std::byte* out, std::size_t size, const std::string& path) {
  std::size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(f.fd(), out + done, size - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw sys_error("read", path, errno);
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

// The first `size` bytes of `f` (fewer at its end) in a string.
std::string read_string(const File& f, std::size_t size, const std::string& path) {
  std::string out(size, '\0');
  out.resize(read_all(f, reinterpret_cast<std::byte*>(out.data()), size, path));
  return out;
}

}  // namespace

std::string read_small_file(const std::string& path, std::size_t max_bytes) {
  std::uint64_t size = 0;
  File f = open_limited(path, max_bytes, size);
  return read_string(f, size, path);
}

FileBytes read_file_bytes(const std::string& path, std::size_t max_bytes) {
  std::uint64_t size = 0;
  File f = open_limited(path, max_bytes, size);
  FileBytes out;
  if (size < kAdviseHugeFrom) {
    out.small_ = read_string(f, size, path);
    return out;
  }
  try {
    out.big_ = AlignedBuffer(size);
  } catch (const Error& e) {
    throw Error(e.code(), "cannot map memory to read it into: " + std::string(e.what()), path,
                e.sys_errno());
  }
  out.size_ = read_all(f, out.big_.data(), size, path);
  return out;
}

AlignedBuffer::AlignedBuffer(std::size_t bytes) : size_(bytes) {
  if (bytes == 0) return;
  std::size_t mapped = align_up(bytes);
  // mmap gives page-aligned, zeroed memory. It is pre-faulted here (after the huge-page advice, so
  // the advice applies) so that the first copy into it runs at memcpy speed, not page-fault speed.
  void* p = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw sys_error("mmap staging buffer", {}, errno);
  if (mapped >= kHugePageBytes) ::madvise(p, mapped, MADV_HUGEPAGE);
  if (::madvise(p, mapped, kMadvPopulateWrite) != 0) {
    auto* bytes = static_cast<volatile std::byte*>(p);
    for (std::size_t i = 0; i < mapped; i += 4096) bytes[i] = std::byte{0};
  }
  data_ = std::unique_ptr<std::byte, Free>(static_cast<std::byte*>(p), Free{mapped});
}

void advise_huge_pages(const void* p, std::size_t bytes) {
  if (bytes < kAdviseHugeFrom) return;
  const auto begin = align_up(reinterpret_cast<std::uintptr_t>(p), kHugePageBytes);
  const auto end = (reinterpret_cast<std::uintptr_t>(p) + bytes) & ~(kHugePageBytes - 1);
  // Advice only: where the kernel has no transparent huge pages, the memory faults as before.
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

void AlignedBuffer::Free::operator()(std::byte* p) const noexcept {
  if (p != nullptr) ::munmap(p, bytes);
}

}  // namespace ckpt::io
