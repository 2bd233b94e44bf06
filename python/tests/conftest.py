import os
import sys

import pytest

# Run from the build tree (ctest sets PYTHONPATH=build/python); by hand:
#   PYTHONPATH=build/python python3 -m pytest python/tests
import ckpt


@pytest.fixture
def rt():
    runtime = ckpt.Runtime(staging_budget=160 << 20, copy_threads=2, lock_wait=2.0)
    yield runtime
    runtime.close()


def build_dir() -> str:
    return os.environ.get("CKPT_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))


def source_dir() -> str:
    return os.environ.get("CKPT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "../.."))


def same(a, b):
    """Structure, container types, key types and order, leaf kinds, dtypes and bits."""
    import numpy as np
    torch = sys.modules.get("torch")
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a.keys()) == list(b.keys())
        assert [type(k) for k in a] == [type(k) for k in b]
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    elif torch is not None and isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.reshape(-1).view(torch.uint8).numpy().tobytes() == \
            b.reshape(-1).view(torch.uint8).numpy().tobytes()
    else:
        assert a == b or (a != a and b != b)
