"""``wakesleep plot`` and :func:`wakesleep.eval.curves.plot_learning_curves`: learning curves from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wakesleep.cli import main
from wakesleep.errors import WakesleepError
from wakesleep.eval import curves

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(path: Path, n: int = 5, *, extra: dict | None = None, partial_line: bool = False) -> Path:
    """A run directory with a hand-written metrics.jsonl (as the Trainer writes it)."""
    path.mkdir(parents=True)
    lines = []
    for i in range(n):
        row = {"step": 10 * i, "epoch": i / 2, "seconds": 0.1 * i, "mean_gap": 1.0 / (i + 1), "cov_gap": 0.5 / (i + 1)}
        if i:
            row["grad_norm"] = 2.0 + i
            row["sleep/ridge"] = None  # non-finite numbers are written as null
        row.update(extra or {})
        lines.append(json.dumps(row) + "\n")
    text = "".join(lines) + ('{"step": 99, "cov' if partial_line else "")
    (path / "metrics.jsonl").write_text(text)
    return path


def drawn(monkeypatch) -> list:
    """Capture what plot_learning_curves hands to the drawing: (target, keys, labels, runs)."""
    calls: list = []
    real = curves.draw_curves

    def spy(target, keys, labels, runs):
        calls.append((target, keys, labels, runs))
        return real(target, keys, labels, runs)

    monkeypatch.setattr(curves, "draw_curves", spy)
    return calls


def test_one_run_default_metrics_and_file(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", partial_line=True)  # a run still writing its last line
    calls = drawn(monkeypatch)
    out = curves.plot_learning_curves(run)
    assert out == run / "curves.png" and out.read_bytes().startswith(PNG) and curves.written_here(out)
    target, keys, labels, rows = calls[0]
    assert keys == ["mean_gap", "cov_gap", "grad_norm", "sleep/ridge"]  # not step, epoch, seconds
    assert labels == ["run"] and [r["step"] for r in rows[0]] == [0, 10, 20, 30, 40]


def test_several_runs_overlaid_with_labels_from_their_names(tmp_path, monkeypatch):
    a = make_run(tmp_path / "a" / "ddc_hm")
    b = make_run(tmp_path / "b" / "ddc_hm", extra={"recognition/bound": -3.0})
    c = make_run(tmp_path / "vae.partial", n=2)
    calls = drawn(monkeypatch)
    out = curves.plot_learning_curves([a, b, c], ["cov_gap", "recognition/bound", "epoch"], tmp_path / "all.png")
    assert out.read_bytes().startswith(PNG)
    _, keys, labels, _ = calls[0]
    assert keys == ["cov_gap", "recognition/bound", "epoch"]
    assert labels == ["a/ddc_hm", "b/ddc_hm", "vae.partial"]  # the names repeat: paths from the common parent
    assert curves._labels([Path("x/r1"), Path("y/r2.partial")]) == ["r1", "r2"]


def test_library_errors_name_the_setting(tmp_path):
    run = make_run(tmp_path / "run")
    cases = [
        (lambda: curves.plot_learning_curves(tmp_path / "nope"), "run_dirs"),
        (lambda: curves.plot_learning_curves([run, run]), "out"),
        (lambda: curves.plot_learning_curves(run, ["nope"]), "metrics"),
        (lambda: curves.plot_learning_curves(run, out=tmp_path / "x.jpg"), "out"),
    ]
    for call, setting in cases:
        with pytest.raises(WakesleepError) as info:
            call()
        assert info.value.setting == setting and "\n" not in str(info.value)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["plot", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(err: str, *parts: str) -> None:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for part in parts:
        assert part in err, err


def test_cli_draws_one_run_and_several(tmp_path, capsys):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    rc, out, _ = cli(capsys, "--run", str(a))
    assert rc == 0 and out.strip() == f"wrote {a / 'curves.png'}"
    rc, out, _ = cli(
        capsys, "--run", str(a), "--run", str(b), "--metric", "cov_gap,grad_norm", "--out", str(tmp_path / "c.png")
    )
    assert rc == 0 and (tmp_path / "c.png").read_bytes().startswith(PNG)


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    (tmp_path / "started.partial").mkdir()
    rc, _, err = cli(capsys, "--run", str(tmp_path / "missing"))
    assert rc == 2
    one_error(err, "--run", "missing", "run directory not found")
    rc, _, err = cli(capsys, "--run", str(tmp_path / "started"))
    one_error(err, "started.partial")
    rc, _, err = cli(capsys, "--run", str(tmp_path / "empty"))
    assert rc == 2
    one_error(err, "--run", "no metrics.jsonl")
    rc, _, err = cli(capsys, "--run", str(run), "--metric", "bogus")
    assert rc == 2
    one_error(err, "--metric 'bogus'", "available: epoch, seconds, mean_gap, cov_gap, grad_norm, sleep/ridge")
    rc, _, err = cli(capsys, "--run", str(run), "--run", str(run))
    assert rc == 2
    one_error(err, "--out", "required")
    rc, _, err = cli(capsys, "--run", str(run), "--out", str(tmp_path / "c.pdf"))
    assert rc == 2
    one_error(err, "--out", ".png")
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


def test_cli_replaces_only_its_own_file_and_only_when_asked(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert cli(capsys, "--run", str(run))[0] == 0
    mine = (run / "curves.png").read_bytes()
    rc, _, err = cli(capsys, "--run", str(run))
    assert rc == 2
    one_error(err, "--out", "exists", "--overwrite")
    assert cli(capsys, "--run", str(run), "--overwrite", "--metric", "cov_gap")[0] == 0
    assert (run / "curves.png").read_bytes() != mine  # redrawn
    theirs = tmp_path / "theirs.png"
    theirs.write_bytes(PNG + b"a picture somebody made")
    rc, _, err = cli(capsys, "--run", str(run), "--out", str(theirs), "--overwrite")
    assert rc == 2
    one_error(err, "--out", "not written by wakesleep")
    assert theirs.read_bytes() == PNG + b"a picture somebody made"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "theirs.png"]  # no temporary file left
