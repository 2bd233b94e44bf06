#!/usr/bin/env python3
"""train_torch: a PyTorch training job that checkpoints with ckpt (the Python twin of train_loop).

A torchvision ResNet-18 (random init, nothing downloaded) or a small TransformerEncoder is
trained on synthetic data generated from (seed, step) with SGD + momentum or AdamW,
deterministically on the CPU. It is a ckpt.job.RestoreableJob: every --save-every steps the model,
the optimizer, the step and the RNG state are saved fire-and-forget and registered as `latest`;
the final save is awaited. --resume continues from `latest` (or from the newest checkpoint that
restores, with a warning). Killed at any moment and resumed until done, it prints the digest of
the run that was never interrupted.

    PYTHONPATH=build/python python3 examples/train_torch.py --dir ./checkpoints --steps 50
    PYTHONPATH=build/python python3 examples/train_torch.py --dir ./checkpoints --resume --steps 100

The last two lines are `throughput steps_per_s=X` (training steps of this process over the time
spent in them, periodic save stalls included; start-up and the final save excluded) and
`final step=N digest=HEX` (SHA-256 over every parameter, buffer and optimizer tensor).

For bench/overhead.py: --step-times FILE writes each step's duration in ms; --saver torch saves
with torch.save + fsync of the file and its directory on the loop's thread instead of ckpt (no
registration, no resume); --pin LOOP,CKPT runs the loop on one CPU and ckpt's threads on another.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass

import torch

import ckpt
import ckpt.job
from ckpt.job import ExecutionSpec, RestoreableJob


@dataclass
class TrainTorchConfig:
    model: str = "transformer"  # resnet18 | transformer
    optim: str = "sgd"          # sgd | adamw
    steps: int = 100
    save_every: int = 10        # 0: no periodic checkpoints (the final one only)
    mode: str = "sync"          # sync | overlapped
    seed: int = 0
    batch: int = 8
    keep: int = 3               # retention of step/ checkpoints
    lr: float = 0.01
    width: int = 64             # transformer model width / resnet input size


def say(text: str) -> None:
    print(text, flush=True)


def build_model(c: TrainTorchConfig) -> torch.nn.Module:
    torch.manual_seed(c.seed)
    if c.model == "resnet18":
        import torchvision
        return torchvision.models.resnet18(num_classes=10)
    if c.model == "transformer":
        layer = torch.nn.TransformerEncoderLayer(c.width, 4, 2 * c.width, dropout=0.1,
                                                 batch_first=True)
        return torch.nn.Sequential(torch.nn.TransformerEncoder(layer, 2),
                                   torch.nn.Linear(c.width, 10))
    raise ckpt.InvalidArgumentError(f"config key 'model': expected resnet18 or transformer, "
                                    f"got {c.model!r}")


class TrainTorch(RestoreableJob[TrainTorchConfig], key="train_torch"):
    def __init__(self, spec, config=None, **kw):
        super().__init__(spec, config, **kw)
        c = self.config
        if c.mode not in ("sync", "overlapped"):
            raise ckpt.InvalidArgumentError(f"config key 'mode': expected sync or overlapped, "
                                            f"got {c.mode!r}")
        if c.steps < 0 or c.save_every < 0 or c.batch <= 0:
            raise ckpt.InvalidArgumentError("steps and save_every must be >= 0, batch > 0")
        self.model = build_model(c)
        if c.optim == "sgd":
            self.opt = torch.optim.SGD(self.model.parameters(), lr=c.lr, momentum=0.9)
        elif c.optim == "adamw":
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=c.lr)
        else:
            raise ckpt.InvalidArgumentError(f"config key 'optim': expected sgd or adamw, "
                                            f"got {c.optim!r}")
        self.step = 0
        torch.manual_seed(c.seed + 1)  # dropout's stream, saved with every checkpoint
        self.set_retention(max_to_keep=max(c.keep, 1), prefix="step/")
        self.failed_saves = 0
        self.step_ms = []  # each training step of this process, in ms
        self.saver = "ckpt"  # or "torch": torch.save + fsync, for comparison (bench/overhead.py)

    def state(self):
        return {"model": self.model.state_dict(), "optim": self.opt.state_dict(),
                "step": self.step, "rng": torch.get_rng_state()}

    def restore_from_path(self, rel_path):
        # No template: a fresh optimizer has no state yet; the saved tree has it all.
        tree, metadata = self.get_tree_and_metadata_from_path(rel_path, None)
        self.model.load_state_dict(tree["model"])
        self.opt.load_state_dict(tree["optim"])
        self.step = tree["step"]
        torch.set_rng_state(tree["rng"])
        say(f"restored {rel_path} (step {self.step}, loss {metadata.get('loss', 0.0):.6f})")

    def batch(self, step: int):
        c = self.config
        g = torch.Generator().manual_seed(c.seed * 1000003 + step)
        if c.model == "resnet18":
            x = torch.randn(c.batch, 3, c.width, c.width, generator=g)
        else:
            x = torch.randn(c.batch, 16, c.width, generator=g)
        y = torch.randint(0, 10, (c.batch,), generator=g)
        return x, y

    def loss(self, x, y):
        out = self.model(x)
        if out.dim() == 3:
            out = out.mean(dim=1)
        return torch.nn.functional.cross_entropy(out, y)

    def _report(self, handle):
        if handle.state == "failed":
            self.failed_saves += 1
            say(f"save {handle.path} FAILED")

    @property
    def steps_per_s(self) -> float:
        total = sum(self.step_ms)
        return len(self.step_ms) * 1e3 / total if total > 0 else 0.0

    def torch_save(self, suffix):
        """torch.save of the same state, durable: a new file, fsynced, renamed, directory fsynced."""
        d = os.path.join(ckpt.job.run_dir(self.spec), "torch")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, suffix.replace("/", "-") + ".pt")
        with open(path + ".tmp", "wb") as f:
            torch.save(self.state(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._torch_last and self._torch_last != path:
            os.remove(self._torch_last)  # keep one, as retention would
        self._torch_last = path

    def run(self):
        c = self.config
        pending = None  # overlapped: the save whose copy must finish before the next update
        final = last_reg = None
        self._torch_last = None
        while self.step < c.steps:
            t_step = time.perf_counter()
            self.model.train()
            x, y = self.batch(self.step)
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss(x, y)
            loss.backward()
            if pending is not None:
                pending.wait_snapshotted()
                pending = None
            self.opt.step()
            self.step += 1
            last = self.step == c.steps
            if last:  # the final save is not a training step
                self.step_ms.append((time.perf_counter() - t_step) * 1e3)
            if self.saver == "torch":
                if c.save_every and self.step % c.save_every == 0:
                    self.torch_save(f"step/{self.step}")
            elif (c.save_every and self.step % c.save_every == 0) or last:
                suffix = f"step/{self.step}"
                h = self.save_tree_and_metadata(suffix, self.state(),
                                                {"step": self.step, "loss": loss.item()},
                                                mode=c.mode)
                reg = self.register(suffix)
                say(f"step {self.step:>6} loss {loss.item():.6f}  save {suffix} stall "
                    f"{h.timings.stall * 1e3:.2f} ms")
                if last:
                    final, last_reg = h, reg
                else:
                    h.add_done_callback(self._report)  # fire and forget
                    if c.mode == "overlapped":
                        pending = h
            if not last:
                self.step_ms.append((time.perf_counter() - t_step) * 1e3)
        if final is not None:
            t = final.result()  # the final save: wait until durable
            last_reg.result()
            say(f"saved {final.path}: durable after {t.durable * 1e3:.1f} ms "
                f"({t.bytes / 1048576:.1f} MiB), latest -> step/{self.step}")
        self.finish()

    def digest(self) -> str:
        h = hashlib.sha256()
        for name, t in self.model.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().reshape(-1).view(torch.uint8).numpy().tobytes())
        opt = self.opt.state_dict()
        for idx in sorted(opt["state"]):
            for k, v in sorted(opt["state"][idx].items()):
                h.update(f"{idx}/{k}".encode())
                if isinstance(v, torch.Tensor):
                    h.update(v.detach().reshape(-1).view(torch.uint8).numpy().tobytes())
                else:
                    h.update(repr(v).encode())
        return h.hexdigest()[:16]


def resume_or_start(spec, fresh: TrainTorchConfig, overrides: dict, resume: bool) -> TrainTorch:
    if resume:
        candidates = []
        try:
            latest = TrainTorch.latest(spec)
            if latest:
                candidates.append(latest)
        except ckpt.CheckpointError as e:
            logging.getLogger("ckpt").warning("latest is unreadable (%s); looking for the newest "
                                              "checkpoint that restores", e)
        for suffix in reversed(TrainTorch.checkpoints(spec)):
            if suffix not in candidates:
                candidates.append(suffix)
        for suffix in candidates:
            try:
                job, _ = TrainTorch.from_checkpoint(suffix, spec, overrides, resume=True)
                return job
            except ckpt.CheckpointError as e:
                logging.getLogger("ckpt").warning("cannot resume from %s: %s", suffix, e)
        say(f"no checkpoint to resume from in {ckpt.job.run_dir(spec)}; starting from scratch")
    cfg = TrainTorchConfig(**{**fresh.__dict__, **overrides})
    return TrainTorch(spec, cfg)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="./checkpoints", help="checkpoints directory")
    p.add_argument("--model", choices=["resnet18", "transformer"])
    p.add_argument("--optim", choices=["sgd", "adamw"])
    p.add_argument("--steps", type=int)
    p.add_argument("--save-every", type=int, help="steps between checkpoints (0: none)")
    p.add_argument("--mode", choices=["sync", "overlapped"])
    p.add_argument("--seed", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--keep", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (results depend on it)")
    p.add_argument("--engine", default="auto", choices=["auto", "uring", "threads"])
    p.add_argument("--resume", action="store_true", help="continue from latest")
    p.add_argument("--saver", default="ckpt", choices=["ckpt", "torch"],
                   help="torch: torch.save + fsync every --save-every steps (no resume)")
    p.add_argument("--step-times", help="write each step's duration in ms to this file")
    p.add_argument("--overlapped-copy-threads", type=int, default=0,
                   help="threads an overlapped copy uses (0: the Runtime's default)")
    p.add_argument("--copy-nice", type=int, help="nice value of ckpt's copy threads")
    p.add_argument("--pin", help="LOOP_CPU,CKPT_CPU: the loop on one CPU, ckpt's threads on another")
    a = p.parse_args(argv)
    if a.saver == "torch" and a.resume:
        p.error("--saver torch cannot --resume (it saves for comparison only)")
    pin = [int(x) for x in a.pin.split(",")] if a.pin else None
    if pin is not None and len(pin) != 2:
        p.error("--pin takes LOOP_CPU,CKPT_CPU")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)
    # Flags given explicitly override the saved config on --resume (a merge patch).
    overrides = {k: v for k, v in dict(model=a.model, optim=a.optim, steps=a.steps,
                                       save_every=a.save_every, mode=a.mode, seed=a.seed,
                                       batch=a.batch, keep=a.keep, width=a.width).items()
                 if v is not None}
    try:
        if pin:
            os.sched_setaffinity(0, {pin[1]})  # the Runtime's threads inherit this CPU
        rt = ckpt.Runtime(engine=a.engine, overlapped_copy_threads=a.overlapped_copy_threads,
                          copy_nice=a.copy_nice)
        if pin:
            os.sched_setaffinity(0, {pin[0]})  # and the training loop runs on this one
        ckpt.set_default_runtime(rt)
        spec = ExecutionSpec.local(a.dir, "train_torch")
        job = resume_or_start(spec, TrainTorchConfig(), overrides, a.resume)
        job.saver = a.saver
        c = job.config
        nbytes = sum(t.numel() * t.element_size() for t in job.model.state_dict().values())
        rt.reserve_staging(3 * nbytes + (1 << 20))
        say(f"train_torch: {c.model}/{c.optim} {c.steps} steps from step {job.step}, "
            f"state {nbytes / 1048576:.1f} MiB of parameters, save every {c.save_every} "
            f"({c.mode} mode, engine {rt.stats()['engine']})")
        ckpt.job.run(job)
        report = rt.drain()
        if not report.ok:
            for e in report.errors:
                print(f"train_torch: {e}", file=sys.stderr)
            return 1
        if a.step_times:
            with open(a.step_times, "w") as f:
                f.writelines(f"{m:.4f}\n" for m in job.step_ms)
        say(f"throughput steps_per_s={job.steps_per_s:.3f}")
        say(f"final step={job.step} digest={job.digest()}")
        if job.failed_saves:
            print(f"train_torch: {job.failed_saves} periodic save(s) failed", file=sys.stderr)
            return 1
        return 0
    except ckpt.CheckpointError as e:
        print(f"train_torch: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
