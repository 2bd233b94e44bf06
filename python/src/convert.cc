// Conversions between Python objects and ckpt trees, JSON and errors (bind.h).
#include <algorithm>
#include <cmath>
#include <limits>

#include "io/error.h"
#include "python/src/bind.h"
#include "runtime/limits.h"

namespace ckpt::py_bind {

namespace {

Shape to_shape(py::handle shape) {
  Shape out;
  for (py::handle d : shape) out.push_back(d.cast<std::uint64_t>());
  return out;
}

py::tuple shape_tuple(const Shape& shape) {
  py::tuple t(shape.size());
  for (std::size_t i = 0; i < shape.size(); ++i) t[i] = py::int_(shape[i]);
  return t;
}

[[noreturn]] void json_refuse(const std::string& what, const std::string& key,
                              const std::string& why) {
  throw Error(Errc::invalid_argument,
              what + " key '" + (key.empty() ? std::string("(root)") : key) + "': " + why);
}

// The Errc's C++ name, which ckpt.errors keys its classes by.
const char* code_name(Errc code) {
  switch (code) {
    case Errc::io: return "io";
    case Errc::no_space: return "no_space";
    case Errc::not_found: return "not_found";
    case Errc::corrupt: return "corrupt";
    case Errc::unsupported: return "unsupported";
    case Errc::invalid_argument: return "invalid_argument";
    case Errc::mismatch: return "mismatch";
    case Errc::path_escape: return "path_escape";
    case Errc::timeout: return "timeout";
    case Errc::cancelled: return "cancelled";
    case Errc::skipped: return "skipped";
    case Errc::busy: return "busy";
  }
  return "unknown";
}

}  // namespace

Tree to_tree(py::handle node, std::size_t depth) {
  if (depth > kMaxTreeDepth) {
    throw Error(Errc::invalid_argument,
                "tree nests deeper than " + std::to_string(kMaxTreeDepth) + " levels");
  }
  if (PyDict_Check(node.ptr())) {
    // Inserted in key order, so that each insertion appends (Tree keeps keys sorted; a
    // state_dict's insertion order would make each one shift the keys after it).
    std::vector<std::pair<std::string, py::handle>> items;
    items.reserve(PyDict_Size(node.ptr()));
    for (auto [key, child] : py::reinterpret_borrow<py::dict>(node)) {
      items.emplace_back(key.cast<std::string>(), child);
    }
    std::sort(items.begin(), items.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    Tree t;
    for (auto& [key, child] : items) t[key] = to_tree(child, depth + 1);
    return t;
  }
  if (PyList_Check(node.ptr())) {
    Tree t = Tree::list();
    for (py::handle child : node) t.push_back(to_tree(child, depth + 1));
    return t;
  }
  auto leaf = py::reinterpret_borrow<py::tuple>(node);
  const auto code = leaf[0].cast<int>();
  if (code < 0 || code >= kDTypeCount) throw Error(Errc::invalid_argument, "bad dtype code");
  const auto dtype = static_cast<DType>(code);
  Shape shape = to_shape(leaf[1]);
  auto* data = reinterpret_cast<void*>(leaf[2].cast<std::uintptr_t>());
  if (leaf[3].cast<bool>()) return Array::view(dtype, std::move(shape), data);
  return Array::view(dtype, std::move(shape), static_cast<const void*>(data));
}

py::object manifest_structure(const Manifest& m) {
  // Nodes are in pre-order with forward child indices (checked by decode_manifest).
  std::vector<py::object> built(m.nodes.size());
  for (std::size_t i = m.nodes.size(); i-- > 0;) {
    const NodeInfo& n = m.nodes[i];
    if (n.kind == Tree::Kind::leaf) {
      const LeafInfo& leaf = m.leaves[n.leaf];
      built[i] = py::make_tuple(std::string(to_string(leaf.dtype)), shape_tuple(leaf.shape));
    } else if (n.kind == Tree::Kind::list) {
      py::list l;
      for (std::uint32_t c : n.children) l.append(std::move(built[c]));
      built[i] = std::move(l);
    } else {
      py::dict d;
      for (std::size_t k = 0; k < n.children.size(); ++k) {
        d[py::str(n.keys[k])] = std::move(built[n.children[k]]);
      }
      built[i] = std::move(d);
    }
  }
  return built.empty() ? py::dict() : built[0];
}

boost::json::value to_json(py::handle obj, const std::string& what, const std::string& key,
                           std::size_t depth) {
  if (depth > kMaxJsonDepth) json_refuse(what, key, "nests deeper than the readers' limit");
  if (obj.is_none()) return nullptr;
  if (PyBool_Check(obj.ptr())) return obj.ptr() == Py_True;
  if (PyLong_Check(obj.ptr())) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj.ptr(), &overflow);
    if (overflow == 0) return static_cast<std::int64_t>(v);
    if (overflow > 0) {
      unsigned long long u = PyLong_AsUnsignedLongLong(obj.ptr());
      if (!PyErr_Occurred()) return static_cast<std::uint64_t>(u);
      PyErr_Clear();
    }
    json_refuse(what, key, "integer " + py::str(obj).cast<std::string>() +
                               " does not fit in 64 bits");
  }
  if (PyFloat_Check(obj.ptr())) return PyFloat_AsDouble(obj.ptr());
  if (PyUnicode_Check(obj.ptr())) {
    Py_ssize_t size = 0;
    const char* s = PyUnicode_AsUTF8AndSize(obj.ptr(), &size);
    if (s == nullptr) {
      PyErr_Clear();
      json_refuse(what, key, "string is not valid Unicode");
    }
    return boost::json::string(std::string_view(s, static_cast<std::size_t>(size)));
  }
  if (PyDict_Check(obj.ptr())) {
    boost::json::object o;
    for (auto [k, v] : py::reinterpret_borrow<py::dict>(obj)) {
      if (!PyUnicode_Check(k.ptr())) {
        json_refuse(what, key, "key " + py::repr(k).cast<std::string>() + " is not a str");
      }
      auto name = k.cast<std::string>();
      o[name] = to_json(v, what, key.empty() ? name : key + "." + name, depth + 1);
    }
    return o;
  }
  if (PyList_Check(obj.ptr()) || PyTuple_Check(obj.ptr())) {
    boost::json::array a;
    std::size_t i = 0;
    for (py::handle v : obj) {
      a.push_back(to_json(v, what, key + "[" + std::to_string(i++) + "]", depth + 1));
    }
    return a;
  }
  // numpy scalars (a loss as numpy.float32) are stored as their Python value.
  py::handle type = reinterpret_cast<PyObject*>(Py_TYPE(obj.ptr()));
  if (py::hasattr(type, "__module__") && type.attr("__module__").cast<std::string>() == "numpy" &&
      py::hasattr(obj, "item")) {
    py::object item = obj.attr("item")();
    return to_json(item, what, key, depth);
  }
  json_refuse(what, key,
              "a value of type " + type.attr("__name__").cast<std::string>() +
                  " cannot be stored as JSON");
}

py::object from_json(const boost::json::value& v) {
  switch (v.kind()) {
    case boost::json::kind::null: return py::none();
    case boost::json::kind::bool_: return py::bool_(v.get_bool());
    case boost::json::kind::int64: return py::int_(v.get_int64());
    case boost::json::kind::uint64: return py::int_(v.get_uint64());
    case boost::json::kind::double_: return py::float_(v.get_double());
    case boost::json::kind::string: {
      const auto& s = v.get_string();
      return py::str(s.data(), s.size());
    }
    case boost::json::kind::array: {
      py::list l;
      for (const auto& e : v.get_array()) l.append(from_json(e));
      return l;
    }
    case boost::json::kind::object: {
      py::dict d;
      for (const auto& [k, e] : v.get_object()) d[py::str(k.data(), k.size())] = from_json(e);
      return d;
    }
  }
  return py::none();
}

py::object make_py_error(const std::exception_ptr& error) {
  py::object make = py::module_::import("ckpt.errors").attr("_make");
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    return make(code_name(e.code()), e.what(), e.path(), e.sys_errno());
  } catch (const std::exception& e) {
    return make("unknown", e.what(), "", 0);
  } catch (...) {
    return make("unknown", "unknown error", "", 0);
  }
}

}  // namespace ckpt::py_bind
