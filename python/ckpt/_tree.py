"""Pytrees <-> the C++ runtime's trees.

A pytree is nested dict / OrderedDict / list / tuple / None with leaves that are numpy arrays,
CPU torch tensors, numpy scalars or Python scalars (int, float, bool, str, bytes). The C++ tree
has dicts with str keys, lists and array leaves, so the rest is recorded in ``pytree.json``, a
JSON file saved beside metadata.json, keyed by tree path (the root is ""):

  {"format": "ckpt.pytree", "version": 1, "nodes": {
      "optim/state": {"type": "dict", "keys": [0, 1]},   # key types and insertion order
      "model": {"type": "odict", "meta": {...}},          # an OrderedDict and its _metadata
      "optim/param_groups/0/betas": "tuple",
      "optim/state/0/momentum_buffer": "none",            # stored as an empty dict
      "step": "int",                                      # a Python int as an int64 0-d array
      "model/fc.weight": "torch"}}

An entry is the node's type, or an object with "type" and the dict's "keys" / "meta".

A node without an entry is a plain dict with str keys in sorted order, a list, or a numpy array:
exactly what a C++ checkpoint holds, so C++ checkpoints restore as dicts of numpy arrays.

Saving walks the tree in C++ (python/src/flatten.cc), which builds views of the leaves' own
memory, so the runtime's snapshot copy is the only copy; for anything but the accepted shapes it
calls the helpers below (_tree_key, _numpy_leaf, _tensor_problem, _scalar_array), which raise the
error naming the path, so that both sides word errors alike. Everything that cannot be saved
exactly is refused before anything is written. Restoring (from_structure, from_template) is
here.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import _ckpt
from .errors import InvalidArgumentError, UnsupportedError

PYTREE_FILE = "pytree.json"
_DTYPE_NAMES: List[str] = _ckpt.dtype_names()
DTYPE_CODE: Dict[str, int] = {name: i for i, name in enumerate(_DTYPE_NAMES)}
MAX_DEPTH = 512  # runtime/limits.h kMaxTreeDepth

# Dtypes numpy has no type for: their bytes are kept in an unsigned integer array of the same width.
_RAW_BITS = {"bfloat16": np.uint16, "float8_e4m3": np.uint8, "float8_e5m2": np.uint8}


class ArraySpec:
    """A restore-template leaf that asks for a new array: ``ArraySpec(shape, dtype)``.

    ``dtype`` is anything numpy.dtype accepts, a ckpt dtype name ("bfloat16", "float8_e4m3": the
    result is then a uint16 / uint8 numpy array holding the raw bits), or a torch.dtype (the
    result is then a torch tensor)."""

    __slots__ = ("shape", "dtype")

    def __init__(self, shape, dtype):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"ArraySpec({self.shape}, {self.dtype})"


def _where(path: str) -> str:
    return path if path else "(root)"


def _join(path: str, key: str) -> str:
    return f"{path}/{key}" if path else key


def _torch():
    return sys.modules.get("torch")


_torch_codes: Dict[Any, int] = {}  # torch.dtype -> code, filled once torch is imported


def _is_tensor(obj) -> bool:
    torch = _torch()
    return torch is not None and isinstance(obj, torch.Tensor)


def _tree_key(key, path: str) -> str:
    if type(key) is str:
        if not key or "/" in key:
            raise InvalidArgumentError(
                f"{_where(path)}: dict key {key!r} cannot be saved (keys must be non-empty and "
                "contain no '/', which separates the parts of a path)")
        return key
    if type(key) is int:
        return str(key)
    raise UnsupportedError(f"{_where(path)}: dict key {key!r} of type {type(key).__name__} cannot "
                           "be saved (keys must be str or int)")


_np_codes: Dict[Any, Optional[int]] = {}  # numpy dtype -> code (None: not storable)


def _numpy_code(dt) -> Optional[int]:
    code = _np_codes.get(dt, -1)
    if code == -1:
        code = DTYPE_CODE.get(dt.name) if dt.isnative and dt.fields is None else None
        _np_codes[dt] = code
    return code


def _numpy_leaf(arr: np.ndarray, path: str, for_restore: bool) -> Tuple[int, tuple, int, bool]:
    code = _numpy_code(arr.dtype)
    if code is None:
        dt = arr.dtype
        raise UnsupportedError(f"{_where(path)}: numpy dtype {dt.str} ({dt.name}) is not supported "
                               f"(ckpt stores {', '.join(_DTYPE_NAMES)}; native byte order)")
    flags = arr.flags
    if not flags.c_contiguous:
        raise InvalidArgumentError(f"{_where(path)}: the numpy array is not C-contiguous (pass "
                                   "numpy.ascontiguousarray(x))")
    if for_restore and not flags.writeable:
        raise InvalidArgumentError(f"{_where(path)}: the numpy array is read-only and cannot be "
                                   "restored into")
    return (code, arr.shape, arr.__array_interface__["data"][0], flags.writeable)


def _torch_code_map() -> Dict[Any, int]:
    if not _torch_codes:
        torch = _torch()
        for name, code in DTYPE_CODE.items():
            tdt = getattr(torch, name, None)
            if isinstance(tdt, torch.dtype):
                _torch_codes[tdt] = code
    return _torch_codes


def _tensor_leaf(t, path: str) -> Tuple[int, tuple, int, bool]:
    code = _torch_code_map().get(t.dtype)
    if (code is None or not t.is_cpu or t.layout is not _torch().strided or not t.is_contiguous()
            or t.is_neg()):
        _tensor_problem(t, path)
    return (code, tuple(t.shape), t.data_ptr(), True)


def _tensor_problem(t, path: str) -> None:
    """Raises what makes `t` unfit to be read in place (the checks of _tensor_leaf, spelled out)."""
    if t.device.type != "cpu":
        raise UnsupportedError(f"{_where(path)}: a {t.device.type} tensor cannot be read in place "
                               "(move it to the CPU first: tensor.cpu())")
    if t.layout is not _torch().strided:
        raise UnsupportedError(f"{_where(path)}: a tensor with layout {t.layout} is not supported "
                               "(only dense, strided tensors)")
    if t.dtype not in _torch_code_map():  # filled here too: the save walk (C++) never fills it
        raise UnsupportedError(f"{_where(path)}: torch dtype {t.dtype} is not supported (ckpt "
                               f"stores {', '.join(_DTYPE_NAMES)})")
    if not t.is_contiguous():
        raise InvalidArgumentError(f"{_where(path)}: the tensor is not contiguous (pass "
                                   "tensor.contiguous())")
    raise UnsupportedError(f"{_where(path)}: a tensor with a lazy negation bit (call "
                           "resolve_neg())")


def _scalar_array(obj, path: str) -> Tuple[np.ndarray, str]:
    t = type(obj)
    if t is bool:
        return np.array(obj, dtype=np.bool_), "bool"
    if t is int:
        if -(1 << 63) <= obj < (1 << 63):
            return np.array(obj, dtype=np.int64), "int"
        if 0 <= obj < (1 << 64):
            return np.array(obj, dtype=np.uint64), "int"
        raise InvalidArgumentError(f"{_where(path)}: int {obj} does not fit in 64 bits")
    if t is float:
        return np.array(obj, dtype=np.float64), "float"
    if t is str:
        try:
            data = obj.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidArgumentError(f"{_where(path)}: str is not valid Unicode ({e})") from None
        return np.frombuffer(data, dtype=np.uint8), "str"
    if t is bytes:
        return np.frombuffer(obj, dtype=np.uint8), "bytes"
    if isinstance(obj, np.generic):
        return np.asarray(obj), "npscalar"
    raise UnsupportedError(f"{_where(path)}: a {t.__module__}.{t.__qualname__} cannot be saved "
                           "(leaves are numpy arrays, CPU torch tensors and scalars; containers "
                           "are dict, OrderedDict, list, tuple and None)")


# --- restoring --------------------------------------------------------------------------------

def _alloc(dtype_name: str, shape: tuple, as_torch: bool, path: str):
    """A new, uninitialised array of the saved dtype: a torch tensor when asked (or for
    bfloat16 when torch is there), else numpy (raw bits for dtypes numpy lacks)."""
    if as_torch or (dtype_name == "bfloat16" and _torch() is not None):
        import torch
        tdt = getattr(torch, "bool" if dtype_name == "bool" else dtype_name, None)
        if isinstance(tdt, torch.dtype):
            return torch.empty(shape, dtype=tdt)
        if as_torch:
            raise UnsupportedError(f"{_where(path)}: this torch has no dtype {dtype_name}")
    np_dtype = _RAW_BITS.get(dtype_name, dtype_name)
    return np.empty(shape, dtype=np_dtype)


def _leaf_of(arr, dtype_name: str, path: str):
    """The leaf tuple of a new array; a raw-bits numpy array stands for `dtype_name`."""
    if isinstance(arr, np.ndarray):
        if dtype_name in _RAW_BITS and arr.dtype == _RAW_BITS[dtype_name]:
            return (DTYPE_CODE[dtype_name], arr.shape, arr.__array_interface__["data"][0], True)
        return _numpy_leaf(arr, path, True)
    return _tensor_leaf(arr, path)


def _scalar_value(kind: str, arr: np.ndarray, exemplar=None):
    if kind == "int":
        return int(arr)
    if kind == "float":
        return float(arr)
    if kind == "bool":
        return bool(arr)
    if kind == "str":
        return arr.tobytes().decode("utf-8")
    if kind == "bytes":
        return arr.tobytes()
    if kind == "npscalar":
        return arr[()]
    raise AssertionError(kind)


def _ordered_keys(node: dict, entry: Optional[dict]) -> List[Tuple[str, Any]]:
    """(tree key, Python key) pairs of a saved dict in its saved order."""
    if entry and "keys" in entry:
        return [(str(k), k) for k in entry["keys"]]
    return [(k, k) for k in node]


def from_structure(structure, nodes: Dict[str, Any]):
    """For a restore without a template: (normalized template, finish) where finish() builds the
    saved pytree once the arrays are filled."""

    def walk(s, path: str):
        entry = nodes.get(path)
        if isinstance(entry, str):
            entry = {"type": entry}
        kind = entry.get("type") if entry else None
        if isinstance(s, dict):
            if kind == "none":
                return {}, lambda: None
            pairs = _ordered_keys(s, entry)
            parts = {}
            makers = []
            for tk, pk in pairs:
                if tk not in s:
                    raise InvalidArgumentError(f"{_where(path)}: pytree.json names key {pk!r}, which "
                                               "the checkpoint lacks")
                parts[tk], make = walk(s[tk], _join(path, tk))
                makers.append((pk, make))

            def make_dict():
                d = OrderedDict() if kind == "odict" else {}
                for pk, make in makers:
                    d[pk] = make()
                if kind == "odict" and "meta" in entry:
                    d._metadata = entry["meta"]
                return d
            return parts, make_dict
        if isinstance(s, list):
            built = [walk(x, _join(path, str(i))) for i, x in enumerate(s)]
            norm = [b[0] for b in built]
            makers_l = [b[1] for b in built]
            if kind == "tuple":
                return norm, lambda: tuple(m() for m in makers_l)
            return norm, lambda: [m() for m in makers_l]
        dtype_name, shape = s
        arr = _alloc(dtype_name, tuple(shape), kind == "torch", path)
        leaf = _leaf_of(arr, dtype_name, path)
        if kind in ("int", "float", "bool", "str", "bytes", "npscalar"):
            return leaf, lambda: _scalar_value(kind, arr)
        return leaf, lambda: arr

    return walk(structure, "")


def _saved_at(structure, tk: str):
    if isinstance(structure, dict):
        return structure.get(tk)
    if isinstance(structure, list) and tk.isdigit() and int(tk) < len(structure):
        return structure[int(tk)]
    return None


_SCALAR_FIT = {
    "int": lambda dt, shape: shape == () and (dt.startswith("int") or dt.startswith("uint")),
    "float": lambda dt, shape: shape == () and dt.startswith("float"),
    "bool": lambda dt, shape: shape == () and dt == "bool",
    "str": lambda dt, shape: len(shape) == 1 and dt == "uint8",
    "bytes": lambda dt, shape: len(shape) == 1 and dt == "uint8",
}


def from_template(templ, structure) -> Tuple[Any, Callable[[], Any], bool]:
    """For a restore into `templ`: (normalized template, finish, whether any leaf is filled in
    place). Arrays and tensors of the template are filled in place; ArraySpec leaves get new
    arrays; scalar leaves get the saved value as the template's type. `structure` is the
    checkpoint's (to size scalar leaves)."""
    active: set = set()
    in_place = False

    def walk(obj, path: str, saved, depth: int):
        if depth > MAX_DEPTH:
            raise InvalidArgumentError(f"{_where(path)[:200]}...: the template nests deeper than "
                                       f"{MAX_DEPTH} levels")
        t = type(obj)
        if t is dict or t is OrderedDict or t is list or t is tuple:
            if id(obj) in active:
                raise InvalidArgumentError(f"{_where(path)}: the template contains a cycle")
            active.add(id(obj))
            try:
                if t is dict or t is OrderedDict:
                    parts = {}
                    makers = []
                    for k, v in obj.items():
                        tk = _tree_key(k, path)
                        parts[tk], make = walk(v, _join(path, tk), _saved_at(saved, tk), depth + 1)
                        makers.append((k, make))
                    meta = getattr(obj, "_metadata", None)

                    def make_dict():
                        d = t()
                        for k, make in makers:
                            d[k] = make()
                        if meta is not None:
                            d._metadata = meta
                        return d
                    return parts, make_dict
                built = [walk(x, _join(path, str(i)), _saved_at(saved, str(i)), depth + 1)
                         for i, x in enumerate(obj)]
                norm = [b[0] for b in built]
                makers_l = [b[1] for b in built]
                if t is tuple:
                    return norm, lambda: tuple(m() for m in makers_l)
                return norm, lambda: [m() for m in makers_l]
            finally:
                active.discard(id(obj))
        if obj is None:
            return {}, lambda: None
        nonlocal in_place
        if isinstance(obj, np.ndarray):
            in_place = True
            return _numpy_leaf(obj, path, True), lambda: obj
        if _is_tensor(obj):
            in_place = True
            return _tensor_leaf(obj, path), lambda: obj
        if isinstance(obj, ArraySpec):
            arr = _spec_alloc(obj, path)
            name = _spec_dtype_name(obj)
            return _leaf_of(arr, name, path), lambda: arr
        if isinstance(obj, (dict, list, tuple)):
            raise UnsupportedError(f"{_where(path)}: container type {t.__qualname__} is not "
                                   "supported in a template")
        # A scalar: restored as the template's type, from a leaf of the checkpoint's size.
        probe, kind = _scalar_array(obj, path)
        fits = isinstance(saved, tuple) and (
            _SCALAR_FIT[kind](saved[0], tuple(saved[1])) if kind in _SCALAR_FIT
            else (saved[0] == probe.dtype.name and tuple(saved[1]) == ()))
        if fits:
            arr = np.empty(tuple(saved[1]), dtype=saved[0])
        else:
            arr = np.empty_like(probe)  # the mismatch is reported with the others
        return _numpy_leaf(arr, path, True), lambda: _scalar_value(kind, arr)

    norm, finish = walk(templ, "", structure, 0)
    return norm, finish, in_place


def _spec_dtype_name(spec: ArraySpec) -> str:
    dt = spec.dtype
    torch = _torch()
    if torch is not None and isinstance(dt, torch.dtype):
        return str(dt).replace("torch.", "")
    if isinstance(dt, str) and dt in _RAW_BITS:
        return dt
    return np.dtype(dt).name


def _spec_alloc(spec: ArraySpec, path: str):
    name = _spec_dtype_name(spec)
    if name not in DTYPE_CODE:
        raise UnsupportedError(f"{_where(path)}: ArraySpec dtype {spec.dtype} is not supported")
    torch = _torch()
    as_torch = torch is not None and isinstance(spec.dtype, torch.dtype)
    if as_torch:
        return torch.empty(spec.shape, dtype=spec.dtype)
    return np.empty(spec.shape, dtype=_RAW_BITS.get(name, name))
