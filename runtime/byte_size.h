#pragma once
// Byte counts as people read them in error messages and logs.
#include <cstdint>
#include <string>

namespace ckpt {

// "0 B", "512 B", "64 KiB", "16 MiB" (binary units, the largest the count reaches); a count that
// is not a whole number of that unit gets two decimals and its exact bytes: "1.50 KiB (1536 B)".
std::string format_bytes(std::uint64_t bytes);

}  // namespace ckpt
