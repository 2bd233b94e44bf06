"""The seed's job API (shared/seed/job-api.txt) on the C++ runtime.

    @dataclass
    class TrainConfig:
        steps: int = 100
        lr: float = 0.1

    class Train(RestoreableJob[TrainConfig], key="train"):
        def restore_from_path(self, rel_path):
            tree, metadata = self.get_tree_and_metadata_from_path(rel_path, self.state())
        def run(self):
            ...
            self.save_tree_and_metadata(f"step/{step}", self.state(), {"step": step})
            self.register(f"step/{step}")

Checkpoints are those of the C++ jobs layer (jobs/job.h): the run directory is
checkpoints_dir/project/group/name, every job checkpoint carries job.json (the registered key and
the spec) and config.json (the config), `latest` names the registered suffix, and the path rules
are the C++ ones (they are called, not rewritten). What C++ train_loop saved, Python lists,
inspects and restores, and the reverse.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import inspect
import logging
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Generic, List, Optional, Tuple, Type, TypeVar, Union

from . import _ckpt, _config
from ._handles import RegisterHandle, SaveHandle
from ._runtime import Runtime, default_runtime
from .errors import InvalidArgumentError

C = TypeVar("C")
PathArg = Union[str, Path]
_log = logging.getLogger("ckpt")

JOB_FILE = "job.json"
CONFIG_FILE = "config.json"


@dataclass
class ClusterConfig:
    checkpoints_dir: str = "./checkpoints"  # root of every rel_path
    name: str = "local"


@dataclass
class ExecutionSpec:
    """Where a job runs and where its checkpoints live (jobs/spec.h)."""

    project: str = "general"
    group: str = "default"
    name: str = ""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    process_index: int = 0
    process_count: int = 1

    @classmethod
    def local(cls, root_dir: PathArg, name: str, project: str = "",
              group: str = "") -> "ExecutionSpec":
        """A single-process spec rooted at root_dir; empty project and group become "general"
        and "default"."""
        return cls._from_json(_ckpt.spec_local(os.fspath(root_dir), name, project, group))

    def run_rel_path(self) -> str:
        return f"{self.project}/{self.group}/{self.name}"

    def _json(self) -> Dict[str, Any]:
        return _config.to_json(self)

    @classmethod
    def _from_json(cls, j: Dict[str, Any]) -> "ExecutionSpec":
        return _config.from_json(cls, j)


# --- registry ---------------------------------------------------------------------------------

_registry: Dict[str, type] = {}


def _register(cls: type, key: str) -> None:
    old = _registry.get(key)
    if old is not None and old is not cls and (old.__module__, old.__qualname__) != (
            cls.__module__, cls.__qualname__):
        raise InvalidArgumentError(f"job key '{key}' is registered already (by "
                                   f"{old.__module__}.{old.__qualname__})")
    _registry[key] = cls
    cls._job_key = key


def register_job(key: str):
    """Class decorator: registers a job class under `key` (the key saved in job.json). The same
    as ``class MyJob(RestoreableJob[Cfg], key="...")``."""
    def deco(cls):
        _register(cls, key)
        return cls
    return deco


def find_job_class(key: str) -> Optional[type]:
    return _registry.get(key)


def _config_class(cls: type) -> Any:
    """C of the job class's Generic[C] base (Any when unbound)."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if isinstance(origin, type) and issubclass(origin, BasicJob):
                (arg,) = typing.get_args(base)
                if not isinstance(arg, TypeVar):
                    return arg
    return Any


# --- jobs -------------------------------------------------------------------------------------

class BasicJob(Generic[C]):
    """A job: its spec, its config (``args``), ``run()`` and done()/finish()."""

    _job_key = ""

    def __init_subclass__(cls, key: Optional[str] = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if key is not None:
            _register(cls, key)
        elif not inspect.isabstract(cls) and "_job_key" not in cls.__dict__:
            cls._job_key = ""  # not registered: from_checkpoint falls back to the class asked for

    def __init__(self, spec: ExecutionSpec, config: Optional[C] = None, *,
                 runtime: Optional[Runtime] = None):
        self.spec = spec
        if config is None:
            ctype = _config_class(type(self))
            config = ctype() if dataclasses.is_dataclass(ctype) else None
        self.config = config
        self._runtime = runtime
        self._done = False

    @property
    def args(self) -> C:
        return self.config

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = default_runtime()
        return self._runtime

    @runtime.setter
    def runtime(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @classmethod
    def job_key(cls) -> str:
        return cls._job_key

    def run(self):
        """The job's work: a plain method or a coroutine (async def)."""
        raise NotImplementedError

    def on_start(self) -> None:
        pass

    def __call__(self):
        """Runs the job unless it is done (on_start() first). For an async run(), returns the
        coroutine to await."""
        if self._done:
            return None
        self.on_start()
        result = self.run()
        return result

    def done(self) -> bool:
        return self._done

    def finish(self) -> None:
        self._done = True


def _rel(p: PathArg) -> str:
    return os.fspath(p)


class CheckpointedJob(BasicJob[C], Generic[C]):
    """Job with checkpoint save/load: every *_from_path(rel_path, ...) addresses any checkpoint
    under checkpoints_dir; the plain forms use rel_path = project/group/name/suffix."""

    _retention: Optional[Dict[str, Any]] = None

    def _abs(self, rel_path: PathArg) -> str:
        return _ckpt.resolve_rel_path(_ckpt.checkpoints_dir(self.spec._json()), _rel(rel_path))

    def _job_files(self) -> Dict[str, str]:
        return _ckpt.job_files(self.spec._json(), self.job_key(), _config.to_json(self.config)
                               if self.config is not None else {})

    def get_tree_and_metadata_from_path(self, rel_path: PathArg, template_tree: Any,
                                        partial: bool = False) -> Tuple[Any, Dict[str, Any]]:
        """Loads tree and metadata from rel_path under checkpoints_dir (template_tree: see
        Runtime.restore; None returns the saved tree)."""
        return self.runtime.restore(self._abs(rel_path), template_tree, partial)

    def get_tree_and_metadata(self, suffix: PathArg, template_tree: Any,
                              partial: bool = False) -> Tuple[Any, Dict[str, Any]]:
        return self.get_tree_and_metadata_from_path(
            _ckpt.rel_path(self.spec._json(), _rel(suffix)), template_tree, partial)

    def save_tree_and_metadata_from_path(self, rel_path: PathArg, tree: Any,
                                         metadata: Dict[str, Any], **options) -> SaveHandle:
        """Starts a save to rel_path under checkpoints_dir; returns its awaitable handle.
        Options: mode ("sync" | "overlapped"), backpressure ("block" | "skip")."""
        return self.runtime.save(self._save_path(rel_path, options), tree, metadata, **options)

    def save_tree_and_metadata(self, suffix: PathArg, tree: Any, metadata: Dict[str, Any],
                               **options) -> SaveHandle:
        """Starts a save of this job's checkpoint `suffix`. It takes the run directory's writer
        lease and applies the retention set with set_retention."""
        return self.save_tree_and_metadata_from_path(*self._suffix_args(suffix, options), tree,
                                                     metadata, **options)

    async def async_save_tree_and_metadata_from_path(self, rel_path: PathArg, tree: Any,
                                                     metadata: Dict[str, Any],
                                                     **options) -> SaveHandle:
        """save_tree_and_metadata_from_path for asyncio (Runtime.async_save): waiting for
        staging does not block the event loop; returns the handle once the save is admitted."""
        return await self.runtime.async_save(self._save_path(rel_path, options), tree, metadata,
                                             **options)

    async def async_save_tree_and_metadata(self, suffix: PathArg, tree: Any,
                                           metadata: Dict[str, Any], **options) -> SaveHandle:
        """save_tree_and_metadata for asyncio (Runtime.async_save)."""
        return await self.async_save_tree_and_metadata_from_path(
            *self._suffix_args(suffix, options), tree, metadata, **options)

    def _save_path(self, rel_path, options) -> str:
        """The checkpoint path of rel_path; adds job.json and config.json to the options."""
        files = dict(options.pop("extra_files", None) or {})
        files.update(self._job_files())
        options["extra_files"] = files
        return self._abs(rel_path)

    def _suffix_args(self, suffix, options):
        """(rel_path,) of this job's `suffix`; sets the run directory and retention options."""
        spec = self.spec._json()
        options.setdefault("run_dir", _ckpt.run_dir(spec))
        if self._retention:
            options.setdefault("retention", self._retention)
        return (_ckpt.rel_path(spec, _rel(suffix)),)

    def get_metadata_from_path(self, rel_path: PathArg) -> Dict[str, Any]:
        return _ckpt.read_metadata(self._abs(rel_path))

    def get_metadata(self, suffix: PathArg) -> Dict[str, Any]:
        return self.get_metadata_from_path(_ckpt.rel_path(self.spec._json(), _rel(suffix)))

    @staticmethod
    def _get_checkpoint_path(spec: ExecutionSpec, suffix: PathArg) -> str:
        """checkpoints_dir/project/group/name/suffix, absolute (legacy helper)."""
        return _ckpt.checkpoint_path(spec._json(), _rel(suffix))

    def set_retention(self, max_to_keep: int = 0, keep_period: int = 0, best_metric: str = "",
                      best_mode_max: bool = False, prefix: str = "") -> None:
        """Retention of this run's checkpoints after each save_tree_and_metadata (runtime/
        retention.h); prefix="step/" rotates only those."""
        self._retention = dict(max_to_keep=max_to_keep, keep_period=keep_period,
                               best_metric=best_metric, best_mode_max=best_mode_max, prefix=prefix)

    def on_start(self) -> None:
        """Takes the run directory's writer lease and removes leftovers of interrupted saves."""
        for path in self.runtime._c.claim_and_clean(self.spec._json()):
            _log.info("removed the leftover of an interrupted save: %s", path)


J = TypeVar("J", bound="RestoreableJob")


class RestoreableJob(CheckpointedJob[C], Generic[C]):
    @abc.abstractmethod
    def restore_from_path(self, rel_path: PathArg) -> None:
        """Restores job state from rel_path under checkpoints_dir."""

    def restore(self, suffix: PathArg) -> None:
        self.restore_from_path(_ckpt.rel_path(self.spec._json(), _rel(suffix)))

    def register(self, suffix: PathArg) -> RegisterHandle:
        """Points this job's `latest` at suffix once that save is durable."""
        return self.runtime.register(_ckpt.run_dir(self.spec._json()), _rel(suffix))

    @classmethod
    def latest(cls, spec: ExecutionSpec) -> Optional[str]:
        """The suffix `latest` names, or None when no checkpoint was registered."""
        return _ckpt.latest(spec._json())

    @classmethod
    def checkpoints(cls, spec: ExecutionSpec) -> List[str]:
        """Committed checkpoints of spec's run (nested suffixes such as step/100), oldest first."""
        return _ckpt.checkpoints(spec._json())

    @classmethod
    def from_checkpoint_path(cls: Type[J], rel_path: PathArg, spec: ExecutionSpec,
                             runtime_cfg: Optional[Dict[str, Any]] = None, resume: bool = False,
                             *, runtime: Optional[Runtime] = None) -> Tuple[J, Any]:
        """Rebuilds a job from the checkpoint at rel_path: the class registered under its
        job.json key (else `cls`, with a warning), the saved config overlaid with runtime_cfg
        (a merge patch: unknown keys and wrong types raise, naming the key), then
        restore_from_path(rel_path). resume=True continues the saved run (its
        project/group/name); False starts a new run under `spec` from the checkpoint's state."""
        rel = _rel(rel_path)
        path = _ckpt.resolve_rel_path(_ckpt.checkpoints_dir(spec._json()), rel)
        key, saved_spec, saved_config = _ckpt.read_saved_job(path)
        job_cls: type = cls
        found = _registry.get(key)
        if found is not None and issubclass(found, cls):
            job_cls = found
        elif found is not None:
            _log.warning("checkpoint %s was saved by job '%s', which is not a %s; using %s", path,
                         key, cls.__qualname__, cls.__qualname__)
        else:
            _log.warning("checkpoint %s was saved by job '%s', which is not registered; using %s",
                         path, key, cls.__qualname__)
        ctype = _config_class(job_cls)
        merged = saved_config
        if runtime_cfg is not None:
            merged = _config.overlay(ctype, saved_config, runtime_cfg)
        config = _config.from_json(ctype, merged)
        job_spec = dataclasses.replace(spec)
        if resume:
            job_spec.project = saved_spec["project"]
            job_spec.group = saved_spec["group"]
            job_spec.name = saved_spec["name"]
        job = job_cls(job_spec, config, runtime=runtime)
        job.restore_from_path(rel)
        return job, config

    @classmethod
    def from_checkpoint(cls: Type[J], suffix: PathArg, spec: ExecutionSpec,
                        runtime_cfg: Optional[Dict[str, Any]] = None, resume: bool = False,
                        *, runtime: Optional[Runtime] = None) -> Tuple[J, Any]:
        return cls.from_checkpoint_path(_ckpt.rel_path(spec._json(), _rel(suffix)), spec,
                                        runtime_cfg, resume, runtime=runtime)


def run_dir(spec: ExecutionSpec) -> str:
    """checkpoints_dir/project/group/name, absolute: where spec's checkpoints and `latest` are."""
    return _ckpt.run_dir(spec._json())


def run(job: BasicJob) -> None:
    """Runs job() to completion, in a fresh event loop when run() is a coroutine."""
    result = job()
    if inspect.isawaitable(result):
        asyncio.run(_awaited(result))


async def _awaited(aw):
    return await aw


__all__ = ["BasicJob", "CheckpointedJob", "ClusterConfig", "ExecutionSpec", "RestoreableJob",
           "find_job_class", "register_job", "run", "run_dir"]
