"""SaveHandle and RegisterHandle: what Runtime.save and Runtime.register return.

A handle is awaitable in asyncio (``await handle``): the completion comes from the runtime
through ``loop.call_soon_threadsafe``, no thread polls. ``result(timeout=None)`` blocks (the GIL
released), ``done()`` asks, ``add_done_callback(fn)`` calls ``fn(handle)`` on ckpt's callback
thread. A failed save raises its CheckpointError from ``await`` / ``result()``. Dropping a handle
never cancels the save (fire-and-forget): a failure nobody observed is logged under the ``ckpt``
logger and reported by ``Runtime.drain()``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class SaveTimings:
    """Times in seconds from the save() call: ``stall`` (until it returned), ``snapshot`` (until
    the arrays were copied), ``durable`` (until committed: written, fsynced, renamed)."""

    state: str
    stall: float
    snapshot: float
    durable: float
    bytes: int
    stored_bytes: int
    written_bytes: int = 0  # data bytes the save wrote (incremental saves share the rest)


def _settle(fut: asyncio.Future, err, value) -> None:
    if fut.done():
        return  # the awaiting task was cancelled
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(value)


def _await(register: Callable[[Callable[[Any], None]], None], value: Callable[[], Any]):
    """Generator behind __await__: registers a completion that resolves a future of the running
    loop through call_soon_threadsafe."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def deliver(err) -> None:  # on ckpt's callback thread, GIL held
        try:
            loop.call_soon_threadsafe(_settle, fut, err, None)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    register(deliver)
    yield from fut.__await__()
    return value()


def _wait(c, what: str, timeout: Optional[float]) -> None:
    if timeout is not None and not c.wait_for(float(timeout)):
        raise TimeoutError(f"{what} not finished after {timeout} s")
    c.wait()


class SaveHandle:
    __slots__ = ("_c", "_keep", "__weakref__")

    def __init__(self, c, keep=None):
        self._c = c
        self._keep = keep  # the arrays an overlapped save still reads

    @property
    def path(self) -> str:
        return self._c.path

    @property
    def state(self) -> str:
        """snapshotting, writing, committed, failed or skipped."""
        return self._c.state()

    @property
    def timings(self) -> SaveTimings:
        return SaveTimings(state=self._c.state(), **self._c.timings())

    def done(self) -> bool:
        return self._c.done()

    def result(self, timeout: Optional[float] = None) -> SaveTimings:
        """Blocks until the save is durable (or failed, or skipped); raises its CheckpointError,
        or TimeoutError when `timeout` seconds pass first."""
        _wait(self._c, f"save of {self.path}", timeout)
        return self.timings

    def exception(self, timeout: Optional[float] = None):
        """The save's CheckpointError once it ended (None on success)."""
        if timeout is not None and not self._c.wait_for(float(timeout)):
            raise TimeoutError(f"save of {self.path} not finished after {timeout} s")
        self._c.wait_for(1e9)
        return self._c.error()

    def wait_snapshotted(self) -> None:
        """Blocks until the arrays have been copied: in overlapped mode, until the caller may
        change them again."""
        self._c.wait_snapshotted()
        self._keep = None

    def snapshotted(self):
        """Awaitable form of wait_snapshotted() (raises when the save failed before or during
        the copy)."""
        return _Awaitable(self._c.on_snapshotted, lambda: None)

    def add_done_callback(self, fn: Callable[["SaveHandle"], Any]) -> None:
        """Calls fn(handle) once the save ended, on ckpt's callback thread."""
        self._c.on_done(lambda err: fn(self))

    def __await__(self):
        return _await(self._c.on_done, lambda: self.timings)

    def __repr__(self) -> str:
        return f"<ckpt.SaveHandle {self.path} {self.state}>"


class _Awaitable:
    __slots__ = ("_register", "_value")

    def __init__(self, register, value):
        self._register = register
        self._value = value

    def __await__(self):
        return _await(self._register, self._value)


class RegisterHandle:
    """What Runtime.register returns: completes once ``latest`` names the suffix (after that
    save is durable); fails with the save's error when the save failed."""

    __slots__ = ("_c", "__weakref__")

    def __init__(self, c):
        self._c = c

    @property
    def suffix(self) -> str:
        return self._c.suffix

    def done(self) -> bool:
        return self._c.done()

    def result(self, timeout: Optional[float] = None) -> str:
        _wait(self._c, f"registration of {self.suffix}", timeout)
        return self.suffix

    def add_done_callback(self, fn: Callable[["RegisterHandle"], Any]) -> None:
        self._c.on_done(lambda err: fn(self))

    def __await__(self):
        return _await(self._c.on_done, lambda: self.suffix)

    def __repr__(self) -> str:
        return f"<ckpt.RegisterHandle {self.suffix} {'done' if self.done() else 'pending'}>"
