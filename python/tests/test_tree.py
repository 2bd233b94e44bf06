"""Pytrees of numpy arrays and Python scalars: exact round trips, templates, errors."""
import os
from collections import OrderedDict

import numpy as np
import pytest

import ckpt
from conftest import same

NUMPY_DTYPES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64",
                "uint32", "uint16", "uint8", "bool"]


def sample_tree():
    rng = np.random.default_rng(3)
    arrays = {d: (rng.standard_normal((3, 5)) * 100).astype(d) for d in NUMPY_DTYPES}
    return {
        "arrays": arrays,
        "scalar0d": np.array(2.5, dtype=np.float32),
        "npscalars": [np.float32(1.5), np.int64(-7), np.bool_(True), np.uint8(200)],
        "py": {"int": 7, "neg": -(1 << 62), "big": (1 << 64) - 1, "float": 0.1, "nan": float("nan"),
               "inf": float("-inf"), "bool": False, "str": "héllo ✓", "empty": "", "bytes": b"\x00\xff"},
        "int_keys": {10: np.arange(3), 2: np.arange(2), 1: "one"},
        "mixed": {"b": 1, 3: 2, "a": 3},
        "order": OrderedDict([("z", 1), ("a", 2)]),
        "tuple": (1, (2.0, None), []),
        "none": None,
        "empty_dict": {},
        "empty_list": [],
        "empty_tuple": (),
        "zero_size": np.zeros((0, 4), dtype=np.float32),
    }


def test_every_dtype_container_and_scalar_round_trips_exactly(rt, tmp_path):
    tree = sample_tree()
    rt.save(tmp_path / "c", tree, {"step": 3, "loss": float("nan"), "tags": ["a", 1]}).result()
    back, meta = rt.restore(tmp_path / "c")
    same(tree, back)
    assert meta["step"] == 3 and meta["loss"] != meta["loss"] and meta["tags"] == ["a", 1]


def test_ordered_dict_keeps_its_metadata_attribute(rt, tmp_path):
    od = OrderedDict([("w", np.ones(2))])
    od._metadata = OrderedDict([("", {"version": 2})])
    rt.save(tmp_path / "c", {"m": od}).result()
    back, _ = rt.restore(tmp_path / "c")
    assert type(back["m"]) is OrderedDict and back["m"]._metadata == {"": {"version": 2}}


def test_a_bare_array_is_a_tree(rt, tmp_path):
    a = np.arange(6, dtype=np.int16).reshape(2, 3)
    rt.save(tmp_path / "c", a).result()
    back, _ = rt.restore(tmp_path / "c")
    same(a, back)


@pytest.mark.parametrize("bad, where, words", [
    ({"a": {"b": np.ones((4, 4))[:, ::2]}}, "a/b", "C-contiguous"),
    ({"a": np.array([object()], dtype=object)}, "a", "not supported"),
    ({"a": np.ones(2, dtype=np.complex64)}, "a", "not supported"),
    ({"a": np.ones(2, dtype=">f4")}, "a", "not supported"),
    ({"a": [1, {2.5: 1}]}, "a/1", "key"),
    ({"a": {"x/y": 1}}, "a", "'/'"),
    ({"a": {"": 1}}, "a", "non-empty"),
    ({"a": {1: 1, "1": 2}}, "a", "collide"),
    ({"a": [set()]}, "a/0", "set"),
    ({"a": 1 << 70}, "a", "64 bits"),
    ({"a": {"b": "\ud800"}}, "a/b", "Unicode"),
    ({"a": {"\ud800": 1}}, "a", "Unicode"),
    ({"a": (1, frozenset())}, "a/1", "frozenset"),
])
def test_bad_trees_are_refused_naming_the_path_before_anything_is_written(rt, tmp_path, bad, where,
                                                                          words):
    with pytest.raises(ckpt.CheckpointError) as e:
        rt.save(tmp_path / "c", bad)
    assert f"{where}:" in str(e.value) and words in str(e.value)
    assert os.listdir(tmp_path) == []


def test_a_cycle_is_refused(rt, tmp_path):
    d = {"x": []}
    d["x"].append(d)
    with pytest.raises(ckpt.InvalidArgumentError, match="x/0: .*cycle"):
        rt.save(tmp_path / "c", d)
    assert os.listdir(tmp_path) == []


def test_bad_metadata_is_refused_naming_the_key(rt, tmp_path):
    with pytest.raises(ckpt.InvalidArgumentError, match="metadata key 'a.b'"):
        rt.save(tmp_path / "c", {"w": np.ones(1)}, {"a": {"b": object()}})
    assert os.listdir(tmp_path) == []


def test_template_arrays_are_restored_in_place_and_returned_in_its_structure(rt, tmp_path):
    src = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": [np.ones(2), 5],
           "meta": {"name": "x", "k": 1.5}}
    rt.save(tmp_path / "c", src).result()
    w = np.zeros((3, 4), dtype=np.float32)
    b0 = np.zeros(2)
    templ = {"w": w, "b": (b0, 0), "meta": {"name": "", "k": 0.0}}
    out, _ = rt.restore(tmp_path / "c", templ)
    assert out["w"] is w and np.array_equal(w, src["w"])
    assert type(out["b"]) is tuple and out["b"][0] is b0 and out["b"][1] == 5
    assert out["meta"] == {"name": "x", "k": 1.5}


def test_array_spec_leaves_allocate_new_arrays(rt, tmp_path):
    rt.save(tmp_path / "c", {"w": np.arange(6, dtype=np.int32).reshape(2, 3)}).result()
    out, _ = rt.restore(tmp_path / "c", {"w": ckpt.ArraySpec((2, 3), "int32")})
    assert isinstance(out["w"], np.ndarray) and out["w"].dtype == np.int32
    assert out["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    # Every array new: nothing to keep on a failure, so not transactional by default.
    assert rt.stats()["restores"]["placed"] == 1


def test_partial_restores_only_what_the_template_names(rt, tmp_path):
    rt.save(tmp_path / "c", {"a": np.ones(3), "b": {"c": np.zeros(2), "d": 4}}).result()
    a = np.zeros(3)
    out, _ = rt.restore(tmp_path / "c", {"a": a}, partial=True)
    assert out == {"a": a} and a.tolist() == [1, 1, 1]
    with pytest.raises(ckpt.MismatchError):
        rt.restore(tmp_path / "c", {"a": np.zeros(3)})


def test_a_mismatch_lists_every_difference_before_reading(rt, tmp_path):
    rt.save(tmp_path / "c", {"a": np.ones(3, dtype=np.float32), "b": np.ones((2, 2)),
                             "c": [1, 2], "d": 1}).result()
    a = np.full(3, 7.0)  # wrong dtype
    templ = {"a": a, "b": np.zeros((2, 3)), "c": [1, 2, 3], "e": 1}
    with pytest.raises(ckpt.MismatchError) as e:
        rt.restore(tmp_path / "c", templ)
    assert e.value.problems == [
        "'a': dtype float64 in the template, float32 in the checkpoint",
        "'b': shape [2, 3] in the template, [2, 2] in the checkpoint",
        "'c/2': not in the checkpoint",
        "'d': in the checkpoint (int64 []), not in the template",
        "'e': not in the checkpoint"]
    assert a.tolist() == [7.0, 7.0, 7.0]  # nothing was read


def test_restore_into_a_read_only_array_is_refused(rt, tmp_path):
    rt.save(tmp_path / "c", {"a": np.ones(3)}).result()
    ro = np.zeros(3)
    ro.setflags(write=False)
    with pytest.raises(ckpt.InvalidArgumentError, match="a: .*read-only"):
        rt.restore(tmp_path / "c", {"a": ro})


def test_errors_map_to_the_hierarchy(rt, tmp_path):
    with pytest.raises(ckpt.NotFoundError) as e:
        rt.restore(tmp_path / "missing")
    assert isinstance(e.value, ckpt.CheckpointError) and e.value.code == "not_found"
    rt.save(tmp_path / "c", {"a": np.ones(1024)}).result()
    data = [f for f in os.listdir(tmp_path / "c") if f.startswith("data-")][0]
    with open(tmp_path / "c" / data, "r+b") as f:
        f.seek(100)
        f.write(b"\x01\x02\x03")
    with pytest.raises(ckpt.CorruptError, match="checksum"):
        rt.restore(tmp_path / "c")


def test_a_failed_restore_leaves_a_template_as_it_was_unless_transactional_is_false(rt, tmp_path):
    src = {f"w{i}": np.full(1 << 16, i, dtype=np.float64) for i in range(8)}
    rt.save(tmp_path / "c", src).result()
    # Restored into a template with transactional=False, and without one (new arrays, where a
    # failed restore has nothing to keep): the same values as the default's.
    templ = {k: np.zeros_like(v) for k, v in src.items()}
    out, _ = rt.restore(tmp_path / "c", templ, transactional=False)
    assert out["w3"] is templ["w3"] and all(np.array_equal(templ[k], src[k]) for k in src)
    assert all(np.array_equal(v, src[k]) for k, v in rt.restore(tmp_path / "c")[0].items())
    # Both copied each block in as it verified; a transactional one swaps or copies after.
    assert rt.stats()["restores"]["placed"] == 2
    rt.restore(tmp_path / "c", templ)
    assert rt.stats()["restores"]["placed"] == 2
    assert rt.stats()["restores"]["swapped"] + rt.stats()["restores"]["copied"] == 1
    data = tmp_path / "c" / [f for f in os.listdir(tmp_path / "c") if f.startswith("data-")][0]
    with open(data, "r+b") as f:
        f.seek(os.path.getsize(data) - 100)
        f.write(b"\x01\x02\x03")
    templ = {k: np.full_like(v, -1.0) for k, v in src.items()}
    with pytest.raises(ckpt.CorruptError, match="checksum mismatch .*data-00000.bin"):
        rt.restore(tmp_path / "c", templ)
    assert all((v == -1.0).all() for v in templ.values())  # transactional: nothing written
    with pytest.raises(ckpt.CorruptError, match="checksum mismatch"):
        rt.restore(tmp_path / "c", templ, transactional=False)
    with pytest.raises(ckpt.CorruptError, match="checksum mismatch"):
        rt.restore(tmp_path / "c")


def test_incremental_saves_write_only_what_changed_and_restore(tmp_path):
    run = tmp_path / "run"
    tree = {"frozen": np.arange(64 * 1024, dtype=np.float32),
            "adapter": np.zeros(1024, dtype=np.float32)}
    with ckpt.Runtime(staging_budget=16 << 20, incremental=True, lock_wait=2.0) as rt:
        first = rt.save(run / "1", tree, {"step": 1}, run_dir=run).result()
        assert first.written_bytes == first.stored_bytes
        tree["adapter"] += 1
        second = rt.save(run / "2", tree, {"step": 2}, run_dir=run).result()
        assert second.written_bytes < first.written_bytes // 8
        back, meta = rt.restore(run / "2")
    assert meta["step"] == 2
    same(back["frozen"], tree["frozen"])
    same(back["adapter"], tree["adapter"])
