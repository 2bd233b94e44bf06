"""The exceptions ckpt raises: one class per ckpt::Errc, all under CheckpointError.

Every error carries ``code`` (the C++ ``Errc`` name, e.g. ``"corrupt"``), ``path`` (the file or
directory it concerns, "" when none) and ``errno`` (0 when no system call failed). Where a Python
builtin means the same thing the class derives from it too, so ``except ValueError`` or
``except TimeoutError`` keep working.
"""

from __future__ import annotations

from typing import List


class CheckpointError(Exception):
    """Base class of every ckpt failure."""

    code = "unknown"

    def __init__(self, message: str, path: str = "", errno: int = 0):
        super().__init__(message)
        self.path = path
        self.errno = errno


class CheckpointIOError(CheckpointError):
    code = "io"


class NoSpaceError(CheckpointIOError):
    code = "no_space"


class NotFoundError(CheckpointError, LookupError):
    code = "not_found"


class CorruptError(CheckpointError):
    code = "corrupt"


class UnsupportedError(CheckpointError, TypeError):
    code = "unsupported"


class InvalidArgumentError(CheckpointError, ValueError):
    code = "invalid_argument"


class MismatchError(CheckpointError, ValueError):
    """The restore template differs from the checkpoint; ``problems`` lists every difference,
    one line each: path, what the template has, what the checkpoint has."""

    code = "mismatch"

    @property
    def problems(self) -> List[str]:
        lines = [line.strip() for line in str(self).splitlines()[1:] if line.strip()]
        tail = f": {self.path}"
        if lines and self.path and lines[-1].endswith(tail):  # the message ends with the path
            lines[-1] = lines[-1][:-len(tail)]
        return lines


class PathEscapeError(CheckpointError, ValueError):
    code = "path_escape"


class IOTimeoutError(CheckpointError, TimeoutError):
    """A save's IO made no progress within RuntimeOptions io_timeout."""

    code = "timeout"


class CancelledError(CheckpointError):
    code = "cancelled"


class SkippedError(CheckpointError):
    code = "skipped"


class BusyError(CheckpointError):
    """Another process holds the run directory (its writer lease or mutation lock)."""

    code = "busy"


_BY_CODE = {
    cls.code: cls
    for cls in (CheckpointIOError, NoSpaceError, NotFoundError, CorruptError, UnsupportedError,
                InvalidArgumentError, MismatchError, PathEscapeError, IOTimeoutError,
                CancelledError, SkippedError, BusyError)
}


def _make(code: str, message: str, path: str = "", errno: int = 0) -> CheckpointError:
    """The exception for a C++ ckpt::Error (called by the extension)."""
    return _BY_CODE.get(code, CheckpointError)(message, path, errno)


__all__ = ["CheckpointError"] + sorted(cls.__name__ for cls in _BY_CODE.values())
