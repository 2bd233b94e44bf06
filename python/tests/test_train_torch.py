"""examples/train_torch.py killed with SIGKILL at random moments and resumed until done prints
the digest of the run never interrupted."""
import os
import random
import re
import signal
import subprocess
import sys
import time

from conftest import source_dir

ARGS = ["--model", "transformer", "--optim", "adamw", "--steps", "60", "--save-every", "3",
        "--width", "32", "--batch", "4"]


def script():
    return os.path.join(source_dir(), "examples", "train_torch.py")


def run_to_end(*args):
    out = subprocess.run([sys.executable, script(), *args], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def final(stdout):
    lines = stdout.strip().splitlines()
    assert re.fullmatch(r"throughput steps_per_s=[0-9.]+", lines[-2]), lines[-2:]
    return re.fullmatch(r"final step=(\d+) digest=([0-9a-f]+)", lines[-1]).groups()


def test_killed_at_random_and_resumed_it_prints_the_uninterrupted_digest(tmp_path):
    # The reference: never interrupted, overlapped mode, no periodic saves (saves do not change
    # the training, so every mode and cadence reaches the same digest).
    out = run_to_end("--dir", str(tmp_path / "straight"), *ARGS, "--mode", "overlapped",
                     "--save-every", "0")
    straight = final(out)
    assert straight[0] == "60"
    steps_per_s = float(re.search(r"throughput steps_per_s=([0-9.]+)", out).group(1))
    train_s = 60 / steps_per_s  # how long training lasts here, start-up aside
    assert os.listdir(tmp_path / "straight" / "general" / "default" / "train_torch" / "step") == \
        ["60"]

    rng = random.Random(int(os.environ.get("CKPT_KILL_SEED", "12345")))
    d = str(tmp_path / "killed")
    kills = hits = 0
    while kills < 3:
        p = subprocess.Popen([sys.executable, script(), "--dir", d, "--resume", *ARGS],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # Kill once training runs (imports take seconds), at a random moment in the first half of
        # an uninterrupted run's training time.
        for line in p.stdout:
            if line.startswith("train_torch:"):
                break
        time.sleep(rng.uniform(0.0, 0.5 * train_s))
        if p.poll() is None:
            hits += 1
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        p.stdout.close()
        kills += 1
    assert hits >= 2, f"only {hits} of {kills} kills hit a running job"
    resumed = final(run_to_end("--dir", d, "--resume", *ARGS))
    print(f"kills={kills} hits={hits} digest={resumed[1]} uninterrupted={straight[1]}")
    assert resumed == straight, (resumed, straight)
