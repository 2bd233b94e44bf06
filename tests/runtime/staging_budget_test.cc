// The staging budget: a budget below one chunk is refused when the Runtime is built, and a save
// that cannot fit says by how much, in bytes people read.
#include <doctest/doctest.h>

#include "io/error.h"
#include "runtime/byte_size.h"
#include "runtime/runtime.h"
#include "runtime/staging_pool.h"
#include "tests/test_util.h"

using namespace ckpt;
using ckpt::test::catch_error;
using ckpt::test::contains;
using ckpt::test::TempDir;

TEST_CASE("format_bytes prints whole binary units, and exact bytes where it rounds") {
  CHECK(format_bytes(0) == "0 B");
  CHECK(format_bytes(1023) == "1023 B");
  CHECK(format_bytes(1024) == "1 KiB");
  CHECK(format_bytes(64u << 10) == "64 KiB");
  CHECK(format_bytes(1536) == "1.50 KiB (1536 B)");
  CHECK(format_bytes(4095) == "4.00 KiB (4095 B)");
  CHECK(format_bytes(1023u << 10) == "1023 KiB");
  CHECK(format_bytes(16u << 20) == "16 MiB");
  CHECK(format_bytes(3ull << 30) == "3 GiB");
  CHECK(format_bytes(5ull << 40) == "5 TiB");
  CHECK(format_bytes(~0ull) == "16.00 EiB (18446744073709551615 B)");
}

TEST_CASE("StagingPool refuses a budget below one chunk, naming both sizes") {
  for (std::uint64_t budget : {std::uint64_t{0}, std::uint64_t{1000}, std::uint64_t{65535}}) {
    CAPTURE(budget);
    auto e = catch_error([&] { StagingPool pool(budget, 64u << 10); });
    REQUIRE(e);
    CHECK(e->code() == Errc::invalid_argument);
    CHECK(contains(e->what(), "staging budget of " + format_bytes(budget)));
    CHECK(contains(e->what(), "one staging chunk of 64 KiB"));
    CHECK(contains(e->what(), "RuntimeOptions::staging_budget"));
  }
  // The chunk is rounded up to the IO alignment first: 100 bytes of unit take a 4 KiB chunk.
  CHECK(catch_error([] { StagingPool pool(4095, 100); }));
  StagingPool exact(4096, 100);
  CHECK(exact.capacity_chunks() == 1);
}

TEST_CASE("a Runtime with an explicit staging budget below one unit is refused when built") {
  RuntimeOptions o;
  o.unit_bytes = 1u << 20;
  o.staging_budget = 512u << 10;
  o.copy_threads = 1;
  auto e = catch_error([&] { Runtime rt(o); });
  REQUIRE(e);
  CHECK(e->code() == Errc::invalid_argument);
  CHECK(contains(e->what(), "staging budget of 512 KiB is below one staging chunk of 1 MiB"));
  // Zero still means the default budget (a quarter of RAM), which is accepted.
  o.staging_budget = 0;
  Runtime rt(o);
  CHECK(rt.stats().staging_budget >= o.unit_bytes);
}

TEST_CASE("a save needing more staging than the whole budget names both in bytes") {
  StagingPool pool(4096, 4096);
  auto e = catch_error([&] { (void)pool.try_acquire(16); });
  REQUIRE(e);
  CHECK(e->code() == Errc::invalid_argument);
  CHECK(contains(e->what(),
                 "save needs 64 KiB of staging, budget is 4 KiB "
                 "(RuntimeOptions::staging_budget)"));
  CHECK(pool.in_use_bytes() == 0);

  TempDir dir;
  RuntimeOptions o;
  o.unit_bytes = 64u << 10;
  o.staging_budget = 128u << 10;  // two chunks
  o.copy_threads = 1;
  Runtime rt(o);
  Tree tree;
  tree["w"] = Array::zeros(DType::f32, {64u << 10});  // 256 KiB: four units
  auto failed = catch_error([&] { (void)rt.save(dir / "c", tree, {}); });
  REQUIRE(failed);
  CHECK(failed->code() == Errc::invalid_argument);
  CHECK(contains(failed->what(),
                 "save needs 256 KiB of staging, budget is 128 KiB "
                 "(RuntimeOptions::staging_budget)"));
  CHECK(ckpt::test::list_dir(dir.path()).empty());
}
