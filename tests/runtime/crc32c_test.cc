#include "runtime/crc32c.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace ckpt {
namespace {

TEST_CASE("crc32c matches the standard check value") {
  CHECK(crc32c("123456789") == 0xE3069283u);
  CHECK(crc32c("") == 0u);
  CHECK(crc32c(std::string(32, '\0')) == 0x8A9136AAu);    // RFC 3720 B.4: 32 bytes of zeros
  CHECK(crc32c(std::string(32, '\xff')) == 0x62A8AB43u);  // RFC 3720 B.4: 32 bytes of ones
}

TEST_CASE("crc32c chained over parts equals crc32c of the whole") {
  std::string data;
  for (int i = 0; i < 10000; ++i) data.push_back(static_cast<char>(i * 131 + 7));
  const std::uint32_t whole = crc32c(data);
  for (std::size_t cut : {std::size_t{0}, std::size_t{1}, std::size_t{9}, std::size_t{4096},
                          std::size_t{9999}, data.size()}) {
    CAPTURE(cut);
    std::string a = data.substr(0, cut);
    std::string b = data.substr(cut);
    CHECK(crc32c(b, crc32c(a)) == whole);
  }
  // Three parts through the pointer overload.
  std::uint32_t crc = crc32c(data.data(), 100);
  crc = crc32c(data.data() + 100, 5000, crc);
  crc = crc32c(data.data() + 5100, data.size() - 5100, crc);
  CHECK(crc == whole);
}

TEST_CASE("crc32c_combine of two parts' checksums equals crc32c of the whole") {
  std::string data;
  for (int i = 0; i < 70000; ++i) data.push_back(static_cast<char>(i * 37 + (i >> 8)));
  const std::uint32_t whole = crc32c(data);
  for (std::size_t cut : {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{4096},
                          std::size_t{65537}, data.size() - 1, data.size()}) {
    CAPTURE(cut);
    std::string a = data.substr(0, cut);
    std::string b = data.substr(cut);
    CHECK(crc32c_combine(crc32c(a), crc32c(b), b.size()) == whole);
  }
  // Lengths beyond 4 GiB: zeros of 2^32 bytes by doubling 1 MiB of zeros (the first doubling
  // checked directly), then combines composed in two orders agree.
  const std::uint32_t z20 = crc32c(std::string(std::size_t{1} << 20, '\0'));
  CHECK(crc32c_combine(z20, z20, std::uint64_t{1} << 20) ==
        crc32c(std::string(std::size_t{1} << 21, '\0')));
  std::uint32_t z = z20;
  for (int i = 20; i < 32; ++i) z = crc32c_combine(z, z, std::uint64_t{1} << i);
  const std::uint32_t z5 = crc32c(std::string(5, '\0'));
  const std::uint32_t a = crc32c("abc");
  CHECK(crc32c_combine(crc32c_combine(a, z, std::uint64_t{1} << 32), z5, 5) ==
        crc32c_combine(a, crc32c_combine(z, z5, 5), (std::uint64_t{1} << 32) + 5));
}

TEST_CASE("crc32c detects a single flipped bit") {
  std::string data(4096, 'a');
  const std::uint32_t before = crc32c(data);
  data[1234] ^= 0x10;
  CHECK(crc32c(data) != before);
}

}  // namespace
}  // namespace ckpt
