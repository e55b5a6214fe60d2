"""Trainer loop, recognition-optimiser ownership, NaN guard, checkpoints, and the atomic file helpers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from wakesleep import build_model, outdirs
from wakesleep import io as wio
from wakesleep.algorithms.base import Algorithm
from wakesleep.errors import WakesleepError
from wakesleep.runs import load_data, train_from_config
from wakesleep.spec import resolve_config
from wakesleep.training import Trainer, TrainingDiverged

LAYERS = [
    {"name": "z2", "family": "mog", "dim": 1, "means": [[3.0], [-3.0]], "std": 0.1, "learn": False},
    {"name": "z1", "family": "laplace", "dim": 2, "link": "softplus_linear"},
    {"name": "x", "family": "gaussian", "dim": 2, "link": "linear"},
]


def tiny_model():
    return build_model({"layers": LAYERS, "dtype": "float64"})


class ExactGaussianAlgo(Algorithm):
    """A stand-in: gradient of log p(x) for a model whose only parameter is a mean (tests the loop)."""

    def __init__(self, model, nan_at=None):
        super().__init__(model)
        self.calls = {"sleep": 0, "wake": 0, "rec": 0}
        self.nan_at = nan_at
        self.rec = torch.nn.Linear(2, 1).double()

    def sleep(self):
        self.calls["sleep"] += 1
        return {"sleep_metric": 1.5}

    def wake_gradient(self, x):
        self.calls["wake"] += 1
        out = {}
        for name, p in self.model.named_parameters():
            g = torch.full_like(p, 0.1)
            if self.nan_at is not None and self.calls["wake"] >= self.nan_at:
                g = g * float("nan")
            out[name] = g
        return out

    def recognition_parameters(self):
        return list(self.rec.parameters())

    def step_recognition(self, x):
        self.calls["rec"] += 1
        # the algorithm computes its loss and fills .grad; the Trainer owns the optimiser and steps it
        for p in self.rec.parameters():
            assert p.grad is None, "the Trainer zeroes recognition grads before step_recognition"
        loss = (self.rec(x) ** 2).mean()
        loss.backward()
        return {"loss": float(loss.detach())}


def test_trainer_loop_counts_and_direction(tmp_path):
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec_before = None
    algo = ExactGaussianAlgo(model)
    rec_before = [p.detach().clone() for p in algo.rec.parameters()]
    x = model.sample(50)[-1]
    tr = Trainer(
        algo,
        epochs=2,
        batch_size=20,
        lr=1e-2,
        sleep_every=2,
        log_every=2,
        out_dir=tmp_path,
        checkpoint_every=3,
        monitor_samples=100,
        progress=False,
    )
    tr.fit(x)
    # 50 points, batch 20 -> 3 iterations per epoch, 6 in all; sleep at iterations 0, 2, 4
    assert tr.n_iter_ == 6 and algo.calls["wake"] == 6 and algo.calls["rec"] == 6
    assert algo.calls["sleep"] == 3
    # the wake gradient is +0.1 everywhere: Adam must *increase* every parameter (ascent)
    for n, p in model.named_parameters():
        assert torch.all(p > before[n]), n
    # the recognition parameters were stepped by the Trainer's optimiser
    assert tr.recognition_optimizer_ is not None
    assert any(not torch.equal(a, b) for a, b in zip(rec_before, algo.rec.parameters(), strict=True))
    recs = wio.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [0, 2, 4, 6]
    assert recs == tr.history_
    for r in recs[1:]:
        keys = {"epoch", "seconds", "grad_norm", "mean_gap", "cov_gap", "sleep/sleep_metric", "recognition/loss"}
        assert keys <= set(r)
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 6


def test_max_iters_caps():
    model = tiny_model()
    algo = ExactGaussianAlgo(model)
    tr = Trainer(algo, epochs=100, batch_size=10, max_iters=4, monitor_samples=0, progress=False)
    tr.fit(model.sample(40)[-1])
    assert tr.n_iter_ == 4 and tr.history_[-1]["step"] == 4


def test_nan_guard_stops_with_clear_error():
    model = tiny_model()
    algo = ExactGaussianAlgo(model, nan_at=3)
    tr = Trainer(algo, epochs=5, batch_size=10, monitor_samples=0, progress=False)
    with pytest.raises(TrainingDiverged, match=r"step 3: the wake gradient of 'layers\.") as info:
        tr.fit(model.sample(40)[-1])
    assert isinstance(info.value, WakesleepError)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was not applied


class WakeAwareAlgo(ExactGaussianAlgo):
    """``step_recognition`` takes ``wake``: the Trainer passes the object ``wake_gradient`` returned."""

    def __init__(self, model):
        super().__init__(model)
        self.returned, self.received = [], []

    def wake_gradient(self, x):
        grads = super().wake_gradient(x)
        self.returned.append(grads)
        return grads

    def step_recognition(self, x, *, wake=None):
        self.received.append(wake)
        return super().step_recognition(x)


def test_step_recognition_gets_the_wake_gradient_when_it_takes_wake():
    model = tiny_model()
    algo = WakeAwareAlgo(model)
    Trainer(algo, epochs=1, batch_size=10, monitor_samples=0, progress=False).fit(model.sample(30)[-1])
    assert len(algo.received) == 3 and all(a is b for a, b in zip(algo.returned, algo.received, strict=True))


def test_ddc_hm_end_to_end_from_config(tmp_path):
    cfg = resolve_config(
        {
            "model": {"layers": LAYERS},
            "algorithm": {"name": "ddc_hm", "sleep_samples": 50, "features": 10, "recognition_hidden": 10},
            "train": {"epochs": 1, "batch_size": 25, "lr": 1e-2, "log_every": 2, "dtype": "float64", "samples": 300},
            "data": {"source": "model", "n": 100},
        }
    )
    model, algo, tr, x = train_from_config(cfg, tmp_path, progress=False)
    assert x.shape == (100, 2) and x.dtype == torch.float64
    assert tr.n_iter_ == 4
    for name in ("config.yaml", "metrics.jsonl", "model.safetensors", "samples.npz"):
        assert (tmp_path / name).is_file(), name
    assert np.load(tmp_path / "samples.npz")["x"].shape == (300, 2)
    # model.safetensors round-trips
    other = build_model({"layers": LAYERS, "dtype": "float64"})
    wio.load_safetensors(other, tmp_path / "model.safetensors")
    for (n, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_data_from_true_params(tmp_path):
    model = tiny_model()
    true = {"layers.x.log_var": np.full(2, np.log(1e-4))}
    np.savez(tmp_path / "true.npz", **true)
    cfg = resolve_config(
        {
            "model": {"layers": LAYERS, "dtype": "float64"},
            "data": {"source": "model", "n": 2000, "true_params": str(tmp_path / "true.npz")},
        }
    )
    x1 = load_data(cfg, model)
    cfg["data"]["true_params"] = None
    x2 = load_data(cfg, model)
    # same seed, same latents: the difference is the observation noise only (variance 1 vs 1e-4)
    assert float((x1 - x2).var()) == pytest.approx(1.0, rel=0.15)
    assert torch.equal(load_data(cfg, model), x2)  # reproducible


def test_load_params_npz_errors(tmp_path):
    model = tiny_model()
    np.savez(tmp_path / "bad_name.npz", **{"layers.x.nope": np.zeros(2)})
    with pytest.raises(WakesleepError, match=r"bad_name.npz: unknown parameter 'layers.x.nope'"):
        wio.load_params_npz(model, tmp_path / "bad_name.npz")
    np.savez(tmp_path / "bad_shape.npz", **{"layers.x.log_var": np.zeros(3)})
    with pytest.raises(WakesleepError, match=r"bad_shape.npz: parameter 'layers.x.log_var' has shape \(3,\)"):
        wio.load_params_npz(model, tmp_path / "bad_shape.npz")
    np.savez(tmp_path / "ok.npz", **{"layers.x.log_var": np.array([0.5, -0.5])})
    wio.load_params_npz(model, tmp_path / "ok.npz")
    assert model.layers["x"].log_var.tolist() == [0.5, -0.5]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "f.json"
    wio.save_json(target, {"a": 1})
    with pytest.raises(RuntimeError), wio.atomic_write(target, "w") as fh:
        fh.write("partial")
        raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["f.json"]
    wio.save_json(tmp_path / "g.json", {"x": float("nan"), "t": torch.tensor([1.0, 2.0])})
    assert json.loads((tmp_path / "g.json").read_text()) == {"x": None, "t": [1.0, 2.0]}


def test_staged_dir(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), outdirs.staged_dir(out) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError
    assert os.listdir(tmp_path) == []
    with outdirs.staged_dir(out) as tmp:
        (tmp / "a.txt").write_text("x")
        assert not out.exists()
    assert sorted(os.listdir(out)) == [".wakesleep", "a.txt"] and os.listdir(tmp_path) == ["run"]
    with pytest.raises(WakesleepError, match="not empty"):
        outdirs.check_output_dir(out)
    with outdirs.staged_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("y")
    assert sorted(os.listdir(out)) == [".wakesleep", "b.txt"] and os.listdir(tmp_path) == ["run"]
