"""DDC-HM's learned encoding functions (``learn_features``, issue 16 item 4)."""

from __future__ import annotations

import pytest
import torch

import wakesleep
from wakesleep.algorithms.ddc_hm.learned import random_directions, sketched_targets
from wakesleep.errors import WakesleepError
from wakesleep.training import Trainer

from oracles import assert_same_training_state, build, linear_gaussian_config, sbn_config, tiny_patch_model_config

pytestmark = pytest.mark.usefixtures("one_thread")


def laplace_chain_config(seed: int = 0) -> dict:
    """Gaussian -> Laplace (scale softplus(B z2)) -> Gaussian, float64: a latent layer without a linear link."""
    return {
        "layers": [
            {"name": "z2", "family": "gaussian", "dim": 2},
            {"name": "z1", "family": "laplace", "dim": 3, "link": "softplus_linear"},
            {"name": "x", "family": "gaussian", "dim": 4, "link": "linear"},
        ],
        "seed": seed,
        "dtype": "float64",
    }


MODELS = {
    "sbn": lambda: build(sbn_config((2, 3, 5), 1)),
    "linear_gaussian": lambda: build(linear_gaussian_config((2, 3, 4), seed=1)),
    "gaussian_laplace_gaussian": lambda: build(laplace_chain_config(1)),
    "mixture_top": lambda: build(tiny_patch_model_config(2)),
}


@pytest.mark.parametrize("beta", ["conditional", "analytic", "sample"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_sketched_targets_weighted_by_the_regressions_give_the_wake_gradient(name, beta):
    """Sum_l a_l . (v . F^l) plus the data term's m . (J v) must equal v . (wake gradient of eq. 36) for every
    direction v: the sketched targets are exactly what the wake phase regresses (float64)."""
    torch.manual_seed(0)
    model = MODELS[name]()
    x = MODELS[name]().sample(7, generator=torch.Generator().manual_seed(3))[-1]
    algo = wakesleep.build_algorithm(
        "ddc_hm", model, sleep_samples=200, features=12, recognition_hidden=20, beta=beta, extra_stats="sufficient"
    )
    algo.sleep()
    grad = algo.wake_gradient(x)
    directions = random_directions(model, 3, torch.Generator().manual_seed(4))
    tangents: list[torch.Tensor] = []
    targets = sketched_targets(model, algo._samples, beta, directions, data_tangents=tangents)
    rs = algo.recognise(x)
    n_latent = len(rs)
    a = [algo._weights(i, rs[i].mean(0)) for i in range(n_latent)]
    w = algo._weights(n_latent - 1, rs[-1])  # [n, B]
    obs = list(model.layers.values())[-1]
    sx = obs.family.sufficient_statistics(x).reshape(x.shape[0], -1)
    m = w @ sx / x.shape[0]  # [n, D_x S]
    for j, (v, _) in enumerate(directions):
        exact = sum((v[k] * g).sum() for k, g in grad.items())
        sketch = sum(a[i] @ targets[i][:, j] for i in range(n_latent))
        sketch = sketch + (m * tangents[j].reshape(m.shape)).sum()
        assert torch.isclose(sketch, exact, rtol=1e-8, atol=1e-10), (j, float(sketch), float(exact))


def fresh_errors(algo, model) -> float:
    """The summed held-out error of ``algo``'s gradient regressions (its own objective) on 4000 new samples and 16
    new directions, never trained on."""
    fresh = model.sample(4000, generator=torch.Generator().manual_seed(11))
    directions = random_directions(model, 16, torch.Generator().manual_seed(12))
    embed = [layer.embed(z) for layer, z in zip(list(model.layers.values())[:-1], fresh[:-1], strict=False)]
    errors = algo.feature_learner.heldout_errors(model, fresh, "conditional", embed, directions)
    assert set(errors) == {0, 1}
    return sum(float(e) for e in errors.values())


@pytest.mark.parametrize(("objective", "factor"), [("regression", 0.8), ("amortised", 0.95)])
def test_learning_lowers_the_heldout_error_on_fresh_samples(objective, factor):
    """After training W and b on five sleep phases of a fixed model, the error of the gradient regressions
    (``amortised``: of alpha . r(x), r read out from x) on new samples and directions is lower than with the
    random encoding functions they started from (the same algorithm with a learning rate of 1e-12)."""
    model = build(laplace_chain_config(2))
    options = {"sleep_samples": 1000, "features": 10, "recognition_hidden": 20, "learn_features": True}
    options["feature_objective"] = objective
    torch.manual_seed(0)
    learnt = wakesleep.build_algorithm("ddc_hm", model, **options, feature_steps=40, feature_lr=1e-2)
    start = wakesleep.build_algorithm("ddc_hm", model, **options, feature_steps=1, feature_lr=1e-12)
    for _ in range(5):
        learnt.sleep()
    start.sleep()
    after, before = fresh_errors(learnt, model), fresh_errors(start, model)
    assert after < factor * before, (after, before)


def test_linear_encodings_have_nothing_to_learn():
    algo = wakesleep.build_algorithm("ddc_hm", build(sbn_config((2, 3, 5), 1)), encoding="linear", learn_features=True)
    info = algo.sleep()
    assert not any(k.startswith("feature_error") for k in info)


LEARN = {"sleep_samples": 60, "features": 8, "learn_features": True, "feature_steps": 2, "feature_samples": 50}


def trainer(options: dict, **kw) -> Trainer:
    torch.manual_seed(123)
    algo = wakesleep.build_algorithm("ddc_hm", build(sbn_config([3, 3, 6], seed=0)), **options)
    return Trainer(algo, batch_size=20, lr=1e-2, seed=1, monitor_samples=20, log_every=2, **kw)


def test_learned_encodings_resume_bit_for_bit(tmp_path):
    """2k iterations against k, a checkpoint and k more: W, b and their Adam state are state."""
    data = build(sbn_config([3, 3, 6], seed=7)).sample(60, generator=torch.Generator().manual_seed(5))[-1]
    full = trainer(LEARN, epochs=4, sleep_every=2).fit(data)
    trainer(LEARN, epochs=4, max_iters=6, out_dir=tmp_path, sleep_every=2).fit(data)
    torch.manual_seed(999)
    resumed = trainer(LEARN, epochs=4, out_dir=tmp_path, sleep_every=2)
    resumed.fit(data, resume_from=tmp_path / "checkpoint")
    assert resumed.start_iter_ == 6 and resumed.n_iter_ == 12
    sa = full.algorithm.state_dict()
    assert any(k.startswith("feature_learner.adam.") for k in sa)
    start = wakesleep.build_algorithm("ddc_hm", build(sbn_config([3, 3, 6], seed=0)), **LEARN).state_dict()
    assert not torch.equal(sa["encoders.0.weight"], start["encoders.0.weight"])  # W did move
    assert_same_training_state(full, resumed)


def test_feature_phases_stops_learning_after_that_many_phases():
    algo = wakesleep.build_algorithm(
        "ddc_hm",
        build(sbn_config((2, 3, 5), 1)),
        sleep_samples=100,
        features=6,
        learn_features=True,
        feature_steps=3,
        feature_samples=50,
        feature_phases=2,
    )
    moved = []
    for _ in range(4):
        before = algo.encoders[0].weight.clone()
        info = algo.sleep()
        moved.append(not torch.equal(before, algo.encoders[0].weight))
        assert any(k.startswith("feature_error") for k in info) == moved[-1]
    assert moved == [True, True, False, False]
    assert algo.feature_learner.phases_done() == 2


def test_amortised_objective_needs_the_closed_form_recognition():
    with pytest.raises(WakesleepError, match="algorithm.feature_objective"):
        wakesleep.build_algorithm(
            "ddc_hm",
            build(sbn_config((2, 3, 5), 1)),
            recognition="mlp",
            learn_features=True,
            feature_objective="amortised",
        )
