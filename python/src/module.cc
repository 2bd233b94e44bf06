// ckpt._ckpt: the pybind11 binding of ckpt::Runtime, its handles and the jobs layer's path and
// catalog rules. The Python package (python/ckpt) builds the public API on it. A pytree to save
// is walked here (flatten.cc); a restore template arrives normalized by ckpt/_tree.py as
// dict/list/leaf tuples of raw addresses.
//
// The GIL is released around everything that copies, waits, reads or drains. Completions and log
// records reach Python through the dispatcher thread (bind.h), never from the Runtime's threads.
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>

#include "io/error.h"
#include "jobs/config_json.h"
#include "jobs/job.h"
#include "jobs/paths.h"
#include "python/src/bind.h"
#include "runtime/catalog.h"
#include "runtime/checkpoint.h"
#include "runtime/json.h"
#include "runtime/runtime.h"

namespace ckpt::py_bind {
namespace {

using namespace std::chrono;

nanoseconds to_ns(double seconds) {
  if (!(seconds >= 0)) throw Error(Errc::invalid_argument, "a duration must be >= 0 seconds");
  return duration_cast<nanoseconds>(duration<double>(std::min(seconds, 1e9)));
}
double seconds(nanoseconds ns) { return duration<double>(ns).count(); }
// How often a blocking wait lets Python run its signal handlers (KeyboardInterrupt).
constexpr double kSignalCheck = 0.1;

Backpressure parse_backpressure(const std::string& s) {
  if (s == "block") return Backpressure::block;
  if (s == "skip") return Backpressure::skip;
  throw Error(Errc::invalid_argument, "backpressure must be 'block' or 'skip', not '" + s + "'");
}

// Calls cb(error or None) on the dispatcher once the event the token waits for completes.
auto deliver(py::object fn) {
  auto cb = std::make_shared<PyCallback>(std::move(fn));
  return [cb](std::exception_ptr e) {
    dispatch([cb, e] { cb->call(e ? make_py_error(e) : py::none()); });
  };
}

// What SaveHandle and RegisterHandle share: waits release the GIL, failures become
// ckpt.errors exceptions, on_done(fn) calls fn(error or None) on the dispatcher.
template <typename Handle>
class PyHandle {
 public:
  explicit PyHandle(Handle h) : h_(std::move(h)) {}
  bool done() const { return h_.done(); }
  // Blocks until done and rethrows the failure; Ctrl-C (any signal handler that raises)
  // interrupts the wait.
  void wait() const {
    while (!wait_for(kSignalCheck)) {
    }
    py::gil_scoped_release nogil;
    h_.wait();
  }
  // Waits in slices with the GIL released, running Python's signal handlers between them.
  bool wait_for(double timeout) const {
    const auto deadline = steady_clock::now() + to_ns(timeout);
    for (;;) {
      const auto left = deadline - steady_clock::now();
      bool done = false;
      {
        py::gil_scoped_release nogil;
        done = h_.wait_for(std::clamp<nanoseconds>(left, nanoseconds(0), to_ns(kSignalCheck)));
      }
      if (done) return true;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (steady_clock::now() >= deadline) return false;
    }
  }
  py::object error() const {
    std::exception_ptr e = h_.error();
    return e ? make_py_error(e) : py::none();
  }
  void on_done(py::object fn) const { h_.async_wait(deliver(std::move(fn))); }

 protected:
  Handle h_;
};

class PySaveHandle : public PyHandle<SaveHandle> {
 public:
  using PyHandle::PyHandle;
  std::string path() const { return h_.path(); }
  std::string state() const { return std::string(to_string(h_.state())); }
  void wait_snapshotted() const {
    py::gil_scoped_release nogil;
    h_.wait_snapshotted();
  }
  py::dict timings() const {
    SaveTimings t = h_.timings();
    py::dict d;
    d["stall"] = seconds(t.stall);
    d["snapshot"] = seconds(t.snapshot);
    d["durable"] = seconds(t.durable);
    d["bytes"] = t.bytes;
    d["stored_bytes"] = t.stored_bytes;
    d["written_bytes"] = t.written_bytes;
    return d;
  }
  void on_snapshotted(py::object fn) const { h_.async_snapshotted(deliver(std::move(fn))); }
};

class PyRegisterHandle : public PyHandle<RegisterHandle> {
 public:
  using PyHandle::PyHandle;
  std::string suffix() const { return h_.suffix(); }
};

class PyRuntime {
 public:
  explicit PyRuntime(const py::dict& kw) {
    RuntimeOptions o;
    for (auto [k, v] : kw) {
      auto key = k.cast<std::string>();
      if (v.is_none()) continue;
      if (key == "engine") o.engine = io::parse_engine_kind(v.cast<std::string>());
      else if (key == "queue_depth") o.queue_depth = v.cast<unsigned>();
      else if (key == "io_threads") o.io_threads = v.cast<unsigned>();
      else if (key == "copy_threads") o.copy_threads = v.cast<unsigned>();
      else if (key == "overlapped_copy_threads") o.overlapped_copy_threads = v.cast<unsigned>();
      else if (key == "copy_nice") o.copy_nice = v.cast<int>();
      else if (key == "staging_budget") o.staging_budget = v.cast<std::uint64_t>();
      else if (key == "unit_bytes") o.unit_bytes = v.cast<std::uint64_t>();
      else if (key == "backpressure") o.backpressure = parse_backpressure(v.cast<std::string>());
      else if (key == "allow_direct") o.allow_direct = v.cast<bool>();
      else if (key == "write_during_copy") o.write_during_copy = v.cast<bool>();
      else if (key == "incremental") o.incremental = v.cast<bool>();
      else if (key == "io_timeout") o.io_timeout = duration_cast<milliseconds>(to_ns(v.cast<double>()));
      else if (key == "lock_wait") o.lock_wait = duration_cast<milliseconds>(to_ns(v.cast<double>()));
      else throw Error(Errc::invalid_argument, "unknown Runtime option '" + key + "'");
    }
    py::gil_scoped_release nogil;
    rt_ = std::make_shared<Runtime>(std::move(o));
  }
  ~PyRuntime() { close(); }
  PyRuntime(const PyRuntime&) = delete;
  PyRuntime& operator=(const PyRuntime&) = delete;

  // Drains and destroys the Runtime: every save in flight completes first, an async_save still
  // waiting for staging included (admitted once staging frees, or refused with Errc::cancelled
  // when only writes the IO watchdog gave up on hold it: runtime/runtime.h).
  void close() {
    std::shared_ptr<Runtime> rt = std::move(rt_);  // with the GIL: no save starts after this
    if (!rt) return;
    py::gil_scoped_release nogil;
    rt.reset();
  }
  bool closed() const { return rt_ == nullptr; }

  // Returns (handle, the objects whose memory the save reads).
  py::tuple save(const std::string& path, py::handle tree, py::handle metadata,
                 const std::string& mode, py::object backpressure,
                 std::map<std::string, std::string> extra_files, const std::string& run_dir,
                 py::dict retention) {
    Runtime& rt = runtime();
    Prepared p = prepare(tree, metadata, mode, std::move(backpressure), std::move(extra_files),
                         run_dir, retention);
    SaveHandle h;
    {
      py::gil_scoped_release nogil;
      h = rt.save(path, p.flat.tree, p.meta.get_object(), p.options);
    }
    return py::make_tuple(PySaveHandle(std::move(h)), std::move(p.flat.keep));
  }

  // save() without blocking the caller: admission (the wait for staging under `block`
  // backpressure) and, in sync mode, the copy run on the Runtime's threads; `done((error,
  // handle, keep))` is then called on the dispatcher, `keep` being the objects whose memory the
  // save reads (held here until then).
  void async_save(const std::string& path, py::handle tree, py::handle metadata,
                  const std::string& mode, py::object backpressure,
                  std::map<std::string, std::string> extra_files, const std::string& run_dir,
                  py::dict retention, py::object done) {
    Runtime& rt = runtime();
    Prepared p = prepare(tree, metadata, mode, std::move(backpressure), std::move(extra_files),
                         run_dir, retention);
    auto cb = std::make_shared<PyCallback>(std::move(done));
    auto held = std::make_shared<PyCallback>(std::move(p.flat.keep));  // released on the dispatcher
    py::gil_scoped_release nogil;
    // Counted in flight by the Runtime from this call on, while it waits for staging too:
    // drain() and close() wait for it.
    rt.async_save(path, std::move(p.flat.tree), std::move(p.meta.get_object()),
                  std::move(p.options), [cb, held](std::exception_ptr e, SaveHandle h) {
                    dispatch([cb, held, e, h = std::move(h)]() mutable {
                      py::object err = e ? make_py_error(e) : py::none();
                      py::object handle = e ? py::none() : py::cast(PySaveHandle(std::move(h)));
                      cb->call(py::make_tuple(err, handle, held->get()));
                    });
                  });
  }

  PyRegisterHandle register_latest(const std::string& run_dir, const std::string& suffix) {
    Runtime& rt = runtime();
    py::gil_scoped_release nogil;
    return PyRegisterHandle(rt.register_latest(run_dir, suffix));
  }

  void claim_run_dir(const std::string& run_dir) {
    Runtime& rt = runtime();
    py::gil_scoped_release nogil;
    rt.claim_run_dir(run_dir);
  }

  py::object restore(const std::string& path, py::handle templ, bool partial,
                     bool transactional) {
    Runtime& rt = runtime();
    Tree t = to_tree(templ);
    boost::json::object metadata;
    {
      py::gil_scoped_release nogil;
      metadata = rt.restore(path, t, RestoreOptions{partial, transactional});
    }
    return from_json(metadata);
  }

  void reserve_staging(std::uint64_t bytes) {
    Runtime& rt = runtime();
    py::gil_scoped_release nogil;
    rt.reserve_staging(bytes);
  }

  py::tuple drain() {
    Runtime& rt = runtime();
    DrainReport report;
    {
      py::gil_scoped_release nogil;
      report = rt.drain();
      dispatch_flush();  // the failures' log records reach logging before drain() returns
    }
    return py::make_tuple(report.failed, report.errors);
  }

  py::dict stats() {
    RuntimeStats s = runtime().stats();
    py::dict d;
    d["saves_started"] = s.saves_started;
    d["saves_committed"] = s.saves_committed;
    d["saves_failed"] = s.saves_failed;
    d["saves_skipped"] = s.saves_skipped;
    d["staging_in_use"] = s.staging_in_use;
    d["staging_mapped"] = s.staging_mapped;
    d["staging_budget"] = s.staging_budget;
    d["engine"] = s.engine;
    d["tree_reuses"] = cache_.hits();
    py::dict restores;  // how their blocks went into the template (RuntimeStats)
    restores["swapped"] = s.restores_swapped;
    restores["copied"] = s.restores_copied;
    restores["placed"] = s.restores_placed;
    restores["two_passes"] = s.restores_two_passes;
    restores["one_pass"] = s.restores_one_pass;
    d["restores"] = restores;
    return d;
  }

  // The save-side walk alone, through the cache or not (for benchmarks and tests):
  // (pytree.json, leaf count).
  py::tuple flatten(py::handle tree, bool cached) {
    Flattened f = flatten_pytree(tree, cached ? &cache_ : nullptr);
    return py::make_tuple(f.pytree_json, f.tree.leaf_count());
  }

  std::vector<std::string> claim_and_clean(py::handle spec) {
    Runtime& rt = runtime();
    jobs::ExecutionSpec s = jobs::config_from_json<jobs::ExecutionSpec>(to_json(spec, "spec"));
    std::string dir = jobs::run_dir(s);
    py::gil_scoped_release nogil;
    rt.claim_run_dir(dir);
    return clean_run_dir(dir);
  }

 private:
  struct Prepared {
    SaveOptions options;
    boost::json::value meta;
    Flattened flat;
  };
  // What save() and async_save() check and build before anything is written: the options, the
  // metadata as JSON, and the tree walked (flatten.cc) with its pytree.json.
  Prepared prepare(py::handle tree, py::handle metadata, const std::string& mode,
                   py::object backpressure, std::map<std::string, std::string> extra_files,
                   const std::string& run_dir, const py::dict& retention) {
    Prepared p;
    SaveOptions& o = p.options;
    if (mode == "sync") o.mode = SnapshotMode::sync;
    else if (mode == "overlapped") o.mode = SnapshotMode::overlapped;
    else throw Error(Errc::invalid_argument, "mode must be 'sync' or 'overlapped', not '" + mode + "'");
    if (!backpressure.is_none()) o.backpressure = parse_backpressure(backpressure.cast<std::string>());
    o.extra_files = std::move(extra_files);
    o.run_dir = run_dir;
    for (auto [k, v] : retention) {
      auto key = k.cast<std::string>();
      if (key == "max_to_keep") o.retention.max_to_keep = v.cast<std::size_t>();
      else if (key == "keep_period") o.retention.keep_period = v.cast<std::int64_t>();
      else if (key == "best_metric") o.retention.best_metric = v.cast<std::string>();
      else if (key == "best_mode_max") o.retention.best_mode_max = v.cast<bool>();
      else if (key == "prefix") o.retention.prefix = v.cast<std::string>();
      else throw Error(Errc::invalid_argument, "unknown retention option '" + key + "'");
    }
    p.meta = to_json(metadata, "metadata");
    if (!p.meta.is_object()) throw Error(Errc::invalid_argument, "metadata must be a dict");
    if (o.extra_files.count(kPytreeFile) != 0) {
      throw Error(Errc::invalid_argument, std::string("extra file name '") + kPytreeFile +
                                              "' is reserved for the tree's Python types");
    }
    p.flat = flatten_pytree(tree, &cache_);
    o.extra_files[kPytreeFile] = std::move(p.flat.pytree_json);
    return p;
  }

  Runtime& runtime() {
    if (!rt_) throw Error(Errc::invalid_argument, "the Runtime is closed");
    return *rt_;
  }
  std::shared_ptr<Runtime> rt_;
  FlattenCache cache_;  // the last trees saved through this Runtime (flatten.cc)
};

jobs::ExecutionSpec spec_of(py::handle spec) {
  return jobs::config_from_json<jobs::ExecutionSpec>(to_json(spec, "spec"));
}
py::object spec_dict(const jobs::ExecutionSpec& s) { return from_json(jobs::config_to_json(s)); }

}  // namespace
}  // namespace ckpt::py_bind

PYBIND11_MODULE(_ckpt, m) {
  using namespace ckpt;
  using namespace ckpt::py_bind;
  m.doc() = "ckpt's C++ runtime (use the ckpt package, not this module)";

  py::register_exception_translator([](std::exception_ptr p) {
    if (!p) return;
    try {
      std::rethrow_exception(p);
    } catch (const Error&) {
      py::object e = make_py_error(p);
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(e.ptr())), e.ptr());
    }
  });
  install_log_bridge();

  py::class_<PySaveHandle>(m, "SaveHandle")
      .def_property_readonly("path", &PySaveHandle::path)
      .def("state", &PySaveHandle::state)
      .def("done", &PySaveHandle::done)
      .def("wait", &PySaveHandle::wait)
      .def("wait_for", &PySaveHandle::wait_for)
      .def("wait_snapshotted", &PySaveHandle::wait_snapshotted)
      .def("error", &PySaveHandle::error)
      .def("timings", &PySaveHandle::timings)
      .def("on_done", &PySaveHandle::on_done)
      .def("on_snapshotted", &PySaveHandle::on_snapshotted);

  py::class_<PyRegisterHandle>(m, "RegisterHandle")
      .def_property_readonly("suffix", &PyRegisterHandle::suffix)
      .def("done", &PyRegisterHandle::done)
      .def("wait", &PyRegisterHandle::wait)
      .def("wait_for", &PyRegisterHandle::wait_for)
      .def("error", &PyRegisterHandle::error)
      .def("on_done", &PyRegisterHandle::on_done);

  py::class_<PyRuntime>(m, "Runtime")
      .def(py::init<const py::dict&>())
      .def("close", &PyRuntime::close)
      .def_property_readonly("closed", &PyRuntime::closed)
      .def("save", &PyRuntime::save)
      .def("async_save", &PyRuntime::async_save)
      .def("register_latest", &PyRuntime::register_latest)
      .def("claim_run_dir", &PyRuntime::claim_run_dir)
      .def("restore", &PyRuntime::restore, py::arg("path"), py::arg("template"),
           py::arg("partial"), py::arg("transactional") = true)
      .def("reserve_staging", &PyRuntime::reserve_staging)
      .def("drain", &PyRuntime::drain)
      .def("stats", &PyRuntime::stats)
      .def("_flatten", &PyRuntime::flatten)
      .def("claim_and_clean", &PyRuntime::claim_and_clean);

  m.def("shutdown", [] {
    py::gil_scoped_release nogil;
    dispatch_shutdown();
  });
  m.def("flush_callbacks", [] {
    py::gil_scoped_release nogil;
    dispatch_flush();
  });
  m.def("dtype_names", [] {
    std::vector<std::string> names;
    for (int i = 0; i < kDTypeCount; ++i) names.emplace_back(to_string(static_cast<DType>(i)));
    return names;
  });
  m.def("read_structure", [](const std::string& dir) {
    Manifest manifest = read_manifest(dir);
    std::vector<std::string> files;
    for (const auto& f : manifest.json_files) files.push_back(f.name);
    return py::make_tuple(manifest_structure(manifest), files);
  });
  m.def("read_json_file", [](const std::string& dir, const std::string& name) {
    std::string text;
    {
      py::gil_scoped_release nogil;
      Manifest manifest = read_manifest(dir);
      if (manifest.json_file(name) == nullptr) return py::object(py::none());
      text = read_checked_file(dir, manifest, name);
    }
    boost::system::error_code ec;
    boost::json::value v = parse_json(text, ec);
    if (ec) throw Error(Errc::corrupt, "invalid JSON (" + ec.message() + ")", dir + "/" + name);
    return from_json(decode_json(v, name));
  });
  m.def("read_metadata", [](const std::string& dir) {
    boost::json::object metadata;
    {
      py::gil_scoped_release nogil;
      metadata = read_metadata(dir);
    }
    return from_json(metadata);
  });
  // A JSON file as the C++ side writes it (non-finite doubles encoded, runtime/json.h).
  m.def("dumps", [](py::handle obj, const std::string& what) {
    boost::json::value v = to_json(obj, what);
    if (!v.is_object()) throw Error(Errc::invalid_argument, what + " must be a dict");
    return boost::json::serialize(encode_json(v, what));
  });

  // Jobs layer: path rules and the run directory's catalog, shared with C++ jobs.
  m.def("spec_local", [](const std::string& root, const std::string& name,
                         const std::string& project, const std::string& group) {
    return spec_dict(jobs::ExecutionSpec::local(root, name, project, group));
  });
  m.def("check_spec", [](py::handle spec) { return spec_dict(spec_of(spec)); });
  m.def("resolve_rel_path", &jobs::resolve_rel_path);
  m.def("checkpoints_dir", [](py::handle spec) { return jobs::checkpoints_dir(spec_of(spec)); });
  m.def("rel_path", [](py::handle spec, const std::string& suffix) {
    return jobs::rel_path(spec_of(spec), suffix);
  });
  m.def("checkpoint_path", [](py::handle spec, const std::string& suffix) {
    return jobs::checkpoint_path(spec_of(spec), suffix);
  });
  m.def("run_dir", [](py::handle spec) { return jobs::run_dir(spec_of(spec)); });
  m.def("checkpoints", [](py::handle spec) {
    auto s = spec_of(spec);
    py::gil_scoped_release nogil;
    return jobs::detail::checkpoints(s);
  });
  m.def("latest", [](py::handle spec) { return jobs::detail::latest(spec_of(spec)); });
  m.def("job_files", [](py::handle spec, const std::string& key, py::handle config) {
    boost::json::object job = jobs::config_to_json(spec_of(spec)).as_object();
    job["key"] = key;
    boost::json::value c = to_json(config, "config");
    return std::map<std::string, std::string>{
        {jobs::kJobFile, boost::json::serialize(job)},
        {jobs::kConfigFile, boost::json::serialize(encode_json(c, "config"))}};
  });
  m.def("read_saved_job", [](const std::string& dir) {
    jobs::detail::SavedJob saved = jobs::detail::read_saved_job(dir);
    return py::make_tuple(saved.key, spec_dict(saved.spec),
                          from_json(decode_json(saved.config, "config")));
  });
  m.def("merge_patch", [](py::handle target, py::handle patch) {
    return from_json(jobs::merge_patch(to_json(target, "config"), to_json(patch, "runtime_cfg")));
  });
}
