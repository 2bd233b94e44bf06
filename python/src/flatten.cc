// The save side of ckpt/_tree.py in C++: one pass over a pytree that builds the ckpt::Tree of
// views into the leaves' own memory, pytree.json and the list of objects to keep alive (bind.h,
// flatten_pytree). Only the accepted shapes are handled here; anything else is handed to the
// Python helpers of ckpt/_tree.py, which raise the error naming the path (one wording for both
// sides) or convert the odd leaf (numpy scalars).
#include <boost/json/serialize.hpp>
#include <pybind11/numpy.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "io/error.h"
#include "python/src/bind.h"
#include "runtime/json.h"
#include "runtime/limits.h"

namespace ckpt::py_bind {

namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "numpy byte-order check assumes LE");

std::string where(const std::string& path) { return path.empty() ? "(root)" : path; }

// The DType of a numpy dtype (kind, item size), or -1.
int numpy_code(const py::dtype& dt) {
  if (dt.byteorder() == '>') return -1;
  const auto size = dt.itemsize();
  switch (dt.kind()) {
    case 'f': return size == 8 ? int(DType::f64) : size == 4 ? int(DType::f32)
                   : size == 2 ? int(DType::f16) : -1;
    case 'i': return size == 8 ? int(DType::i64) : size == 4 ? int(DType::i32)
                   : size == 2 ? int(DType::i16) : size == 1 ? int(DType::i8) : -1;
    case 'u': return size == 8 ? int(DType::u64) : size == 4 ? int(DType::u32)
                   : size == 2 ? int(DType::u16) : size == 1 ? int(DType::u8) : -1;
    case 'b': return size == 1 ? int(DType::boolean) : -1;
    default: return -1;
  }
}

}  // namespace

// One node of a walked tree in walk order (preorder, dict items in insertion order), as much as
// a later tree must repeat for the walk's result (the skeleton and pytree.json) to be reused.
struct FlattenCache::Node {
  enum class Kind : std::uint8_t { dict, odict, list, tuple, none, tensor, numpy, boolean, int64,
                                   float64, str, bytes };
  Kind kind;
  Py_ssize_t size = 0;          // dict, list, tuple
  std::vector<py::object> keys;  // dict: its keys (immutable str / int objects), in order
  py::object meta;              // odict: a private deep copy of _metadata (None: none)
  PyTypeObject* type = nullptr;  // tensor, numpy: the exact type (held by type_ref)
  py::object type_ref;
  py::object dtype;             // tensor: the torch.dtype
  int code = -1;                // numpy: the DType
  Shape shape;                  // tensor, numpy
};

struct FlattenCache::Entry {
  std::vector<Node> nodes;
  Tree skeleton;                   // the tree; its leaves are replaced at each use
  std::vector<std::size_t> slot;   // walk-order leaf i is flattening-order leaf slot[i]
  std::string pytree_json;
};

FlattenCache::FlattenCache() = default;
FlattenCache::~FlattenCache() = default;

namespace {

using Node = FlattenCache::Node;

template <typename T>
Array scalar(DType dtype, T value) {
  Array a = Array::zeros(dtype, {});
  std::memcpy(a.mutable_data(), &value, sizeof(T));
  return a;
}

Array bytes_array(const char* data, std::size_t size) {
  Array a = Array::zeros(DType::u8, {size});
  if (size > 0) std::memcpy(a.mutable_data(), data, size);
  return a;
}

// pytree.json's name of each scalar kind, from Node::Kind::boolean on.
constexpr const char* kScalarNames[] = {"bool", "int", "float", "str", "bytes"};

// A Python scalar's own array (a new one each time: an overlapped save may still read the last
// one), and its kind; nullopt for what the Python helper must convert or refuse.
std::optional<Array> scalar_array(PyObject* p, FlattenCache::Node::Kind& kind) {
  using Kind = FlattenCache::Node::Kind;
  if (PyBool_Check(p)) {
    kind = Kind::boolean;
    return scalar<std::uint8_t>(DType::boolean, p == Py_True ? 1 : 0);
  }
  if (PyLong_CheckExact(p)) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(p, &overflow);
    if (overflow != 0) return std::nullopt;
    kind = Kind::int64;
    return scalar<std::int64_t>(DType::i64, v);
  }
  if (PyFloat_CheckExact(p)) {
    kind = Kind::float64;
    return scalar<double>(DType::f64, PyFloat_AS_DOUBLE(p));
  }
  if (PyUnicode_CheckExact(p)) {
    Py_ssize_t size = 0;
    const char* s = PyUnicode_AsUTF8AndSize(p, &size);
    if (s == nullptr) {
      PyErr_Clear();  // the Python helper names the problem
      return std::nullopt;
    }
    kind = Kind::str;
    return bytes_array(s, static_cast<std::size_t>(size));
  }
  if (PyBytes_CheckExact(p)) {
    kind = Kind::bytes;
    return bytes_array(PyBytes_AS_STRING(p), static_cast<std::size_t>(PyBytes_GET_SIZE(p)));
  }
  return std::nullopt;
}


class Walker {
 public:
  Walker() : tree_py_(py::module_::import("ckpt._tree")) {
    odict_ = py::module_::import("collections").attr("OrderedDict");
    py::object torch = py::module_::import("sys").attr("modules").attr("get")("torch");
    if (!torch.is_none()) {
      tensor_type_ = torch.attr("Tensor");
      strided_ = torch.attr("strided");
      py::object dtype_type = torch.attr("dtype");
      for (int i = 0; i < kDTypeCount; ++i) {
        std::string name(to_string(static_cast<DType>(i)));
        py::object dt = py::getattr(torch, name.c_str(), py::none());
        if (py::isinstance(dt, dtype_type)) torch_codes_.emplace_back(dt, i);
      }
    }
  }

  Tree walk(py::handle obj, std::string& path, std::size_t depth) {
    if (depth > kMaxTreeDepth) {
      throw Error(Errc::invalid_argument, where(path).substr(0, 200) +
                                              "...: the tree nests deeper than " +
                                              std::to_string(kMaxTreeDepth) + " levels");
    }
    PyObject* p = obj.ptr();
    PyTypeObject* type = Py_TYPE(p);
    if (type == &PyDict_Type || obj.get_type().is(odict_)) {
      return walk_dict(obj, path, depth);
    }
    if (type == &PyList_Type || type == &PyTuple_Type) {
      record(type == &PyList_Type ? Node::Kind::list : Node::Kind::tuple).size = PyList_Check(p)
          ? PyList_GET_SIZE(p) : PyTuple_GET_SIZE(p);
      enter(obj, path, "list");
      Tree t = Tree::list();
      const std::size_t mark = path.size();
      Py_ssize_t i = 0;
      for (py::handle child : obj) {
        append(path, std::to_string(i++));
        t.push_back(walk(child, path, depth + 1));
        path.resize(mark);
      }
      active_.erase(p);
      if (type == &PyTuple_Type) nodes_[path] = "tuple";
      return t;
    }
    if (p == Py_None) {
      record(Node::Kind::none);
      nodes_[path] = "none";
      return Tree();
    }
    if (py::isinstance<py::array>(obj)) return numpy_leaf(obj, path);
    if (tensor_type_ && PyObject_IsInstance(p, tensor_type_.ptr()) == 1) {
      return tensor_leaf(obj, path);
    }
    return scalar_leaf(obj, path);
  }

  boost::json::object& nodes() { return nodes_; }
  py::list& keep() { return keep_; }
  // The walk as cache nodes, and the path of each leaf in walk order; cacheable() is false when
  // a Python helper converted a leaf (numpy scalars, ints beyond 64 bits), which is not
  // recorded.
  std::vector<Node>& recorded() { return recorded_; }
  std::vector<std::string>& leaf_paths() { return leaf_paths_; }
  bool cacheable() const { return cacheable_; }

 private:
  static void append(std::string& path, std::string_view key) {
    if (!path.empty()) path += '/';
    path += key;
  }

  void enter(py::handle obj, const std::string& path, const char* what) {
    if (!active_.insert(obj.ptr()).second) {
      throw Error(Errc::invalid_argument, where(path) + ": the tree contains a cycle (this " +
                                              what + " contains itself)");
    }
  }

  Node& record(Node::Kind kind) {
    recorded_.push_back(Node{kind});
    return recorded_.back();
  }
  // A leaf's node (recorded before the leaf is built, so that preorder holds).
  Tree leaf(Tree t, const std::string& path) {
    leaf_paths_.push_back(path);
    return t;
  }

  Tree walk_dict(py::handle obj, std::string& path, std::size_t depth) {
    const bool odict = obj.get_type().is(odict_);
    const std::size_t me = recorded_.size();
    record(odict ? Node::Kind::odict : Node::Kind::dict).size = PyDict_Size(obj.ptr());
    enter(obj, path, "dict");
    struct Item {
      std::string key;
      py::handle child;
      Tree tree;
    };
    std::vector<Item> items;
    items.reserve(static_cast<std::size_t>(PyDict_Size(obj.ptr())));
    boost::json::array original;
    bool plain = true;  // str keys only, in sorted order
    std::unordered_set<std::string> seen;
    PyObject* key = nullptr;
    PyObject* value = nullptr;
    Py_ssize_t pos = 0;
    while (PyDict_Next(obj.ptr(), &pos, &key, &value)) {
      std::string tk;
      if (PyUnicode_CheckExact(key)) {
        Py_ssize_t size = 0;
        const char* s = PyUnicode_AsUTF8AndSize(key, &size);
        if (s == nullptr) {
          PyErr_Clear();
          throw Error(Errc::invalid_argument,
                      where(path) + ": dict key " + py::repr(key).cast<std::string>() +
                          " is not valid Unicode");
        }
        tk.assign(s, static_cast<std::size_t>(size));
        if (tk.empty() || tk.find('/') != std::string::npos) python_key_error(key, path);
        original.emplace_back(tk);
      } else if (PyLong_CheckExact(key)) {
        tk = py::str(key).cast<std::string>();
        original.push_back(to_json(key, "pytree.json", where(path)));
        plain = false;
      } else {
        python_key_error(key, path);
      }
      if (!seen.insert(tk).second) {
        throw Error(Errc::invalid_argument, where(path) + ": keys '" + tk + "' and " + tk +
                                                " collide (a dict may not hold both)");
      }
      if (plain && !items.empty() && !(items.back().key < tk)) plain = false;
      recorded_[me].keys.push_back(py::reinterpret_borrow<py::object>(key));
      items.push_back({std::move(tk), value, Tree()});
    }
    // Walked in insertion order (the order a cache entry records, and the matcher follows),
    // then inserted in key order, so that each insertion appends (Tree keeps keys sorted; a
    // state_dict's insertion order would make each one shift the keys after it).
    const std::size_t mark = path.size();
    for (auto& item : items) {
      append(path, item.key);
      item.tree = walk(item.child, path, depth + 1);
      path.resize(mark);
    }
    if (!plain) {
      std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.key < b.key; });
    }
    Tree t;
    for (auto& item : items) t[item.key] = std::move(item.tree);
    active_.erase(obj.ptr());

    boost::json::object entry;
    if (odict) {
      entry["type"] = "odict";
      py::object meta = py::getattr(obj, "_metadata", py::none());
      recorded_[me].meta = meta.is_none() ? meta : deepcopy_(meta);
      if (!meta.is_none()) {
        try {
          entry["meta"] = to_json(meta, "pytree.json", "meta");
        } catch (const std::exception&) {
          // metadata that is not JSON is not kept (torch's is)
        }
      }
    }
    if (!plain) entry["keys"] = std::move(original);
    if (!entry.empty()) {
      if (!entry.contains("type")) entry["type"] = "dict";
      nodes_[path] = std::move(entry);
    }
    return t;
  }

  [[noreturn]] void python_key_error(PyObject* key, const std::string& path) {
    tree_py_.attr("_tree_key")(py::handle(key), path);  // raises, naming the path
    throw Error(Errc::invalid_argument, where(path) + ": bad dict key");
  }

  Tree numpy_leaf(py::handle obj, const std::string& path) {
    auto arr = py::reinterpret_borrow<py::array>(obj);
    const int code = numpy_code(arr.dtype());
    if (code < 0 || (arr.flags() & py::array::c_style) == 0) {
      tree_py_.attr("_numpy_leaf")(obj, path, false);  // raises, naming the path
      throw Error(Errc::unsupported, where(path) + ": unsupported numpy array");
    }
    Shape shape(arr.shape(), arr.shape() + arr.ndim());
    Node& n = record(Node::Kind::numpy);
    n.type = Py_TYPE(obj.ptr());
    n.type_ref = py::type::of(obj);
    n.code = code;
    n.shape = shape;
    keep_.append(obj);
    return leaf(Array::view(static_cast<DType>(code), std::move(shape), arr.data()), path);
  }

  // t.<name> and t.<name>() through the interned names.
  static py::object get(py::handle t, const py::str& name) { return t.attr(name); }
  static py::object call(py::handle t, const py::str& name) {
    return py::reinterpret_steal<py::object>(
        check(PyObject_CallMethodNoArgs(t.ptr(), name.ptr())));
  }
  static PyObject* check(PyObject* result) {
    if (result == nullptr) throw py::error_already_set();
    return result;
  }

  Tree tensor_leaf(py::handle t, const std::string& path) {
    py::object dtype = get(t, s_dtype_);
    int code = -1;
    for (const auto& [dt, c] : torch_codes_) {
      if (dt.is(dtype)) code = c;
    }
    if (code < 0 || get(t, s_is_cpu_).ptr() != Py_True || !strided_.is(get(t, s_layout_)) ||
        call(t, s_is_contiguous_).ptr() != Py_True || call(t, s_is_neg_).ptr() != Py_False) {
      tree_py_.attr("_tensor_problem")(t, path);  // raises, naming the path
      throw Error(Errc::unsupported, where(path) + ": unsupported tensor");
    }
    Shape shape;
    py::object size = get(t, s_shape_);  // torch.Size, a tuple
    const Py_ssize_t rank = PyTuple_Size(size.ptr());
    for (Py_ssize_t i = 0; i < rank; ++i) {
      shape.push_back(PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(size.ptr(), i)));
    }
    void* data = PyLong_AsVoidPtr(call(t, s_data_ptr_).ptr());
    Node& n = record(Node::Kind::tensor);
    n.type = Py_TYPE(t.ptr());
    n.type_ref = py::type::of(t);
    n.dtype = dtype;
    n.code = code;
    n.shape = shape;
    keep_.append(t);
    nodes_[path] = "torch";
    return leaf(Array::view(static_cast<DType>(code), std::move(shape), data), path);
  }

  Tree scalar_leaf(py::handle obj, const std::string& path) {
    PyObject* p = obj.ptr();
    Node::Kind kind{};
    if (std::optional<Array> a = scalar_array(p, kind)) {
      record(kind);
      nodes_[path] = kScalarNames[static_cast<int>(kind) - static_cast<int>(Node::Kind::boolean)];
      return leaf(std::move(*a), path);
    }
    // Ints beyond int64, numpy scalars, and what cannot be saved (raises, naming the path).
    cacheable_ = false;
    py::tuple converted = tree_py_.attr("_scalar_array")(obj, path);
    Tree leaf = numpy_leaf(converted[0], path);
    nodes_[path] = converted[1].cast<std::string>();
    return leaf;
  }

  py::object deepcopy_ = py::module_::import("copy").attr("deepcopy");
  std::vector<Node> recorded_;
  std::vector<std::string> leaf_paths_;
  bool cacheable_ = true;
  const py::str s_dtype_{"dtype"}, s_is_cpu_{"is_cpu"}, s_layout_{"layout"},
      s_is_contiguous_{"is_contiguous"}, s_is_neg_{"is_neg"}, s_shape_{"shape"},
      s_data_ptr_{"data_ptr"};
  py::module_ tree_py_;
  py::object odict_;
  py::object tensor_type_;
  py::object strided_;
  std::vector<std::pair<py::object, int>> torch_codes_;
  std::unordered_set<PyObject*> active_;
  boost::json::object nodes_;
  py::list keep_;
};

}  // namespace

namespace {

// Python equality that also requires equal types throughout (1, 1.0 and True differ; floats
// compare by bits), for the plain data of an OrderedDict's _metadata.
bool strictly_equal(PyObject* a, PyObject* b) {
  if (a == b) return true;
  PyTypeObject* type = Py_TYPE(a);
  if (type != Py_TYPE(b)) return false;
  if (PyDict_Check(a)) {
    if (PyDict_Size(a) != PyDict_Size(b)) return false;
    Py_ssize_t pa = 0, pb = 0;
    PyObject *ka, *va, *kb, *vb;
    while (PyDict_Next(a, &pa, &ka, &va)) {
      if (!PyDict_Next(b, &pb, &kb, &vb) || !strictly_equal(ka, kb) || !strictly_equal(va, vb)) {
        return false;
      }
    }
    return true;
  }
  if (PyList_CheckExact(a) || PyTuple_CheckExact(a)) {
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(a);
    if (n != PySequence_Fast_GET_SIZE(b)) return false;
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (!strictly_equal(PySequence_Fast_GET_ITEM(a, i), PySequence_Fast_GET_ITEM(b, i))) {
        return false;
      }
    }
    return true;
  }
  if (PyFloat_CheckExact(a)) {
    const double x = PyFloat_AS_DOUBLE(a), y = PyFloat_AS_DOUBLE(b);
    return std::memcmp(&x, &y, sizeof x) == 0;
  }
  if (PyUnicode_CheckExact(a) || PyLong_CheckExact(a) || PyBytes_CheckExact(a)) {
    const int eq = PyObject_RichCompareBool(a, b, Py_EQ);
    if (eq < 0) PyErr_Clear();
    return eq == 1;
  }
  return false;  // None and bools are singletons (a == b above); anything else: no reuse
}

// obj.<name> / obj.<name>() as a new reference, nullptr (error cleared) when it raises.
PyObject* attr(PyObject* obj, PyObject* name) {
  PyObject* r = PyObject_GetAttr(obj, name);
  if (r == nullptr) PyErr_Clear();
  return r;
}
PyObject* call0(PyObject* obj, PyObject* name) {
  PyObject* r = PyObject_CallMethodNoArgs(obj, name);
  if (r == nullptr) PyErr_Clear();
  return r;
}
// Steals `r`: whether it is `expected`.
bool is(PyObject* r, PyObject* expected) {
  Py_XDECREF(r);
  return r != nullptr && r == expected;
}

// Walks a tree along a cache entry's nodes: true when the tree repeats the recorded one
// (containers, keys, leaf kinds, types, dtypes, shapes, contiguity), collecting each leaf's array
// (views of the leaves' memory as they are now; scalars' values as they are now) in walk order.
class Matcher {
 public:
  Matcher(const FlattenCache::Entry& e, const FlattenCache::Names& names)
      : nodes_(e.nodes), names_(names) {}

  bool match(PyObject* p) {
    if (i_ >= nodes_.size()) return false;
    const Node& n = nodes_[i_++];
    switch (n.kind) {
      case Node::Kind::dict:
        return Py_TYPE(p) == &PyDict_Type && match_dict(p, n);
      case Node::Kind::odict: {
        if (Py_TYPE(p) != reinterpret_cast<PyTypeObject*>(names_.odict.ptr())) return false;
        PyObject* meta = PyObject_GetAttr(p, names_.metadata.ptr());
        if (meta == nullptr) {
          PyErr_Clear();
          meta = Py_NewRef(Py_None);
        }
        const bool same = strictly_equal(meta, n.meta.ptr());
        Py_DECREF(meta);
        return same && match_dict(p, n);
      }
      case Node::Kind::list:
        return PyList_CheckExact(p) && PyList_GET_SIZE(p) == n.size && match_items(p, n.size);
      case Node::Kind::tuple:
        return PyTuple_CheckExact(p) && PyTuple_GET_SIZE(p) == n.size && match_items(p, n.size);
      case Node::Kind::none:
        return p == Py_None;
      case Node::Kind::tensor:
        return tensor(p, n);
      case Node::Kind::numpy:
        return numpy(p, n);
      default: {
        Node::Kind kind{};
        std::optional<Array> a = scalar_array(p, kind);
        if (!a || kind != n.kind) return false;
        leaves.push_back(std::move(*a));
        return true;
      }
    }
  }
  bool finished() const { return i_ == nodes_.size(); }

  std::vector<Array> leaves;
  py::list keep;

 private:
  bool match_items(PyObject* seq, Py_ssize_t size) {
    for (Py_ssize_t k = 0; k < size; ++k) {
      if (!match(PySequence_Fast_GET_ITEM(seq, k))) return false;
    }
    return true;
  }

  bool match_dict(PyObject* d, const Node& n) {
    if (PyDict_Size(d) != n.size) return false;
    Py_ssize_t pos = 0;
    std::size_t k = 0;
    PyObject *key, *value;
    while (PyDict_Next(d, &pos, &key, &value)) {
      if (k >= n.keys.size() || !same_key(key, n.keys[k++].ptr()) || !match(value)) return false;
    }
    return k == n.keys.size();
  }

  static bool same_key(PyObject* key, PyObject* recorded) {
    if (key == recorded) return true;
    if (Py_TYPE(key) != Py_TYPE(recorded)) return false;
    if (PyUnicode_CheckExact(key)) return PyUnicode_Compare(key, recorded) == 0;
    return strictly_equal(key, recorded);  // an int
  }

  bool tensor(PyObject* t, const Node& n) {
    if (Py_TYPE(t) != n.type) return false;
    if (!is(attr(t, names_.dtype.ptr()), n.dtype.ptr()) ||
        !is(attr(t, names_.is_cpu.ptr()), Py_True) ||
        !is(attr(t, names_.layout.ptr()), names_.strided.ptr()) ||
        !is(call0(t, names_.is_contiguous.ptr()), Py_True) ||
        !is(call0(t, names_.is_neg.ptr()), Py_False)) {
      return false;
    }
    PyObject* size = attr(t, names_.shape.ptr());
    bool same = size != nullptr && PyTuple_Check(size) &&
                static_cast<std::size_t>(PyTuple_GET_SIZE(size)) == n.shape.size();
    for (std::size_t d = 0; same && d < n.shape.size(); ++d) {
      PyObject* dim = PyTuple_GET_ITEM(size, static_cast<Py_ssize_t>(d));
      same = PyLong_Check(dim) && PyLong_AsUnsignedLongLong(dim) == n.shape[d];
    }
    Py_XDECREF(size);
    if (PyErr_Occurred()) PyErr_Clear();
    if (!same) return false;
    PyObject* ptr = call0(t, names_.data_ptr.ptr());
    if (ptr == nullptr) return false;
    void* data = PyLong_AsVoidPtr(ptr);
    Py_DECREF(ptr);
    if (PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    keep.append(t);
    leaves.push_back(Array::view(static_cast<DType>(n.code), n.shape, data));
    return true;
  }

  bool numpy(PyObject* obj, const Node& n) {
    if (Py_TYPE(obj) != n.type) return false;
    auto arr = py::reinterpret_borrow<py::array>(obj);
    if (numpy_code(arr.dtype()) != n.code || (arr.flags() & py::array::c_style) == 0 ||
        static_cast<std::size_t>(arr.ndim()) != n.shape.size() ||
        !std::equal(n.shape.begin(), n.shape.end(), arr.shape())) {
      return false;
    }
    keep.append(obj);
    leaves.push_back(Array::view(static_cast<DType>(n.code), n.shape, arr.data()));
    return true;
  }

  const std::vector<Node>& nodes_;
  const FlattenCache::Names& names_;
  std::size_t i_ = 0;
};

// The leaves of `tree` in flattening order (keys sorted, list order), mutable.
std::vector<Tree*> leaves_of(Tree& tree) {
  std::vector<Tree*> out;
  std::vector<Tree*> stack{&tree};
  while (!stack.empty()) {
    Tree* node = stack.back();
    stack.pop_back();
    if (node->is_leaf()) {
      out.push_back(node);
      continue;
    }
    auto& children = node->children();
    for (auto it = children.rbegin(); it != children.rend(); ++it) stack.push_back(&*it);
  }
  return out;
}

Flattened walk_fully(py::handle root, Walker& w) {
  std::string path;
  Flattened out;
  out.tree = w.walk(root, path, 0);
  boost::json::object doc;
  doc["format"] = "ckpt.pytree";
  doc["version"] = 1;
  doc["nodes"] = std::move(w.nodes());
  out.pytree_json = boost::json::serialize(encode_json(doc, "pytree.json"));
  out.keep = std::move(w.keep());
  return out;
}

}  // namespace

Flattened flatten_pytree(py::handle root, FlattenCache* cache) {
  if (cache != nullptr) {
    if (std::optional<Flattened> hit = cache->reuse(root)) return std::move(*hit);
  }
  Walker w;
  Flattened out = walk_fully(root, w);
  if (cache != nullptr && w.cacheable()) cache->record(out, w.recorded(), w.leaf_paths());
  return out;
}

std::optional<Flattened> FlattenCache::reuse(py::handle root) {
  for (std::size_t k = 0; k < entries_.size(); ++k) {
    std::shared_ptr<const Entry> e = entries_[k];  // held: a thread switch may evict it
    Matcher m(*e, *names_);
    if (!m.match(root.ptr()) || !m.finished()) {
      if (PyErr_Occurred()) PyErr_Clear();
      continue;
    }
    Flattened out;
    out.tree = e->skeleton;
    std::vector<Tree*> leaves = leaves_of(out.tree);
    if (leaves.size() != m.leaves.size()) continue;
    for (std::size_t i = 0; i < m.leaves.size(); ++i) {
      leaves[e->slot[i]]->array() = std::move(m.leaves[i]);
    }
    out.pytree_json = e->pytree_json;
    out.keep = std::move(m.keep);
    ++hits_;
    if (k != 0) std::rotate(entries_.begin(), entries_.begin() + k, entries_.begin() + k + 1);
    return out;
  }
  return std::nullopt;
}

void FlattenCache::record(const Flattened& flat, std::vector<Node>& nodes,
                          const std::vector<std::string>& leaf_paths) {
  if (!names_) names_ = std::make_unique<Names>();
  if (names_->strided.is_none()) {
    py::object torch = py::module_::import("sys").attr("modules").attr("get")("torch");
    if (!torch.is_none()) names_->strided = torch.attr("strided");
  }
  auto e = std::make_shared<Entry>();
  e->nodes = std::move(nodes);
  e->skeleton = flat.tree;
  e->pytree_json = flat.pytree_json;
  std::unordered_map<std::string, std::size_t> order;  // leaf path -> flattening index
  std::size_t i = 0;
  e->skeleton.for_each_leaf([&](const std::string& path, const Array&) { order[path] = i++; });
  if (order.size() != leaf_paths.size()) return;
  for (const std::string& path : leaf_paths) e->slot.push_back(order.at(path));
  entries_.insert(entries_.begin(), std::move(e));
  if (entries_.size() > kEntries) entries_.pop_back();
}

}  // namespace ckpt::py_bind
