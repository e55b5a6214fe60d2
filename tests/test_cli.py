"""The command line, end to end: train, sample, experiment, and bad input (exit 2, one line, no --out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from wakesleep.cli import main

TINY = {
    "model": {
        "layers": [
            {"name": "z2", "family": "mog", "dim": 1, "means": [[3.0], [-3.0]], "std": 0.1, "learn": False},
            {"name": "z1", "family": "laplace", "dim": 2, "link": "softplus_linear"},
            {"name": "x", "family": "gaussian", "dim": 2, "link": "linear"},
        ]
    },
    "algorithm": {"name": "ddc_hm", "sleep_samples": 50, "features": 10, "recognition_hidden": 10},
    "train": {"epochs": 1, "batch_size": 50, "lr": 1.0e-3, "seed": 0, "device": "cpu", "log_every": 2, "threads": 1},
    "data": {"source": "model", "n": 200},
}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "wakesleep", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def write_config(tmp_path: Path, cfg: dict, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def assert_user_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_train_then_sample_end_to_end(tmp_path, capsys):
    cfg = write_config(tmp_path, TINY)
    out = tmp_path / "run"
    r = cli("train", "--config", str(cfg), "--out", str(out), "--set", "train.samples=10000")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        ".wakesleep",
        "checkpoint",
        "config.yaml",
        "metrics.jsonl",
        "model.safetensors",
        "samples.npz",
    ]
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["epochs"] == 1 and resolved["train"]["batch_size"] == 50
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 2, 4]
    x = np.load(out / "samples.npz")["x"]
    assert x.shape == (10000, 2) and np.isfinite(x).all()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp leftovers

    r = cli("sample", "--run", str(out), "-n", "123", "--out", str(tmp_path / "s.npz"))
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "s.npz")["x"].shape == (123, 2)

    # a second train into the same --out refuses (nothing overwritten) ...
    before = (out / "model.safetensors").read_bytes()
    rc = main(["train", "--config", str(cfg), "--out", str(out)])
    assert_user_error(rc, capsys.readouterr().err, "--out", "not empty")
    # ... unless --overwrite, which replaces it whole
    rc = main(
        [
            "train",
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--overwrite",
            "--set",
            "train.seed=5",
            "--set",
            "train.samples=10",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() != before
    assert np.load(out / "samples.npz")["x"].shape == (10, 2)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _bad_cases(tmp_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (argv, substrings the one-line error must contain)."""
    nan = np.random.default_rng(0).normal(size=(50, 2))
    nan[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=nan)
    np.savez(tmp_path / "inf.npz", x=np.full((10, 2), np.inf))
    np.savez(tmp_path / "cols.npz", x=np.zeros((50, 3)))
    good = write_config(tmp_path, TINY)

    def variant(name: str, **changes) -> str:
        cfg = json.loads(json.dumps(TINY))
        for key, value in changes.items():
            sec, field = key.split("__")
            cfg[sec][field] = value
        return str(write_config(tmp_path, cfg, name))

    layers_bad_family = json.loads(json.dumps(TINY["model"]["layers"]))
    layers_bad_family[1]["family"] = "laplac"
    layers_bad_dim = json.loads(json.dumps(TINY["model"]["layers"]))
    layers_bad_dim[2]["dim"] = -2
    layers_bad_link = json.loads(json.dumps(TINY["model"]["layers"]))
    layers_bad_link[2]["link"] = "quadratic"
    (tmp_path / "broken.yaml").write_text("model: {layers: [\n")
    return {
        "unknown key": (["--config", str(good), "--set", "train.lrr=1"], ["train.lrr", "c.yaml"]),
        "unknown key in file": (["--config", variant("k.yaml", train__epoch=3)], ["train.epoch", "k.yaml"]),
        "unknown family": (["--config", variant("f.yaml", model__layers=layers_bad_family)], ["family", "laplac"]),
        "unknown link": (["--config", variant("l.yaml", model__layers=layers_bad_link)], ["link", "quadratic"]),
        "non-positive dim": (["--config", variant("d.yaml", model__layers=layers_bad_dim)], ["dim", "-2"]),
        "nan data": (["--config", variant("n.yaml", data__source="file", data__path="nan.npz")], ["nan.npz", "NaN"]),
        "inf data": (["--config", variant("i.yaml", data__source="file", data__path="inf.npz")], ["inf.npz"]),
        "wrong columns": (
            ["--config", variant("w.yaml", data__source="file", data__path="cols.npz")],
            ["cols.npz", "3"],
        ),
        "missing data file": (
            ["--config", variant("m.yaml", data__source="file", data__path="nope.npz")],
            ["nope.npz"],
        ),
        "missing init file": (["--config", str(good), "--set", "model.init=absent.npz"], ["absent.npz"]),
        "missing config": (["--config", str(tmp_path / "absent.yaml")], ["absent.yaml"]),
        "bad yaml": (["--config", str(tmp_path / "broken.yaml")], ["broken.yaml", "YAML"]),
        "bad set": (["--config", str(good), "--set", "train.lr"], ["train.lr", "KEY=VALUE"]),
        "cuda": (["--config", str(good), "--set", "train.device=cuda:7"], ["train.device"]),
    }


BAD = [
    "unknown key",
    "unknown key in file",
    "unknown family",
    "unknown link",
    "non-positive dim",
    "nan data",
    "inf data",
    "wrong columns",
    "missing data file",
    "missing init file",
    "missing config",
    "bad yaml",
    "bad set",
]


@pytest.mark.parametrize("case", BAD + ["cuda"])
def test_train_bad_input_in_process(tmp_path, capsys, case):
    import torch

    if case == "cuda" and torch.cuda.device_count() > 7:
        pytest.skip("machine has the device")
    argv, needles = _bad_cases(tmp_path)[case]
    out = tmp_path / "out"
    before = set(os.listdir(tmp_path))
    rc = main(["train", *argv, "--out", str(out)])
    assert_user_error(rc, capsys.readouterr().err, *needles)
    assert not out.exists()
    assert set(os.listdir(tmp_path)) == before  # nothing half-written next to --out either


@pytest.mark.parametrize("case", ["unknown family", "nan data"])
def test_train_bad_input_subprocess(tmp_path, case):
    argv, needles = _bad_cases(tmp_path)[case]
    out = tmp_path / "out"
    r = cli("train", *argv, "--out", str(out))
    assert_user_error(r.returncode, r.stderr, *needles)
    assert not out.exists()


def test_sample_bad_input(tmp_path, capsys):
    rc = main(["sample", "--run", str(tmp_path / "nope"), "-n", "5", "--out", str(tmp_path / "s.npz")])
    assert_user_error(rc, capsys.readouterr().err, "nope")
    (tmp_path / "empty").mkdir()
    rc = main(["sample", "--run", str(tmp_path / "empty"), "-n", "5", "--out", str(tmp_path / "s.npz")])
    assert_user_error(rc, capsys.readouterr().err, "config.yaml")
    assert not (tmp_path / "s.npz").exists()


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--config"])
    assert info.value.code == 2
    assert_user_error(2, capsys.readouterr().err, "--config")
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert_user_error(2, capsys.readouterr().err, "frobnicate")


def test_experiment_registry_and_unknown(tmp_path, capsys):
    from wakesleep.experiments import EXPERIMENTS

    assert {"synthetic", "patches", "sbn", "gradient", "circle", "dynamics", "images", "ica"} <= set(EXPERIMENTS)
    rc = main(["experiment", "nope", "--out", str(tmp_path / "o")])
    assert_user_error(rc, capsys.readouterr().err, "nope", "synthetic")
    rc = main(["experiment", "synthetic", "--out", str(tmp_path / "o"), "--set", "experiment.bogus=1"])
    assert_user_error(rc, capsys.readouterr().err, "experiment.bogus")
    assert not (tmp_path / "o").exists()


def test_experiment_synthetic_tiny(tmp_path, capsys):
    out = tmp_path / "exp"
    rc = main(
        [
            "experiment",
            "synthetic",
            "--quick",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "train.max_iters=3",
            "--set",
            "data.n=300",
            "--set",
            "experiment.mmd_samples=300",
            "--set",
            "algorithm.sleep_samples=50",
            "--set",
            "algorithm.features=10",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    names = {p.name for p in out.iterdir()}
    assert {
        "results.json",
        "report.md",
        "samples.png",
        "config.yaml",
        "data_0.npz",
        "true_params_0.npz",
        "ddc_hm_0",
    } <= names
    res = json.loads((out / "results.json").read_text())
    ds = res["datasets"][0]
    assert res["quick"] is True
    assert ds["algorithms"]["ddc_hm"]["iterations"] == 3
    assert isinstance(ds["algorithms"]["ddc_hm"]["mmd"]["mmd2"], float)
    assert isinstance(ds["true_model"]["mmd2"], float)
    assert "MMD" in (out / "report.md").read_text()
    # the run directory is a valid `wakesleep train` config (paths relative to it)
    run = out / "ddc_hm_0"
    rc = main(["sample", "--run", str(run), "-n", "10", "--out", str(tmp_path / "s.npz")])
    assert rc == 0, capsys.readouterr().err


def test_synthetic_local_mmd_fallback_matches_eval_mmd():
    import torch

    from wakesleep.eval.mmd import mmd
    from wakesleep.experiments.synthetic import _local_mmd2, draw_true_params

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g, dtype=torch.float64)
    y = torch.randn(200, 2, generator=g, dtype=torch.float64) * 1.3
    assert _local_mmd2(x, y, 0.7, chunk=128) == pytest.approx(mmd(x, y, 0.7), rel=1e-9, abs=1e-12)

    from wakesleep.experiments import experiment_config
    from wakesleep.runs import build_model

    model = build_model(experiment_config("synthetic"))
    true = draw_true_params(model, 0)
    b = true["layers.z1.link.weight"]
    assert b.shape == (2, 1) and b[0, 0] > 0.5 and b[1, 0] < -0.5  # opposite signs: one sparse unit per component
    assert np.linalg.cond(true["layers.x.link.weight"]) < 10
    assert np.all((np.exp(true["layers.x.log_var"]) >= 0.01) & (np.exp(true["layers.x.log_var"]) <= 0.1))
