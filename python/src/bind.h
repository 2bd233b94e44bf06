#pragma once
// Shared pieces of the ckpt._ckpt extension (python/src): the callback dispatcher that hands
// completions and log records to Python, and the conversions between Python objects and ckpt's
// trees, JSON and errors.
#include <boost/json/value.hpp>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <vector>
#include <string>

// pybind11 and Python's headers draw warnings of their own under -Wpedantic; they are included as
// system headers (imported targets), so only this project's code is held to -Werror.
#include <pybind11/pybind11.h>

#include "runtime/manifest.h"
#include "runtime/tree.h"

namespace ckpt::py_bind {

namespace py = pybind11;

// --- dispatch.cc -----------------------------------------------------------------------------
// One thread that runs Python work handed over by threads that do not hold the GIL (the
// Runtime's completion and log callbacks): it blocks on a queue (no polling), takes the GIL for
// each item and runs it. Items pushed after shutdown are dropped (their Python references leak
// rather than being released without the GIL).
void dispatch(std::function<void()> fn);
// Waits (the caller must not hold the GIL) until everything pushed before the call has run.
void dispatch_flush();
// Runs what is queued, then stops the thread. Called at interpreter exit (ckpt/__init__.py).
void dispatch_shutdown();
// Routes the spdlog logger "ckpt" to Python's logging.getLogger("ckpt") through the dispatcher.
void install_log_bridge();

// An owned reference to a Python callable that may be dropped on any thread: its last release
// happens on the dispatcher (with the GIL), never on a thread without it.
class PyCallback {
 public:
  explicit PyCallback(py::object fn) : fn_(fn.release().ptr()) {}
  ~PyCallback();
  PyCallback(const PyCallback&) = delete;
  PyCallback& operator=(const PyCallback&) = delete;
  // With the GIL held: calls fn(arg) and drops the reference. Python exceptions the callback
  // raises are reported as unraisable (sys.unraisablehook), as asyncio does.
  void call(py::object arg);
  // With the GIL held: a new reference to the object (None once called).
  py::object get() const { return fn_ ? py::reinterpret_borrow<py::object>(fn_) : py::none(); }

 private:
  PyObject* fn_;
};

// --- flatten.cc ------------------------------------------------------------------------------
// A pytree prepared for a save: the tree of views into the leaves' memory (Python scalars get
// small owned arrays), pytree.json (ckpt/_tree.py describes it) and every object whose memory
// the tree points into. Raises (ckpt.errors, naming the path) what cannot be saved exactly.
inline constexpr const char* kPytreeFile = "pytree.json";
struct Flattened {
  Tree tree;
  std::string pytree_json;
  py::list keep;
};
class FlattenCache;
// With a cache, a tree that repeats one of the last few walked through it (the same state_dict
// saved every K steps) reuses that walk's tree skeleton and pytree.json: only containers, keys,
// leaf types, dtypes, shapes and contiguity are compared, and data pointers and scalar values
// read afresh (flatten.cc).
Flattened flatten_pytree(py::handle root, FlattenCache* cache = nullptr);

// The walks a Runtime remembers (used with the GIL held).
class FlattenCache {
 public:
  struct Node;
  struct Entry;
  // Interned attribute names and objects the matcher compares with.
  struct Names {
    py::object odict = py::module_::import("collections").attr("OrderedDict");
    py::object strided = py::none();
    py::str metadata{"_metadata"}, dtype{"dtype"}, is_cpu{"is_cpu"}, layout{"layout"},
        is_contiguous{"is_contiguous"}, is_neg{"is_neg"}, shape{"shape"}, data_ptr{"data_ptr"};
  };
  FlattenCache();
  ~FlattenCache();
  FlattenCache(const FlattenCache&) = delete;
  FlattenCache& operator=(const FlattenCache&) = delete;

  std::optional<Flattened> reuse(py::handle root);
  void record(const Flattened& flat, std::vector<Node>& nodes,
              const std::vector<std::string>& leaf_paths);
  std::uint64_t hits() const { return hits_; }
  void clear() { entries_.clear(); }

 private:
  static constexpr std::size_t kEntries = 4;
  std::vector<std::shared_ptr<const Entry>> entries_;  // most recently used first
  std::unique_ptr<Names> names_;
  std::uint64_t hits_ = 0;
};

// --- convert.cc ------------------------------------------------------------------------------
// A normalized restore template from ckpt/_tree.py: dict (str keys), list, or leaf tuple
// (dtype code, shape tuple, data address, writable).
Tree to_tree(py::handle node, std::size_t depth = 0);
// The checkpoint's structure from its manifest: dict, list, leaf tuple (dtype name, shape).
py::object manifest_structure(const Manifest& manifest);
// JSON <-> Python (dict with str keys, list, tuple as a list, str, int, float, bool, None);
// `what` and `key` name a value that cannot be converted.
boost::json::value to_json(py::handle obj, const std::string& what, const std::string& key = {},
                           std::size_t depth = 0);
py::object from_json(const boost::json::value& v);
// The exception object of the ckpt.errors hierarchy for a failure (GIL held).
py::object make_py_error(const std::exception_ptr& error);

}  // namespace ckpt::py_bind
