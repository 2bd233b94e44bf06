#include "runtime/sharded_read.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <iterator>
#include <unordered_map>

#include "io/error.h"
#include "io/file.h"
#include "runtime/layout.h"
#include "runtime/staged_read.h"
#include "runtime/template_match.h"

namespace ckpt {

namespace {

// Bytes of the checkpoint to copy into the template: `len` bytes at `offset` of data file `file`.
struct Run {
  std::uint32_t file;
  std::uint64_t offset;
  std::uint64_t len;
  std::uint32_t target;  // the template leaf, in flattening order
  std::uint64_t to;      // byte offset in it
};

Shape strides(const Shape& shape) {
  Shape s(shape.size(), 1);
  for (std::size_t d = shape.size(); d-- > 1;) s[d - 1] = s[d] * shape[d];
  return s;
}

// The runs that copy the intersection of the saved box (start s0, shape ss: the extent's bytes
// at `e`) and the template box (b0, bs: template leaf `target`), each with its byte offset there.
void add_runs(const ExtentInfo& e, const Shape& s0, const Shape& ss, const Shape& b0,
              const Shape& bs, std::size_t dsize, std::uint32_t target, std::vector<Run>& runs) {
  const std::size_t n = ss.size();
  if (n == 0) {  // a scalar: the whole of it
    runs.push_back({e.file, e.offset, dsize, target, 0});
    return;
  }
  Shape i0(n), is(n);
  for (std::size_t d = 0; d < n; ++d) {
    std::uint64_t lo = std::max(s0[d], b0[d]);
    std::uint64_t hi = std::min(s0[d] + ss[d], b0[d] + bs[d]);
    if (hi <= lo) return;
    i0[d] = lo;
    is[d] = hi - lo;
  }
  const Shape sst = strides(ss);
  const Shape bst = strides(bs);
  // Dimensions [k, n) form one contiguous run: every dimension after the run's first is whole in
  // the intersection and in both boxes.
  std::size_t k = n - 1;
  std::uint64_t run_elems = is[n - 1];
  while (k > 0 && is[k] == ss[k] && is[k] == bs[k]) {
    --k;
    run_elems *= is[k];
  }
  Shape idx(k, 0);  // odometer over dimensions [0, k)
  for (;;) {
    std::uint64_t src = 0, to = 0;
    for (std::size_t d = 0; d < n; ++d) {
      std::uint64_t g = i0[d] + (d < k ? idx[d] : 0);
      src += (g - s0[d]) * sst[d];
      to += (g - b0[d]) * bst[d];
    }
    runs.push_back({e.file, e.offset + src * dsize, run_elems * dsize, target, to * dsize});
    std::size_t d = k;
    while (d > 0) {
      --d;
      if (++idx[d] < is[d]) break;
      idx[d] = 0;
      if (d == 0) return;
    }
    if (k == 0) return;
  }
}

bool before(std::uint32_t fa, std::uint64_t oa, std::uint32_t fb, std::uint64_t ob) {
  return fa != fb ? fa < fb : oa < ob;
}

}  // namespace

void read_resharded(io::Engine& engine, const std::string& dir, const Manifest& m, Tree& templ,
                    const Sharding* sharding, bool partial, const ReadOptions& options) {
  // The template as match_template sees it: every leaf with its global shape, at an address of
  // its own that is never dereferenced (only to find the leaf again), so that the tree, dtype,
  // shape and partial rules and their messages are those of every restore.
  auto flat = templ.flatten();
  std::vector<std::string> problems;
  std::vector<Box> boxes(flat.size());
  Tree proxy = templ;
  std::unordered_map<const std::byte*, std::size_t> by_address;
  std::uintptr_t next = 4096;
  std::size_t index = 0;
  std::vector<Tree*> stack{&proxy};
  while (!stack.empty()) {  // pre-order, children in order: flattening order
    Tree* t = stack.back();
    stack.pop_back();
    if (!t->is_leaf()) {
      for (auto it = t->children().rbegin(); it != t->children().rend(); ++it) stack.push_back(&*it);
      continue;
    }
    const auto& [path, array] = flat[index];
    Box box{array.shape(), Shape(array.shape().size(), 0)};
    if (const Box* b = sharding != nullptr ? sharding->find(path) : nullptr) {
      check_box(path, array.shape(), *b);
      box = *b;
    }
    if (array.read_only()) problems.push_back(fmt::format("'{}': a read-only view", path));
    boxes[index] = box;
    auto* fake = reinterpret_cast<std::byte*>(next);
    next += std::max<std::uint64_t>(array_nbytes(array.dtype(), box.global_shape), 1) + 4096;
    by_address[fake] = index;
    *t = Tree(Array::view(array.dtype(), box.global_shape, static_cast<void*>(fake)));
    ++index;
  }
  // Template arrays sharing memory: the check of every restore, on the real template
  // (match_template sees only the fake addresses).
  std::vector<std::string> aliasing = aliasing_problems(templ, flat.size());
  problems.insert(problems.end(), std::make_move_iterator(aliasing.begin()),
                  std::make_move_iterator(aliasing.end()));
  // The proxy's fake addresses never overlap: its aliasing check would find nothing.
  TemplateMatch match = match_template(m, proxy, partial, std::vector<std::string>());
  problems.insert(problems.begin(), match.problems.begin(), match.problems.end());
  if (!problems.empty()) {
    throw Error(
        Errc::mismatch,
        fmt::format("template does not match the checkpoint ({} difference{}):\n  {}",
                    problems.size(), problems.size() == 1 ? "" : "s", fmt::join(problems, "\n  ")),
        dir);
  }

  std::vector<Run> runs;
  for (std::size_t li = 0; li < m.leaves.size(); ++li) {
    if (match.targets[li] == nullptr) continue;
    const std::size_t ti = by_address.at(match.targets[li]->data());
    const Array& target = flat[ti].second;
    const Box& box = boxes[ti];
    const LeafInfo& leaf = m.leaves[li];
    const std::size_t dsize = dtype_size(leaf.dtype);
    if (target.nbytes() == 0) continue;
    const auto ti32 = static_cast<std::uint32_t>(ti);
    for (const ExtentInfo& e : leaf.extents) {
      if (!e.slice_shape.empty()) {
        add_runs(e, e.slice_start, e.slice_shape, box.start, target.shape(), dsize, ti32, runs);
      } else if (!m.sharded() && leaf.extents.size() > 1) {
        // An unsharded leaf cut into several extents (format version 1): each holds the bytes
        // [leaf_offset, leaf_offset + length) of the row-major array. Only whole-array templates
        // reach here (the box would have to be the array).
        if (target.shape() != leaf.shape) {
          throw Error(Errc::unsupported,
                      "restoring a box of a version 1 leaf cut into extents is not supported",
                      dir);
        }
        runs.push_back({e.file, e.offset, e.length, ti32, e.leaf_offset});
      } else {
        add_runs(e, Shape(leaf.shape.size(), 0), leaf.shape, box.start, target.shape(), dsize, ti32,
                 runs);
      }
    }
  }
  std::sort(runs.begin(), runs.end(),
            [](const Run& a, const Run& b) { return before(a.file, a.offset, b.file, b.offset); });

  // The blocks holding the runs, read in units of consecutive blocks.
  std::vector<bool> want(m.blocks.size(), false);
  std::size_t cursor = 0;
  for (const Run& r : runs) {
    // Runs are sorted: the search starts where the previous one ended.
    auto first = std::partition_point(
        m.blocks.begin() + static_cast<std::ptrdiff_t>(cursor), m.blocks.end(),
        [&](const BlockInfo& b) { return before(b.file, b.offset + b.length, r.file, r.offset + 1); });
    cursor = static_cast<std::size_t>(first - m.blocks.begin());
    for (auto k = first; k != m.blocks.end() && k->file == r.file && k->offset < r.offset + r.len;
         ++k) {
      want[static_cast<std::size_t>(k - m.blocks.begin())] = true;
    }
  }
  std::uint64_t max_unit = std::max<std::uint64_t>(options.unit_bytes, m.alignment);
  for (const auto& b : m.blocks) max_unit = std::max(max_unit, b.length);
  std::vector<Unit> units;
  for (std::uint32_t bi = 0; bi < m.blocks.size(); ++bi) {
    if (!want[bi]) continue;
    const BlockInfo& b = m.blocks[bi];
    bool joins = !units.empty() && units.back().file == b.file &&
                 units.back().offset + units.back().length == b.offset &&
                 units.back().length + b.length <= max_unit;
    if (!joins) units.push_back(Unit{b.file, b.offset, 0, {}, {}});
    units.back().pieces.push_back(Piece{bi, 0, b.length, true});
    units.back().length += b.length;
  }
  if (units.empty()) {
    if (options.read_how != nullptr) *options.read_how = ReadHow::nothing;
    return;
  }

  // Each run's bytes, as segments of the units that hold them (runs are sorted: so are the
  // segments of a unit).
  for (const Run& r : runs) {
    auto it = units.begin();
    for (std::uint64_t at = 0; at < r.len;) {
      std::uint64_t pos = r.offset + at;
      it = std::partition_point(it, units.end(), [&](const Unit& x) {
        return before(x.file, x.offset + x.length, r.file, pos + 1);
      });
      if (it == units.end() || it->file != r.file || it->offset > pos) {
        throw Error(Errc::corrupt,
                    fmt::format("bytes at offset {} of {} lie outside the blocks read", pos,
                                m.data_files[r.file].name),
                    dir);
      }
      std::uint64_t in_unit = pos - it->offset;
      std::uint64_t len = std::min(r.len - at, it->length - in_unit);
      it->segments.push_back(Segment{r.target, r.to + at, in_unit, len});
      at += len;
    }
  }

  // Only the data files that hold something wanted are opened.
  std::vector<io::File> opened;
  opened.reserve(m.data_files.size());
  std::vector<io::File*> files(m.data_files.size(), nullptr);
  for (const Unit& u : units) {
    if (files[u.file] != nullptr) continue;
    const FileInfo& f = m.data_files[u.file];
    opened.push_back(io::open_direct(dir + "/" + f.name, io::OpenMode::read, options.allow_direct));
    if (opened.back().size() != f.size) {
      throw Error(Errc::corrupt,
                  fmt::format("file is {} bytes, the manifest says {} (truncated or replaced)",
                              opened.back().size(), f.size),
                  opened.back().path());
    }
    files[u.file] = &opened.back();
  }
  std::vector<const Array*> targets(flat.size());
  for (std::size_t i = 0; i < flat.size(); ++i) targets[i] = &flat[i].second;
  // Verified and swapped into the template as each unit arrives, within the staging; else in
  // two passes (runtime/staged_read.h).
  read_into_targets(engine, m, units, max_unit, files, targets, options);
}

}  // namespace ckpt
