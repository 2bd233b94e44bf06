#pragma once
// ckpt::Error: the one exception type of the library. It keeps what failed, the path it concerns
// and the errno where there is one, so a message always names the file and the cause.
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>

namespace ckpt {

enum class Errc {
  io,                // a system call failed (errno set)
  no_space,          // ENOSPC / EDQUOT
  not_found,         // a file or checkpoint that should exist does not
  corrupt,           // checksum mismatch, bad manifest, truncated file
  unsupported,       // newer format version, unknown dtype
  invalid_argument,  // bad input from the caller
  mismatch,          // restore template differs from the checkpoint
  path_escape,       // a path that leaves the checkpoint root
  timeout,           // IO did not complete within its deadline
  cancelled,         // the operation was abandoned (runtime shutting down)
  skipped,           // a save declined by backpressure policy `skip`
  busy,              // another process holds the run directory (its writer lease or lock)
};

std::string_view to_string(Errc code) noexcept;

class Error : public std::runtime_error {
 public:
  Error(Errc code, std::string message, std::string path = {}, int sys_errno = 0);

  Errc code() const noexcept { return code_; }
  const std::string& path() const noexcept { return path_; }
  int sys_errno() const noexcept { return errno_; }

 private:
  Errc code_;
  std::string path_;
  int errno_;
};

// The message of the exception `error` holds ("unknown error" when it is not a std::exception);
// for logs and reports of failures that travel as std::exception_ptr.
std::string describe_error(std::exception_ptr error);

// Builds the Error for a failed system call `op` on `path` with errno `err`.
Error sys_error(std::string_view op, std::string path, int err);

}  // namespace ckpt
