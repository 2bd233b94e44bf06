#include "runtime/plan_cache.h"

#include <cstring>

#include "runtime/commit.h"

namespace ckpt {

namespace {

// Compares the serialized structure with `expect` as it is produced; from the first difference
// on it builds the new key instead.
class KeyWriter {
 public:
  explicit KeyWriter(const std::string* expect) : expect_(expect) {}
  void put(const void* p, std::size_t n) {
    if (n == 0) return;  // p may be null (an empty shape's data()): memcmp/append must not see it
    if (same_ && expect_ != nullptr && pos_ + n <= expect_->size() &&
        std::memcmp(expect_->data() + pos_, p, n) == 0) {
      pos_ += n;
      return;
    }
    if (same_) {
      same_ = false;
      if (expect_ != nullptr) built_.assign(expect_->data(), pos_);
    }
    built_.append(static_cast<const char*>(p), n);
  }
  template <typename T>
  void put_value(T v) {
    put(&v, sizeof v);
  }
  bool matches() const { return same_ && expect_ != nullptr && pos_ == expect_->size(); }
  std::string take() {
    if (same_ && expect_ != nullptr) built_.assign(expect_->data(), pos_);
    return std::move(built_);
  }

 private:
  const std::string* expect_;
  std::size_t pos_ = 0;
  bool same_ = true;
  std::string built_;
};

// Pre-order walk in flattening order (dict keys sorted, list items in order), as Tree::flatten.
void scan(const Tree& tree, KeyWriter& key, PlannedSave& out) {
  std::vector<const Tree*> stack{&tree};
  while (!stack.empty()) {
    const Tree* t = stack.back();
    stack.pop_back();
    key.put_value(static_cast<std::uint8_t>(t->kind()));
    if (t->is_leaf()) {
      const Array& a = t->array();
      key.put_value(static_cast<std::uint8_t>(a.dtype()));
      key.put_value(static_cast<std::uint32_t>(a.shape().size()));
      key.put(a.shape().data(), a.shape().size() * sizeof(std::uint64_t));
      out.sources.push_back(a.data());
      if (a.owns_memory()) out.owners.push_back(a.owner());
      continue;
    }
    const auto& children = t->children();
    key.put_value(static_cast<std::uint64_t>(children.size()));
    if (t->is_dict()) {
      for (const auto& k : t->keys()) {
        key.put_value(static_cast<std::uint32_t>(k.size()));
        key.put(k.data(), k.size());
      }
    }
    for (std::size_t i = children.size(); i-- > 0;) stack.push_back(&children[i]);
  }
}

}  // namespace

PlannedSave PlanCache::plan(const Tree& tree, std::uint64_t unit_bytes) {
  PlannedSave out;
  std::string new_key;
  {
    // The walk compares against key_ in place: it runs under the lock.
    std::lock_guard lock(mu_);
    const bool usable = plan_ && unit_bytes_ == unit_bytes;
    KeyWriter key(usable ? &key_ : nullptr);
    if (usable) out.sources.reserve(plan_->manifest.leaves.size());
    scan(tree, key, out);
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
  return out;
}

}  // namespace ckpt
