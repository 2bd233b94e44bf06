"""SaveHandle / RegisterHandle: asyncio, blocking waits, callbacks, overlapped mode, failures."""
import asyncio
import logging
import os
import threading
import time

import numpy as np
import pytest

import ckpt


def state(mb=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal(mb << 17).astype(np.float64), "step": seed}


def test_saves_awaited_concurrently_with_gather(rt, tmp_path):
    async def main():
        handles = [rt.save(tmp_path / f"c{i}", state(1, i), {"i": i}) for i in range(4)]
        return await asyncio.gather(*handles)

    timings = asyncio.run(main())
    assert [t.state for t in timings] == ["committed"] * 4
    assert all(t.durable >= t.snapshot >= 0 and t.bytes > 0 for t in timings)
    for i in range(4):
        back, meta = rt.restore(tmp_path / f"c{i}")
        assert meta == {"i": i} and back["step"] == i


def test_await_raises_the_save_error(rt, tmp_path):
    (tmp_path / "file").write_text("x")

    async def main():
        await rt.save(tmp_path / "file" / "c", state(1))

    with pytest.raises(ckpt.CheckpointError) as e:
        asyncio.run(main())
    assert "file" in str(e.value)
    assert rt.drain().ok  # observed by the await: not reported again


def test_result_done_and_timeout(rt, tmp_path):
    h = rt.save(tmp_path / "c", state(1))
    t = h.result(timeout=30)
    assert h.done() and t.state == "committed" and h.state == "committed"
    assert t.stall > 0 and t.durable >= t.stall
    reg = rt.register(tmp_path, "c")
    assert reg.result(timeout=30) == "c"
    assert (tmp_path / "latest").read_text().strip() == "c"


def test_result_timeout_raises_timeout_error(rt, tmp_path):
    # 64 MiB to copy, write and fsync: not durable microseconds after an overlapped save starts.
    h = rt.save(tmp_path / "c", {"w": np.ones(8 << 20)}, mode="overlapped")
    with pytest.raises(TimeoutError, match="not finished after 0 s"):
        h.result(timeout=0)
    assert h.result(timeout=60).state == "committed"


def test_add_done_callback_runs_with_the_handle(rt, tmp_path):
    got = []
    ev = threading.Event()
    h = rt.save(tmp_path / "c", state(1))
    h.add_done_callback(lambda handle: (got.append(handle.state), ev.set()))
    assert ev.wait(30)
    assert got == ["committed"]


def test_overlapped_save_returns_before_the_copy_and_snapshotted_gates_mutation(rt, tmp_path):
    s = state(8)
    expected = s["w"].copy()
    h = rt.save(tmp_path / "c", s, mode="overlapped")
    h.wait_snapshotted()
    s["w"][:] = -1  # allowed from here on
    h.result(timeout=30)
    back, _ = rt.restore(tmp_path / "c")
    assert np.array_equal(back["w"], expected)

    async def main():
        h2 = rt.save(tmp_path / "d", s, mode="overlapped")
        await h2.snapshotted()
        return await h2

    assert asyncio.run(main()).state == "committed"


def test_overlapped_save_keeps_the_arrays_alive_when_dropped(rt, tmp_path):
    rt.save(tmp_path / "c", {"w": np.full(1 << 20, 3.0)}, mode="overlapped")  # handle dropped
    import gc
    gc.collect()
    assert rt.drain().ok
    back, _ = rt.restore(tmp_path / "c")
    assert (back["w"] == 3.0).all()


def test_fire_and_forget_failures_are_logged_and_reported_by_drain(rt, tmp_path, caplog):
    (tmp_path / "file").write_text("x")
    with caplog.at_level(logging.WARNING, logger="ckpt"):
        rt.save(tmp_path / "file" / "c", state(1))  # dropped
        report = rt.drain()
    assert not report.ok and report.failed == 1 and "file" in report.errors[0]
    assert any(r.name == "ckpt" and r.levelno >= logging.ERROR and "file" in r.getMessage()
               for r in caplog.records)
    assert rt.drain().ok  # reported once


def test_register_of_a_failed_save_fails_and_latest_stays(rt, tmp_path):
    rt.save(tmp_path / "good", state(1)).result()
    rt.register(tmp_path, "good").result()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x").write_text("")  # bad/x exists as a file: bad/x/c cannot be made
    h = rt.save(tmp_path / "bad" / "x" / "c", state(1), run_dir=tmp_path)
    reg = rt.register(tmp_path, "bad/x/c")
    with pytest.raises(ckpt.CheckpointError):
        reg.result(timeout=30)
    with pytest.raises(ckpt.CheckpointError):
        h.result()
    assert (tmp_path / "latest").read_text().strip() == "good"


def test_path_escape_and_bad_suffix_raise_at_once(rt, tmp_path):
    with pytest.raises(ckpt.CheckpointError) as e:
        rt.register(tmp_path, "../x")
    assert e.value.code in ("path_escape", "invalid_argument")


class Spinner:
    """A Python thread counting ticks: it only advances while nobody holds the GIL long."""

    def __enter__(self):
        self.ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin)
        self._thread.start()
        return self

    def _spin(self):
        while not self._stop.is_set():
            self.ticks += 1
            time.sleep(0.0005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def progressed_during(call, attempts=3):
    """Whether a spinning Python thread ticked at least 3 times during call(). Held through the
    call, the GIL would let it tick at most once or twice at the boundaries; a loaded machine may
    starve it of CPU too, so a few attempts are allowed."""
    for _ in range(attempts):
        with Spinner() as s:
            n0 = s.ticks
            call()
            n1 = s.ticks
        if n1 - n0 >= 3:
            return True
    return False


def test_the_gil_is_released_while_a_save_copies_and_waits(rt, tmp_path):
    big = {"w": np.ones(64 << 17)}  # 64 MiB: the copy and the write take a while
    assert progressed_during(lambda: rt.save(tmp_path / "c", big).result(timeout=60)), \
        "the other thread made no progress while the save copied and waited"


def test_skip_backpressure_gives_a_skipped_state(tmp_path):
    with ckpt.Runtime(staging_budget=4 << 20, backpressure="skip") as rt:
        s = state(3)
        h1 = rt.save(tmp_path / "a", s, mode="overlapped")
        h2 = rt.save(tmp_path / "b", s, mode="overlapped")  # h1 still holds 3 of the 4 MiB
        assert h2.result(timeout=30).state == "skipped"
        assert h1.result(timeout=30).state == "committed"
        assert not (tmp_path / "b").exists()


def test_closed_runtime_refuses_work(tmp_path):
    rt = ckpt.Runtime()
    rt.close()
    rt.close()
    with pytest.raises(ckpt.InvalidArgumentError, match="closed"):
        rt.save(tmp_path / "c", {"a": np.ones(1)})


def test_every_errc_maps_to_its_class():
    from ckpt import errors
    expected = {"io": errors.CheckpointIOError, "no_space": errors.NoSpaceError,
                "not_found": errors.NotFoundError, "corrupt": errors.CorruptError,
                "unsupported": errors.UnsupportedError,
                "invalid_argument": errors.InvalidArgumentError,
                "mismatch": errors.MismatchError, "path_escape": errors.PathEscapeError,
                "timeout": errors.IOTimeoutError, "cancelled": errors.CancelledError,
                "skipped": errors.SkippedError, "busy": errors.BusyError}
    for code, cls in expected.items():
        e = errors._make(code, "m", "/p", 5)
        assert type(e) is cls and e.code == code and e.path == "/p" and e.errno == 5
        assert isinstance(e, ckpt.CheckpointError)
    assert isinstance(errors._make("timeout", "m"), TimeoutError)
    assert isinstance(errors._make("no_space", "m"), ckpt.CheckpointIOError)


def test_a_run_directory_held_by_another_process_raises_busy_naming_its_pid(tmp_path):
    import subprocess
    import sys
    holder = subprocess.Popen(
        [sys.executable, "-c", "import ckpt, sys, time\n"
         "rt = ckpt.Runtime(); rt.claim_run_dir(sys.argv[1]); print('held', flush=True)\n"
         "time.sleep(60)", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with ckpt.Runtime(lock_wait=0.1) as rt:
            with pytest.raises(ckpt.BusyError, match=str(holder.pid)):
                rt.claim_run_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()


def test_the_gil_is_released_while_a_restore_reads(rt, tmp_path):
    rt.save(tmp_path / "c", {"w": np.ones(96 << 17)}).result()
    templ = {"w": np.zeros(96 << 17)}
    assert progressed_during(lambda: rt.restore(tmp_path / "c", templ)), \
        "the other thread made no progress while the restore read"


def test_a_runtime_that_writes_after_the_copy_saves_what_the_call_saw(tmp_path):
    with ckpt.Runtime(write_during_copy=False, unit_bytes=1 << 20) as rt:
        s = state(8, 3)
        h = rt.save(tmp_path / "c", s, {"step": 3})
        s["w"][:] = 0  # the copy is done when save() returns, even if no write has started
        assert h.result(60).state == "committed"
        back, meta = rt.restore(tmp_path / "c")
    assert meta == {"step": 3}
    np.testing.assert_array_equal(back["w"], state(8, 3)["w"])


def test_unknown_runtime_options_are_refused():
    with pytest.raises(ckpt.InvalidArgumentError, match="unknown Runtime option 'bogus'"):
        ckpt.Runtime(bogus=1)
    with pytest.raises(ckpt.InvalidArgumentError, match="backpressure"):
        ckpt.Runtime(backpressure="maybe")


def test_async_save_waits_for_staging_without_blocking_the_event_loop(tmp_path):
    # The first save holds 56 of the 64 MiB of staging until its units are written; the second
    # needs 16, so its admission waits (block backpressure) while the loop's ticker goes on.
    budget, mib = 64 << 20, 1 << 20
    big, small = {"w": np.ones(7 << 20)}, {"w": np.full(2 << 20, 2.0)}

    async def attempt(rt, k):
        h1 = rt.save(tmp_path / f"a{k}", big, mode="overlapped")
        in_use = rt.stats()["staging_in_use"]
        ticks = 0
        task = asyncio.ensure_future(rt.async_save(tmp_path / f"b{k}", small, {"k": k}))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0)
        h2 = task.result()
        assert isinstance(h2, ckpt.SaveHandle)
        await h1
        return in_use, ticks, await h2

    with ckpt.Runtime(staging_budget=budget, backpressure="block", copy_threads=1) as rt:
        for k in range(3):  # a fast disk may free the staging before the second save asks
            in_use, ticks, t2 = asyncio.run(attempt(rt, k))
            assert t2.state == "committed"
            back, meta = rt.restore(tmp_path / f"b{k}")
            assert meta == {"k": k} and (back["w"] == 2.0).all()
            if in_use + 16 * mib > budget and ticks >= 3:
                break
        else:
            pytest.fail(f"no attempt waited for staging: in use {in_use}, {ticks} loop ticks")


def test_async_save_errors_and_overlapped_handles(rt, tmp_path):
    async def main():
        with pytest.raises(ckpt.UnsupportedError, match="w"):  # refused at the call
            await rt.async_save(tmp_path / "x", {"w": np.array([object()])})
        (tmp_path / "file").write_text("x")
        with pytest.raises(ckpt.CheckpointError):  # fails in the pipeline, raised by await
            await (await rt.async_save(tmp_path / "file" / "c", state(1)))
        s = state(2)
        h = await rt.async_save(tmp_path / "o", s, mode="overlapped")
        await h.snapshotted()
        expected = s["w"].copy()
        s["w"][:] = -1
        await h
        return expected

    expected = asyncio.run(main())
    assert not (tmp_path / "x").exists()
    back, _ = rt.restore(tmp_path / "o")
    assert np.array_equal(back["w"], expected)
    assert rt.drain().ok


def test_close_waits_for_an_async_save_still_waiting_for_staging(tmp_path):
    rt = ckpt.Runtime(staging_budget=16 << 20, backpressure="block", copy_threads=1)
    big, small = {"w": np.ones(7 << 18)}, {"w": np.full(1 << 19, 2.0)}  # 14 and 4 MiB

    async def main():
        rt.save(tmp_path / "a", big, mode="overlapped")  # holds most of the staging
        task = asyncio.ensure_future(rt.async_save(tmp_path / "b", small))
        await asyncio.sleep(0)  # the task has asked for staging
        rt.close()  # waits for that admission, then drains both saves
        return await task

    h = asyncio.run(main())
    assert h.result(timeout=30).state == "committed"
    with ckpt.Runtime() as other:
        back, _ = other.restore(tmp_path / "b")
    assert (back["w"] == 2.0).all()
