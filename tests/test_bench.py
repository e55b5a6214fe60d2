"""``wakesleep bench``: typed settings, checks before anything is written, staged output (issue 17)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from wakesleep.bench import BenchSettings
from wakesleep.cli import main
from wakesleep.errors import WakesleepError
from wakesleep.outdirs import read_marker

FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
needs_fashion = pytest.mark.skipif(not os.path.exists(FASHION), reason="dataset-fashion-mnist not installed")

#: a benchmark of seconds: 40 training images, tiny DDC-HM, few samples everywhere
TINY = [
    "--n=40",
    "--threads=1",
    "--mmd-samples=50",
    "--curve-samples=30",
    "--evals=2",
    "--nll-k=3",
    "--nll-points=3",
    "--proposal-steps=2",
    "--algorithms=ddc_hm",
    "--set=algorithm.sleep_samples=60",
    "--set=algorithm.features=10",
    "--set=algorithm.recognition_hidden=20",
    "--set=data.n_test=100",
    "--set=train.batch_size=20",
]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_settings_validate_and_round_trip():
    s = BenchSettings(algorithms=("ddc_hm",), overrides=("train.lr=1e-3",), n=40, timeout=5.0)
    assert s.validate() is s
    assert BenchSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.config_overrides() == ["train.lr=1e-3", "data.n=40"]
    with pytest.raises(WakesleepError, match=r"^ais_points: must be a non-negative integer, got -1$") as info:
        BenchSettings(ais_points=-1).validate()
    assert info.value.setting == "ais_points" and info.value.detail.startswith("must be")
    with pytest.raises(WakesleepError, match="unknown key"):
        BenchSettings.from_dict({"epochz": 1})


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--epochs=0"], "--epochs: must be a positive integer, got 0"),
        (["--ais-points=-1"], "--ais-points: must be a non-negative integer"),
        (["--ais-chains=0"], "--ais-chains: must be a positive integer"),
        (["--mmd-samples=0"], "--mmd-samples: must be a positive integer"),
        (["--nll-k=0"], "--nll-k: must be a positive integer"),
        (["--proposal-steps=-2"], "--proposal-steps: must be a non-negative integer"),
        (["--threads=0"], "--threads: must be a positive integer"),
        (["--n=0"], "--n: must be a positive integer"),
        (["--timeout=-1"], "--timeout: must be a positive number"),
        (["--device=gpu"], "--device: must be 'cpu', 'cuda' or 'cuda:N'"),
        (["--algorithms=nope"], "--algorithms: 'nope' is not a label of experiment.algorithms"),
        (["--algorithms=,"], "--algorithms: empty"),
        (["--set=train.lrr=1"], "unknown key 'train.lrr'"),
        (["--set=data.root=/nonexistent/fashion"], "/nonexistent/fashion"),  # missing data
    ],
)
def test_bad_values_exit_2_and_write_nothing(tmp_path, capsys, extra, needle):
    out = tmp_path / "b"
    rc = main(["bench", "sbn", "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err and needle in err, err
    assert _leftovers(tmp_path) == []  # neither --out nor a staging directory


def test_existing_output_is_not_replaced_without_overwrite(tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["bench", "sbn", "--out", str(out), "--epochs=1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _leftovers(out) == ["mine.txt"] and _leftovers(tmp_path) == ["b"]


@needs_fashion
def test_failed_entry_is_recorded_and_output_is_staged(tmp_path, capsys):
    """An entry that fails (here: timed out at once) gets an error row, the run exits 1, and --out appears
    complete, with the marker, and without the per-entry hand-over files."""
    out = tmp_path / "b"
    assert main(["bench", "sbn", "--out", str(out), *TINY, "--timeout=0.01"]) == 1
    captured = capsys.readouterr()
    assert "failed: timed out" in captured.out
    res = json.loads((out / "bench.json").read_text())
    assert res["algorithms"] == {"ddc_hm": {"error": "timed out after 0.01 s"}}
    assert res["independent_pixels"] is None and res["command"].startswith("wakesleep ")
    assert (read_marker(out) or {}).get("complete") is True
    assert _leftovers(out) == [".wakesleep", "bench.json", "bench.md"]
    assert _leftovers(tmp_path) == ["b"]


@needs_fashion
def test_bench_end_to_end_one_algorithm(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bench", "sbn", "--out", str(out), *TINY]) == 0
    assert "| ddc_hm (sleep every 20) |" in capsys.readouterr().out
    res = json.loads((out / "bench.json").read_text())
    row = res["algorithms"]["ddc_hm"]
    assert row["iterations"] == 2 and row["n_train"] == 40 and row["gflop_solver"] > 0 and row["threads"] == 1
    assert res["independent_pixels"]["mmd2"] > 0
    assert _leftovers(out) == [".wakesleep", "bench.json", "bench.md", "ddc_hm_samples.png"]
    assert (out / "ddc_hm_samples.png").read_bytes()[:4] == b"\x89PNG"
