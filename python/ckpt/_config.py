"""Configs as dataclasses <-> config.json, strictly, as jobs/config_json.h does for C++ structs.

Supported field types: bool, int, float, str, Optional[T], List[T] / list[T], Dict[str, T],
nested dataclasses and Any (kept as JSON). An unknown key, a wrong type or a null where no
Optional is allowed raises InvalidArgumentError naming the key by its full path ("optim.lr");
keys missing from the JSON keep the dataclass default.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict

from . import _ckpt
from .errors import InvalidArgumentError

_NONE = type(None)


def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _bad(key: str, expected: str, got: Any) -> InvalidArgumentError:
    return InvalidArgumentError(f"config key '{key or '(root)'}': expected {expected}, got {got!r}")


def _optional_inner(tp):
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not _NONE]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def to_json(value: Any) -> Any:
    """The JSON form of a config (a dataclass instance) or of any value inside one."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def from_json(tp: Any, j: Any, key: str = "") -> Any:
    """A value of type `tp` read from JSON `j`."""
    if tp is Any:
        return j
    inner = _optional_inner(tp)
    if inner is not None:
        return None if j is None else from_json(inner, j, key)
    origin = typing.get_origin(tp)
    if tp is bool:
        if type(j) is not bool:
            raise _bad(key, "a boolean", j)
        return j
    if tp is int:
        if type(j) is not int:
            raise _bad(key, "an integer", j)
        return j
    if tp is float:
        if type(j) not in (int, float):
            raise _bad(key, "a number", j)
        return float(j)
    if tp is str:
        if type(j) is not str:
            raise _bad(key, "a string", j)
        return j
    if origin in (list, typing.List) or tp is list:
        if type(j) is not list:
            raise _bad(key, "an array", j)
        (item,) = typing.get_args(tp) or (Any,)
        return [from_json(item, v, f"{key}[{i}]") for i, v in enumerate(j)]
    if origin in (dict, typing.Dict) or tp is dict:
        if type(j) is not dict:
            raise _bad(key, "an object", j)
        args = typing.get_args(tp) or (str, Any)
        return {k: from_json(args[1], v, _key(key, k)) for k, v in j.items()}
    if dataclasses.is_dataclass(tp):
        if type(j) is not dict:
            raise _bad(key, "an object", j)
        hints = _hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        for k in j:
            if k not in names:
                raise InvalidArgumentError(f"unknown config key '{_key(key, k)}'")
        kwargs = {k: from_json(hints[k], v, _key(key, k)) for k, v in j.items()}
        return tp(**kwargs)
    raise InvalidArgumentError(f"config key '{key or '(root)'}': type {tp!r} is not supported")


def overlay(tp: Any, base: Any, patch: Any, key: str = "") -> Any:
    """`base` (JSON of a `tp`) with the runtime_cfg `patch` applied: dataclasses and dicts merge
    key by key, null empties an Optional (and removes a dict entry) and is an error elsewhere,
    anything else replaces the value. Unknown keys are errors naming the key."""
    inner = _optional_inner(tp)
    if inner is not None:
        if patch is None:
            return None
        return overlay(inner, None if base is None else base, patch, key)
    if tp is Any:
        return _ckpt.merge_patch(base, patch)  # RFC 7386, as jobs/config_json.h
    origin = typing.get_origin(tp)
    is_map = origin in (dict, typing.Dict) or tp is dict
    if is_map or dataclasses.is_dataclass(tp):
        if type(patch) is not dict:
            raise _bad(key, "an object", patch)
        result = dict(base) if type(base) is dict else {}
        if is_map:
            value_tp = (typing.get_args(tp) or (str, Any))[1]
            for k, v in patch.items():
                if v is None and _optional_inner(value_tp) is None:
                    result.pop(k, None)
                else:
                    result[k] = overlay(value_tp, result.get(k), v, _key(key, k))
            return result
        hints = _hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        for k, v in patch.items():
            sub = _key(key, k)
            if k not in names:
                raise InvalidArgumentError(f"unknown config key '{sub}'")
            ftp = hints[k]
            if v is None and _optional_inner(ftp) is None and ftp is not Any:
                raise InvalidArgumentError(
                    f"config key '{sub}': null, but only an Optional field can be set to None")
            result[k] = overlay(ftp, result.get(k), v, sub)
        return result
    if patch is None:
        raise InvalidArgumentError(
            f"config key '{key or '(root)'}': null, but only an Optional field can be set to None")
    return patch
