// trace_shim: an LD_PRELOAD library that records the file-system system calls a process makes
// below one directory, for the power-loss explorer (tests/powerloss/explorer.cc).
//
//   CKPT_TRACE_ROOT=/abs/canonical/dir CKPT_TRACE_OUT=/path/prefix LD_PRELOAD=libckpt_trace_shim.so prog
//
// It interposes the libc entry points that change a file system (open/openat/creat with O_CREAT or
// O_TRUNC, write/pwrite/writev/pwritev, ftruncate/truncate, fsync/fdatasync/sync/syncfs,
// mkdir/mkdirat, rename/renameat/renameat2 and syscall(SYS_renameat2), link/linkat (hard links),
// unlink/unlinkat/rmdir/remove, close) and appends one line per successful call on a path below the root to
// <prefix>.log; the bytes written go to <prefix>.data. Lines (paths absolute, last on the line):
//   O fd created truncated path     an open below the root (created: the call made the file)
//   C fd                            close of a traced descriptor (logged before the real close,
//                                   so a reused number is always logged after)
//   W fd offset length data_offset  a write that completed, its bytes at data_offset in .data
//   T fd length                     ftruncate
//   B id fd                         an fsync starts; E id: it returned 0; F id: it failed
//   Y id / Z id                     sync()/syncfs() starts / returned
//   M path                          mkdir
//   R flags src<TAB>dst             rename (flags: RENAME_NOREPLACE 1, RENAME_EXCHANGE 2)
//   L src<TAB>dst                   a hard link: dst is a new name of src's file
//   U path / D path                 unlink / rmdir
//   K text                          a mark from the traced program (ckpt_trace_mark)
//   X what path                     a call the explorer does not model (symlink, fallocate, dup of a
//                                   traced descriptor, a link from outside the root or with
//                                   AT_EMPTY_PATH): the explorer refuses the trace
// Writes are logged when they return, so the log is in completion order; an fsync's B line is
// logged before the call, so the explorer knows which writes completed before it started. A call
// that changes the namespace is made and logged under one lock, so no other thread can log an
// operation that depends on it (a file created in a directory just made) before it.
// What it cannot see: io_uring requests (liburing issues raw system calls, not libc calls), mmap
// stores, and libc-internal calls (fopen's open). The explorer's driver therefore uses the
// thread-pool engine (pwrite/fsync), and ckpt writes its files with open/write/fsync.
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <string>

namespace {

constexpr int kMaxFd = 1 << 16;

pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
std::atomic<bool> ready{false};
int log_fd = -1;
int data_fd = -1;
std::uint64_t data_size = 0;
std::uint64_t next_sync_id = 0;
char root[PATH_MAX];
std::size_t root_len = 0;
bool traced[kMaxFd];

template <typename F>
F real(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

#define REAL(name, type)                                   \
  static auto real_##name = real<type>(#name);             \
  if (real_##name == nullptr) real_##name = real<type>(#name)

using write_t = ssize_t (*)(int, const void*, size_t);

// Writes all of buf with the real write (never through the shim).
void raw_write(int fd, const void* buf, std::size_t n) {
  static auto w = real<write_t>("write");
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t k = w(fd, p, n);
    if (k <= 0) return;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
}

void emit_locked(const std::string& line) { raw_write(log_fd, line.data(), line.size()); }

// Held across a call that changes the namespace (create, mkdir, rename, link, unlink, rmdir), or
// resolves a path in it (open), and its log line: another thread cannot act on the change (create a file in a directory just
// made, say) and log that before the change itself is logged. Writes and fsyncs do not take it.
pthread_mutex_t ns_mu = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;  // recursive: a call made inside another

struct NamespaceGuard {
  bool held;
  explicit NamespaceGuard(bool hold = true) : held(hold && ready) {
    if (held) pthread_mutex_lock(&ns_mu);
  }
  ~NamespaceGuard() {
    if (held) pthread_mutex_unlock(&ns_mu);
  }
  NamespaceGuard(const NamespaceGuard&) = delete;
  NamespaceGuard& operator=(const NamespaceGuard&) = delete;
};

void emit(const std::string& line) {
  pthread_mutex_lock(&mu);
  emit_locked(line);
  pthread_mutex_unlock(&mu);
}

__attribute__((constructor)) void init() {
  const char* r = getenv("CKPT_TRACE_ROOT");
  const char* out = getenv("CKPT_TRACE_OUT");
  if (r == nullptr || out == nullptr || r[0] != '/') return;
  using open_t = int (*)(const char*, int, ...);
  auto real_open = real<open_t>("open");
  std::string prefix(out);
  log_fd = real_open((prefix + ".log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  data_fd = real_open((prefix + ".data").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0 || data_fd < 0) return;
  struct stat st {};
  if (fstat(data_fd, &st) == 0) data_size = static_cast<std::uint64_t>(st.st_size);
  snprintf(root, sizeof root, "%s", r);
  root_len = strlen(root);
  while (root_len > 1 && root[root_len - 1] == '/') root[--root_len] = '\0';
  ready = true;
}

// `path` (relative to dirfd) as an absolute, lexically normal path; empty when unknown.
std::string absolute(int dirfd, const char* path) {
  if (path == nullptr) return {};
  std::string base;
  if (path[0] != '/') {
    char buf[PATH_MAX];
    if (dirfd == AT_FDCWD) {
      if (getcwd(buf, sizeof buf) == nullptr) return {};
      base = buf;
    } else {
      std::string link = "/proc/self/fd/" + std::to_string(dirfd);
      ssize_t n = readlink(link.c_str(), buf, sizeof buf - 1);
      if (n <= 0) return {};
      base.assign(buf, static_cast<std::size_t>(n));
    }
  }
  std::string joined = base + "/" + path;
  std::string out;
  std::size_t i = 0;
  while (i < joined.size()) {
    std::size_t j = joined.find('/', i);
    if (j == std::string::npos) j = joined.size();
    std::string part = joined.substr(i, j - i);
    i = j + 1;
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      std::size_t k = out.rfind('/');
      out.erase(k == std::string::npos ? 0 : k);
      continue;
    }
    out += "/" + part;
  }
  return out.empty() ? "/" : out;
}

bool under_root(const std::string& p) {
  return ready && p.size() >= root_len && p.compare(0, root_len, root) == 0 &&
         (p.size() == root_len || p[root_len] == '/');
}

bool is_traced(int fd) { return ready && fd >= 0 && fd < kMaxFd && traced[fd]; }

void record_write(int fd, const void* buf, std::size_t len, std::uint64_t offset) {
  pthread_mutex_lock(&mu);
  std::uint64_t at = data_size;
  raw_write(data_fd, buf, len);
  data_size += len;
  emit_locked("W " + std::to_string(fd) + " " + std::to_string(offset) + " " +
              std::to_string(len) + " " + std::to_string(at) + "\n");
  pthread_mutex_unlock(&mu);
}

int do_open(int dirfd, const char* path, int flags, mode_t mode,
            int (*call)(int, const char*, int, mode_t)) {
  std::string abs = ready ? absolute(dirfd, path) : std::string();
  bool watch = under_root(abs);
  // Every open below the root, not only creating ones: a path another thread renames right after
  // this open resolved it must be logged after the open.
  NamespaceGuard guard(watch);
  bool existed = true;
  if (watch && (flags & O_CREAT)) {
    struct stat st {};
    existed = lstat(abs.c_str(), &st) == 0;
  }
  int fd = call(dirfd, path, flags, mode);
  if (fd >= 0 && watch && fd < kMaxFd) {
    pthread_mutex_lock(&mu);
    traced[fd] = true;
    emit_locked("O " + std::to_string(fd) + " " + ((flags & O_CREAT) && !existed ? "1" : "0") +
                " " + ((flags & O_TRUNC) && existed ? "1" : "0") + " " + abs + "\n");
    pthread_mutex_unlock(&mu);
  }
  return fd;
}

int call_openat(int dirfd, const char* path, int flags, mode_t mode) {
  using openat_t = int (*)(int, const char*, int, ...);
  REAL(openat, openat_t);
  return real_openat(dirfd, path, flags, mode);
}

void path_op(char kind, int dirfd, const char* path) {
  std::string abs = absolute(dirfd, path);
  if (under_root(abs)) emit(std::string(1, kind) + " " + abs + "\n");
}

int do_fsync(int fd, int (*call)(int)) {
  if (!is_traced(fd)) return call(fd);
  pthread_mutex_lock(&mu);
  std::string id = std::to_string(next_sync_id++);
  emit_locked("B " + id + " " + std::to_string(fd) + "\n");
  pthread_mutex_unlock(&mu);
  int rc = call(fd);
  emit((rc == 0 ? "E " : "F ") + id + "\n");
  return rc;
}

void record_rename(int olddirfd, const char* oldpath, int newdirfd, const char* newpath,
                   unsigned flags) {
  std::string a = absolute(olddirfd, oldpath);
  std::string b = absolute(newdirfd, newpath);
  if (under_root(a) || under_root(b)) {
    emit("R " + std::to_string(flags) + " " + a + "\t" + b + "\n");
  }
}

// A hard link below the root: its source must be below the root too (else the explorer does not
// know the file's bytes), and named by a path (AT_EMPTY_PATH links a descriptor).
void record_link(int olddirfd, const char* oldpath, int newdirfd, const char* newpath, int flags) {
  std::string b = absolute(newdirfd, newpath);
  if (!under_root(b)) return;
  std::string a = absolute(olddirfd, oldpath);
  if ((flags & AT_EMPTY_PATH) || !under_root(a)) {
    emit("X link " + b + "\n");
    return;
  }
  emit("L " + a + "\t" + b + "\n");
}

}  // namespace

extern "C" {

// The mode argument of a variadic open call, present only when the flags ask for one.
#define READ_MODE(flags, mode)                           \
  do {                                                   \
    if ((flags) & (O_CREAT | O_TMPFILE)) {               \
      va_list ap;                                        \
      va_start(ap, flags);                               \
      mode = static_cast<mode_t>(va_arg(ap, int));       \
      va_end(ap);                                        \
    }                                                    \
  } while (0)

void ckpt_trace_mark(const char* text) {
  if (ready) emit(std::string("K ") + text + "\n");
}

int open(const char* path, int flags, ...) {
  mode_t mode = 0;
  READ_MODE(flags, mode);
  return do_open(AT_FDCWD, path, flags, mode, call_openat);
}
int open64(const char* path, int flags, ...) __attribute__((alias("open")));

int openat(int dirfd, const char* path, int flags, ...) {
  mode_t mode = 0;
  READ_MODE(flags, mode);
  return do_open(dirfd, path, flags, mode, call_openat);
}
int openat64(int dirfd, const char* path, int flags, ...) __attribute__((alias("openat")));

int __open_2(const char* path, int flags) { return do_open(AT_FDCWD, path, flags, 0, call_openat); }
int __open64_2(const char* path, int flags) __attribute__((alias("__open_2")));
int __openat_2(int dirfd, const char* path, int flags) {
  return do_open(dirfd, path, flags, 0, call_openat);
}
int __openat64_2(int dirfd, const char* path, int flags) __attribute__((alias("__openat_2")));

int creat(const char* path, mode_t mode) {
  return do_open(AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC, mode, call_openat);
}
int creat64(const char* path, mode_t mode) __attribute__((alias("creat")));

int close(int fd) {
  REAL(close, int (*)(int));
  if (is_traced(fd)) {
    pthread_mutex_lock(&mu);
    traced[fd] = false;
    emit_locked("C " + std::to_string(fd) + "\n");
    pthread_mutex_unlock(&mu);
  }
  return real_close(fd);
}

ssize_t write(int fd, const void* buf, size_t n) {
  REAL(write, write_t);
  ssize_t r = real_write(fd, buf, n);
  if (r > 0 && is_traced(fd)) {
    off_t end = lseek(fd, 0, SEEK_CUR);
    if (end >= r) record_write(fd, buf, static_cast<std::size_t>(r), static_cast<std::uint64_t>(end - r));
  }
  return r;
}

ssize_t pwrite(int fd, const void* buf, size_t n, off_t off) {
  REAL(pwrite, ssize_t (*)(int, const void*, size_t, off_t));
  ssize_t r = real_pwrite(fd, buf, n, off);
  if (r > 0 && is_traced(fd)) record_write(fd, buf, static_cast<std::size_t>(r), static_cast<std::uint64_t>(off));
  return r;
}
ssize_t pwrite64(int fd, const void* buf, size_t n, off_t off) __attribute__((alias("pwrite")));

namespace {
void record_iov(int fd, const struct iovec* iov, int cnt, std::uint64_t off, ssize_t r) {
  for (int i = 0; i < cnt && r > 0; ++i) {
    std::size_t n = std::min<std::size_t>(iov[i].iov_len, static_cast<std::size_t>(r));
    if (n > 0) record_write(fd, iov[i].iov_base, n, off);
    off += n;
    r -= static_cast<ssize_t>(n);
  }
}
}  // namespace

ssize_t writev(int fd, const struct iovec* iov, int cnt) {
  REAL(writev, ssize_t (*)(int, const struct iovec*, int));
  ssize_t r = real_writev(fd, iov, cnt);
  if (r > 0 && is_traced(fd)) {
    off_t end = lseek(fd, 0, SEEK_CUR);
    if (end >= r) record_iov(fd, iov, cnt, static_cast<std::uint64_t>(end - r), r);
  }
  return r;
}

ssize_t pwritev(int fd, const struct iovec* iov, int cnt, off_t off) {
  REAL(pwritev, ssize_t (*)(int, const struct iovec*, int, off_t));
  ssize_t r = real_pwritev(fd, iov, cnt, off);
  if (r > 0 && is_traced(fd)) record_iov(fd, iov, cnt, static_cast<std::uint64_t>(off), r);
  return r;
}
ssize_t pwritev64(int fd, const struct iovec* iov, int cnt, off_t off) __attribute__((alias("pwritev")));

int ftruncate(int fd, off_t len) {
  REAL(ftruncate, int (*)(int, off_t));
  int r = real_ftruncate(fd, len);
  if (r == 0 && is_traced(fd)) emit("T " + std::to_string(fd) + " " + std::to_string(len) + "\n");
  return r;
}
int ftruncate64(int fd, off_t len) __attribute__((alias("ftruncate")));

int truncate(const char* path, off_t len) {
  REAL(truncate, int (*)(const char*, off_t));
  std::string abs = absolute(AT_FDCWD, path);
  int r = real_truncate(path, len);
  if (r == 0 && under_root(abs)) emit("X truncate " + abs + "\n");
  return r;
}

int fallocate(int fd, int mode, off_t off, off_t len) {
  REAL(fallocate, int (*)(int, int, off_t, off_t));
  int r = real_fallocate(fd, mode, off, len);
  if (r == 0 && is_traced(fd)) emit("X fallocate fd" + std::to_string(fd) + "\n");
  return r;
}

int fsync(int fd) {
  REAL(fsync, int (*)(int));
  return do_fsync(fd, real_fsync);
}

int fdatasync(int fd) {
  REAL(fdatasync, int (*)(int));
  return do_fsync(fd, real_fdatasync);
}

void sync() {
  REAL(sync, void (*)());
  if (!ready) return real_sync();
  pthread_mutex_lock(&mu);
  std::string id = std::to_string(next_sync_id++);
  emit_locked("Y " + id + "\n");
  pthread_mutex_unlock(&mu);
  real_sync();
  emit("Z " + id + "\n");
}

int syncfs(int fd) {
  REAL(syncfs, int (*)(int));
  if (!ready) return real_syncfs(fd);
  pthread_mutex_lock(&mu);
  std::string id = std::to_string(next_sync_id++);
  emit_locked("Y " + id + "\n");
  pthread_mutex_unlock(&mu);
  int rc = real_syncfs(fd);
  if (rc == 0) emit("Z " + id + "\n");
  return rc;
}

int mkdir(const char* path, mode_t mode) {
  NamespaceGuard guard;
  REAL(mkdir, int (*)(const char*, mode_t));
  int r = real_mkdir(path, mode);
  if (r == 0 && ready) path_op('M', AT_FDCWD, path);
  return r;
}

int mkdirat(int dirfd, const char* path, mode_t mode) {
  NamespaceGuard guard;
  REAL(mkdirat, int (*)(int, const char*, mode_t));
  int r = real_mkdirat(dirfd, path, mode);
  if (r == 0 && ready) path_op('M', dirfd, path);
  return r;
}

int rename(const char* a, const char* b) {
  NamespaceGuard guard;
  REAL(rename, int (*)(const char*, const char*));
  int r = real_rename(a, b);
  if (r == 0 && ready) record_rename(AT_FDCWD, a, AT_FDCWD, b, 0);
  return r;
}

int renameat(int da, const char* a, int db, const char* b) {
  NamespaceGuard guard;
  REAL(renameat, int (*)(int, const char*, int, const char*));
  int r = real_renameat(da, a, db, b);
  if (r == 0 && ready) record_rename(da, a, db, b, 0);
  return r;
}

int renameat2(int da, const char* a, int db, const char* b, unsigned flags) {
  NamespaceGuard guard;
  REAL(renameat2, int (*)(int, const char*, int, const char*, unsigned));
  int r = real_renameat2(da, a, db, b, flags);
  if (r == 0 && ready) record_rename(da, a, db, b, flags);
  return r;
}

long syscall(long number, ...) {
  REAL(syscall, long (*)(long, ...));
  va_list ap;
  va_start(ap, number);
  long a[6];
  for (long& x : a) x = va_arg(ap, long);
  va_end(ap);
  NamespaceGuard guard(number == SYS_renameat2);
  long r = real_syscall(number, a[0], a[1], a[2], a[3], a[4], a[5]);
  if (r == 0 && ready && number == SYS_renameat2) {
    record_rename(static_cast<int>(a[0]), reinterpret_cast<const char*>(a[1]), static_cast<int>(a[2]),
                  reinterpret_cast<const char*>(a[3]), static_cast<unsigned>(a[4]));
  }
  return r;
}

}  // extern "C"

namespace {
// Runs a removal and logs it as `kind` ('U' unlink, 'D' rmdir) when it succeeded below the root.
template <typename Call>
int traced_removal(int dirfd, const char* path, char kind, Call call) {
  NamespaceGuard guard;
  std::string abs = ready ? absolute(dirfd, path) : std::string();
  int r = call();
  if (r == 0 && under_root(abs)) emit(std::string(1, kind) + " " + abs + "\n");
  return r;
}
}  // namespace

extern "C" {

int unlink(const char* path) {
  REAL(unlink, int (*)(const char*));
  return traced_removal(AT_FDCWD, path, 'U', [&] { return real_unlink(path); });
}

int unlinkat(int dirfd, const char* path, int flags) {
  REAL(unlinkat, int (*)(int, const char*, int));
  return traced_removal(dirfd, path, (flags & AT_REMOVEDIR) ? 'D' : 'U',
                        [&] { return real_unlinkat(dirfd, path, flags); });
}

int rmdir(const char* path) {
  REAL(rmdir, int (*)(const char*));
  return traced_removal(AT_FDCWD, path, 'D', [&] { return real_rmdir(path); });
}

int remove(const char* path) {
  REAL(remove, int (*)(const char*));
  struct stat st {};
  bool dir = ready && lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
  return traced_removal(AT_FDCWD, path, dir ? 'D' : 'U', [&] { return real_remove(path); });
}

int link(const char* a, const char* b) {
  NamespaceGuard guard;
  REAL(link, int (*)(const char*, const char*));
  int r = real_link(a, b);
  if (r == 0 && ready) record_link(AT_FDCWD, a, AT_FDCWD, b, 0);
  return r;
}

int linkat(int da, const char* a, int db, const char* b, int flags) {
  NamespaceGuard guard;
  REAL(linkat, int (*)(int, const char*, int, const char*, int));
  int r = real_linkat(da, a, db, b, flags);
  if (r == 0 && ready) record_link(da, a, db, b, flags);
  return r;
}

int symlink(const char* a, const char* b) {
  REAL(symlink, int (*)(const char*, const char*));
  int r = real_symlink(a, b);
  if (r == 0 && ready && under_root(absolute(AT_FDCWD, b))) emit("X symlink " + absolute(AT_FDCWD, b) + "\n");
  return r;
}

int dup(int fd) {
  REAL(dup, int (*)(int));
  int r = real_dup(fd);
  if (r >= 0 && is_traced(fd)) emit("X dup fd" + std::to_string(fd) + "\n");
  return r;
}

int dup2(int fd, int fd2) {
  REAL(dup2, int (*)(int, int));
  int r = real_dup2(fd, fd2);
  if (r >= 0 && is_traced(fd)) emit("X dup2 fd" + std::to_string(fd) + "\n");
  return r;
}

}  // extern "C"
