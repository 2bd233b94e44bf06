#include "runtime/wire_error.h"

#include <fmt/format.h>

#include <cstdlib>

namespace ckpt {

std::string encode_failure(std::exception_ptr failure) {
  Errc code = Errc::io;
  try {
    std::rethrow_exception(failure);
  } catch (const Error& err) {
    code = err.code();
  } catch (...) {
  }
  return fmt::format("{}\n{}", static_cast<int>(code), describe_error(failure));
}

Error decode_failure(std::string_view message, std::string_view prefix) {
  auto nl = message.find('\n');
  int code = 0;
  if (nl != std::string_view::npos) code = std::atoi(std::string(message.substr(0, nl)).c_str());
  if (code < 0 || code > static_cast<int>(Errc::busy)) code = static_cast<int>(Errc::io);
  std::string text(nl == std::string_view::npos ? message : message.substr(nl + 1));
  return Error(static_cast<Errc>(code), std::string(prefix) + text);
}

}  // namespace ckpt
