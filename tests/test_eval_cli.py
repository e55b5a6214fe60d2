"""``wakesleep evaluate --run DIR``: eval.json and plots for a (tiny) trained run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

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
    assert "data have 3 columns" in capsys.readouterr().err  # wakesleep.data.check_observations
    assert main(["evaluate", "--run", str(tmp_path / "missing")]) == 2


def _copy_run(run_dir, dest):
    import shutil

    return Path(shutil.copytree(run_dir, dest))


def _scale_observation_weights(run: Path, factor: float) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(run / "model.safetensors")
    state["layers.x.link.weight"] = state["layers.x.link.weight"] * factor
    save_file(state, run / "model.safetensors")


def test_evaluate_source_model_run_compares_with_its_training_data(run_dir, tmp_path):
    """A ``data: {source: model}`` run is compared with the data it trained on (drawn again exactly as training
    drew them from the initial model), not with samples of the trained model itself: a model whose observation
    weights are multiplied by 10 scores a much larger MMD^2 than the trained one."""
    from wakesleep import runs
    from wakesleep.eval.run import training_data
    from wakesleep.spec import RunSpec

    # the regenerated data are exactly those runs.prepare gave the Trainer
    spec = RunSpec.load(run_dir / "config.yaml")
    _, model = runs.load_run(run_dir)
    x, _, source = training_data(run_dir, model)
    assert torch.equal(x, runs.prepare(spec).data) and x.shape == (400, 2) and "drawn again" in source

    argv = ["--metrics", "mmd", "--n-samples", "400"]
    trained = _copy_run(run_dir, tmp_path / "trained")
    assert main(["evaluate", "--run", str(trained), *argv]) == 0
    scaled = _copy_run(run_dir, tmp_path / "scaled")
    _scale_observation_weights(scaled, 10.0)
    assert main(["evaluate", "--run", str(scaled), *argv]) == 0
    good = json.loads((trained / "eval.json").read_text())
    bad = json.loads((scaled / "eval.json").read_text())
    assert good["data"] == "run" and "source model" in good["data_source"]
    assert bad["mmd"]["mmd2"] > 10 * max(good["mmd"]["mmd2"], 1e-3), (good["mmd"], bad["mmd"])
    assert bad["mmd"]["mmd2"] > 5 * (good["mmd"]["std"] + bad["mmd"]["std"])


def _snapshot(run: Path) -> dict[str, bytes | None]:
    """Every entry of the run directory (hidden ones included), with the bytes of each file."""
    return {p.name: p.read_bytes() if p.is_file() else None for p in sorted(run.iterdir())}


def test_evaluate_nan_parameter_is_an_error_naming_the_tensor(run_dir, tmp_path, capsys):
    run = _copy_run(run_dir, tmp_path / "nan")
    _scale_observation_weights(run, float("nan"))
    before = _snapshot(run)
    assert main(["evaluate", "--run", str(run), "--metrics", "mmd,plots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "layers.x.link.weight" in err, err
    assert _snapshot(run) == before


def test_evaluate_failure_writes_nothing_into_the_run(run_dir, tmp_path, capsys):
    """Everything is computed before anything is written: a failure late in the evaluation (here the learning
    curves of an unreadable metrics.jsonl, plotted after the MMD and the samples) leaves the run as it was."""
    run = _copy_run(run_dir, tmp_path / "broken")
    (run / "metrics.jsonl").write_text("{not json\n")
    before = _snapshot(run)
    rc = main(["evaluate", "--run", str(run), "--metrics", "mmd,plots", "--n-samples", "100"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "line 1 is not JSON" in err, err
    assert _snapshot(run) == before  # no eval.json, no plots, no staging directory left
