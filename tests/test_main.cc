#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

#include "io/log.h"

int main(int argc, char** argv) {
  // Tests provoke failures on purpose; keep their log quiet unless asked.
  ckpt::log().set_level(std::getenv("CKPT_TEST_LOG") ? spdlog::level::debug : spdlog::level::err);
  doctest::Context context(argc, argv);
  return context.run();
}
