// Collective saves: the structure check at save(), the fragments each process reports, process
// 0's global manifest and commit, and the broadcast outcome. The protocol is stated at the top of
// runtime/collective_commit.h.
#include "runtime/collective_commit.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <unistd.h>
#include <numeric>

#include "io/crash_point.h"
#include "io/durable.h"
#include "io/error.h"
#include "io/log.h"
#include "runtime/commit.h"
#include "runtime/layout.h"
#include "runtime/wire_error.h"

namespace ckpt {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// Steps of one collective operation (communicator tags).
constexpr std::uint32_t kStepCheck = 0;
constexpr std::uint32_t kStepExplain = 1;
constexpr std::uint32_t kStepGather = 2;
constexpr std::uint32_t kStepOutcome = 3;
constexpr std::uint32_t kStepRegister = 4;

struct Out {
  std::string s;
  void u64(std::uint64_t v) {
    char b[8];
    std::memcpy(b, &v, 8);
    s.append(b, 8);
  }
  void shape(const Shape& v) {
    u64(v.size());
    for (auto x : v) u64(x);
  }
  void str(std::string_view v) {
    u64(v.size());
    s += v;
  }
};

struct In {
  std::string_view s;
  std::size_t at = 0;
  std::uint64_t u64() {
    if (s.size() - at < 8) throw Error(Errc::corrupt, "truncated shard report");
    std::uint64_t v;
    std::memcpy(&v, s.data() + at, 8);
    at += 8;
    return v;
  }
  Shape shape() {
    std::uint64_t n = u64();
    if (n > 64) throw Error(Errc::corrupt, "bad shard report");
    Shape v(n);
    for (auto& x : v) x = u64();
    return v;
  }
  std::string str() {
    std::uint64_t n = u64();
    if (n > s.size() - at) throw Error(Errc::corrupt, "bad shard report");
    std::string v(s.substr(at, n));
    at += n;
    return v;
  }
};

// Visits the leaves of `t` in flattening order, mutably.
template <typename F>
void for_each_leaf_mut(Tree& t, F&& fn) {
  std::vector<Tree*> stack{&t};
  std::size_t index = 0;
  while (!stack.empty()) {
    Tree* n = stack.back();
    stack.pop_back();
    if (n->is_leaf()) {
      fn(index++, *n);
      continue;
    }
    auto& c = n->children();
    for (auto it = c.rbegin(); it != c.rend(); ++it) stack.push_back(&*it);
  }
}

// One line per node and leaf: what every process must agree on.
std::vector<std::string> describe(const Manifest& global, const std::vector<bool>& sharded) {
  std::vector<std::string> lines;
  lines.reserve(global.nodes.size() + global.leaves.size());
  for (const auto& n : global.nodes) {
    if (n.kind == Tree::Kind::dict) {
      lines.push_back(fmt::format("dict {{{}}}", fmt::join(n.keys, ", ")));
    } else if (n.kind == Tree::Kind::list) {
      lines.push_back(fmt::format("list of {}", n.children.size()));
    } else {
      lines.push_back("leaf");
    }
  }
  for (std::size_t i = 0; i < global.leaves.size(); ++i) {
    const LeafInfo& l = global.leaves[i];
    lines.push_back(fmt::format("leaf '{}': {} {}, {}", l.path, to_string(l.dtype),
                                shape_to_string(l.shape), sharded[i] ? "sharded" : "replicated"));
  }
  return lines;
}

std::uint64_t digest(const std::vector<std::string>& lines) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a, 64 bits
  for (const auto& line : lines) {
    for (unsigned char c : line) h = (h ^ c) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;
  }
  return h;
}

// Why process r's tree differs from process 0's: the first line that differs.
std::string explain(const std::vector<std::string>& root, const std::vector<std::string>& other,
                    int rank) {
  std::size_t n = std::min(root.size(), other.size());
  for (std::size_t i = 0; i < n; ++i) {
    if (root[i] != other[i]) {
      return fmt::format("process {} has {} where process 0 has {}", rank, other[i], root[i]);
    }
  }
  if (other.size() > n) {
    return fmt::format("process {} has {} more: {}", rank, other.size() - n, other[n]);
  }
  if (root.size() > n) return fmt::format("process {} lacks {}", rank, root[n]);
  return fmt::format("process {} differs from process 0", rank);
}

std::uint64_t numel_of(const Shape& s) {
  return std::accumulate(s.begin(), s.end(), std::uint64_t{1}, std::multiplies<>());
}

}  // namespace

ShardedPlan plan_sharded_save(const Tree& tree, const Sharding& sharding,
                              std::shared_ptr<Communicator> comm, std::uint64_t seq,
                              std::chrono::milliseconds timeout, const std::string& final_dir,
                              std::exception_ptr refused, const IncrementalChoice& incremental) {
  const Deadline deadline = Clock::now() + timeout;
  auto save = std::make_shared<ShardedSave>();
  save->comm = comm;
  save->seq = seq;
  save->timeout = timeout;
  const int rank = comm->rank();
  const int size = comm->size();

  // This process's own checks; a failure is reported to the others, not thrown alone (they would
  // wait for it until the deadline).
  Status status;
  std::uint64_t sharded_bytes = 0;
  std::vector<std::string> lines;
  auto flat = tree.flatten();
  try {
    if (refused) std::rethrow_exception(refused);
    Manifest& g = save->global;
    describe_structure(tree, g);
    save->starts.resize(flat.size());
    save->sharded.assign(flat.size(), false);
    std::size_t named = 0;
    for (std::size_t i = 0; i < flat.size(); ++i) {
      const auto& [path, array] = flat[i];
      LeafInfo leaf;
      leaf.path = path;
      leaf.dtype = array.dtype();
      leaf.shape = array.shape();
      if (const Box* box = sharding.find(path)) {
        check_box(path, array.shape(), *box);
        leaf.shape = box->global_shape;
        save->starts[i] = box->start;
        save->sharded[i] = true;
        sharded_bytes += array.nbytes();
        ++named;
      }
      leaf.nbytes = array_nbytes(leaf.dtype, leaf.shape);
      g.total_bytes += leaf.nbytes;
      g.leaves.push_back(std::move(leaf));
    }
    if (named != sharding.boxes().size()) {
      for (const auto& entry : sharding.boxes()) {
        const std::string& path = entry.first;
        const Tree* t = tree.find(path);
        if (t == nullptr || !t->is_leaf()) {
          throw Error(Errc::invalid_argument,
                      fmt::format("the sharding names '{}', which is not a leaf of the tree", path));
        }
      }
    }
    lines = describe(g, save->sharded);
  } catch (...) {
    status = Status::failure(describe_error(std::current_exception()));
  }

  Out mine;
  mine.u64(status.ok ? 1 : 0);
  mine.u64(status.ok ? digest(lines) : 0);
  mine.u64(sharded_bytes);
  mine.str(rank == 0 ? io::unique_tag() : std::string());
  // Process 0's incremental choice is everyone's: one base, so that links' names agree.
  mine.u64(rank == 0 && incremental.on ? 1 : 0);
  mine.str(rank == 0 ? incremental.base : std::string());
  mine.str(rank == 0 ? incremental.origin : std::string());
  mine.s += status.message;
  std::vector<std::string> all =
      comm->allgather(collective_tag(seq, kStepCheck), std::move(mine.s), deadline);

  std::vector<std::uint64_t> digests(static_cast<std::size_t>(size));
  std::vector<std::uint64_t> loads(static_cast<std::size_t>(size));
  for (int r = 0; r < size; ++r) {
    In in{all[static_cast<std::size_t>(r)]};
    bool ok = in.u64() == 1;
    digests[static_cast<std::size_t>(r)] = in.u64();
    loads[static_cast<std::size_t>(r)] = in.u64();
    std::string tag = in.str();
    bool inc = in.u64() == 1;
    std::string base = in.str();
    std::string origin = in.str();
    if (r == 0) {
      save->tmp_tag = std::move(tag);
      save->incremental = inc;
      save->base = std::move(base);
      save->base_origin = std::move(origin);
    }
    if (!ok) {
      throw Error(Errc::invalid_argument,
                  fmt::format("collective save refused by process {}: {}", r, in.s.substr(in.at)),
                  final_dir);
    }
  }
  if (std::any_of(digests.begin(), digests.end(), [&](auto d) { return d != digests[0]; })) {
    // A second round with the full descriptions, only now: it names what differs.
    std::vector<std::string> described =
        comm->allgather(collective_tag(seq, kStepExplain), pack_strings(lines), deadline);
    std::vector<std::string> root = unpack_strings(described[0]);
    std::vector<std::string> why;
    for (int r = 1; r < size; ++r) {
      if (digests[static_cast<std::size_t>(r)] != digests[0]) {
        why.push_back(explain(root, unpack_strings(described[static_cast<std::size_t>(r)]), r));
      }
    }
    throw Error(Errc::mismatch,
                fmt::format("the processes' trees differ (structure, dtypes, global shapes and "
                            "sharding must agree): {}",
                            fmt::join(why, "; ")),
                final_dir);
  }

  // Replicated leaves: each to the process with the fewest bytes so far, largest leaf first (ties:
  // the lower index, the lower rank); every process computes the same assignment.
  std::vector<std::size_t> replicated;
  for (std::size_t i = 0; i < flat.size(); ++i) {
    if (!save->sharded[i] && flat[i].second.nbytes() > 0) replicated.push_back(i);
  }
  std::stable_sort(replicated.begin(), replicated.end(), [&](std::size_t a, std::size_t b) {
    return flat[a].second.nbytes() > flat[b].second.nbytes();
  });
  std::vector<int> owner(flat.size(), -1);
  for (std::size_t i : replicated) {
    auto least = std::min_element(loads.begin(), loads.end());
    owner[i] = static_cast<int>(least - loads.begin());
    *least += flat[i].second.nbytes();
  }
  ShardedPlan plan;
  plan.local = tree;
  for_each_leaf_mut(plan.local, [&](std::size_t i, Tree& leaf) {
    if (owner[i] >= 0 && owner[i] != rank) leaf = Tree(Array::zeros(leaf.array().dtype(), {0}));
  });
  if (rank != 0) save->global = Manifest();
  plan.save = std::move(save);
  return plan;
}

namespace {

// This process's report: its data file's size, its blocks with their checksums, and per leaf it
// wrote the extent (offset, length) and, for a shard, the box (start, shape).
std::string encode_fragment(const ShardedSave& save, const ShardResult& r) {
  const Manifest& m = *r.local;
  Out o;
  o.u64(m.data_files.empty() ? 0 : m.data_files[0].size);
  o.u64(m.blocks.size());
  for (std::size_t b = 0; b < m.blocks.size(); ++b) {
    o.u64(m.blocks[b].offset);
    o.u64(m.blocks[b].length);
    o.u64(r.block_crc != nullptr ? (*r.block_crc)[b] : m.blocks[b].crc32c);
  }
  std::uint64_t with_bytes = 0;
  for (const auto& l : m.leaves) with_bytes += l.extents.empty() ? 0 : 1;
  o.u64(with_bytes);
  for (std::size_t i = 0; i < m.leaves.size(); ++i) {
    const LeafInfo& l = m.leaves[i];
    if (l.extents.empty()) continue;
    const ExtentInfo& e = l.extents[0];  // a leaf's bytes are one extent (format version 2)
    o.u64(i);
    o.u64(e.file);  // 0: this process's own file; else a link's index
    o.u64(e.offset);
    o.u64(l.nbytes);
    o.shape(save.sharded[i] ? save.starts[i] : Shape());
    o.shape(save.sharded[i] ? l.shape : Shape());
    o.u64(e.has_hash ? 1 : 0);
    o.u64(e.hash.lo);
    o.u64(e.hash.hi);
  }
  const std::size_t links = r.links != nullptr ? r.links->size() : 0;
  o.u64(links);
  for (std::size_t k = 0; k < links; ++k) {
    const LinkedFile& f = (*r.links)[k];
    o.u64(f.index);
    o.u64(f.info.size);
    o.str(f.info.origin);
    o.u64(f.blocks.size());
    for (const auto& b : f.blocks) {
      o.u64(b.offset);
      o.u64(b.length);
      o.u64(b.crc32c);
    }
  }
  return o.s;
}

// True when boxes a and b share an element.
bool overlap(const ExtentInfo& a, const ExtentInfo& b) {
  for (std::size_t d = 0; d < a.slice_start.size(); ++d) {
    if (a.slice_start[d] >= b.slice_start[d] + b.slice_shape[d] ||
        b.slice_start[d] >= a.slice_start[d] + a.slice_shape[d]) {
      return false;
    }
  }
  return true;
}

}  // namespace

Manifest merge_fragments(const ShardedSave& save, const std::vector<std::string>& fragments,
                         std::int64_t created_unix_ns, std::vector<std::uint32_t>* link_order) {
  Manifest m = save.global;
  m.format_version = kFormatVersion;
  m.writer = "ckpt 0.1.0";
  m.created_unix_ns = created_unix_ns;
  const auto processes = static_cast<std::uint32_t>(fragments.size());
  m.process_count = processes;
  // Linked files by index: the same base file whichever process linked it.
  std::map<std::uint32_t, LinkedFile> links;
  auto read_blocks = [](In& in, std::uint32_t file, std::vector<BlockInfo>& out) {
    std::uint64_t blocks = in.u64();
    for (std::uint64_t b = 0; b < blocks; ++b) {
      BlockInfo k;
      k.file = file;
      k.offset = in.u64();
      k.length = in.u64();
      k.crc32c = static_cast<std::uint32_t>(in.u64());
      out.push_back(k);
    }
  };
  for (std::uint32_t r = 0; r < processes; ++r) {
    In in{fragments[r]};
    m.data_files.push_back(FileInfo{data_file_name(r), in.u64(), 0});
    read_blocks(in, r, m.blocks);
    std::uint64_t leaves = in.u64();
    for (std::uint64_t k = 0; k < leaves; ++k) {
      std::uint64_t li = in.u64();
      if (li >= m.leaves.size()) throw Error(Errc::corrupt, "shard report names a missing leaf");
      ExtentInfo e;
      std::uint64_t file = in.u64();
      if (file != 0 && (file < processes || file > std::numeric_limits<std::uint32_t>::max()))
        throw Error(Errc::corrupt, fmt::format("process {} reports a bad data file index", r));
      e.file = file == 0 ? r : static_cast<std::uint32_t>(file);
      e.offset = in.u64();
      e.length = e.stored_length = in.u64();
      e.process_index = r;
      e.slice_start = in.shape();
      e.slice_shape = in.shape();
      e.has_hash = in.u64() == 1;
      e.hash.lo = in.u64();
      e.hash.hi = in.u64();
      m.leaves[li].extents.push_back(std::move(e));
    }
    std::uint64_t linked = in.u64();
    for (std::uint64_t k = 0; k < linked; ++k) {
      LinkedFile f;
      std::uint64_t index = in.u64();
      if (index < processes || index > std::numeric_limits<std::uint32_t>::max())
        throw Error(Errc::corrupt, fmt::format("process {} reports a bad link index", r));
      f.index = static_cast<std::uint32_t>(index);
      f.info.name = data_file_name(f.index);
      f.info.size = in.u64();
      f.info.origin = in.str();
      read_blocks(in, f.index, f.blocks);
      auto [it, fresh] = links.try_emplace(f.index, f);
      const LinkedFile& seen = it->second;
      const bool same =
          seen.info.size == f.info.size && seen.blocks.size() == f.blocks.size() &&
          std::equal(seen.blocks.begin(), seen.blocks.end(), f.blocks.begin(),
                     [](const BlockInfo& a, const BlockInfo& b) {
                       return a.offset == b.offset && a.length == b.length && a.crc32c == b.crc32c;
                     });
      if (!fresh && !same) {
        throw Error(Errc::corrupt,
                    fmt::format("processes describe {} differently (another base?)", f.info.name));
      }
    }
  }
  // The links some extent uses, renumbered after the own files.
  std::map<std::uint32_t, std::uint32_t> renumber;
  for (const auto& l : m.leaves) {
    for (const auto& e : l.extents) {
      if (e.file < processes) continue;
      if (links.find(e.file) == links.end()) {
        throw Error(Errc::corrupt, fmt::format("process {} uses {}, which no process linked",
                                               e.process_index, data_file_name(e.file)));
      }
      renumber.emplace(e.file, 0);
    }
  }
  for (auto& [old, index] : renumber) {
    index = processes + static_cast<std::uint32_t>(m.data_files.size() - processes);
    LinkedFile& f = links.at(old);
    f.info.name = data_file_name(index);
    m.data_files.push_back(f.info);
    for (BlockInfo b : f.blocks) {
      b.file = index;
      m.blocks.push_back(b);
    }
    if (link_order != nullptr) link_order->push_back(old);
  }
  for (auto& l : m.leaves) {
    for (auto& e : l.extents) {
      if (e.file >= processes) e.file = renumber.at(e.file);
    }
  }
  // Every leaf covered exactly once: a replicated leaf by one extent, a sharded leaf by boxes that
  // do not overlap and add up to the whole array.
  for (std::size_t li = 0; li < m.leaves.size(); ++li) {
    LeafInfo& l = m.leaves[li];
    if (!save.sharded[li]) {
      if (l.nbytes > 0 && l.extents.size() != 1) {
        throw Error(Errc::invalid_argument,
                    fmt::format("replicated leaf '{}' was written {} times", l.path,
                                l.extents.size()));
      }
      continue;
    }
    std::uint64_t covered = 0;
    for (const auto& e : l.extents) covered += numel_of(e.slice_shape);
    for (std::size_t a = 0; a < l.extents.size(); ++a) {
      for (std::size_t b = a + 1; b < l.extents.size(); ++b) {
        if (overlap(l.extents[a], l.extents[b])) {
          throw Error(Errc::invalid_argument,
                      fmt::format("leaf '{}': the boxes of processes {} and {} overlap ({} at {} "
                                  "and {} at {})",
                                  l.path, l.extents[a].process_index, l.extents[b].process_index,
                                  shape_to_string(l.extents[a].slice_shape),
                                  shape_to_string(l.extents[a].slice_start),
                                  shape_to_string(l.extents[b].slice_shape),
                                  shape_to_string(l.extents[b].slice_start)));
        }
      }
    }
    if (covered != numel_of(l.shape)) {
      throw Error(Errc::invalid_argument,
                  fmt::format("leaf '{}': the processes' boxes cover {} of its {} elements", l.path,
                              covered, numel_of(l.shape)));
    }
  }
  return m;
}

std::string shared_tmp_dir(const ShardedSave& save, const std::string& final_dir) {
  return final_dir + std::string(io::kTmpMarker) + save.tmp_tag;
}

namespace {

// After process 0 decided that the save failed (it removes the directory, or already did): this
// process's data file is removed too, so that one written after that removal (the directory
// made again by a late process) is not left behind. Only on process 0's word: with the outcome
// unknown, the file may be part of a checkpoint being committed.
void remove_own_file(const std::string& tmp_dir, int rank) noexcept {
  if (tmp_dir.empty()) return;
  const std::string file = tmp_dir + "/" + data_file_name(static_cast<std::uint32_t>(rank));
  if (::unlink(file.c_str()) != 0 && errno != ENOENT) {
    log().warn("could not remove {} after a failed collective save: {}", file,
               std::strerror(errno));
  }
  ::rmdir(tmp_dir.c_str());  // the last process out removes it; ENOTEMPTY or ENOENT otherwise
}

}  // namespace

void settle_links(const std::string& tmp_dir, std::uint32_t processes,
                  const std::vector<std::uint32_t>& link_order) {
  // Every data file of the directory at or above `processes`, by index. Renaming in ascending
  // order finds each target free: it is at most the old index, and every name below was renamed
  // or removed already.
  std::vector<std::uint32_t> present;
  for (const auto& entry : fs::directory_iterator(tmp_dir)) {
    const std::string name = entry.path().filename().string();
    unsigned index = 0;
    char tail = 0;
    if (name.size() == data_file_name(0).size() &&
        std::sscanf(name.c_str(), "data-%5u.bin%c", &index, &tail) == 1 &&
        name == data_file_name(index) && index >= processes) {
      present.push_back(index);
    }
  }
  std::sort(present.begin(), present.end());
  std::size_t next = 0;
  for (std::uint32_t index : present) {
    const std::string from = tmp_dir + "/" + data_file_name(index);
    if (next < link_order.size() && link_order[next] == index) {
      const std::string to = tmp_dir + "/" + data_file_name(processes + static_cast<std::uint32_t>(next));
      if (from != to && ::rename(from.c_str(), to.c_str()) != 0) throw sys_error("rename", from, errno);
      ++next;
    } else if (::unlink(from.c_str()) != 0) {
      throw sys_error("unlink", from, errno);
    }
  }
  if (next != link_order.size()) {
    throw Error(Errc::io, fmt::format("{} of the linked files are missing", link_order.size() - next),
                tmp_dir);
  }
}

std::exception_ptr collective_commit(const ShardedSave& save, const ShardResult& r) {
  Communicator& comm = *save.comm;
  const bool root = comm.rank() == 0;
  std::string report;
  if (r.failure) {
    report = "0" + encode_failure(r.failure);
  } else {
    try {
      report = "1" + encode_fragment(save, r);
    } catch (...) {
      report = "0" + encode_failure(std::current_exception());
    }
  }
  CKPT_CRASH_POINT("before_shard_report");
  std::string outcome;  // "1", or "0" and the failure
  const Deadline gather_deadline = Clock::now() + save.timeout;
  if (root) {
    try {
      std::vector<std::string> all =
          comm.gather(collective_tag(save.seq, kStepGather), std::move(report), 0, gather_deadline);
      for (std::size_t p = 0; p < all.size() && outcome.empty(); ++p) {
        if (all[p].empty() || all[p][0] != '1') {
          Error e = decode_failure(std::string_view(all[p]).substr(all[p].empty() ? 0 : 1),
                                   fmt::format("process {}: ", p));
          outcome = "0" + encode_failure(std::make_exception_ptr(e));
        } else {
          all[p].erase(0, 1);
        }
      }
      if (outcome.empty()) {
        std::vector<std::uint32_t> link_order;
        Manifest m = merge_fragments(save, all, r.created_unix_ns, &link_order);
        if (save.incremental) settle_links(r.tmp_dir, m.process_count, link_order);
        CKPT_CRASH_POINT("before_global_manifest");
        finish_checkpoint(r.tmp_dir, r.final_dir, m, *r.metadata, *r.extra_files);
        outcome = "1";
      }
    } catch (const Error& e) {
      // A timeout names the process that did not report; other errors are process 0's own.
      std::string prefix = e.code() == Errc::timeout ? "" : "process 0: ";
      outcome = "0" + encode_failure(std::make_exception_ptr(
                          Error(e.code(), prefix + e.what(), r.final_dir)));
    } catch (...) {
      outcome = "0" + encode_failure(std::current_exception());
    }
    if (outcome != "1") abandon_tmp_dir(r.tmp_dir);
    // Every process learns the outcome; one that is gone only costs its send's deadline.
    for (int p = 1; p < comm.size(); ++p) {
      try {
        comm.send(p, collective_tag(save.seq, kStepOutcome), outcome,
                  Clock::now() + save.timeout);
      } catch (const std::exception& e) {
        log().error("collective save of {}: could not tell process {} the outcome: {}",
                    r.final_dir, p, e.what());
      }
    }
  } else {
    try {
      comm.send(0, collective_tag(save.seq, kStepGather), std::move(report), gather_deadline);
      // Process 0 may wait up to the timeout for the slowest process, then commits.
      outcome = comm.recv(0, collective_tag(save.seq, kStepOutcome),
                          Clock::now() + 2 * save.timeout);
      if (outcome != "1") remove_own_file(r.tmp_dir, comm.rank());
    } catch (const Error& e) {
      outcome = "0" + encode_failure(std::make_exception_ptr(Error(
                          e.code(),
                          fmt::format("no outcome from process 0 ({}); the checkpoint is not "
                                      "known to be committed",
                                      e.what()),
                          r.final_dir)));
    }
    if (!r.tmp_dir.empty()) io::forget_live_tmp(r.tmp_dir);
  }
  if (outcome == "1") return nullptr;
  return std::make_exception_ptr(
      decode_failure(std::string_view(outcome).substr(outcome.empty() ? 0 : 1), ""));
}

std::exception_ptr collective_outcome(Communicator& comm, std::uint64_t seq,
                                      std::chrono::milliseconds timeout, std::exception_ptr mine) {
  std::string status = mine ? "0" + encode_failure(mine) : "1";
  try {
    status = comm.broadcast(collective_tag(seq, kStepRegister), status, 0,
                            Clock::now() + (comm.rank() == 0 ? timeout : 2 * timeout));
  } catch (...) {
    if (comm.rank() != 0) return std::current_exception();
    log().error("register_latest: could not tell every process the outcome: {}",
                describe_error(std::current_exception()));
  }
  if (status == "1") return nullptr;
  return std::make_exception_ptr(decode_failure(std::string_view(status).substr(1), ""));
}

}  // namespace ckpt
