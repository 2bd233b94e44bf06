#!/usr/bin/python3
"""The save-side walk of a pytree from Python: per-tensor routes to a data pointer, and the
binding's full walk against the walk a Runtime reuses for a tree that repeats.

    PYTHONPATH=build/python bench/py_walk_bench.py [--repeat 7]

State: a torchvision ResNet-50 state_dict + SGD-momentum state_dict + step (as py_bench's
resnet50: 481 tensors, ~650 leaves). Routes, per tensor over the 481 tensors (min of --repeat
runs): the bare loop (baseline), Tensor.data_ptr(), each of the attributes the walk checks, the
seven together, a DLPack capsule (torch._C._to_dlpack), Tensor.numpy(). Walks (Runtime._flatten,
which builds the C++ tree and pytree.json without saving): full, reused with the same objects,
and reused on a fresh state_dict() each time (what a training loop saving every K steps does),
next to the state_dict() calls themselves. Prints the load average: the machine is shared.
"""
import argparse
import os
import sys
import timeit

import torch

import ckpt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from py_bench import resnet50_and_sgd  # noqa: E402


def state_fn():
    model, opt = resnet50_and_sgd()
    return lambda: {"model": model.state_dict(), "optim": opt.state_dict(), "step": 1}


def best(fn, repeat, number=20):
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    make = state_fn()
    state = make()
    tensors = list(state["model"].values()) + \
        [s["momentum_buffer"] for s in state["optim"]["state"].values()]
    n = len(tensors)
    print(f"load average {os.getloadavg()[0]:.2f}; {n} tensors")
    routes = {
        "loop (baseline)": "pass",
        "data_ptr()": "t.data_ptr()",
        "dtype": "t.dtype", "is_cpu": "t.is_cpu", "layout": "t.layout",
        "is_contiguous()": "t.is_contiguous()", "is_neg()": "t.is_neg()", "shape": "t.shape",
        "the walk's 7 checks": "t.dtype; t.is_cpu; t.layout; t.is_contiguous(); t.is_neg(); "
                               "t.shape; t.data_ptr()",
        "DLPack capsule": "torch._C._to_dlpack(t)",
        "numpy()": "t.numpy()",
    }
    print(f"  {'route':24s} {'ns/tensor':>10s}")
    for name, stmt in routes.items():
        code = compile(f"for t in T: {stmt}", name, "exec")
        r = best(lambda: exec(code, {"T": tensors, "torch": torch}), args.repeat)
        print(f"  {name:24s} {r / n * 1e9:10.0f}")
    with ckpt.Runtime() as rt:
        _, leaves = rt._c._flatten(state, True)
        full = best(lambda: rt._c._flatten(state, False), args.repeat)
        reused = best(lambda: rt._c._flatten(state, True), args.repeat)
        fresh_sd = best(make, args.repeat)
        fresh = best(lambda: rt._c._flatten(make(), True), args.repeat) - fresh_sd
        assert rt.stats()["tree_reuses"] > 0
        print(f"  {'walk':40s} {'ms':>7s} {'ns/leaf':>8s} {'vs full':>8s}   ({leaves} leaves)")
        for name, t in [("full walk", full), ("reused walk, same objects", reused),
                        ("reused walk, fresh state_dict()", fresh),
                        ("(state_dict() calls themselves)", fresh_sd)]:
            print(f"  {name:40s} {t * 1e3:7.3f} {t / leaves * 1e9:8.0f} {t / full:8.2f}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
