#include "tests/powerloss/checker.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "io/durable.h"
#include "io/error.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "tests/powerloss/scenario.h"

namespace ckpt::powerloss {

namespace fs = std::filesystem;

void Promises::apply(const Op& op) {
  if (op.kind == OpKind::rename) {
    // A removal renames a checkpoint to <suffix>.tmp-del-<tag>; an exchange keeps the name.
    if (!(op.flags & 2 /* RENAME_EXCHANGE */) && acked.contains(op.src)) renamed_away.insert(op.src);
    return;
  }
  if (op.kind != OpKind::mark) return;
  std::istringstream in(op.text);
  std::string verb, what, suffix;
  in >> verb >> what >> suffix;
  if (what == "save") {
    std::int64_t seed = 0;
    in >> seed;
    auto& seeds = saved[suffix];
    if (verb == "call") {
      seeds.push_back(seed);
    } else {
      auto it = std::find(seeds.rbegin(), seeds.rend(), seed);
      acked[suffix] = static_cast<std::size_t>(seeds.rend() - it - 1);
      renamed_away.erase(suffix);
    }
  } else if (what == "register") {
    if (verb == "call") {
      registered.push_back(suffix);
    } else {
      auto it = std::find(registered.rbegin(), registered.rend(), suffix);
      register_acked = static_cast<std::size_t>(registered.rend() - it - 1);
    }
  }
}

Promises initial_promises(const std::string& run_dir) {
  Promises p;
  for (const auto& c : list_checkpoints(run_dir)) {
    p.saved[c.suffix] = {c.metadata.at("seed").as_int64()};
    p.acked[c.suffix] = 0;
  }
  if (auto latest = read_latest(run_dir)) {
    p.registered.push_back(*latest);
    p.register_acked = 0;
  }
  return p;
}

namespace {

ReadOptions read_options() {
  ReadOptions o;
  o.unit_bytes = 64u << 10;
  o.queue_depth = 4;
  o.allow_direct = false;
  return o;
}

std::vector<std::string> tmp_entries(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (io::is_tmp_name(it->path().filename().string())) out.push_back(it->path().string());
  }
  return out;
}

// The seeds a restore of `suffix` may give: those saved from the newest acknowledged one on.
std::vector<std::int64_t> allowed_seeds(const Promises& p, const std::string& suffix) {
  auto it = p.saved.find(suffix);
  if (it == p.saved.end()) return {};
  auto ack = p.acked.find(suffix);
  std::size_t from = ack == p.acked.end() ? 0 : ack->second;
  return {it->second.begin() + static_cast<std::ptrdiff_t>(from), it->second.end()};
}

// Whether `got` holds exactly the bytes of `want`, leaf by leaf.
bool same_leaves(const Tree& got, const Tree& want) {
  auto g = got.flatten();
  auto w = want.flatten();
  if (g.size() != w.size()) return false;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const Array& a = g[i].second;
    const Array& b = w[i].second;
    if (g[i].first != w[i].first || a.nbytes() != b.nbytes() ||
        std::memcmp(a.data(), b.data(), a.nbytes()) != 0)
      return false;
  }
  return true;
}

}  // namespace

std::vector<std::string> check_state(io::Engine& engine, const std::string& run_dir,
                                     const Promises& promises, int parts) {
  std::vector<std::string> bad;
  std::optional<std::string> latest;
  try {
    latest = read_latest(run_dir);
  } catch (const std::exception& e) {
    bad.push_back(std::string("latest unreadable: ") + e.what());
  }
  std::set<std::string> verified, listed;
  try {
    for (const auto& c : list_checkpoints(run_dir)) {
      listed.insert(c.suffix);
      if (!c.error.empty()) {
        bad.push_back("listed " + c.suffix + " is unreadable: " + c.error);
        continue;
      }
      VerifyReport r = verify_checkpoint(engine, c.path, read_options());
      if (r.ok()) {
        verified.insert(c.suffix);
      } else {
        bad.push_back("listed " + c.suffix + " does not verify: " + r.problems.front());
      }
    }
  } catch (const std::exception& e) {
    bad.push_back(std::string("listing failed: ") + e.what());
  }
  if (latest && !verified.contains(*latest)) {
    bad.push_back("latest names " + *latest + ", which is not a checkpoint that verifies");
  }
  if (promises.register_acked) {
    const auto& r = promises.registered;
    auto from = r.begin() + static_cast<std::ptrdiff_t>(*promises.register_acked);
    if (!latest) {
      bad.push_back("latest is gone after register " + *from + " was acknowledged");
    } else if (std::find(from, r.end(), *latest) == r.end()) {
      bad.push_back("latest names " + *latest + " after register " + *from +
                    " was acknowledged (moved backwards)");
    }
  }
  for (const auto& [suffix, index] : promises.acked) {
    if (!promises.renamed_away.contains(suffix) && !verified.contains(suffix)) {
      bad.push_back("acknowledged save " + suffix + " is lost");
    }
  }
  // The next start: leftovers go, committed checkpoints and latest stay.
  try {
    clean_run_dir(run_dir);
    for (const auto& t : tmp_entries(run_dir)) bad.push_back("leftover survives the next start: " + t);
    std::set<std::string> after;
    for (const auto& c : list_checkpoints(run_dir)) after.insert(c.suffix);
    if (after != listed) bad.push_back("the next start changed the listed checkpoints");
    if (read_latest(run_dir) != latest) bad.push_back("the next start changed latest");
  } catch (const std::exception& e) {
    bad.push_back(std::string("the next start failed: ") + e.what());
  }
  // Resume.
  if (latest && verified.contains(*latest)) {
    try {
      Tree templ = make_state(0);
      auto md = restore_checkpoint(engine, run_dir + "/" + *latest, templ, false, read_options());
      std::int64_t seed = md.at("seed").as_int64();
      auto allowed = allowed_seeds(promises, *latest);
      Tree want = make_state(seed);
      if (!same_leaves(templ, want)) bad.push_back("resume from " + *latest + " restored other bytes than seed " +
                               std::to_string(seed) + " saves");
      for (int r = 0; r < parts && parts > 1; ++r) {
        auto [box, sharding] = shard_of(make_state(0), r, parts);
        ReadOptions o = read_options();
        o.sharding = &sharding;
        restore_checkpoint(engine, run_dir + "/" + *latest, box, false, o);
        if (!same_leaves(box, shard_of(want, r, parts).first)) {
          bad.push_back("resume from " + *latest + " as box " + std::to_string(r) + " of " +
                        std::to_string(parts) + " restored other bytes than seed " +
                        std::to_string(seed) + " saves");
        }
      }
      if (std::find(allowed.begin(), allowed.end(), seed) == allowed.end()) {
        bad.push_back("resume from " + *latest + " restored seed " + std::to_string(seed) +
                      ", not one saved there since the last acknowledged save");
      }
    } catch (const std::exception& e) {
      bad.push_back("resume from " + *latest + " failed: " + e.what());
    }
  }
  return bad;
}

}  // namespace ckpt::powerloss
