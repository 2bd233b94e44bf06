"""ckpt.job: the seed's methods, and checkpoints interchangeable with C++ train_loop."""
import asyncio
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest

import ckpt
from ckpt.job import BasicJob, CheckpointedJob, ExecutionSpec, RestoreableJob, run_dir
from conftest import build_dir


@dataclass
class Optim:
    lr: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])


@dataclass
class CounterConfig:
    steps: int = 3
    name: Optional[str] = "c"
    optim: Optim = field(default_factory=Optim)
    tags: Dict[str, int] = field(default_factory=dict)


class Counter(RestoreableJob[CounterConfig], key="test_counter"):
    def __init__(self, spec, config=None, **kw):
        super().__init__(spec, config, **kw)
        self.w = np.zeros(4, dtype=np.float32)
        self.step = 0
        self.restored_from = None

    def state(self):
        return {"w": self.w, "step": self.step}

    def restore_from_path(self, rel_path):
        tree, meta = self.get_tree_and_metadata_from_path(rel_path, {"w": self.w, "step": 0})
        self.step = tree["step"]
        self.restored_from = str(rel_path)

    def run(self):
        while self.step < self.args.steps:
            self.step += 1
            self.w += 1
            suffix = f"step/{self.step}"
            self.save_tree_and_metadata(suffix, self.state(), {"step": self.step})
            self.register(suffix)
        self.finish()


class SubCounter(Counter, key="test_sub_counter"):
    pass


@pytest.fixture
def spec(tmp_path, rt):
    ckpt.set_default_runtime(rt)
    yield ExecutionSpec.local(tmp_path, "counter")
    ckpt.set_default_runtime(None)


def test_execution_spec_local_matches_cpp(tmp_path):
    s = ExecutionSpec.local(tmp_path, "n")
    assert (s.project, s.group, s.name, s.cluster.checkpoints_dir) == ("general", "default", "n",
                                                                       str(tmp_path))
    s2 = ExecutionSpec.local(str(tmp_path), "n", project="p", group="g")
    assert s2.run_rel_path() == "p/g/n"
    assert run_dir(s2) == os.path.join(str(tmp_path), "p/g/n")


def test_run_save_register_latest_checkpoints_and_metadata(spec, rt):
    job = Counter(spec)
    assert job.args == CounterConfig() and Counter.latest(spec) is None
    ckpt.job.run(job)
    assert rt.drain().ok and job.done()
    ckpt.job.run(job)  # done: skipped
    assert Counter.checkpoints(spec) == ["step/1", "step/2", "step/3"]
    assert Counter.latest(spec) == "step/3"
    assert job.get_metadata(Path("step/2")) == {"step": 2}
    assert job.get_metadata_from_path("general/default/counter/step/1") == {"step": 1}
    path = Counter._get_checkpoint_path(spec, "step/3")
    assert os.path.isabs(path) and path.endswith("general/default/counter/step/3")
    assert {"job.json", "config.json", "pytree.json", "metadata.json"} <= set(os.listdir(path))
    tree, meta = job.get_tree_and_metadata("step/2", None)
    assert tree["w"].tolist() == [2, 2, 2, 2] and tree["step"] == 2 and meta == {"step": 2}
    part, _ = job.get_tree_and_metadata_from_path("general/default/counter/step/1",
                                                  {"step": 0}, partial=True)
    assert part == {"step": 1}


def test_save_handles_are_awaitable(spec):
    job = Counter(spec)

    async def main():
        h = job.save_tree_and_metadata("a", job.state(), {"x": 1})
        reg = job.register("a")
        t = await h
        assert await reg == "a"
        return t

    assert asyncio.run(main()).state == "committed"
    assert Counter.latest(spec) == "a"


def test_async_save_tree_and_metadata_saves_a_job_checkpoint(spec):
    job = Counter(spec)
    job.set_retention(max_to_keep=1)

    async def main():
        job.w += 5
        h1 = await job.async_save_tree_and_metadata("a", job.state(), {"x": 1})
        await h1
        h2 = await job.async_save_tree_and_metadata_from_path(
            "general/default/counter/b", job.state(), {"x": 2}, mode="overlapped")
        await h2.snapshotted()
        return await h2

    assert asyncio.run(main()).state == "committed"
    assert job.get_metadata("a") == {"x": 1} and job.get_metadata("b") == {"x": 2}
    rebuilt, _ = Counter.from_checkpoint("a", spec, resume=True)
    assert type(rebuilt) is Counter and rebuilt.w.tolist() == [5] * 4


def test_restore_and_from_checkpoint_rebuild_the_registered_class(spec):
    job = SubCounter(spec, CounterConfig(steps=2, tags={"a": 1}))
    ckpt.job.run(job)
    job.runtime.drain()
    other = Counter(spec)
    other.restore("step/1")
    assert other.step == 1 and other.w.tolist() == [1] * 4
    rebuilt, config = Counter.from_checkpoint("step/2", spec, {"steps": 5, "optim": {"lr": 0.5}},
                                              resume=True)
    assert type(rebuilt) is SubCounter and rebuilt.step == 2
    assert config == CounterConfig(steps=5, tags={"a": 1}, optim=Optim(lr=0.5))
    assert rebuilt.spec.name == "counter"
    new_spec = ExecutionSpec.local(spec.cluster.checkpoints_dir, "fork")
    forked, _ = Counter.from_checkpoint_path("general/default/counter/step/2", new_spec,
                                             {"name": None})
    assert forked.spec.name == "fork" and forked.config.name is None
    assert forked.restored_from == "general/default/counter/step/2"


@pytest.mark.parametrize("cfg, words", [
    ({"nope": 1}, "unknown config key 'nope'"),
    ({"optim": {"lrr": 1}}, "unknown config key 'optim.lrr'"),
    ({"steps": "x"}, "config key 'steps': expected an integer"),
    ({"optim": {"betas": [1, "a"]}}, "config key 'optim.betas[1]'"),
    ({"steps": None}, "config key 'steps': null"),
])
def test_runtime_cfg_errors_name_the_key(spec, rt, cfg, words):
    ckpt.job.run(Counter(spec, CounterConfig(steps=1)))
    assert rt.drain().ok
    with pytest.raises(ckpt.InvalidArgumentError) as e:
        Counter.from_checkpoint("step/1", spec, cfg)
    assert words in str(e.value)


def test_paths_that_escape_are_refused(spec):
    job = Counter(spec)
    with pytest.raises(ckpt.PathEscapeError):
        job.save_tree_and_metadata_from_path("../outside", job.state(), {})
    with pytest.raises(ckpt.CheckpointError):
        job.save_tree_and_metadata("/abs", job.state(), {})
    with pytest.raises(ckpt.CheckpointError):
        job.get_metadata("latest")


# --- C++ train_loop <-> Python -----------------------------------------------------------------

@dataclass
class TrainConfig:  # examples/train_loop.cc's TrainConfig, member for member (configs are strict)
    steps: int = 2000
    save_every: int = 200
    state_mb: int = 64
    seed: int = 0
    mode: str = "sync"
    keep: int = 3
    lr: float = 0.05
    momentum: float = 0.9
    hidden: int = 64
    batch: int = 64
    sweep: bool = False


class TrainLoop(RestoreableJob[TrainConfig], key="train_loop"):
    def restore_from_path(self, rel_path):
        self.tree, self.metadata = self.get_tree_and_metadata_from_path(rel_path, None)


def train_loop(*args):
    exe = os.path.join(build_dir(), "examples", "train_loop")
    out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def digest(stdout):
    return re.search(r"final step=(\d+) digest=(\w+)", stdout).groups()


def test_cpp_checkpoints_are_listed_inspected_and_restored_by_python_and_back(tmp_path, rt):
    ckpt.set_default_runtime(rt)
    try:
        straight = digest(train_loop("--dir", str(tmp_path / "a"), "--steps", "30",
                                     "--save-every", "10", "--state-mb", "1"))
        train_loop("--dir", str(tmp_path / "b"), "--steps", "20", "--save-every", "10",
                   "--state-mb", "1")
        spec_b = ExecutionSpec.local(tmp_path / "b", "train_loop")
        assert TrainLoop.checkpoints(spec_b) == ["step/10", "step/20"]
        assert TrainLoop.latest(spec_b) == "step/20"
        job, config = TrainLoop.from_checkpoint("step/20", spec_b, resume=True)
        assert config.steps == 20 and config.state_mb == 1
        assert job.metadata["step"] == 20
        assert job.tree["params"]["w1"].shape == (32, 64) and job.tree["step"].dtype == np.int64
        assert isinstance(job.tree["pad"], list)

        # Python writes the C++ job's checkpoint; C++ resumes from it to the same digest. The
        # writer's Runtime holds the run directory's writer lease until it is closed.
        spec_c = ExecutionSpec.local(tmp_path / "c", "train_loop")
        with ckpt.Runtime() as writer:
            py_job = TrainLoop(spec_c, config, runtime=writer)
            py_job.save_tree_and_metadata("step/20", job.tree, job.metadata).result()
            py_job.register("step/20").result()
        out = train_loop("--dir", str(tmp_path / "c"), "--resume", "--steps", "30")
        assert "restored general/default/train_loop/step/20 (step 20" in out
        assert digest(out) == straight
    finally:
        ckpt.set_default_runtime(None)


class AsyncCounter(Counter, key="test_async_counter"):
    async def run(self):
        while self.step < self.args.steps:
            self.step += 1
            self.w += 1
            suffix = f"step/{self.step}"
            await self.save_tree_and_metadata(suffix, self.state(), {"step": self.step})
            await self.register(suffix)
        self.finish()


def test_an_async_run_awaits_its_saves_and_registrations(spec):
    job = AsyncCounter(spec, CounterConfig(steps=2))
    ckpt.job.run(job)
    assert job.done() and AsyncCounter.latest(spec) == "step/2"
    assert job.get_metadata("step/2") == {"step": 2}
