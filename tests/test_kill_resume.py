"""A first ``wakesleep train`` killed at a random point resumes to the tensors of an uninterrupted run.

For every algorithm a real process is stopped: by SIGKILL at a random moment after its first checkpoint (it
may be writing one), or by SIGTERM / SIGINT (the trainer writes a checkpoint at the next sleep phase and exits
with 128 + the signal). ``train --resume --out DIR`` then continues the kept ``DIR.partial``; the finished
run's ``model.safetensors`` and final checkpoint must equal, byte for byte and tensor for tensor, those of a
run that was never stopped.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from wakesleep.cli import main
from wakesleep.io import load_tensors

ALGORITHMS = {
    "ddc_hm": {"sleep_samples": 40, "features": 8, "recognition_hidden": 8},
    "wake_sleep": {},
    "rws": {"k": 3},
    "vimco": {"k": 3},
    "bbvi": {"k": 3},
    "al_ws": {"sleep_samples": 40},
}
CONTINUOUS = {"vae": {}, "iwae": {"k": 3}, "flow": {}}
#: every run also writes TensorBoard event files when it can (their bytes hold wall times: not compared)
TENSORBOARD = importlib.util.find_spec("tensorboardX") is not None

SBN = [
    {"name": "z2", "family": "bernoulli", "dim": 3},
    {"name": "z1", "family": "bernoulli", "dim": 3, "link": "linear"},
    {"name": "x", "family": "bernoulli", "dim": 6, "link": "linear"},
]
GAUSS = [
    {"name": "z1", "family": "gaussian", "dim": 2},
    {"name": "x", "family": "gaussian", "dim": 4, "link": "linear"},
]


def config(tmp_path: Path, name: str, options: dict, layers: list) -> Path:
    cfg = {
        "model": {"layers": layers, "dtype": "float64", "seed": 0},
        "algorithm": {"name": name, **options},
        "train": {
            "epochs": 12,
            "batch_size": 20,
            "lr": 1e-2,
            "seed": 1,
            "log_every": 10,
            "checkpoint_every": 1,
            "samples": 50,
            "threads": 1,
            "tensorboard": TENSORBOARD,
        },
        "data": {"source": "model", "n": 60},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(cfg: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "wakesleep", "train", "--config", str(cfg), "--out", str(out), "--no-progress"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, partial: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (partial / "checkpoint" / "state.json").is_file():
        if proc.poll() is not None:
            pytest.fail(f"training ended before its first checkpoint: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint within the time limit")
        time.sleep(0.01)


def assert_same_run(a: Path, b: Path) -> None:
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    for name in ("model.safetensors", "rng.safetensors"):
        ta, tb = load_tensors(a / "checkpoint" / name), load_tensors(b / "checkpoint" / name)
        assert ta.keys() == tb.keys() and all((ta[k] == tb[k]).all() for k in ta), name
    for name in ("algorithm.safetensors",):
        if (a / "checkpoint" / name).exists():
            assert (a / "checkpoint" / name).read_bytes() == (b / "checkpoint" / name).read_bytes()
    assert (a / "samples.npz").read_bytes() == (b / "samples.npz").read_bytes()


CASES = [(n, o, SBN) for n, o in ALGORITHMS.items()] + [(n, o, GAUSS) for n, o in CONTINUOUS.items()]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options", "layers"), CASES, ids=[c[0] for c in CASES])
def test_killed_first_run_resumes_to_identical_tensors(tmp_path, capsys, name, options, layers):
    cfg = config(tmp_path, name, options, layers)
    reference = tmp_path / "reference"
    assert main(["train", "--config", str(cfg), "--out", str(reference), "--no-progress"]) == 0

    rng = random.Random(f"{name}-kill")
    how = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT][[c[0] for c in CASES].index(name) % 3]
    out = tmp_path / "run"
    proc = start(cfg, out)
    wait_for_checkpoint(proc, tmp_path / "run.partial")
    time.sleep(rng.uniform(0.0, 0.05))
    proc.send_signal(how)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # finished before the signal arrived: nothing to resume, and nothing lost
        assert_same_run(reference, out)
        return
    if how != signal.SIGKILL:
        assert proc.returncode == 128 + how, err
        assert "stopped: training stopped by" in err and "Traceback" not in err
    assert not out.exists() and (tmp_path / "run.partial").is_dir()

    capsys.readouterr()
    rc = main(["train", "--config", str(cfg), "--out", str(out), "--resume", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert out.is_dir() and not (tmp_path / "run.partial").exists()
    assert_same_run(reference, out)
    if TENSORBOARD:  # the killed run's event file and the resumed run's (none if it only had to write the end)
        assert 1 <= len(list((out / "tensorboard").glob("events.out.tfevents.*"))) <= 2


def test_resume_refuses_a_changed_seed(tmp_path, capsys):
    cfg = config(tmp_path, "rws", {"k": 2}, SBN)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", "--set", "train.epochs=1"]) == 0
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    rc = main(["train", "--config", str(cfg), "--out", str(out), "--resume", "--set", "train.seed=5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error:") == 1 and "train.seed" in err
    assert sorted(p.name for p in out.iterdir()) == before


def test_identical_seeded_runs_write_identical_files(tmp_path, capsys):
    """Every file but the wall-clock ones (metrics.jsonl, the checkpoint's state.json, TensorBoard's event files)."""
    cfg = config(tmp_path, "ddc_hm", ALGORITHMS["ddc_hm"], SBN)
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert main(["train", "--config", str(cfg), "--out", str(run), "--no-progress", "--set", "train.epochs=2"]) == 0
        time.sleep(1.1)  # a different second: time stamps inside files would show
    files = sorted(str(p.relative_to(runs[0])) for p in runs[0].rglob("*") if p.is_file())
    assert "samples.npz" in files and "checkpoint/algorithm.safetensors" in files
    for name in files:
        if name in ("metrics.jsonl", "checkpoint/state.json") or name.startswith("tensorboard/"):
            continue
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
