"""PyTorch: every dtype (bfloat16 included), real model + optimizer state_dicts, in-place
restores, errors."""
import os

import numpy as np
import pytest
import torch

import ckpt
from conftest import same

TORCH_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
                torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]


def test_every_torch_dtype_round_trips_bit_exactly(rt, tmp_path):
    g = torch.Generator().manual_seed(1)
    tree = {str(dt).replace("torch.", ""): (torch.randn(4, 3, generator=g) * 50).to(dt)
            for dt in TORCH_DTYPES}
    tree["scalar"] = torch.tensor(3.5, dtype=torch.bfloat16)
    rt.save(tmp_path / "c", tree).result()
    back, _ = rt.restore(tmp_path / "c")
    same(tree, back)
    assert back["bfloat16"].dtype == torch.bfloat16


def train_a_bit(model, opt, steps=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(2, 3, 32, 32, generator=g) if isinstance(model, torch.nn.Module) and \
            hasattr(model, "conv1") else torch.randn(2, 5, 16, generator=g)
        opt.zero_grad()
        model(x).float().pow(2).mean().backward()
        opt.step()


def test_resnet18_and_sgd_state_dicts_restore_into_fresh_objects(rt, tmp_path):
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_a_bit(model, opt)
    tree = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 7}
    rt.save(tmp_path / "c", tree, {"step": 7}).result()

    back, meta = rt.restore(tmp_path / "c")  # no template: a fresh optimizer has no state
    same(tree, back)
    model2 = torchvision.models.resnet18(num_classes=10)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.5, momentum=0.1)
    model2.load_state_dict(back["model"])
    opt2.load_state_dict(back["optim"])
    same(model.state_dict(), model2.state_dict())
    same(opt.state_dict(), opt2.state_dict())
    assert back["step"] == 7 and meta == {"step": 7}


def test_transformer_and_adamw_round_trip_and_train_on_identically(rt, tmp_path):
    def make():
        torch.manual_seed(1)
        layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        m = torch.nn.TransformerEncoder(layer, 2)
        return m, torch.optim.AdamW(m.parameters(), lr=1e-3)

    m1, o1 = make()
    train_a_bit(m1, o1)
    rt.save(tmp_path / "c", {"model": m1.state_dict(), "optim": o1.state_dict()}).result()
    m2, o2 = make()
    back, _ = rt.restore(tmp_path / "c")
    m2.load_state_dict(back["model"])
    o2.load_state_dict(back["optim"])
    train_a_bit(m1, o1, seed=5)
    train_a_bit(m2, o2, seed=5)
    same(m1.state_dict(), m2.state_dict())
    same(o1.state_dict(), o2.state_dict())


def test_state_dict_template_is_restored_in_place(rt, tmp_path):
    torch.manual_seed(2)
    src = torch.nn.Linear(8, 4)
    rt.save(tmp_path / "c", {"model": src.state_dict()}).result()
    dst = torch.nn.Linear(8, 4)
    weight = dst.weight
    out, _ = rt.restore(tmp_path / "c", {"model": dst.state_dict()})
    assert torch.equal(dst.weight, src.weight) and dst.weight is weight
    assert out["model"]["bias"].data_ptr() == dst.bias.data_ptr()
    bf = ckpt.ArraySpec((4, 8), torch.bfloat16)
    with pytest.raises(ckpt.MismatchError, match="model/weight"):
        rt.restore(tmp_path / "c", {"model": {"weight": bf, "bias": torch.zeros(4)}})


@pytest.mark.parametrize("bad, words", [
    (torch.ones(4, 4).t(), "contiguous"),
    (torch.ones(2, device="meta"), "meta tensor"),
    (torch.ones(2, dtype=torch.complex64), "not supported"),
    (torch.ones(2).to_sparse(), "layout"),
])
def test_bad_tensors_are_refused_naming_the_path(rt, tmp_path, bad, words):
    with pytest.raises(ckpt.CheckpointError) as e:
        rt.save(tmp_path / "c", {"m": {"w": bad}})
    assert "m/w:" in str(e.value) and words in str(e.value)
    assert os.listdir(tmp_path) == []


def test_tensors_and_arrays_come_back_as_what_they_were(rt, tmp_path):
    tree = {"t": torch.arange(3), "n": np.arange(3), "p": torch.nn.Parameter(torch.ones(2))}
    rt.save(tmp_path / "c", tree).result()
    back, _ = rt.restore(tmp_path / "c")
    assert isinstance(back["t"], torch.Tensor) and isinstance(back["n"], np.ndarray)
    assert isinstance(back["p"], torch.Tensor) and back["p"].tolist() == [1.0, 1.0]


def _base_tree():
    from collections import OrderedDict
    m = OrderedDict(w=torch.arange(6.0).reshape(2, 3), b=torch.zeros(3))
    m._metadata = OrderedDict({"": {"version": 1}})
    return {"m": m, "o": {"state": {0: {"buf": torch.ones(2, 3)}},
                          "pg": [{"lr": 0.1, "params": [0], "nesterov": False, "foreach": None}]},
            "np": np.arange(4, dtype=np.int32), "step": 1, "t": (1, "x")}


def _replace(key, value):
    def mutate(t):
        node = t
        *parents, last = key
        for k in parents:
            node = node[k]
        node[last] = value(node[last]) if callable(value) else value
    return mutate


def _resize(t):
    t["m"]["w"].resize_(3, 2)


def _meta(t):
    t["m"]._metadata[""]["version"] = 2


# (what changes, whether the cached walk may be reused)
CHANGES = {
    "new values, same objects": (lambda t: t["m"]["w"].add_(1), True),
    "a replaced tensor": (_replace(("m", "w"), lambda w: w + 7), True),
    "a new scalar value": (_replace(("step",), 2), True),
    "a new float value": (_replace(("o", "pg", 0, "lr"), 0.01), True),
    "a shape": (_replace(("m", "b"), torch.zeros(4)), False),
    "a tensor resized in place": (_resize, False),
    "a dtype": (_replace(("m", "b"), lambda b: b.double()), False),
    "a key": (lambda t: t["m"].update(c=t["m"].pop("b")), False),
    "an int key": (lambda t: t["o"]["state"].update({1: t["o"]["state"].pop(0)}), False),
    "a scalar type": (_replace(("step",), 1.0), False),
    "a bool for an int": (_replace(("step",), True), False),
    "a tuple for a list": (_replace(("o", "pg", 0, "params"), (0,)), False),
    "a numpy array for a tensor": (_replace(("m", "b"), np.zeros(3, np.float32)), False),
    "a numpy dtype": (_replace(("np",), lambda a: a.astype(np.int64)), False),
    "a numpy shape": (_replace(("np",), lambda a: a.reshape(2, 2)), False),
    "the module metadata": (_meta, False),
    "None for a value": (_replace(("o", "pg", 0, "foreach"), 0), False),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_repeated_tree_reuses_the_walk_only_while_it_repeats(rt, tmp_path, change):
    mutate, reused = CHANGES[change]
    rt.save(tmp_path / "a", _base_tree()).result()
    tree = _base_tree()  # new objects, as state_dict() makes at each call
    mutate(tree)
    before = rt.stats()["tree_reuses"]
    rt.save(tmp_path / "b", tree).result()
    assert rt.stats()["tree_reuses"] == before + (1 if reused else 0)
    back, _ = rt.restore(tmp_path / "b")
    same(tree, back)
    assert rt.restore(tmp_path / "b", _base_tree() if reused else tree)  # in place, too


@pytest.mark.parametrize("bad", ["non-contiguous", "negative view", "sparse"])
def test_a_repeated_tree_with_a_bad_tensor_is_refused_naming_the_path(rt, tmp_path, bad):
    rt.save(tmp_path / "a", _base_tree()).result()
    tree = _base_tree()
    w = tree["m"]["w"]
    tree["m"]["w"] = {"non-contiguous": lambda: w.t().contiguous().t(),
                      "negative view": lambda: torch._neg_view(w),
                      "sparse": lambda: w.to_sparse()}[bad]()
    with pytest.raises(ckpt.CheckpointError, match="m/w"):
        rt.save(tmp_path / "b", tree)
    assert not (tmp_path / "b").exists()


def test_overlapped_saves_of_a_repeated_tree_read_each_call_s_memory(rt, tmp_path):
    trees = [_base_tree() for _ in range(3)]
    handles = []
    for i, t in enumerate(trees):
        t["m"]["w"].fill_(i)
        t["step"] = i
        handles.append(rt.save(tmp_path / f"c{i}", t, mode="overlapped"))
    for h in handles:
        h.result(timeout=30)
    assert rt.stats()["tree_reuses"] >= 2
    for i, t in enumerate(trees):
        back, _ = rt.restore(tmp_path / f"c{i}")
        same(t, back)
        assert back["step"] == i and (back["m"]["w"] == i).all()
