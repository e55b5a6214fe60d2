"""`wakesleep experiment sbn|patches --out DIR --resume`: interrupted runs are kept as DIR.partial and continued."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_user_error
from test_experiments_paper import TINY_PATCHES

import wakesleep.runs as wtrain
from wakesleep.cli import main
from wakesleep.experiments import run_experiment

pytestmark = pytest.mark.usefixtures("one_thread")

PATCHES = [*TINY_PATCHES, "train.log_every=1", "train.checkpoint_every=2"]


def sbn_sets(root: Path) -> list[str]:
    """Tiny SBN settings on fake 28 x 28 MNIST files in ``root`` (Fashion-MNIST may be absent)."""
    from wakesleep.data import write_idx

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 60), ("t10k", 30)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, size=n, dtype=np.uint8))
    return [
        "data.source=mnist",
        f"data.root={root}",
        "experiment.datasets=[mnist]",
        "data.n=60",
        "data.n_test=30",
        "train.batch_size=20",
        "train.max_iters=3",
        "train.threads=1",
        "algorithm.sleep_samples=50",
        "algorithm.features=10",
        "algorithm.recognition_hidden=20",
        "model.layers=[{name: z2, family: bernoulli, dim: 5}, {name: z1, family: bernoulli, dim: 8, link: linear},"
        " {name: x, family: bernoulli, dim: 784, link: linear}]",
        "experiment.mmd_samples=30",
        "experiment.nll_k=4",
        "experiment.nll_points=5",
        "experiment.proposal_steps=2",
        "experiment.ais_points=3",
        "experiment.ais_chains=2",
        "experiment.ais_temperatures=5",
        "experiment.algorithms=[ddc_hm, {name: vimco, label: vimco_k50, k: 3}]",
    ]


def count_training(monkeypatch, fail_at: int | None = None, interrupt_step: int | None = None) -> list:
    """Record ``(run directory name, resume_from)`` of every ``train_from_config`` call.

    ``fail_at``: the n-th call raises RuntimeError before training; ``interrupt_step``: that call is interrupted
    (KeyboardInterrupt) when it logs this iteration instead.
    """
    real = getattr(wtrain.train_from_config, "real", wtrain.train_from_config)  # never wrap a wrapper
    calls: list = []

    def fake(config, out_dir=None, *args, **kwargs):
        calls.append((Path(out_dir).name, kwargs.get("resume_from")))
        if fail_at is not None and len(calls) == fail_at:
            if interrupt_step is None:
                raise RuntimeError("simulated crash")

            def stop(trainer, record):
                if record["step"] == interrupt_step:
                    raise KeyboardInterrupt

            kwargs["callback"] = stop
        return real(config, out_dir, *args, **kwargs)

    fake.real = real
    monkeypatch.setattr(wtrain, "train_from_config", fake)
    return calls


@pytest.fixture(scope="module")
def patches_reference(tmp_path_factory) -> dict:
    """An uninterrupted run of the tiny patches settings."""
    return run_experiment("patches", tmp_path_factory.mktemp("ref") / "out", overrides=PATCHES, progress=False)


def test_patches_crash_in_second_entry_then_resume(tmp_path, monkeypatch, capsys, patches_reference):
    out = tmp_path / "out"
    partial = tmp_path / "out.partial"
    calls = count_training(monkeypatch, fail_at=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment("patches", out, overrides=PATCHES, progress=False)
    err = capsys.readouterr().err
    assert not out.exists() and partial.is_dir()
    assert len(err.strip().splitlines()) == 1 and "out.partial" in err and "--resume" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.partial"]  # no staging directory left over
    first = partial / "d3_2" / "ddc_hm"
    assert (first / "done.json").is_file() and not (partial / "d3_2" / "iwae_k50" / "done.json").exists()
    model_bytes = (first / "model.safetensors").read_bytes()
    metrics = (first / "metrics.jsonl").read_text()

    calls = count_training(monkeypatch)
    import wakesleep.eval.compare as patches_mod

    real_ais, ais_calls = patches_mod.model_ais_nll, []
    monkeypatch.setattr(patches_mod, "model_ais_nll", lambda *a, **k: ais_calls.append(1) or real_ais(*a, **k))
    rc = main(["experiment", "patches", "--out", str(out), "--resume", "--no-progress", *_sets(PATCHES)])
    assert rc == 0, capsys.readouterr().err
    assert [c[0] for c in calls] == ["iwae_k50"]  # the finished entry was not trained again
    assert len(ais_calls) == 1  # nor its AIS likelihood computed again (saved with its evaluation)
    assert out.is_dir() and not partial.exists()
    assert (out / "d3_2" / "ddc_hm" / "model.safetensors").read_bytes() == model_bytes
    assert (out / "d3_2" / "ddc_hm" / "metrics.jsonl").read_text() == metrics
    res = json.loads((out / "results.json").read_text())
    rel, ref = res["architectures"][0]["relative_test"], patches_reference["architectures"][0]["relative_test"]
    for key in ("mmd2_y", "mmd2_z", "p_value"):
        assert rel[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-15), key
    assert res["architectures"][0]["algorithms"]["ddc_hm"]["iterations"] == 4
    ref_ais = patches_reference["architectures"][0]["algorithms"]["ddc_hm"]["ais_nll"]
    assert res["architectures"][0]["algorithms"]["ddc_hm"]["ais_nll"]["nll"] == pytest.approx(ref_ais["nll"])


def test_patches_interrupt_mid_training_resumes_from_checkpoint(tmp_path, monkeypatch, capsys, patches_reference):
    out = tmp_path / "out"
    partial = tmp_path / "out.partial"
    calls = count_training(monkeypatch, fail_at=2, interrupt_step=3)  # checkpoint at step 2 (checkpoint_every)
    with pytest.raises(KeyboardInterrupt):
        run_experiment("patches", out, overrides=PATCHES, progress=False)
    assert "--resume" in capsys.readouterr().err
    state = json.loads((partial / "d3_2" / "iwae_k50" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2

    calls = count_training(monkeypatch)
    res = run_experiment("patches", out, overrides=PATCHES, progress=False, resume=True)
    assert len(calls) == 1 and calls[0][0] == "iwae_k50" and calls[0][1] is not None  # continued, not restarted
    arch = res["architectures"][0]
    assert arch["algorithms"]["iwae_k50"]["iterations"] == 4
    rel, ref = arch["relative_test"], patches_reference["architectures"][0]["relative_test"]
    assert rel["mmd2_y"] == pytest.approx(ref["mmd2_y"], rel=1e-12, abs=1e-15)  # IWAE resumes bit for bit
    assert rel["mmd2_z"] == pytest.approx(ref["mmd2_z"], rel=1e-12, abs=1e-15)
    steps = [json.loads(line)["step"] for line in (out / "d3_2" / "iwae_k50" / "metrics.jsonl").open()]
    assert steps == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("binarize", ["fixed-seed0", "dynamic"])
def test_sbn_crash_then_resume_keeps_first_entry_results(tmp_path, monkeypatch, capsys, binarize):
    sets = [*sbn_sets(tmp_path / "mnist"), f"data.binarize={binarize}"]
    reference = run_experiment("sbn", tmp_path / "ref", overrides=sets, progress=False)
    out = tmp_path / "out"
    count_training(monkeypatch, fail_at=2)
    with pytest.raises(RuntimeError):
        run_experiment("sbn", out, overrides=sets, progress=False)
    capsys.readouterr()
    done_file = tmp_path / "out.partial" / "mnist" / "ddc_hm" / "done.json"
    done = json.loads(done_file.read_text())
    assert set(done["evaluation"]) == {"nll", "ais_nll"}  # the long evaluation is saved with the entry
    done["evaluation"]["mmd2"] = 0.5  # as saved by older versions: superseded by the sample tests
    done_file.write_text(json.dumps(done))

    calls = count_training(monkeypatch)
    import wakesleep.eval.compare as patches_mod

    real_ais, ais_calls = patches_mod.model_ais_nll, []
    monkeypatch.setattr(patches_mod, "model_ais_nll", lambda *a, **k: ais_calls.append(1) or real_ais(*a, **k))
    res = run_experiment("sbn", out, overrides=sets, progress=False, resume=True)
    assert [c[0] for c in calls] == ["vimco_k50"]
    assert len(ais_calls) == 1  # ddc_hm's AIS estimate was saved with its entry and reused
    ds, ref = res["datasets"][0], reference["datasets"][0]
    for label in ("ddc_hm", "vimco_k50"):  # AIS is seeded: the same estimates as the uninterrupted run
        assert ds["algorithms"][label]["ais_nll"]["log_px"] == pytest.approx(
            ref["algorithms"][label]["ais_nll"]["log_px"], rel=1e-9
        )
    assert "mmd2" not in ds["algorithms"]["ddc_hm"]
    assert ds["algorithms"]["ddc_hm"]["nll"]["nll"] == pytest.approx(ref["algorithms"]["ddc_hm"]["nll"]["nll"])
    assert ds["algorithms"]["vimco_k50"]["nll"]["proposal"] == "own recognition model"
    for name, test in ds["sample_tests"]["tests"].items():  # redrawn samples of the reloaded model: the same tests
        want = ref["sample_tests"]["tests"][name]
        assert test["mmd2"] == pytest.approx(want["mmd2"], rel=1e-9, abs=1e-15)
        assert test["valid"] == want["valid"]


def test_sbn_reloaded_entry_evaluates_with_its_own_proposal(tmp_path, monkeypatch, capsys):
    """An entry trained but not yet evaluated is reloaded (model and proposal) and evaluated as after training."""
    sets = sbn_sets(tmp_path / "mnist")
    sets[-1] = "experiment.algorithms=[{name: vimco, label: vimco_k50, k: 3}, ddc_hm]"
    reference = run_experiment("sbn", tmp_path / "ref", overrides=sets, progress=False)
    out = tmp_path / "out"
    count_training(monkeypatch, fail_at=2)
    with pytest.raises(RuntimeError):
        run_experiment("sbn", out, overrides=sets, progress=False)
    capsys.readouterr()
    done_file = tmp_path / "out.partial" / "mnist" / "vimco_k50" / "done.json"
    done = json.loads(done_file.read_text())
    done.pop("evaluation")  # as if interrupted during its evaluation
    done_file.write_text(json.dumps(done))
    calls = count_training(monkeypatch)
    res = run_experiment("sbn", out, overrides=sets, progress=False, resume=True)
    assert [c[0] for c in calls] == ["ddc_hm"]
    got, want = res["datasets"][0]["algorithms"]["vimco_k50"], reference["datasets"][0]["algorithms"]["vimco_k50"]
    assert got["nll"]["proposal"] == "own recognition model"
    assert got["nll"]["nll"] == pytest.approx(want["nll"]["nll"], rel=1e-12)
    mmd2 = res["datasets"][0]["sample_tests"]["tests"]["quadratic"]["mmd2"]
    assert mmd2 == pytest.approx(reference["datasets"][0]["sample_tests"]["tests"]["quadratic"]["mmd2"], rel=1e-9)


def _sets(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def test_resume_user_errors_write_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    rc = main(["experiment", "patches", "--out", str(out), "--resume", *_sets(PATCHES)])
    assert_user_error(rc, capsys.readouterr().err, "--resume", "out.partial", "not found")
    assert list(tmp_path.iterdir()) == []

    rc = main(["experiment", "synthetic", "--out", str(out), "--resume"])
    assert_user_error(rc, capsys.readouterr().err, "--resume", "sbn", "patches")
    assert list(tmp_path.iterdir()) == []

    count_training(monkeypatch, fail_at=1)
    with pytest.raises(RuntimeError):
        run_experiment("patches", out, overrides=PATCHES, progress=False)
    capsys.readouterr()
    partial = tmp_path / "out.partial"
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert partial.is_dir() and not out.exists()

    changed = [s if not s.startswith("experiment.mmd_samples") else "experiment.mmd_samples=50" for s in PATCHES]
    rc = main(["experiment", "patches", "--out", str(out), "--resume", *_sets(changed)])
    assert_user_error(rc, capsys.readouterr().err, "experiment.mmd_samples")
    rc = main(["experiment", "patches", "--out", str(out), "--resume", "--quick", *_sets(PATCHES)])
    assert_user_error(rc, capsys.readouterr().err, "differs")
    # a fresh run would lose the kept one: refused until it is resumed or removed
    rc = main(["experiment", "patches", "--out", str(out), *_sets(PATCHES)])
    assert_user_error(rc, capsys.readouterr().err, "out.partial", "--resume")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_user_error_before_training_leaves_nothing(tmp_path, monkeypatch, capsys):
    calls = count_training(monkeypatch)
    out = tmp_path / "out"
    rc = main(["experiment", "patches", "--out", str(out), *_sets([*PATCHES, "experiment.baseline=nope"])])
    assert_user_error(rc, capsys.readouterr().err, "nope")
    bad_data = [*sbn_sets(tmp_path / "m"), f"data.root={tmp_path / 'missing'}"]
    rc = main(["experiment", "sbn", "--out", str(out), *_sets(bad_data)])
    assert_user_error(rc, capsys.readouterr().err, "missing")
    assert calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no out, no out.partial, no staging directory


def test_entry_stopped_between_training_and_done_marker_is_not_retrained(
    tmp_path, monkeypatch, capsys, patches_reference
):
    out = tmp_path / "out"
    count_training(monkeypatch, fail_at=2)
    with pytest.raises(RuntimeError):
        run_experiment("patches", out, overrides=PATCHES, progress=False)
    capsys.readouterr()
    first = tmp_path / "out.partial" / "d3_2" / "ddc_hm"
    for name in ("done.json", "model.safetensors", "samples.npz"):  # only the final checkpoint was written
        (first / name).unlink()
    calls = count_training(monkeypatch)
    res = run_experiment("patches", out, overrides=PATCHES, progress=False, resume=True)
    assert [c[0] for c in calls] == ["iwae_k50"]
    assert (out / "d3_2" / "ddc_hm" / "model.safetensors").is_file() and (
        out / "d3_2" / "ddc_hm" / "done.json"
    ).is_file()
    arch = res["architectures"][0]
    assert arch["algorithms"]["ddc_hm"]["iterations"] == 4
    ref = patches_reference["architectures"][0]["relative_test"]
    assert arch["relative_test"]["mmd2_z"] == pytest.approx(ref["mmd2_z"], rel=1e-12, abs=1e-15)


def test_finished_entry_that_no_longer_fits_is_a_user_error(tmp_path, monkeypatch, capsys):
    """A finished entry whose saved state does not fit what its config now builds (e.g. an option whose default
    meaning changed between versions) gives one line naming the checkpoint, not a traceback."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "out"
    count_training(monkeypatch, fail_at=2)
    with pytest.raises(RuntimeError):
        run_experiment("patches", out, overrides=PATCHES, progress=False)
    capsys.readouterr()
    ckpt = tmp_path / "out.partial" / "d3_2" / "ddc_hm" / "checkpoint"
    weights = next(p for p in ckpt.iterdir() if p.suffix == ".safetensors" and "model" in p.name)
    state = load_file(weights)
    state["layers.x.link.weight"] = state["layers.x.link.weight"][:, :-1].contiguous()  # a different D1
    save_file(state, weights)
    count_training(monkeypatch)
    rc = main(["experiment", "patches", "--out", str(out), "--resume", "--no-progress", *_sets(PATCHES)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]  # after the line saying where the unfinished run is kept
    assert last.startswith("error:") and "ddc_hm/checkpoint" in last and "does not fit" in last, err
    assert (tmp_path / "out.partial").is_dir() and not out.exists()
