"""``wakesleep.eval.diagnose``: references against exact answers, the record, the command, errors."""

from __future__ import annotations

import argparse
import itertools
import json

import pytest
import torch

import wakesleep
from wakesleep import runs
from wakesleep.commands import diagnose as diagnose_command
from wakesleep.errors import WakesleepError
from wakesleep.eval.diagnose import diagnose, reference_posterior

from oracles import (
    build,
    cosine,
    enumerate_loglik,
    exact_gradient,
    linear_gaussian_config,
    linear_gaussian_loglik,
    linear_gaussian_posterior_mean,
    sbn_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_sbn():
    model = build(sbn_config([2, 4, 10], seed=3))
    torch.manual_seed(0)
    x = model.sample(7)[-1]
    return model, x


def brute_force_means(model, x):
    """E[z_l | x] by a loop over every configuration (no vectorised enumeration)."""
    dims = model.dims[:-1]
    log_w, values = [], []
    for bits in itertools.product([0.0, 1.0], repeat=sum(dims)):
        z = torch.tensor(bits, dtype=torch.float64)
        zs = list(torch.split(z, dims))
        with torch.no_grad():
            log_w.append(torch.stack([model.log_joint(xb[None], [v[None] for v in zs])[0] for xb in x]))
        values.append(zs)
    w = torch.softmax(torch.stack(log_w), 0)  # [C, B]
    return [sum(w[c][:, None] * values[c][i][None] for c in range(len(values))) for i in range(len(dims))]


def test_enumeration_reference_equals_brute_force():
    model, x = tiny_sbn()
    kind, grads, means, nll, ess = reference_posterior(model, x, "auto")
    assert kind == "enumerate"
    exact = exact_gradient(model, x, enumerate_loglik)
    for name, g in exact.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-10, atol=1e-12)
    for got, want in zip(means, brute_force_means(model, x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert nll == pytest.approx(float(-enumerate_loglik(model, x).detach().mean()), rel=1e-12)


def test_importance_reference_agrees_with_exact_linear_gaussian_posterior():
    model = build(linear_gaussian_config(dims=(1, 2, 3)))
    torch.manual_seed(4)
    x = model.sample(20)[-1]
    kind, grads, means, nll, _ = reference_posterior(model, x, "importance", importance_samples=200_000, seed=2)
    assert kind == "importance"
    want = linear_gaussian_posterior_mean(model, x)
    scale = float(want.std())
    assert float((means[1] - want).abs().max()) < 0.05 * scale
    exact = exact_gradient(model, x, linear_gaussian_loglik)
    for name, g in exact.items():
        if g.norm() > 1e-3:
            assert cosine(grads[name], g) > 0.99, name
    assert nll == pytest.approx(float(-linear_gaussian_loglik(model, x).detach().mean()), abs=0.05)


def test_diagnose_ddc_hm_on_tiny_sbn_is_accurate_and_valid():
    model, x = tiny_sbn()
    torch.manual_seed(1)
    algo = wakesleep.build_algorithm("ddc_hm", model, sleep_samples=3000, features=100, extra_stats="linear")
    for _ in range(2):
        algo.sleep()
    res = diagnose((model, algo), x, sleeps=1)
    assert res.reference == "enumerate" and res.points == 7 and res.settings["repeats"] == 1
    assert set(res.layers) == {"z2", "z1", "x"}
    assert all(row["reference_agreement"] == 1.0 for row in res.layers.values())
    assert res.layers["x"]["cosine"] > 0.9
    for row in res.posterior.values():
        assert row["mae"] < row["mae_constant_guess"]
        assert 0.0 <= row["invalid_fraction"] <= 1.0
    assert json.loads(json.dumps(res.to_dict()))["reference"] == "enumerate"
    assert any(line.startswith("grad x: cosine") for line in res.lines())


def test_diagnose_ais_reports_two_references(monkeypatch):
    model, x = tiny_sbn()
    monkeypatch.setattr("wakesleep.eval.references.MAX_CONFIGURATIONS", 4)  # too many to enumerate: AIS
    algo = wakesleep.build_algorithm("ddc_hm", model, sleep_samples=500, features=20)
    res = diagnose((model, algo), x, chains=8, temperatures=50, repeats=2)
    assert res.reference == "ais" and len(res.reference_nll) == 2
    assert all(-1.0 <= row["reference_agreement"] <= 1.0 for row in res.layers.values())
    assert all(row["mae_reference_agreement"] is not None for row in res.posterior.values())


def test_invalid_expectations_are_counted():
    model = build(linear_gaussian_config(dims=(1, 2, 3)))
    x = model.sample(5)[-1]

    class Fake:  # negative variances for z1, valid ones for z2
        def sleep(self):
            return {}

        def wake_gradient(self, x):
            return {k: torch.zeros_like(p) for k, p in model.named_parameters()}

        def posterior_mean(self, x):
            return {"z2": torch.zeros(5, 1, dtype=x.dtype), "z1": torch.ones(5, 2, dtype=x.dtype)}

        def expectation(self, x, layer, fn):
            return torch.ones(5, model.dims[model.latent_names.index(layer)], dtype=x.dtype) * (
                0.5 if layer == "z1" else 2.0
            )

    res = diagnose((model, Fake()), x, reference="importance", importance_samples=1000, repeats=1)
    assert res.posterior["z1"]["invalid_fraction"] == 1.0
    assert res.posterior["z2"]["invalid_fraction"] == 0.0


def test_command_on_a_run_directory(tmp_path):
    cfg = {
        "model": sbn_config([2, 3, 6], seed=1),
        "algorithm": {
            "name": "ddc_hm",
            "sleep_samples": 200,
            "features": 10,
            "recognition": "deep",
            "recognition_steps": 5,
        },
        "train": {"epochs": 2, "batch_size": 10, "seed": 0, "samples": 10, "sleep_every": 2},
        "data": {"source": "model", "n": 40, "seed": 1},
    }
    run = runs.prepare(runs.as_spec(cfg))
    run.fit(tmp_path / "run", progress=False)
    parser = argparse.ArgumentParser()
    diagnose_command.add_arguments(parser)
    out = tmp_path / "d.json"
    args = parser.parse_args(["--run", str(tmp_path / "run"), "--points", "5", "--out", str(out)])
    assert diagnose_command.run(args) == 0
    record = json.loads(out.read_text())
    assert record["reference"] == "enumerate" and record["points"] == 5
    assert set(record["posterior"]) == {"z2", "z1"}


def test_load_trained_restores_the_checkpointed_algorithm_state(tmp_path):
    """runs.load_trained: the trained model and the algorithm with its last checkpoint's state (here DDC-HM's
    running recognition statistics); a state that does not fit the config's algorithm is a one-line error."""
    cfg = {
        "model": sbn_config([2, 3, 6], seed=1),
        "algorithm": {"name": "ddc_hm", "sleep_samples": 100, "features": 6},
        "train": {"epochs": 2, "batch_size": 10, "seed": 0, "samples": 10, "checkpoint_every": 4},
        "data": {"source": "model", "n": 40, "seed": 1},
    }
    run = runs.prepare(runs.as_spec(cfg))
    run.fit(tmp_path / "run", progress=False)
    _, model, algo = runs.load_trained(tmp_path / "run")
    saved = algo.state_dict()
    assert any(k.startswith("recognizer_fit.") for k in saved)
    own = run.algorithm.state_dict()
    for k in saved:
        assert torch.equal(saved[k], own[k]), k
    for (na, pa), (nb, pb) in zip(model.state_dict().items(), run.model.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb), na
    config = tmp_path / "run" / "config.yaml"
    config.write_text(config.read_text().replace("features: 6", "features: 7"))
    with pytest.raises(WakesleepError, match="checkpoint"):
        runs.load_trained(tmp_path / "run")


def test_errors_are_one_line(tmp_path):
    model, x = tiny_sbn()
    algo = wakesleep.build_algorithm("ddc_hm", model, sleep_samples=100, features=5)
    with pytest.raises(WakesleepError, match="reference"):
        diagnose((model, algo), x, reference="exact")
    with pytest.raises(WakesleepError, match="x must be"):
        diagnose((model, algo), x[:, :3])
    with pytest.raises(WakesleepError, match="x is needed"):
        diagnose((model, algo))
    with pytest.raises(WakesleepError, match="not found"):
        diagnose(tmp_path / "missing")
    with pytest.raises(WakesleepError, match="repeats"):
        diagnose((model, algo), x, repeats=0)
    with pytest.raises(WakesleepError, match="enumerate"):
        reference_posterior(build(linear_gaussian_config()), x[:, :4], "enumerate")


def test_reference_expectations_of_statistics_match_the_means():
    model, x = tiny_sbn()
    square = [lambda z: torch.cat([z, 2.0 * z], -1)] * 2
    for kind, opts in (("enumerate", {}), ("importance", {"importance_samples": 5000})):
        got_kind, _, means, _, _, expect = reference_posterior(model, x, kind, statistics=square, **opts)
        assert got_kind == kind
        for e, m in zip(expect, means, strict=True):
            torch.testing.assert_close(e, torch.cat([m, 2.0 * m], -1), rtol=1e-10, atol=1e-12)
    with pytest.raises(WakesleepError, match="one per latent layer"):
        reference_posterior(model, x, "enumerate", statistics=square[:1])


def test_wake_gradient_with_the_recognitions_own_representation_is_unchanged():
    model, x = tiny_sbn()
    torch.manual_seed(2)
    algo = wakesleep.build_algorithm("ddc_hm", model, sleep_samples=500, features=20)
    algo.sleep()
    plain = algo.wake_gradient(x)
    given = algo.wake_gradient(x, representation=algo.recognise(x))
    for k, v in plain.items():
        torch.testing.assert_close(given[k], v, rtol=0, atol=0)
    # T at the sleep samples is what the regressions were fitted on
    feats = algo.encoding_functions(algo._samples[1], "z1")
    torch.testing.assert_close(feats, algo._feats[1], rtol=0, atol=0)
    with pytest.raises(WakesleepError, match="representation must be 2 tensors"):
        algo.wake_gradient(x, representation=algo.recognise(x)[:1])


def test_a_perfect_recognition_gives_the_exact_gradient_when_the_features_span_the_latent_space():
    """With K >> 2^D_l random features every function of a small binary layer is linear in T, so with the exact
    posterior's E[T | x] the regressions of eqs. 31-35 return the exact gradient up to sleep-sample noise."""
    model, x = tiny_sbn()
    torch.manual_seed(3)
    algo = wakesleep.build_algorithm("ddc_hm", model, sleep_samples=20000, features=60, grad_ridge=1e-8)
    res = diagnose((model, algo), x, sleeps=1)
    for name, row in res.layers.items():
        assert row["cosine_exact_recognition"] > 0.995, (name, row)
    for row in res.posterior.values():
        assert 0.0 <= row["recognition_unexplained"]
    assert any("with a perfect recognition" in line for line in res.lines())
