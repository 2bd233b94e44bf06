"""ckpt: asynchronous, crash-safe checkpoints of numpy / PyTorch pytrees on a C++ runtime.

    import ckpt
    rt = ckpt.Runtime()
    handle = rt.save("ckpts/step/100", {"model": model.state_dict(), "step": 100})
    ...                        # training continues while the save is written
    await handle               # or handle.result(): durable from here
    tree, metadata = rt.restore("ckpts/step/100")

The job API of the seed (ExecutionSpec, RestoreableJob, ...) is in ckpt.job.
"""

import atexit as _atexit

from . import _ckpt  # noqa: F401  (the extension; installs the spdlog -> logging bridge)
from ._handles import RegisterHandle, SaveHandle, SaveTimings
from ._runtime import DrainReport, Runtime, _shutdown, default_runtime, set_default_runtime
from ._tree import ArraySpec
from .errors import (BusyError, CancelledError, CheckpointError, CheckpointIOError, CorruptError,
                     InvalidArgumentError, IOTimeoutError, MismatchError, NoSpaceError,
                     NotFoundError, PathEscapeError, SkippedError, UnsupportedError)

_atexit.register(_shutdown)


def save(path, tree, metadata=None, **options) -> SaveHandle:
    """default_runtime().save(...)"""
    return default_runtime().save(path, tree, metadata, **options)


def restore(path, template_tree=None, partial=False, transactional=None):
    """default_runtime().restore(...) -> (tree, metadata)"""
    return default_runtime().restore(path, template_tree, partial, transactional)


__all__ = [
    "ArraySpec", "BusyError", "CancelledError", "CheckpointError", "CheckpointIOError",
    "CorruptError", "DrainReport", "IOTimeoutError", "InvalidArgumentError", "MismatchError",
    "NoSpaceError", "NotFoundError", "PathEscapeError", "RegisterHandle", "Runtime", "SaveHandle",
    "SaveTimings", "SkippedError", "UnsupportedError", "default_runtime", "restore", "save",
    "set_default_runtime",
]
