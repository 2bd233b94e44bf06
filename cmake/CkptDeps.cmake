# The Debian packages ckpt's libraries build with, and the manifest header generated from
# schemas/checkpoint.fbs at build time (generated headers pin the flatc version, PITFALLS.md).
# Shared by the root build and the standalone fuzzer build (tests/fuzz). CKPT_ROOT must be set.
# CONFIG: Boost's own package (Debian ships it); FindBoost warns about "new Boost version".
find_package(Boost 1.81.0 EXACT REQUIRED COMPONENTS json CONFIG)
find_package(FlatBuffers REQUIRED)
find_package(spdlog REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(URING REQUIRED IMPORTED_TARGET liburing)
pkg_check_modules(ISAL REQUIRED IMPORTED_TARGET libisal)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
find_package(Threads REQUIRED)

set(CKPT_GEN_DIR ${CMAKE_BINARY_DIR}/generated)
add_custom_command(
  OUTPUT ${CKPT_GEN_DIR}/schemas/checkpoint_generated.h
  COMMAND ${CMAKE_COMMAND} -E make_directory ${CKPT_GEN_DIR}/schemas
  COMMAND flatbuffers::flatc --cpp --scoped-enums -o ${CKPT_GEN_DIR}/schemas
          ${CKPT_ROOT}/schemas/checkpoint.fbs
  DEPENDS ${CKPT_ROOT}/schemas/checkpoint.fbs
  COMMENT "flatc schemas/checkpoint.fbs")
add_custom_target(ckpt_schema DEPENDS ${CKPT_GEN_DIR}/schemas/checkpoint_generated.h)
