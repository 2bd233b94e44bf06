#include "io/error.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

namespace ckpt {

std::string_view to_string(Errc code) noexcept {
  switch (code) {
    case Errc::io:
      return "io error";
    case Errc::no_space:
      return "no space";
    case Errc::not_found:
      return "not found";
    case Errc::corrupt:
      return "corrupt";
    case Errc::unsupported:
      return "unsupported";
    case Errc::invalid_argument:
      return "invalid argument";
    case Errc::mismatch:
      return "mismatch";
    case Errc::path_escape:
      return "path escapes root";
    case Errc::timeout:
      return "timeout";
    case Errc::cancelled:
      return "cancelled";
    case Errc::skipped:
      return "skipped";
    case Errc::busy:
      return "busy";
  }
  return "unknown";
}

namespace {
std::string compose(std::string_view message, const std::string& path, int err) {
  std::string out(message);
  if (!path.empty()) out += fmt::format(": {}", path);
  if (err != 0) out += fmt::format(": {}", std::strerror(err));
  return out;
}
}  // namespace

Error::Error(Errc code, std::string message, std::string path, int sys_errno)
    : std::runtime_error(compose(message, path, sys_errno)),
      code_(code),
      path_(std::move(path)),
      errno_(sys_errno) {}

std::string describe_error(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

Error sys_error(std::string_view op, std::string path, int err) {
  Errc code = (err == ENOSPC || err == EDQUOT) ? Errc::no_space
              : (err == ENOENT)                ? Errc::not_found
              : (err == ETIMEDOUT)             ? Errc::timeout
                                               : Errc::io;
  return Error(code, std::string(op) + " failed", std::move(path), err);
}

}  // namespace ckpt
