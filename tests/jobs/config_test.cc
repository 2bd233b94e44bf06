// Config values round-trip (jobs/config_json.h): every value a config can hold saves and rebuilds
// exactly, or is refused at save() naming the key; runtime_cfg overlays (overlay_config) set an
// optional to none with null and refuse null elsewhere.
#include <doctest/doctest.h>

#include <boost/describe/class.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "io/error.h"
#include "jobs/job.h"
#include "runtime/json.h"
#include "runtime/limits.h"
#include "tests/test_util.h"

using namespace ckpt;
using namespace ckpt::jobs;
using ckpt::test::TempDir;
namespace json = boost::json;

struct Inner {
  float scale = 1.0f;
  std::optional<std::int32_t> cap = 7;
};
BOOST_DESCRIBE_STRUCT(Inner, (), (scale, cap))

struct WideConfig {
  std::uint64_t seed = 0;
  std::int64_t offset = 0;
  std::int8_t i8 = 0;
  std::uint8_t u8 = 0;
  std::int32_t i32 = 0;
  std::uint32_t u32 = 0;
  std::uint16_t u16 = 0;
  double lr = 0.1;
  float decay = 0.5f;
  std::optional<double> clip = 1.0;  // a non-empty default: null must still empty it
  std::string name = "wide";
  std::vector<double> schedule;
  std::map<std::string, double> weights;
  std::map<std::string, std::optional<double>> maybe;
  json::value extra;
  Inner inner;
};
BOOST_DESCRIBE_STRUCT(WideConfig, (),
                      (seed, offset, i8, u8, i32, u32, u16, lr, decay, clip, name, schedule,
                       weights, maybe, extra, inner))

class WideJob : public RestoreableJob<WideConfig> {
 public:
  using RestoreableJob::RestoreableJob;
  Tree state() {
    Tree t;
    t["x"] = Array::view(DType::f32, {1}, &x);
    return t;
  }
  boost::asio::awaitable<void> run() override { co_return; }
  void restore_from_path(const std::string& rel_path) override {
    get_tree_and_metadata_from_path(rel_path, state());
  }
  float x = 0;
};
CKPT_REGISTER_JOB(WideJob, "config_test_wide");

namespace {

std::shared_ptr<Runtime> test_runtime() {
  RuntimeOptions o;
  o.staging_budget = 16u << 20;
  static auto rt = std::make_shared<Runtime>(o);
  return rt;
}

// Saves `cfg` through a job and rebuilds it with from_checkpoint_path (job.json and config.json,
// read as the jobs layer reads them).
WideConfig through_checkpoint(const TempDir& dir, const WideConfig& cfg) {
  auto spec = ExecutionSpec::local(dir.path(), "wide");
  WideJob job(spec, cfg);
  job.set_runtime(test_runtime());
  job.save_tree_and_metadata("s", job.state(), json::object{{"step", 1}}).wait();
  return from_checkpoint<WideJob>("s", spec).second;
}

// config_to_json, serialized, parsed as the checkpoint readers parse, config_from_json.
WideConfig through_json(const WideConfig& cfg) {
  boost::system::error_code ec;
  json::value j = parse_json(json::serialize(config_to_json(cfg)), ec);
  REQUIRE_FALSE(ec);
  return config_from_json<WideConfig>(j);
}

bool same_bits(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::memcmp(&a, &b, sizeof a) == 0;
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

}  // namespace

TEST_CASE("a uint64 config above 2^63 round-trips through a checkpoint") {
  TempDir dir;
  WideConfig cfg;
  cfg.seed = 9223372036854775808ULL;
  CHECK(through_checkpoint(dir, cfg).seed == 9223372036854775808ULL);
  cfg.seed = std::numeric_limits<std::uint64_t>::max();
  CHECK(through_json(cfg).seed == std::numeric_limits<std::uint64_t>::max());
}

TEST_CASE("every integer member keeps its full range and refuses values outside it") {
  WideConfig cfg;
  cfg.offset = std::numeric_limits<std::int64_t>::min();
  cfg.i8 = -128;
  cfg.u8 = 255;
  cfg.i32 = std::numeric_limits<std::int32_t>::min();
  cfg.u32 = std::numeric_limits<std::uint32_t>::max();
  cfg.u16 = 65535;
  WideConfig back = through_json(cfg);
  CHECK(back.offset == cfg.offset);
  CHECK(back.i8 == cfg.i8);
  CHECK(back.u8 == cfg.u8);
  CHECK(back.i32 == cfg.i32);
  CHECK(back.u32 == cfg.u32);
  CHECK(back.u16 == cfg.u16);
  auto from = [](const char* text) { return config_from_json<WideConfig>(json::parse(text)); };
  CHECK_THROWS_WITH_AS(from(R"({"u8": 256})"), doctest::Contains("'u8'"), Error);
  CHECK_THROWS_WITH_AS(from(R"({"u32": -1})"), doctest::Contains("'u32'"), Error);
  CHECK_THROWS_WITH_AS(from(R"({"offset": 9223372036854775808})"), doctest::Contains("'offset'"),
                       Error);
  CHECK_THROWS_WITH_AS(from(R"({"seed": -1})"), doctest::Contains("'seed'"), Error);
  CHECK_THROWS_WITH_AS(from(R"({"decay": 1e300})"), doctest::Contains("'decay'"), Error);
}

TEST_CASE("NaN and infinities in float configs round-trip through a checkpoint") {
  TempDir dir;
  WideConfig cfg;
  cfg.lr = kNaN;
  cfg.decay = -std::numeric_limits<float>::infinity();
  cfg.clip = kInf;
  cfg.schedule = {1.0, kNaN, -kInf};
  cfg.weights = {{"a", kNaN}, {"$ckpt", 2.0}};  // a map key that looks like the tag stays a key
  cfg.inner.scale = std::numeric_limits<float>::quiet_NaN();
  WideConfig back = through_checkpoint(dir, cfg);
  CHECK(std::isnan(back.lr));
  CHECK(back.decay == -std::numeric_limits<float>::infinity());
  CHECK(back.clip == kInf);
  REQUIRE(back.schedule.size() == 3);
  CHECK(back.schedule[0] == 1.0);
  CHECK(std::isnan(back.schedule[1]));
  CHECK(back.schedule[2] == -kInf);
  CHECK(std::isnan(back.weights.at("a")));
  CHECK(back.weights.at("$ckpt") == 2.0);
  CHECK(std::isnan(back.inner.scale));
  std::string text = test::read_file(dir / "general/default/wide/s/config.json");
  CHECK(test::contains(text, R"("lr":{"$ckpt":"NaN"})"));
}

TEST_CASE("a boost::json::value member keeps NaN and user objects that look like the tag") {
  WideConfig cfg;
  cfg.extra = json::object{{"loss", kNaN}, {"fake", json::object{{"$ckpt", "NaN"}}}, {"s", "NaN"}};
  WideConfig back = through_json(cfg);
  CHECK(std::isnan(back.extra.at("loss").as_double()));
  CHECK(back.extra.at("fake") == json::object{{"$ckpt", "NaN"}});
  CHECK(back.extra.at("s") == "NaN");
}

TEST_CASE("doubles in a config rebuild bit for bit when read as checkpoint readers read") {
  std::mt19937_64 rng(7);
  WideConfig cfg;
  for (int i = 0; i < 2000; ++i) {
    std::uint64_t bits = rng();
    double d = 0;
    std::memcpy(&d, &bits, sizeof d);
    cfg.schedule.push_back(d);
  }
  cfg.lr = 1.3927926388013963e-143;  // Boost 1.81's own parser reads it one ulp off
  WideConfig back = through_json(cfg);
  CHECK(same_bits(back.lr, cfg.lr));
  REQUIRE(back.schedule.size() == cfg.schedule.size());
  std::size_t differ = 0;
  for (std::size_t i = 0; i < cfg.schedule.size(); ++i)
    differ += !same_bits(back.schedule[i], cfg.schedule[i]);
  CHECK(differ == 0);
}

TEST_CASE("a config that could not be read back is refused at save naming the key") {
  TempDir dir;
  WideConfig cfg;
  cfg.inner.scale = 2.0f;
  cfg.weights = {{"ok", 1.0}};
  cfg.name = "\xff";
  CHECK_THROWS_WITH_AS(config_to_json(cfg), doctest::Contains("config key 'name'"), Error);
  auto spec = ExecutionSpec::local(dir.path(), "bad");
  WideJob job(spec, cfg);
  job.set_runtime(test_runtime());
  CHECK_THROWS_WITH_AS(job.save_tree_and_metadata("s", job.state(), {}),
                       doctest::Contains("config key 'name'"), Error);

  cfg.name = "fine";
  cfg.weights = {{"\xc0\x80", 1.0}};
  CHECK_THROWS_WITH_AS(config_to_json(cfg), doctest::Contains("config key 'weights."), Error);

  cfg.weights.clear();
  json::value deep = 1;
  for (std::size_t d = 0; d < kMaxJsonDepth; ++d) deep = json::array{deep};
  cfg.extra = deep;
  CHECK_THROWS_WITH_AS(config_to_json(cfg), doctest::Contains("config key 'extra"), Error);
  CHECK(test::find_tmp_entries(dir.path()).empty());
}

TEST_CASE("a runtime_cfg null sets an optional member to none, not back to its default") {
  WideConfig cfg;
  cfg.clip = 3.0;
  cfg.inner.cap = 9;
  json::value saved = config_to_json(cfg);
  json::value merged =
      overlay_config<WideConfig>(saved, json::parse(R"({"clip": null, "inner": {"cap": null}})"));
  WideConfig back = config_from_json<WideConfig>(merged);
  CHECK_FALSE(back.clip.has_value());  // the default is 1.0: merge_patch would have restored it
  CHECK_FALSE(back.inner.cap.has_value());
  CHECK(back.inner.scale == cfg.inner.scale);
  // The RFC 7386 merge patch is still there, for free-form JSON.
  CHECK(config_from_json<WideConfig>(merge_patch(saved, json::parse(R"({"clip": null})"))).clip ==
        1.0);
}

TEST_CASE("a runtime_cfg null for a member that is not optional is an error naming the key") {
  json::value saved = config_to_json(WideConfig());
  CHECK_THROWS_WITH_AS(overlay_config<WideConfig>(saved, json::parse(R"({"lr": null})")),
                       doctest::Contains("config key 'lr'"), Error);
  CHECK_THROWS_WITH_AS(
      overlay_config<WideConfig>(saved, json::parse(R"({"inner": {"scale": null}})")),
      doctest::Contains("config key 'inner.scale'"), Error);
  CHECK_THROWS_WITH_AS(overlay_config<WideConfig>(saved, json::parse(R"({"inner": null})")),
                       doctest::Contains("config key 'inner'"), Error);
}

TEST_CASE("a runtime_cfg overlay merges structs and maps key by key and names unknown keys") {
  WideConfig cfg;
  cfg.weights = {{"a", 1.0}, {"b", 2.0}};
  cfg.maybe = {{"p", 1.0}};
  cfg.schedule = {1, 2, 3};
  cfg.extra = json::object{{"keep", 1}, {"drop", 2}};
  json::value saved = config_to_json(cfg);
  json::value merged = overlay_config<WideConfig>(
      saved, json::parse(R"({"weights": {"b": null, "c": 3}, "maybe": {"p": null},
                              "schedule": [4], "extra": {"drop": null}, "inner": {"scale": 2}})"));
  WideConfig back = config_from_json<WideConfig>(merged);
  CHECK(back.weights == std::map<std::string, double>{{"a", 1.0}, {"c", 3.0}});
  REQUIRE(back.maybe.count("p") == 1);
  CHECK_FALSE(back.maybe.at("p").has_value());
  CHECK(back.schedule == std::vector<double>{4});
  CHECK(back.extra == json::object{{"keep", 1}});
  CHECK(back.inner.scale == 2.0f);
  CHECK(back.inner.cap == 7);
  CHECK_THROWS_WITH_AS(overlay_config<WideConfig>(saved, json::parse(R"({"inner": {"scal": 1}})")),
                       doctest::Contains("unknown config key 'inner.scal'"), Error);
}

TEST_CASE("train_loop --seed accepts the whole uint64 range and refuses anything else") {
  TempDir dir;
  const std::string run = std::string(CKPT_TRAIN_LOOP_PATH) + " --dir " + dir.path() +
                          " --save-every 2 --state-mb 1 --engine threads";
  std::string out;
  CHECK(test::run_command(run + " --steps 2 --seed 18446744073709551615", &out) == 0);
  CHECK(test::run_command(run + " --seed 9223372036854775808 --resume --steps 4", &out) == 0);
  CHECK(test::contains(test::read_file(dir / "general/default/train_loop/step/4/config.json"),
                       R"("seed":9223372036854775808)"));
  for (const char* bad : {"-1", "18446744073709551616", "1x"}) {
    CHECK(test::run_command(run + " --steps 2 --seed " + bad, &out) != 0);
    CHECK(test::contains(out, "--seed"));
  }
}
