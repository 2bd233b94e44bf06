#pragma once
// File descriptors and memory for direct IO.
//
// Every data file of a checkpoint is laid out in units of kAlignment (4096) bytes, which is a
// multiple of every O_DIRECT alignment seen in practice (statx STATX_DIOALIGN: 512 on ext4/xfs).
// open_direct() asks the file system for its real alignment and uses O_DIRECT only when 4096
// satisfies it; otherwise (tmpfs on old kernels, exotic file systems) the file is opened buffered
// and one warning is logged. Durability does not depend on O_DIRECT: every file is fsynced.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace ckpt::io {

inline constexpr std::size_t kAlignment = 4096;

constexpr std::uint64_t align_up(std::uint64_t n, std::uint64_t a = kAlignment) {
  return (n + a - 1) / a * a;
}

// An owned file descriptor; `direct` tells whether it was opened with O_DIRECT.
class File {
 public:
  File() = default;
  File(int fd, std::string path, bool direct) : fd_(fd), path_(std::move(path)), direct_(direct) {}
  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();

  int fd() const noexcept { return fd_; }
  const std::string& path() const noexcept { return path_; }
  bool direct() const noexcept { return direct_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }

  std::uint64_t size() const;         // fstat; throws Error
  void truncate(std::uint64_t size);  // ftruncate; throws Error
  void write_all(std::string_view data);  // write at the file offset until done; throws Error
  void sync();                        // fsync; throws Error (never retry: the pages may be gone)
  void close();                       // close, reporting errors; the destructor only logs them

 private:
  int fd_ = -1;
  std::string path_;
  bool direct_ = false;
};

enum class OpenMode { read, write_new };

// Opens `path` for data IO, with O_DIRECT where the file system accepts it (see top).
// write_new creates the file exclusively (O_EXCL): checkpoint files are never reused.
File open_direct(const std::string& path, OpenMode mode, bool allow_direct = true);
// Opens without O_DIRECT.
File open_buffered(const std::string& path, OpenMode mode);

// Reads a whole (small) file; throws Error naming the path.
std::string read_small_file(const std::string& path, std::size_t max_bytes = 256u << 20);

// Memory aligned to kAlignment, zero-filled and pre-faulted, freed on destruction.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(std::size_t bytes);
  AlignedBuffer(AlignedBuffer&&) noexcept = default;
  AlignedBuffer& operator=(AlignedBuffer&&) noexcept = default;

  std::byte* data() const noexcept { return data_.get(); }
  std::size_t size() const noexcept { return size_; }
  std::span<std::byte> span() const noexcept { return {data_.get(), size_}; }

 private:
  struct Free {
    std::size_t bytes;
    void operator()(std::byte* p) const noexcept;
  };
  std::unique_ptr<std::byte, Free> data_{nullptr, Free{0}};
  std::size_t size_ = 0;
};

inline constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;
// glibc's largest mmap threshold: a block this large that its free lists and heap top cannot
// serve gets a mapping of its own.
inline constexpr std::size_t kAdviseHugeFrom = std::size_t{32} << 20;

// Asks for transparent huge pages over the 2 MiB-aligned part of [p, p + bytes): a large vector
// about to be filled once and freed soon, such as a decoded manifest's leaves at a million leaves
// (96 MB), which otherwise faults in 4 KiB at a time. Only from kAdviseHugeFrom on. Such a block
// usually has a mapping of its own, made afresh for each use; glibc may also carve it from free
// memory inside its heap (after a million small blocks were freed, say), and then the advice
// splits the heap's mapping in up to three and lets those pages be huge too: more mappings and
// possibly more resident memory, nothing that changes results. Advice only: without transparent
// huge pages nothing changes.
void advise_huge_pages(const void* p, std::size_t bytes);

// A whole file's bytes, read by read_file_bytes.
class FileBytes {
 public:
  std::string_view view() const noexcept {
    return big_.data() != nullptr
               ? std::string_view(reinterpret_cast<const char*>(big_.data()), size_)
               : std::string_view(small_);
  }

 private:
  friend FileBytes read_file_bytes(const std::string& path, std::size_t max_bytes);
  std::string small_;
  AlignedBuffer big_;
  std::size_t size_ = 0;
};

// Reads a whole file of up to max_bytes, as read_small_file. From kAdviseHugeFrom on (a manifest
// of about 200,000 leaves) into huge-page memory: glibc maps such a block afresh for each read,
// and a 160 MB manifest then faults in 39,000 pages of 4 KiB every time (about 0.8 s on a VM
// with slow faults). Smaller files stay on the heap, whose pages a next read reuses.
FileBytes read_file_bytes(const std::string& path, std::size_t max_bytes);

}  // namespace ckpt::io
