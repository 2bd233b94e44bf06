#include "runtime/tree.h"

#include <algorithm>
#include <charconv>

#include "io/error.h"

namespace ckpt {

void append_path_part(std::string& path, std::string_view key) {
  if (!path.empty()) path += '/';
  path += key;
}

void append_path_part(std::string& path, std::size_t index) {
  if (!path.empty()) path += '/';
  char digits[24];
  path.append(digits, std::to_chars(digits, digits + sizeof digits, index).ptr);
}

Tree::Tree(Array array) : kind_(Kind::leaf), array_(std::move(array)) {}

Tree::Tree(const Tree& other) : kind_(other.kind_), keys_(other.keys_), array_(other.array_) {
  // Each destination's children are sized once, before pointers to them are taken.
  std::vector<std::pair<const Tree*, Tree*>> work{{&other, this}};
  while (!work.empty()) {
    auto [src, dst] = work.back();
    work.pop_back();
    dst->children_.resize(src->children_.size());
    for (std::size_t i = 0; i < src->children_.size(); ++i) {
      const Tree& s = src->children_[i];
      Tree& d = dst->children_[i];
      d.kind_ = s.kind_;
      d.keys_ = s.keys_;
      d.array_ = s.array_;
      if (!s.children_.empty()) work.emplace_back(&s, &d);
    }
  }
}

Tree& Tree::operator=(const Tree& other) {
  if (this != &other) *this = Tree(other);
  return *this;
}

Tree& Tree::operator=(Tree&& other) noexcept {
  if (this != &other) {
    // The old value may own `other` (t = std::move(t.at(0))): keep it alive until the end, and
    // let ~Tree take it apart without recursion.
    Tree old(std::move(*this));
    kind_ = other.kind_;
    keys_ = std::move(other.keys_);
    children_ = std::move(other.children_);
    array_ = std::move(other.array_);
  }
  return *this;
}

Tree::~Tree() {
  if (children_.empty()) return;
  // Moving a node's children out before it dies leaves every destructor a node without children.
  std::vector<Tree> pending = std::move(children_);
  while (!pending.empty()) {
    Tree node = std::move(pending.back());
    pending.pop_back();
    for (Tree& child : node.children_) pending.push_back(std::move(child));
    node.children_.clear();
  }
}

Tree Tree::list() {
  Tree t;
  t.kind_ = Kind::list;
  return t;
}

namespace {
void check_key(std::string_view key) {
  if (key.empty() || key.find('/') != std::string_view::npos) {
    throw Error(Errc::invalid_argument,
                "tree key '" + std::string(key) + "' must be non-empty and contain no '/'");
  }
}
}  // namespace

Tree& Tree::operator[](std::string_view key) {
  if (kind_ != Kind::dict) throw Error(Errc::invalid_argument, "tree node is not a dict");
  check_key(key);
  auto it = std::lower_bound(keys_.begin(), keys_.end(), key);
  auto index = static_cast<std::size_t>(it - keys_.begin());
  if (it == keys_.end() || *it != key) {
    keys_.insert(it, std::string(key));
    children_.insert(children_.begin() + static_cast<std::ptrdiff_t>(index), Tree());
  }
  return children_[index];
}

bool Tree::contains(std::string_view key) const {
  return kind_ == Kind::dict && std::binary_search(keys_.begin(), keys_.end(), key);
}

const Tree& Tree::at(std::string_view key) const {
  if (kind_ == Kind::dict) {
    auto it = std::lower_bound(keys_.begin(), keys_.end(), key);
    if (it != keys_.end() && *it == key)
      return children_[static_cast<std::size_t>(it - keys_.begin())];
  }
  throw Error(Errc::not_found, "tree has no key '" + std::string(key) + "'");
}

Tree& Tree::push_back(Tree child) {
  if (kind_ != Kind::list) throw Error(Errc::invalid_argument, "tree node is not a list");
  children_.push_back(std::move(child));
  return children_.back();
}

Tree& Tree::at(std::size_t index) {
  return const_cast<Tree&>(static_cast<const Tree&>(*this).at(index));
}

const Tree& Tree::at(std::size_t index) const {
  if (kind_ != Kind::list || index >= children_.size()) {
    throw Error(Errc::not_found, "tree has no index " + std::to_string(index));
  }
  return children_[index];
}

const Array& Tree::array() const {
  if (kind_ != Kind::leaf) throw Error(Errc::invalid_argument, "tree node is not a leaf");
  return array_;
}

Array& Tree::array() {
  if (kind_ != Kind::leaf) throw Error(Errc::invalid_argument, "tree node is not a leaf");
  return array_;
}

const Tree* Tree::find(std::string_view path) const {
  const Tree* node = this;
  while (!path.empty()) {
    auto slash = path.find('/');
    std::string_view part = path.substr(0, slash);
    path = slash == std::string_view::npos ? std::string_view{} : path.substr(slash + 1);
    if (node->is_dict()) {
      if (!node->contains(part)) return nullptr;
      node = &node->at(part);
    } else if (node->is_list()) {
      std::size_t index = 0;
      auto [end, ec] = std::from_chars(part.data(), part.data() + part.size(), index);
      if (ec != std::errc{} || end != part.data() + part.size() || index >= node->size()) {
        return nullptr;
      }
      node = &node->children_[index];
    } else {
      return nullptr;
    }
  }
  return node;
}

void Tree::for_each_leaf(const std::function<void(const std::string&, const Array&)>& fn) const {
  std::string path;
  if (is_leaf()) {
    fn(path, array_);
    return;
  }
  struct Frame {
    const Tree* node;
    std::size_t next;  // the child to visit next
    std::size_t mark;  // path length before this node's own part
  };
  std::vector<Frame> stack{{this, 0, 0}};
  while (!stack.empty()) {
    Frame& f = stack.back();
    if (f.next == f.node->children_.size()) {
      path.resize(f.mark);
      stack.pop_back();
      continue;
    }
    const std::size_t i = f.next++;
    const Tree* node = f.node;
    const std::size_t mark = path.size();
    if (node->is_dict()) {
      append_path_part(path, node->keys_[i]);
    } else {
      append_path_part(path, i);
    }
    const Tree& child = node->children_[i];
    if (child.is_leaf()) {
      fn(path, child.array_);
      path.resize(mark);
    } else {
      stack.push_back({&child, 0, mark});
    }
  }
}

std::vector<std::pair<std::string, Array>> Tree::flatten() const {
  std::vector<std::pair<std::string, Array>> out;
  for_each_leaf([&](const std::string& p, const Array& a) { out.emplace_back(p, a); });
  return out;
}

std::size_t Tree::leaf_count() const {
  std::size_t n = 0;
  std::vector<const Tree*> stack{this};
  while (!stack.empty()) {
    const Tree* node = stack.back();
    stack.pop_back();
    if (node->is_leaf()) ++n;
    for (const Tree& c : node->children_) stack.push_back(&c);
  }
  return n;
}

}  // namespace ckpt
