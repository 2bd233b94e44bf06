#include "runtime/plan_cache.h"

#include <cstring>
#include <exception>
#include <span>

#include "runtime/commit.h"

namespace ckpt {

namespace {

// Compares the serialized structure with `expect` as it is produced; from the first difference
// on it builds the new key instead.
class KeyWriter {
 public:
  explicit KeyWriter(const std::string* expect)
      : expect_(expect != nullptr ? std::string_view(*expect) : std::string_view()),
        compare_(expect != nullptr) {}
  // Compares with one slice of a key only.
  explicit KeyWriter(std::string_view expect) : expect_(expect), compare_(true) {}
  void put(const void* p, std::size_t n) {
    if (n == 0) return;  // p may be null (an empty shape's data()): memcmp/append must not see it
    if (same_ && compare_ && pos_ + n <= expect_.size() &&
        std::memcmp(expect_.data() + pos_, p, n) == 0) {
      pos_ += n;
      return;
    }
    if (same_) {
      same_ = false;
      if (compare_) built_.assign(expect_.data(), pos_);
    }
    built_.append(static_cast<const char*>(p), n);
  }
  template <typename T>
  void put_value(T v) {
    put(&v, sizeof v);
  }
  bool matches() const { return same_ && compare_ && pos_ == expect_.size(); }
  std::string take() {
    if (same_ && compare_) built_.assign(expect_.data(), pos_);
    return std::move(built_);
  }

 private:
  std::string_view expect_;
  bool compare_;
  std::size_t pos_ = 0;
  bool same_ = true;
  std::string built_;
};

// A node's own record: its kind, and for a dict or list its child count and keys.
void put_node(const Tree& t, KeyWriter& key) {
  key.put_value(static_cast<std::uint8_t>(t.kind()));
  if (t.is_leaf()) {
    const Array& a = t.array();
    key.put_value(static_cast<std::uint8_t>(a.dtype()));
    key.put_value(static_cast<std::uint32_t>(a.shape().size()));
    key.put(a.shape().data(), a.shape().size() * sizeof(std::uint64_t));
    return;
  }
  key.put_value(static_cast<std::uint64_t>(t.children().size()));
  if (t.is_dict()) {
    for (const auto& k : t.keys()) {
      key.put_value(static_cast<std::uint32_t>(k.size()));
      key.put(k.data(), k.size());
    }
  }
}

// Where a walk puts each leaf's memory: appended to a PlannedSave, or into a fixed range of one
// (a part walked beside others), refusing more leaves than the range holds.
struct AppendLeaves {
  PlannedSave& out;
  bool add(const Array& a) {
    out.sources.push_back(a.data());
    if (a.owns_memory()) out.owners.push_back(a.owner());
    return true;
  }
};
// Only counts them (PlanCache::split).
struct CountLeaves {
  std::size_t n = 0;
  bool add(const Array&) {
    ++n;
    return true;
  }
};
struct RangeLeaves {
  const std::byte** next;
  const std::byte** end;
  std::vector<std::shared_ptr<std::byte[]>> owners;
  bool add(const Array& a) {
    if (next == end) return false;
    *next++ = a.data();
    if (a.owns_memory()) owners.push_back(a.owner());
    return true;
  }
};

// How many visits ahead scan() fetches the nodes it will read.
constexpr std::size_t kAhead = 8;

// Pre-order walk in flattening order (dict keys sorted, list items in order), as Tree::flatten,
// of the subtrees `roots` one after the other. False when the leaves overflow the sink's range.
template <typename Leaves>
bool scan(std::span<const Tree> roots, KeyWriter& key, Leaves& leaves) {
  std::vector<const Tree*> stack;
  stack.reserve(roots.size() + 64);
  for (std::size_t i = roots.size(); i-- > 0;) stack.push_back(&roots[i]);
  while (!stack.empty()) {
    const Tree* t = stack.back();
    stack.pop_back();
    // The walk waits on memory, not on its comparisons (a million leaves' nodes and shapes do not
    // fit any cache): fetch the nodes a few visits ahead (their kind and their array's fields)
    // and, nearer, the shape each points to: about 10% at a million leaves (bench/check_bench).
    const std::size_t n = stack.size();
    if (n >= kAhead) {
      const char* far = reinterpret_cast<const char*>(stack[n - kAhead]);
      for (std::size_t line = 0; line < sizeof(Tree); line += 64) __builtin_prefetch(far + line);
    }
    if (n >= kAhead / 2) {
      const Tree* near = stack[n - kAhead / 2];
      if (near->is_leaf()) __builtin_prefetch(near->array().shape().data());
    }
    put_node(*t, key);
    if (t->is_leaf()) {
      if (!leaves.add(t->array())) return false;
      continue;
    }
    const auto& children = t->children();
    for (std::size_t i = children.size(); i-- > 0;) stack.push_back(&children[i]);
  }
  return true;
}
template <typename Leaves>
bool scan(const Tree& tree, KeyWriter& key, Leaves& leaves) {
  return scan(std::span<const Tree>(&tree, 1), key, leaves);
}

// The node at `route` (child indices from the root), or null when the tree has no such node.
const Tree* follow(const Tree& root, const std::vector<std::uint32_t>& route) {
  const Tree* t = &root;
  for (std::uint32_t i : route) {
    if (t->is_leaf() || i >= t->children().size()) return nullptr;
    t = &t->children()[i];
  }
  return t;
}

// Parts of at most this many leaves are walked whole; larger nodes are split into their children.
constexpr std::size_t kPartLeaves = 4096;
// Trees with fewer leaves are walked on the caller's thread alone.
constexpr std::size_t kParallelLeaves = 4 * kPartLeaves;
// How deep the split goes: deeper parts are walked whole, whatever their size.
constexpr std::size_t kMaxSplitDepth = 16;

}  // namespace

// Cuts the cached structure into node records of the split nodes and whole subtrees (the
// parts), in key order, recording where each part's bytes and leaves start.
void PlanCache::split(const Tree& root) {
  parts_.clear();
  std::size_t key_pos = 0;
  std::size_t leaf_pos = 0;
  std::vector<std::uint32_t> route;
  // A part: the node at `route`'s own record, or the whole subtrees of its children
  // [first, last) (the root itself when the route is empty and first == last == 0).
  auto add = [&](const Tree& t, bool whole, std::uint32_t first, std::uint32_t last) {
    KeyWriter key(nullptr);
    CountLeaves sink;
    if (!whole) {
      put_node(t, key);
    } else if (first == last) {
      scan(t, key, sink);
    } else {
      scan(std::span(t.children()).subspan(first, last - first), key, sink);
    }
    const std::size_t bytes = key.take().size();
    parts_.push_back(
        Part{route, first, last, key_pos, key_pos + bytes, leaf_pos, leaf_pos + sink.n, whole});
    key_pos += bytes;
    leaf_pos += sink.n;
  };
  // Depth-first with explicit recursion bounded by kMaxSplitDepth.
  // Consecutive small children are grouped into one part of up to kPartLeaves leaves.
  auto visit = [&](auto&& self, const Tree& t) -> void {
    add(t, false, 0, 0);
    const auto& children = t.children();
    std::uint32_t first = 0;
    std::size_t grouped = 0;
    for (std::uint32_t i = 0; i <= children.size(); ++i) {
      const bool end = i == children.size();
      const std::size_t n = end ? 0 : children[i].leaf_count();
      const bool large = !end && n > kPartLeaves && !children[i].is_leaf() &&
                         route.size() + 1 < kMaxSplitDepth;
      if (first < i && (end || large || grouped + n > kPartLeaves)) {
        add(t, true, first, i);
        first = i;
        grouped = 0;
      }
      if (end) break;
      if (large) {
        route.push_back(i);
        self(self, children[i]);
        route.pop_back();
        first = i + 1;
      } else {
        grouped += n;
      }
    }
  };
  if (root.is_leaf() || root.leaf_count() <= kPartLeaves) {
    add(root, true, 0, 0);
  } else {
    visit(visit, root);
  }
  // Cannot happen (the parts tile the key and the leaves); the plain walk stays correct.
  if (key_pos != key_.size() || leaf_pos != plan_->manifest.leaves.size()) parts_.clear();
}

bool PlanCache::check_in_parts(const Tree& tree, PlannedSave& out, const ParallelFor& parallel) {
  const std::string_view key(key_);
  out.sources.assign(plan_->manifest.leaves.size(), nullptr);
  std::vector<std::size_t> whole;
  for (std::size_t i = 0; i < parts_.size(); ++i) {
    const Part& p = parts_[i];
    if (p.whole) {
      whole.push_back(i);
      continue;
    }
    // The split nodes' own records first, on this thread: after them every route is valid.
    const Tree* t = follow(tree, p.route);
    if (t == nullptr) return false;
    KeyWriter k(key.substr(p.key_begin, p.key_end - p.key_begin));
    put_node(*t, k);
    if (!k.matches()) return false;
  }
  std::vector<RangeLeaves> sinks(whole.size());
  std::vector<char> ok(whole.size(), 0);
  parallel(whole.size(), [&](std::size_t w) {
    const Part& p = parts_[whole[w]];
    const Tree* t = follow(tree, p.route);
    if (t == nullptr) return;
    KeyWriter k(key.substr(p.key_begin, p.key_end - p.key_begin));
    RangeLeaves& sink = sinks[w];
    sink.next = out.sources.data() + p.leaf_begin;
    sink.end = out.sources.data() + p.leaf_end;
    bool fits = true;
    if (p.first == p.last) {
      fits = scan(*t, k, sink);
    } else {
      // The split node's record (checked) fixed its child count: the range exists.
      fits = scan(std::span(t->children()).subspan(p.first, p.last - p.first), k, sink);
    }
    ok[w] = fits && k.matches() && sink.next == sink.end;
  });
  for (std::size_t w = 0; w < whole.size(); ++w) {
    if (!ok[w]) return false;
    for (auto& o : sinks[w].owners) out.owners.push_back(std::move(o));
  }
  return true;
}

PlannedSave PlanCache::plan(const Tree& tree, std::uint64_t unit_bytes,
                            const ParallelFor& parallel) {
  PlannedSave out;
  std::string new_key;
  {
    // The walk compares against key_ in place: it runs under the lock.
    std::lock_guard lock(mu_);
    const bool usable = plan_ && unit_bytes_ == unit_bytes;
    if (usable && parallel && parts_.size() > 1) {
      if (check_in_parts(tree, out, parallel)) {
        out.plan = plan_;
        out.reused = true;
        out.parts = parts_.size();
        return out;
      }
      out = PlannedSave();  // some part differs: the plain walk builds the new key
    }
    KeyWriter key(usable ? &key_ : nullptr);
    if (usable) out.sources.reserve(plan_->manifest.leaves.size());
    AppendLeaves sink{out};
    scan(tree, key, sink);
    if (key.matches()) {
      out.plan = plan_;
      out.reused = true;
      return out;
    }
    new_key = key.take();
  }
  SavePlan p = plan_save(tree, unit_bytes, unit_bytes);
  auto skeleton = std::make_shared<PlanSkeleton>();
  skeleton->manifest = std::move(p.manifest);
  skeleton->units = std::move(p.units);
  out.plan = skeleton;
  std::lock_guard lock(mu_);
  key_ = std::move(new_key);
  plan_ = std::move(skeleton);
  unit_bytes_ = unit_bytes;
  parts_.clear();
  if (plan_->manifest.leaves.size() >= kParallelLeaves) split(tree);
  return out;
}

}  // namespace ckpt
