#pragma once
// Tree: the C++ counterpart of a JAX pytree. A node is a dict (string keys, kept sorted, as JAX
// flattens them), a list, or a leaf holding an Array. Flattening visits leaves depth-first in key
// and index order and names each by its path, "params/layers/3/w".
//
// Nothing here recurses: copying, destroying and walking a tree use explicit stacks, so a tree as
// deep as a caller can build (a hundred thousand levels) cannot exhaust the thread's stack. (A
// save refuses trees deeper than kMaxTreeDepth, runtime/limits.h, as readers do.)
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/array.h"

namespace ckpt {

// Extends a flattened path by one child: "a" and "b" give "a/b", "" and "b" give "b". The child
// is a dict key or a list index ("0", "1", ...). Walks keep one path buffer, extended on the way
// down and cut back (resize) on the way up, instead of a string per node.
void append_path_part(std::string& path, std::string_view key);
void append_path_part(std::string& path, std::size_t index);

class Tree {
 public:
  enum class Kind : std::uint8_t { dict, list, leaf };

  Tree() = default;   // an empty dict
  Tree(Array array);  // NOLINT: a leaf converts implicitly, as in tree["w"] = Array::zeros(...)
  Tree(const Tree& other);
  Tree(Tree&& other) noexcept = default;
  Tree& operator=(const Tree& other);
  Tree& operator=(Tree&& other) noexcept;
  ~Tree();
  static Tree dict() { return Tree(); }
  static Tree list();

  Kind kind() const noexcept { return kind_; }
  bool is_dict() const noexcept { return kind_ == Kind::dict; }
  bool is_list() const noexcept { return kind_ == Kind::list; }
  bool is_leaf() const noexcept { return kind_ == Kind::leaf; }

  // Dict access; operator[] inserts an empty dict under a new key. Keys must be non-empty and
  // free of '/', so that paths stay unambiguous (Error(invalid_argument) otherwise).
  Tree& operator[](std::string_view key);
  const Tree& at(std::string_view key) const;  // throws Error(not_found)
  bool contains(std::string_view key) const;
  const std::vector<std::string>& keys() const noexcept { return keys_; }

  // List access.
  Tree& push_back(Tree child);
  Tree& at(std::size_t index);
  const Tree& at(std::size_t index) const;

  std::size_t size() const noexcept { return children_.size(); }
  const std::vector<Tree>& children() const noexcept { return children_; }
  std::vector<Tree>& children() noexcept { return children_; }

  const Array& array() const;  // throws unless a leaf
  Array& array();

  // Looks a path up ("a/b/0/c"); nullptr when absent.
  const Tree* find(std::string_view path) const;

  // Calls fn(path, array) for every leaf in flattening order.
  void for_each_leaf(const std::function<void(const std::string&, const Array&)>& fn) const;
  std::vector<std::pair<std::string, Array>> flatten() const;
  std::size_t leaf_count() const;

 private:
  Kind kind_ = Kind::dict;
  std::vector<std::string> keys_;  // dict: sorted, parallel to children_
  std::vector<Tree> children_;
  Array array_;
};

}  // namespace ckpt
