#pragma once
// Byte counts as people read them in error messages and logs.
#include <cstdint>
#include <string>

namespace ckpt {

// "512 B", "1.50 KiB", "1.00 GiB" (binary units, two decimals above bytes): sizes in tables.
std::string human_bytes(std::uint64_t bytes);

// "0 B", "512 B", "64 KiB", "16 MiB" (binary units, the largest the count reaches); a count that
// is not a whole number of that unit is human_bytes with its exact bytes: "1.50 KiB (1536 B)".
std::string format_bytes(std::uint64_t bytes);

}  // namespace ckpt
