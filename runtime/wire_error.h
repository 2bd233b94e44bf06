#pragma once
// A failure as it travels between the processes of a collective step (runtime/communicator.h):
// "<errc>\n<message>". The collective commit sends a process's failure this way, and the jobs
// layer its agreed outcomes.
#include <exception>
#include <string>
#include <string_view>

#include "io/error.h"

namespace ckpt {

// The message of `failure` with its Errc (a foreign exception counts as Errc::io).
std::string encode_failure(std::exception_ptr failure);
// The Error of an encoded failure, with the same code, its message after `prefix`.
Error decode_failure(std::string_view message, std::string_view prefix);

}  // namespace ckpt
