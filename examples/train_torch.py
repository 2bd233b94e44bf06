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
spent in them, save stalls included, start-up and the final durable wait excluded) and
`final step=N digest=HEX` (SHA-256 over every parameter, buffer and optimizer tensor).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
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
        self.steps_per_s = 0.0

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

    def run(self):
        c = self.config
        pending = None  # overlapped: the save whose copy must finish before the next update
        start_step, t0 = self.step, time.perf_counter()
        final = last_reg = None
        while self.step < c.steps:
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
            if (c.save_every and self.step % c.save_every == 0) or last:
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
        elapsed = time.perf_counter() - t0
        self.steps_per_s = (self.step - start_step) / elapsed if elapsed > 0 else 0.0
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
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)
    # Flags given explicitly override the saved config on --resume (a merge patch).
    overrides = {k: v for k, v in dict(model=a.model, optim=a.optim, steps=a.steps,
                                       save_every=a.save_every, mode=a.mode, seed=a.seed,
                                       batch=a.batch, keep=a.keep, width=a.width).items()
                 if v is not None}
    try:
        rt = ckpt.Runtime(engine=a.engine)
        ckpt.set_default_runtime(rt)
        spec = ExecutionSpec.local(a.dir, "train_torch")
        job = resume_or_start(spec, TrainTorchConfig(), overrides, a.resume)
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
