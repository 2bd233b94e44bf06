// The save side of ckpt/_tree.py in C++: one pass over a pytree that builds the ckpt::Tree of
// views into the leaves' own memory, pytree.json and the list of objects to keep alive (bind.h,
// flatten_pytree). Only the accepted shapes are handled here; anything else is handed to the
// Python helpers of ckpt/_tree.py, which raise the error naming the path (one wording for both
// sides) or convert the odd leaf (numpy scalars).
#include <boost/json/serialize.hpp>
#include <pybind11/numpy.h>

#include <algorithm>
#include <cstring>
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

  Tree walk_dict(py::handle obj, std::string& path, std::size_t depth) {
    enter(obj, path, "dict");
    struct Item {
      std::string key;
      py::handle child;
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
      items.push_back({std::move(tk), value});
    }
    // Inserted in key order, so that each insertion appends (Tree keeps keys sorted; a
    // state_dict's insertion order would make each one shift the keys after it).
    if (!plain) {
      std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.key < b.key; });
    }
    Tree t;
    const std::size_t mark = path.size();
    for (auto& item : items) {
      append(path, item.key);
      Tree child = walk(item.child, path, depth + 1);
      path.resize(mark);
      t[item.key] = std::move(child);
    }
    active_.erase(obj.ptr());

    boost::json::object entry;
    if (obj.get_type().is(odict_)) {
      entry["type"] = "odict";
      py::object meta = py::getattr(obj, "_metadata", py::none());
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
    keep_.append(obj);
    return Array::view(static_cast<DType>(code), std::move(shape), arr.data());
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
    keep_.append(t);
    nodes_[path] = "torch";
    return Array::view(static_cast<DType>(code), std::move(shape), data);
  }

  template <typename T>
  static Tree scalar(DType dtype, T value) {
    Array a = Array::zeros(dtype, {});
    std::memcpy(a.mutable_data(), &value, sizeof(T));
    return a;
  }

  Tree bytes_leaf(const char* data, std::size_t size) {
    Array a = Array::zeros(DType::u8, {size});
    if (size > 0) std::memcpy(a.mutable_data(), data, size);
    return a;
  }

  Tree scalar_leaf(py::handle obj, const std::string& path) {
    PyObject* p = obj.ptr();
    if (PyBool_Check(p)) {
      nodes_[path] = "bool";
      return scalar<std::uint8_t>(DType::boolean, p == Py_True ? 1 : 0);
    }
    if (PyLong_CheckExact(p)) {
      int overflow = 0;
      long long v = PyLong_AsLongLongAndOverflow(p, &overflow);
      if (overflow == 0) {
        nodes_[path] = "int";
        return scalar<std::int64_t>(DType::i64, v);
      }
    } else if (PyFloat_CheckExact(p)) {
      nodes_[path] = "float";
      return scalar<double>(DType::f64, PyFloat_AS_DOUBLE(p));
    } else if (PyUnicode_CheckExact(p)) {
      Py_ssize_t size = 0;
      const char* s = PyUnicode_AsUTF8AndSize(p, &size);
      if (s != nullptr) {
        nodes_[path] = "str";
        return bytes_leaf(s, static_cast<std::size_t>(size));
      }
      PyErr_Clear();  // the Python helper names the problem
    } else if (PyBytes_CheckExact(p)) {
      nodes_[path] = "bytes";
      return bytes_leaf(PyBytes_AS_STRING(p), static_cast<std::size_t>(PyBytes_GET_SIZE(p)));
    }
    // Ints beyond int64, numpy scalars, and what cannot be saved (raises, naming the path).
    py::tuple converted = tree_py_.attr("_scalar_array")(obj, path);
    Tree leaf = numpy_leaf(converted[0], path);
    nodes_[path] = converted[1].cast<std::string>();
    return leaf;
  }

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

Flattened flatten_pytree(py::handle root) {
  Walker w;
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

}  // namespace ckpt::py_bind
