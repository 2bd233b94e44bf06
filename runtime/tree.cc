#include "runtime/tree.h"

#include <algorithm>
#include <charconv>

#include "io/error.h"

namespace ckpt {

Tree::Tree(Array array) : kind_(Kind::leaf), array_(std::move(array)) {}

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

namespace {
void walk(const Tree& node, std::string& path,
          const std::function<void(const std::string&, const Array&)>& fn) {
  if (node.is_leaf()) {
    fn(path, node.array());
    return;
  }
  for (std::size_t i = 0; i < node.size(); ++i) {
    std::size_t mark = path.size();
    if (!path.empty()) path += '/';
    path += node.is_dict() ? node.keys()[i] : std::to_string(i);
    walk(node.children()[i], path, fn);
    path.resize(mark);
  }
}
}  // namespace

void Tree::for_each_leaf(const std::function<void(const std::string&, const Array&)>& fn) const {
  std::string path;
  walk(*this, path, fn);
}

std::vector<std::pair<std::string, Array>> Tree::flatten() const {
  std::vector<std::pair<std::string, Array>> out;
  for_each_leaf([&](const std::string& p, const Array& a) { out.emplace_back(p, a); });
  return out;
}

std::size_t Tree::leaf_count() const {
  if (is_leaf()) return 1;
  std::size_t n = 0;
  for (const auto& c : children_) n += c.leaf_count();
  return n;
}

}  // namespace ckpt
