#!/usr/bin/python3
"""ckpt next to its peers on the same synthetic state, disk and machine, in one run.

    bench/peers.py --dir /tmp/ckbench --state-mb 2048 --leaves 64
    bench/peers.py --dir /tmp/ckbench --state-mb 256 --leaves 1000 --saves 5 --json
    bench/peers.py --dir /tmp/ckbench --state-mb 256 --no-ckpt      # the peers only

Peers, each saving the same state (LEAVES float32 arrays totalling STATE_MB MiB) into a fresh
file: torch.save of a state dict of tensors, numpy.savez of the arrays, and a plain buffered
write of every array's bytes. For each: the stall is the call (the loop may mutate the state
once it returns), the time to durable adds flush, fsync of the file and fsync of the directory
(a new file is not durable before its directory entry is). Reads (torch.load, numpy.load with
every array materialized, readinto preallocated arrays) run after dropping the page cache
(`echo 1 > /proc/sys/vm/drop_caches`, root only); without that permission they are skipped with
a note, since a read from the page cache says nothing about the disk.

ckpt's figures come from build/bench/ckpt_bench --json, run here with the same state shape in
sync and overlapped mode; its raw O_DIRECT baselines are printed alongside.

Uses Debian's python3-numpy and python3-torch (scripts/setup.sh --bench installs them), hence
the interpreter /usr/bin/python3.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

try:
    import torch
except ImportError:  # the other peers still run
    torch = None

HERE = os.path.dirname(os.path.abspath(__file__))


def make_state(state_mb, leaves):
    numel = max(state_mb * (1 << 20) // 4 // leaves, 1)
    rng = np.random.default_rng(0)
    return {f"block_{i // 16:05}.p{i % 16:02}": rng.random(numel, dtype=np.float32)
            for i in range(leaves)}


def fsync_dir(path):
    fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_page_cache():
    """True when the page cache was dropped (root, writable /proc/sys)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def save_torch(f, state):
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, f)


def save_numpy(f, state):
    np.savez(f, **state)


def save_plain(f, state):
    for v in state.values():
        f.write(memoryview(v))


def load_torch(path, state):
    loaded = torch.load(path)
    assert len(loaded) == len(state)


def load_numpy(path, state):
    with np.load(path) as z:
        arrays = [z[k] for k in z.files]  # materializes every array
    assert len(arrays) == len(state)


def load_plain(path, state):
    with open(path, "rb", buffering=0) as f:
        for v in state.values():
            out = np.empty_like(v)
            if f.readinto(memoryview(out).cast("B")) != out.nbytes:
                raise RuntimeError(f"{path}: short read")


def summary(xs):
    return {"p50": statistics.median(xs), "max": max(xs), "min": min(xs)}


def run_peer(name, save, load, state, work, saves, can_drop):
    stall, durable = [], []
    path = None
    for k in range(saves):
        if path:
            os.remove(path)
        path = os.path.join(work, f"{name}-{k}.bin")
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            save(f, state)
            t1 = time.perf_counter()
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(path)
        t2 = time.perf_counter()
        stall.append((t1 - t0) * 1e3)
        durable.append((t2 - t0) * 1e3)
        print(f"peers: {name} save {k + 1}/{saves}: stall {stall[-1]:.0f} ms, "
              f"durable {durable[-1]:.0f} ms", file=sys.stderr)
    out = {"stall_ms": summary(stall), "durable_ms": summary(durable),
           "bytes": os.path.getsize(path)}
    if can_drop:
        reads = []
        for _ in range(2):
            drop_page_cache()
            t0 = time.perf_counter()
            load(path, state)
            reads.append((time.perf_counter() - t0) * 1e3)
        out["read_ms"] = summary(reads)
    os.remove(path)
    return out


def run_ckpt(bench, args, mode):
    cmd = [bench, "--dir", args.dir, "--state-mb", str(args.state_mb), "--leaves",
           str(args.leaves), "--saves", str(args.saves), "--mode", mode, "--json"]
    print("peers: " + " ".join(cmd), file=sys.stderr)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, check=True)
    return json.loads(done.stdout)


def table(result):
    lines = []
    add = lines.append
    st = result["state"]
    add(f"peers: {st['bytes'] / 2**20:.0f} MiB in {st['leaves']} float32 arrays, "
        f"{result['saves']} saves each, on {result['dir']}")
    if "machine" in result:
        m = result["machine"]
        add(f"machine: {m['cpu']}, {m['hardware_threads']} hardware threads, "
            f"{m['memory_bytes'] / 2**30:.1f} GiB RAM, {m['fs']}")
    add("")
    add(f"  {'method':<34}{'stall p50 ms':>14}{'durable p50 ms':>16}{'read ms':>10}"
        f"{'file MiB':>10}")
    rows = result["rows"]
    for name, r in rows.items():
        read = r.get("read_ms", {}).get("p50")
        read_s = f"{read:.1f}" if read is not None else "-"
        size_s = f"{r['bytes'] / 2**20:.0f}" if "bytes" in r else "-"
        add(f"  {name:<34}{r['stall_ms']['p50']:>14.1f}{r['durable_ms']['p50']:>16.1f}"
            f"{read_s:>10}{size_s:>10}")
    if "ckpt_baseline" in result:
        b = result["ckpt_baseline"]
        add(f"  {'raw O_DIRECT (ckpt_bench baseline)':<34}{'-':>14}{b['raw_write_ms']:>16.1f}"
            f"{b['raw_read_ms']:>10.1f}{'-':>10}")
        add(f"  {'memcpy, copy threads (baseline)':<34}{b['memcpy_mt_ms']:>14.1f}{'-':>16}"
            f"{'-':>10}{'-':>10}")
    add("")
    add("  ckpt stall: save() call to return (overlapped: plus the wait in wait_snapshotted()).")
    add("  ckpt read: restore into the live arrays with checksums (O_DIRECT: no page cache).")
    if not result["reads_measured"]:
        add("  peer reads skipped: the page cache could not be dropped (needs root); a read")
        add("  from the page cache would not measure the disk.")
    for line in result.get("ratios_text", []):
        add(line)
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", required=True)
    p.add_argument("--state-mb", type=int, default=1024)
    p.add_argument("--leaves", type=int, default=64)
    p.add_argument("--saves", type=int, default=3)
    p.add_argument("--bench", default=os.path.join(HERE, "..", "build", "bench", "ckpt_bench"))
    p.add_argument("--no-ckpt", action="store_true", help="skip ckpt_bench")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args()

    os.makedirs(args.dir, exist_ok=True)
    result = {"dir": os.path.abspath(args.dir), "saves": args.saves, "rows": {}}
    rows = result["rows"]
    if not args.no_ckpt:
        for mode in ("sync", "overlapped"):
            r = run_ckpt(args.bench, args, mode)
            result["machine"] = r["machine"]
            result["ckpt_baseline"] = r["baseline"]
            s = r["save"]
            rows[f"ckpt ({mode})"] = {
                "stall_ms": s["blocked_ms"], "returned_ms": s["stall_ms"],
                "durable_ms": s["durable_ms"], "read_ms": r["restore"]["ms"],
                "bytes": s["stored_bytes"]}

    state = make_state(args.state_mb, args.leaves)
    nbytes = sum(v.nbytes for v in state.values())
    result["state"] = {"bytes": nbytes, "leaves": len(state)}
    work = os.path.join(os.path.abspath(args.dir), f"peers-{os.getpid()}")
    os.makedirs(work)
    can_drop = drop_page_cache()
    result["reads_measured"] = can_drop
    peers = [("numpy.savez", save_numpy, load_numpy), ("plain write", save_plain, load_plain)]
    if torch is not None:
        peers.insert(0, ("torch.save", save_torch, load_torch))
    else:
        print("peers: torch not importable (python3-torch): torch.save skipped", file=sys.stderr)
    try:
        for name, save, load in peers:
            rows[name] = run_peer(name, save, load, state, work, args.saves, can_drop)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratios = {}
    text = []
    if "torch.save" in rows:
        t = rows["torch.save"]
        for mode in ("sync", "overlapped"):
            c = rows.get(f"ckpt ({mode})")
            if c is None:
                continue
            ratios[f"torch_stall_over_ckpt_{mode}"] = t["stall_ms"]["p50"] / c["stall_ms"]["p50"]
            ratios[f"torch_durable_over_ckpt_{mode}"] = (
                t["durable_ms"]["p50"] / c["durable_ms"]["p50"])
            text.append(f"  torch.save / ckpt ({mode}): stall "
                        f"{ratios[f'torch_stall_over_ckpt_{mode}']:.1f}x, time to durable "
                        f"{ratios[f'torch_durable_over_ckpt_{mode}']:.2f}x (> 1: ckpt is faster)")
    result["ratios"] = ratios
    if text:
        result["ratios_text"] = [""] + text
    out = table(result)
    if args.json:
        print(out, file=sys.stderr)
        result.pop("ratios_text", None)
        print(json.dumps(result))
    else:
        print(out)


if __name__ == "__main__":
    main()
