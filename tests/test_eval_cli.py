"""``wakesleep evaluate --run DIR``: eval.json and plots for a (tiny) trained run."""

import json
from pathlib import Path

import numpy as np
import pytest

from wakesleep.cli import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    argv = [
        "train",
        "--config",
        str(CONFIG),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "train.max_iters=20",
        "--set",
        "train.log_every=5",
        "--set",
        "data.n=400",
    ]
    assert main(argv) == 0
    return out


def test_evaluate_writes_eval_json_and_plots(run_dir, capsys):
    argv = [
        "evaluate",
        "--run",
        str(run_dir),
        "--metrics",
        "mmd,nll,plots,posterior",
        "--n-samples",
        "300",
        "--nll-points",
        "10",
        "--k",
        "50",
        "--proposal-steps",
        "20",
        "--posterior-samples",
        "10",
    ]
    assert main(argv) == 0
    assert "eval.json" in capsys.readouterr().out
    res = json.loads((run_dir / "eval.json").read_text())
    assert res["mmd"]["n_data"] == 300 and res["mmd"]["bandwidth"] > 0
    assert np.isfinite(res["mmd"]["mmd2"])
    assert np.isfinite(res["nll"]["nll"]) and res["nll"]["k"] == 50 and res["nll"]["method"] == "proposal"
    assert "not tractable" in res["nll"]["exact"]  # Laplace latents with a softplus link
    assert len(res["posterior"]["mean"]) == 3
    for name in ("samples.png", "learning_curves.png", "posterior.png"):
        assert (run_dir / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_with_data_file(run_dir, tmp_path):
    data = tmp_path / "ref.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(50, 2)))
    assert main(["evaluate", "--run", str(run_dir), "--data", str(data), "--metrics", "mmd"]) == 0
    res = json.loads((run_dir / "eval.json").read_text())
    assert res["mmd"]["n_data"] == 50 and "nll" not in res


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--metrics", "mmd,fid"], "unknown metric 'fid'"),
        (["--k", "0"], "--k: must be a positive integer"),
        (["--bandwidth", "wide"], "--bandwidth: must be a number"),
        (["--image-shape", "3x3"], "--image-shape: 3x3 = 9 pixels, the data have 2 columns"),
    ],
)
def test_evaluate_bad_input(run_dir, capsys, extra, message):
    assert main(["evaluate", "--run", str(run_dir), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:") and err.count("\n") == 1


def test_evaluate_bad_data_file(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((5, 3)))
    assert main(["evaluate", "--run", str(run_dir), "--data", str(bad), "--metrics", "mmd"]) == 2
    assert "data has 3 columns" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path / "missing")]) == 2
