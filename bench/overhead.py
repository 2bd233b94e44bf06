#!/usr/bin/python3
"""How much slower training runs when it checkpoints every K steps: per-step times and throughput
overhead against the same loop with no checkpoints, runs interleaved in one sitting.

    bench/overhead.py --dir /tmp/overhead --workload train_loop --state-mb 512
    bench/overhead.py --dir /tmp/overhead --workload torch      # PYTHONPATH: build/python
    bench/overhead.py --dir /tmp/overhead --workload train_loop --pin 0,1   # loop / ckpt CPUs

Variants, each run ROUNDS times in an order shuffled per round (a fixed seed), so drift of the
machine (other load, thermal, page cache) spreads over all of them alike:
  none                 --save-every 0
  ckpt sync K          a fire-and-forget ckpt save every K steps, the loop stalls for the copy
  ckpt overlapped K    the copy runs beside the next step's compute
  torch.save K         (torch workload) torch.save + fsync every K steps, on the loop's thread
for K in --ks (default 1,10,100).

Each run prints `throughput steps_per_s=X` (training steps alone, start-up excluded) and writes
its per-step times. The overhead of a variant is median(none) / median(variant) - 1 over the
rounds' throughputs: 0.05 means the run takes 5% longer. Step-time percentiles pool every step
of every round. Output under --out: overhead.json, overhead.txt (the table) and, with gnuplot,
overhead-<workload>.png: the step times of one round per variant, where a checkpoint's spikes
show.

Workloads:
  train_loop  build/examples/train_loop: the MLP, padded to --state-mb, with --sweep so each step
              writes the whole state as an optimizer does; --hidden/--batch set the compute
  torch       examples/train_torch.py --model transformer (CPU), --torch-args for its sizes
"""
import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
THROUGHPUT = re.compile(r"^throughput steps_per_s=([0-9.]+)$", re.M)
FINAL = re.compile(r"^final step=(\d+) digest=([0-9a-f]+)$", re.M)


def variants(workload, ks):
    out = [("none", {"save_every": 0})]
    for k in ks:
        out.append((f"ckpt sync K={k}", {"save_every": k, "mode": "sync"}))
        out.append((f"ckpt overlapped K={k}", {"save_every": k, "mode": "overlapped"}))
        if workload == "torch":
            out.append((f"torch.save K={k}", {"save_every": k, "mode": "sync", "saver": "torch"}))
    return out


def command(args, workload, v, run_dir, times_path):
    common = ["--dir", run_dir, "--steps", str(args.steps), "--save-every", str(v["save_every"]),
              "--step-times", times_path]
    if "mode" in v:
        common += ["--mode", v["mode"]]
    if args.pin:
        common += ["--pin", args.pin]
    if args.overlapped_copy_threads:
        common += ["--overlapped-copy-threads", str(args.overlapped_copy_threads)]
    if args.copy_nice is not None:
        common += ["--copy-nice", str(args.copy_nice)]
    if workload == "train_loop":
        return [args.train_loop, *common, "--state-mb", str(args.state_mb), "--sweep",
                "--hidden", str(args.hidden), "--batch", str(args.batch), "--keep", "2"]
    cmd = ["/usr/bin/python3", os.path.join(ROOT, "examples", "train_torch.py"), *common,
           "--model", "transformer", "--keep", "2", *args.torch_args.split()]
    if v.get("saver"):
        cmd += ["--saver", v["saver"]]
    return cmd


def run_one(args, workload, v, scratch):
    run_dir = tempfile.mkdtemp(dir=scratch)
    times_path = os.path.join(scratch, "steps.txt")
    cmd = command(args, workload, v, run_dir, times_path)
    t0 = time.perf_counter()
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", os.path.join(ROOT, "build", "python"))
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env)
    wall = time.perf_counter() - t0
    shutil.rmtree(run_dir, ignore_errors=True)
    if done.returncode != 0:
        sys.exit(f"overhead: {' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}")
    thr, final = THROUGHPUT.search(done.stdout), FINAL.search(done.stdout)
    if not thr or not final:
        sys.exit(f"overhead: no throughput/final line from {' '.join(cmd)}:\n{done.stdout[-3000:]}")
    with open(times_path) as f:
        steps = [float(line) for line in f if line.strip()]
    return {"steps_per_s": float(thr.group(1)), "digest": final.group(2), "step_ms": steps,
            "wall_s": wall}


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def summarize(runs, base_thr):
    thr = statistics.median(r["steps_per_s"] for r in runs)
    steps = [m for r in runs for m in r["step_ms"]]
    return {"steps_per_s": thr, "overhead": base_thr / thr - 1 if base_thr else None,
            "step_ms": {"p50": pct(steps, 50), "p90": pct(steps, 90), "p99": pct(steps, 99),
                        "max": max(steps)},
            "rounds": [r["steps_per_s"] for r in runs]}


def table(workload, rows, args):
    lines = [f"overhead: {workload}, {args.steps} steps a run, {args.rounds} interleaved rounds"
             + (f", pinned loop/ckpt CPUs {args.pin}" if args.pin else ""),
             f"  {'variant':<24}{'steps/s':>10}{'overhead':>10}{'p50 ms':>9}{'p90 ms':>9}"
             f"{'p99 ms':>9}{'max ms':>9}"]
    for name, r in rows.items():
        o = r["overhead"]
        s = r["step_ms"]
        lines.append(f"  {name:<24}{r['steps_per_s']:>10.2f}"
                     f"{(f'{o * 100:+.1f}%' if o is not None else '-'):>10}"
                     f"{s['p50']:>9.1f}{s['p90']:>9.1f}{s['p99']:>9.1f}{s['max']:>9.1f}")
    none = rows.get("none", {}).get("rounds", [])
    if len(none) >= 2:
        # The same loop without checkpoints, run again: overheads smaller than this spread are
        # indistinguishable from the machine's own drift.
        lo, hi = min(none), max(none)
        lines.append(f"  noise floor: the no-checkpoint runs ranged {lo:.2f}-{hi:.2f} steps/s "
                     f"({(hi / lo - 1) * 100:.1f}% apart)")
    return "\n".join(lines)


def plot(workload, timelines, ks, stem):
    """Step times of the last round: one panel per K, each with the no-checkpoint run beside that
    K's variants (gnuplot, when installed)."""
    if shutil.which("gnuplot") is None:
        print("overhead: gnuplot not found; no PNG", file=sys.stderr)
        return None
    data = stem + ".dat"
    names = list(timelines)
    with open(data, "w") as f:
        for name in names:
            f.write(f'"{name}"\n')
            for i, m in enumerate(timelines[name]):
                f.write(f"{i + 1} {m}\n")
            f.write("\n\n")
    png = stem + ".png"
    lines = [f"set terminal pngcairo size 1400,{330 * len(ks) + 60} noenhanced",
             f"set output '{png}'",
             f"set multiplot layout {len(ks)},1 title 'step times, {workload} (last round)'",
             "set ylabel 'step ms'", "set logscale y", "set key outside right", "set grid y"]
    for k in ks:
        idx = [i for i, n in enumerate(names) if n == "none" or n.endswith(f" K={k}")]
        lines.append(f"set title 'checkpoint every {k} steps'")
        lines.append("set xlabel 'step'" if k == ks[-1] else "unset xlabel")
        lines.append("plot " + ", ".join(f"'{data}' index {i} with lines title columnheader(1)"
                                          for i in idx))
    lines.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(lines) + "\n", text=True, check=True)
    return png


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", required=True, help="scratch directory on the disk to measure")
    p.add_argument("--workload", choices=["train_loop", "torch"], default="train_loop")
    p.add_argument("--ks", default="1,10,100")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--state-mb", type=int, default=256)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--torch-args", default="", help="more arguments for train_torch.py")
    p.add_argument("--pin", default="", help="LOOP_CPU,CKPT_CPU")
    p.add_argument("--overlapped-copy-threads", type=int, default=0,
                   help="threads an overlapped copy uses (0: the Runtime's default)")
    p.add_argument("--copy-nice", type=int, help="nice value of ckpt's copy threads")
    p.add_argument("--train-loop", default=os.path.join(ROOT, "build", "examples", "train_loop"))
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    args = p.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    os.makedirs(args.dir, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="overhead-", dir=args.dir)
    vs = variants(args.workload, ks)
    runs = {name: [] for name, _ in vs}
    try:
        for rnd in range(args.rounds):
            order = list(vs)
            random.Random(rnd).shuffle(order)
            for name, v in order:
                r = run_one(args, args.workload, v, scratch)
                runs[name].append(r)
                print(f"overhead: round {rnd + 1}/{args.rounds} {name}: "
                      f"{r['steps_per_s']:.2f} steps/s", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    digests = {r["digest"] for rs in runs.values() for r in rs}
    if len(digests) != 1:
        sys.exit(f"overhead: the variants trained to different states: {sorted(digests)}")
    base = statistics.median(r["steps_per_s"] for r in runs["none"])
    rows = {name: summarize(rs, base) for name, rs in runs.items()}
    text = table(args.workload, rows, args)
    print(text)
    tag = ("-pinned" if args.pin else "") + (
        f"-oct{args.overlapped_copy_threads}" if args.overlapped_copy_threads else "") + (
        f"-nice{args.copy_nice}" if args.copy_nice is not None else "")
    stem = os.path.join(args.out, f"overhead-{args.workload}{tag}")
    png = plot(args.workload, {name: rs[-1]["step_ms"] for name, rs in runs.items()}, ks, stem)
    result = {"workload": args.workload, "steps": args.steps, "rounds": args.rounds,
              "ks": ks, "pin": args.pin, "command": " ".join(sys.argv), "rows": rows,
              "overlapped_copy_threads": args.overlapped_copy_threads,
              "copy_nice": args.copy_nice,
              "digest": digests.pop(), "png": png,
              "machine": {"cpus": os.cpu_count(), "loadavg_after": os.getloadavg()}}
    if args.workload == "train_loop":
        result.update(state_mb=args.state_mb, hidden=args.hidden, batch=args.batch)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(stem + ".txt", "w") as f:
        f.write(text + "\n")
    print(f"overhead: wrote {stem}.json, {stem}.txt" + (f", {png}" if png else ""),
          file=sys.stderr)


if __name__ == "__main__":
    main()
