"""ckpt.Runtime: the C++ ckpt::Runtime with pytrees."""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from . import _ckpt
from ._handles import RegisterHandle, SaveHandle, _settle
from ._tree import PYTREE_FILE, from_structure, from_template

PathLike = Union[str, "os.PathLike[str]"]

_live: "weakref.WeakSet[Runtime]" = weakref.WeakSet()


@dataclass
class DrainReport:
    """Failures of saves and registrations nobody waited for, since the last drain."""

    failed: int = 0
    errors: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0


class Runtime:
    """Asynchronous saves, registration of ``latest`` and restores (runtime/runtime.h).

    Options (all optional): engine ("auto" | "uring" | "threads"), queue_depth, io_threads,
    copy_threads, overlapped_copy_threads, copy_nice, staging_budget (bytes), unit_bytes, backpressure ("block" | "skip"),
    allow_direct, io_timeout (seconds; 0: none), lock_wait (seconds), incremental (bool: every
    save writes only what changed since the previous checkpoint of its ``run_dir`` and shares the
    rest with it through hard links; see docs/design.md section 13), write_during_copy (bool,
    default True: a sync save writes each unit as soon as it is copied; False: its writes start
    once the copy ends, a shorter stall where writes compete with the copy, for a later durable).

    ``save`` returns once the tree has been copied into staging memory (mode="sync", the only
    stall) or at once (mode="overlapped": do not change the arrays before
    ``handle.wait_snapshotted()``); writing, fsync and commit run in the background. ``close()``
    (or leaving a ``with`` block, or interpreter exit) waits for every save in flight.
    """

    def __init__(self, **options: Any) -> None:
        self._c = _ckpt.Runtime(options)
        self._pending: List[SaveHandle] = []  # overlapped saves still reading caller memory
        self._mu = threading.Lock()
        _live.add(self)

    # --- saving --------------------------------------------------------------------------------
    def save(self, path: PathLike, tree: Any, metadata: Optional[Dict[str, Any]] = None, *,
             mode: str = "sync", backpressure: Optional[str] = None,
             extra_files: Optional[Dict[str, str]] = None, run_dir: PathLike = "",
             retention: Optional[Dict[str, Any]] = None) -> SaveHandle:
        """Starts a save of `tree` and `metadata` (a JSON-able dict) as the checkpoint
        directory `path`. Errors in the tree are raised here, before anything is written."""
        c, keep = self._c.save(*self._save_args(path, tree, metadata, mode, backpressure,
                                                extra_files, run_dir, retention))
        return self._handle(c, keep, mode)

    async def async_save(self, path: PathLike, tree: Any,
                         metadata: Optional[Dict[str, Any]] = None, *, mode: str = "sync",
                         backpressure: Optional[str] = None,
                         extra_files: Optional[Dict[str, str]] = None, run_dir: PathLike = "",
                         retention: Optional[Dict[str, Any]] = None) -> SaveHandle:
        """``await rt.async_save(...)``: save() for asyncio. The tree is checked and walked at
        the call (its errors raise there); waiting for staging (``block`` backpressure) and, in
        sync mode, the copy happen on the runtime's threads while the event loop runs on. Returns
        the SaveHandle once save() would have returned: in sync mode the arrays may be changed
        then; in overlapped mode after ``await handle.snapshotted()``. Cancelling the awaiting
        task does not cancel the save (its handle is then dropped: fire-and-forget)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def admitted(result) -> None:  # on ckpt's callback thread, GIL held
            err, c, keep = result
            handle = None if err is not None else self._handle(c, keep, mode)
            try:
                loop.call_soon_threadsafe(_settle, fut, err, handle)
            except RuntimeError:
                pass  # the loop is closed: the save goes on, fire-and-forget

        self._c.async_save(*self._save_args(path, tree, metadata, mode, backpressure,
                                             extra_files, run_dir, retention), admitted)
        return await fut

    @staticmethod
    def _save_args(path, tree, metadata, mode, backpressure, extra_files, run_dir, retention):
        return (os.fspath(path), tree, metadata if metadata is not None else {}, mode,
                backpressure, dict(extra_files or {}), os.fspath(run_dir), retention or {})

    def _handle(self, c, keep, mode: str) -> SaveHandle:
        if mode == "sync":
            return SaveHandle(c)
        handle = SaveHandle(c, keep)
        with self._mu:
            self._prune()
            self._pending.append(handle)
        return handle

    def _prune(self) -> None:
        self._pending = [h for h in self._pending if h.state == "snapshotting"]

    def register(self, run_dir: PathLike, suffix: PathLike) -> RegisterHandle:
        """Points run_dir/latest at `suffix` once the save of run_dir/suffix is durable."""
        return RegisterHandle(self._c.register_latest(os.fspath(run_dir), os.fspath(suffix)))

    register_latest = register

    def claim_run_dir(self, run_dir: PathLike) -> None:
        """Takes the run directory's writer lease now (see runtime/run_lock.h)."""
        self._c.claim_run_dir(os.fspath(run_dir))

    # --- restoring -----------------------------------------------------------------------------
    def restore(self, path: PathLike, template_tree: Any = None, partial: bool = False,
                transactional: Optional[bool] = None) -> Tuple[Any, Dict[str, Any]]:
        """Reads the checkpoint at `path`; returns (tree, metadata).

        With a template, its arrays and tensors are filled in place and returned in its
        structure, ArraySpec leaves get new numpy arrays, scalar leaves the saved values as the
        template's types; `partial` lets it name a subset. Without one (None), the whole saved
        tree comes back with each leaf of the kind it was saved as. A difference raises
        MismatchError listing every one, before anything is read.

        `transactional` (default: True where the template has arrays or tensors to fill in
        place, False where every array is new: no template, or only ArraySpec and scalar leaves):
        a restore that fails leaves the template's arrays as they were. False copies each block
        in once it verified, without undo, and reads once where staging memory runs short
        (transactional reads twice there); a failure then leaves them partly written."""
        path = os.fspath(path)
        structure, files = _ckpt.read_structure(path)
        if template_tree is None:
            nodes = {}
            if PYTREE_FILE in files:
                nodes = (_ckpt.read_json_file(path, PYTREE_FILE) or {}).get("nodes", {})
            norm, finish = from_structure(structure, nodes)
            transactional = False if transactional is None else transactional
            metadata = self._c.restore(path, norm, False, bool(transactional))
        else:
            norm, finish, in_place = from_template(template_tree, structure)
            transactional = in_place if transactional is None else transactional
            metadata = self._c.restore(path, norm, bool(partial), bool(transactional))
        return finish(), metadata

    @staticmethod
    def read_metadata(path: PathLike) -> Dict[str, Any]:
        return _ckpt.read_metadata(os.fspath(path))

    # --- the rest ------------------------------------------------------------------------------
    def reserve_staging(self, nbytes: int) -> None:
        """Maps and pre-faults staging memory for `nbytes` now, so the first save's stall is a
        warm copy like the later ones."""
        self._c.reserve_staging(int(nbytes))

    def drain(self) -> DrainReport:
        """Waits for every save and registration in flight; reports the failures nobody waited
        for (each is also logged under the ``ckpt`` logger)."""
        failed, errors = self._c.drain()
        with self._mu:
            self._prune()
        return DrainReport(failed, list(errors))

    def stats(self) -> Dict[str, Any]:
        return self._c.stats()

    def close(self) -> None:
        """Waits for every save in flight, then stops the runtime. Idempotent."""
        self._c.close()
        with self._mu:
            self._pending = []

    @property
    def closed(self) -> bool:
        return self._c.closed

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_default: Optional[Runtime] = None
_default_mu = threading.Lock()


def default_runtime() -> Runtime:
    """The Runtime jobs and ckpt.save use unless given one (created on first use)."""
    global _default
    with _default_mu:
        if _default is None or _default.closed:
            _default = Runtime()
        return _default


def set_default_runtime(runtime: Optional[Runtime]) -> None:
    global _default
    with _default_mu:
        _default = runtime


def _shutdown() -> None:
    """At interpreter exit: drain and close every Runtime, then stop the callback thread, while
    threads may still take the GIL."""
    for rt in list(_live):
        try:
            rt.close()
        except Exception:  # noqa: BLE001 - exit must go on
            pass
    _ckpt.shutdown()
