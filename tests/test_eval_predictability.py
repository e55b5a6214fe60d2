"""latent_predictability: held-out variance of each latent layer explained from x, against the exact value of a
linear-Gaussian chain, zero for a layer independent of x, a small SBN, reproducibility and the RNG, errors."""

import json
import math

import numpy as np
import pytest
import torch

import wakesleep
from wakesleep.errors import WakesleepError
from wakesleep.eval import PredictabilityResult, gaussian_posterior, latent_predictability

from oracles import sbn_config, tiny_patch_model_config

pytestmark = pytest.mark.usefixtures("one_thread")

# |linear - truth| with n = 20000, n_test = 10000: over 20 seeds the estimate's std was 0.006 (z2) and 0.003 (z1)
TOL = 0.02
FAST = {"mlp_epochs": 3, "mlp_hidden": 64}


def lg_config(init=None):
    """z2 ~ N(0, I_2) -> z1 | z2 ~ N(A z2 + a, D1) (dim 3) -> x | z1 ~ N(C z1 + c, D0) (dim 5), float64."""
    cfg = {
        "layers": [
            {"name": "z2", "family": "gaussian", "dim": 2, "learn": False, "learn_variance": False},
            {"name": "z1", "family": "gaussian", "dim": 3, "link": "linear"},
            {"name": "x", "family": "gaussian", "dim": 5, "link": "linear"},
        ],
        "seed": 3,
        "dtype": "float64",
    }
    if init is not None:
        cfg["init"] = init
    return cfg


def exact_fractions(model):
    """1 - tr Cov(z_l | x) / tr Cov(z_l) per latent layer, from the joint covariance built off the parameters."""
    l2, l1, lx = model.layers.values()
    with torch.no_grad():
        a, c = l1.link.weight, lx.link.weight
        s22 = torch.diag(l2.log_var.exp())
        s11 = a @ s22 @ a.T + torch.diag(l1.log_var.exp())
        s12 = a @ s22
        sxx = c @ s11 @ c.T + torch.diag(lx.log_var.exp())
        out, post = {}, {}
        for name, szz, szx in (("z2", s22, (c @ s12).T), ("z1", s11, (c @ s11).T)):
            post[name] = szz - szx @ torch.linalg.solve(sxx, szx.T)
            out[name] = 1.0 - float(torch.trace(post[name]) / torch.trace(szz))
    return out, post


def test_linear_gaussian_matches_the_exact_explained_fraction():
    model = wakesleep.build_model(lg_config())
    truth, post = exact_fractions(model)
    # the oracle's posterior covariances agree with the library's exact Gaussian conditioning
    cov = gaussian_posterior(model, torch.zeros(1, 5, dtype=torch.float64)).cov
    torch.testing.assert_close(cov[:2, :2], post["z2"])
    torch.testing.assert_close(cov[2:, 2:], post["z1"])
    assert 0.15 < truth["z2"] < truth["z1"] < 0.9  # a case where both layers are partly, not fully, explained

    res = latent_predictability(model, 20_000, 10_000, statistics="mean", **FAST)
    assert isinstance(res, PredictabilityResult)
    assert [r.name for r in res.layers] == ["z2", "z1"]
    assert [r.n_targets for r in res.layers] == [2, 3]
    assert (res.n, res.n_test, res.statistics) == (20_000, 10_000, "mean")
    for name in ("z2", "z1"):
        rec = res[name]
        assert abs(rec.linear - truth[name]) < TOL, (name, rec.linear, truth[name])
        assert rec.mlp < truth[name] + TOL, (name, rec.mlp, truth[name])
        assert rec.mlp > truth[name] - 0.05  # and it is not far below (E[z | x] is linear here)


def exact_sufficient_fractions(model):
    """The pooled fractions for S(z) = [z, z^2] per unit, exactly: (best predictor, best linear predictor).

    With m = E[z_d | x] ~ N(mu, s^2), s^2 = Var z_d - Var(z_d | x): Var_x E[z_d | x] = s^2 and
    Var_x E[z_d^2 | x] = Var(m^2) = 2 s^4 + 4 mu^2 s^2, against Var z_d = v and Var z_d^2 = 2 v^2 + 4 mu^2 v.
    With mu = 0, E[z_d^2 | x] = m^2 + const is uncorrelated with x, so a linear read-out explains only the s^2.
    """
    l2, l1, _ = model.layers.values()
    _, post = exact_fractions(model)
    with torch.no_grad():
        a = l1.link.weight
        s22 = torch.diag(l2.log_var.exp())
        s11 = a @ s22 @ a.T + torch.diag(l1.log_var.exp())
        mu2 = l2.link()
        mu1 = a @ mu2 + l1.link.bias
    best, linear = {}, {}
    for name, cov, p, mu in (("z2", s22, post["z2"], mu2), ("z1", s11, post["z1"], mu1)):
        assert torch.equal(mu, torch.zeros_like(mu))
        v = cov.diagonal()
        sm = v - p.diagonal()
        den = float((v + 2 * v**2 + 4 * mu**2 * v).sum())
        best[name] = float((sm + 2 * sm**2 + 4 * mu**2 * sm).sum()) / den
        linear[name] = float(sm.sum()) / den
    return best, linear


def test_linear_gaussian_sufficient_statistics_match_the_exact_fraction():
    model = wakesleep.build_model(lg_config())
    best, linear = exact_sufficient_fractions(model)
    res = latent_predictability(model, 20_000, 10_000, **FAST)
    assert [r.n_targets for r in res.layers] == [4, 6]  # Gaussian: z and z^2 per unit
    for name in ("z2", "z1"):
        rec = res[name]
        assert abs(rec.linear - linear[name]) < TOL, (name, rec.linear, linear[name])
        assert rec.mlp < best[name] + TOL, (name, rec.mlp, best[name])
        assert rec.mlp > best[name] - 0.05  # the MLP finds the quadratic E[z^2 | x] that the ridge cannot


def test_layer_independent_of_x_gives_zero():
    model = wakesleep.build_model(lg_config({"layers.x.link.weight": np.zeros((5, 3))}))
    truth, _ = exact_fractions(model)
    assert truth == {"z2": 0.0, "z1": 0.0}
    res = latent_predictability(model, 20_000, 10_000, statistics="mean", **FAST)
    for rec in res.layers:
        assert abs(rec.linear) < 0.01 and abs(rec.mlp) < 0.01, rec


def test_small_sbn_runs_is_reproducible_and_leaves_the_global_rng_alone():
    model = wakesleep.build_model(sbn_config((3, 4, 8), seed=1))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = latent_predictability(model, 5_000, 2_000, seed=7, **FAST)
    assert torch.equal(torch.get_rng_state(), state)
    b = latent_predictability(model, 5_000, 2_000, seed=7, **FAST)
    c = latent_predictability(model, 5_000, 2_000, seed=8, **FAST)
    assert [r.n_targets for r in a.layers] == [3, 4]  # Bernoulli: one statistic per unit
    for rec in a.layers:
        assert -0.05 < rec.linear <= 1 and -0.05 < rec.mlp <= 1
    assert a.to_dict()["layers"] == b.to_dict()["layers"]
    assert a.to_dict()["layers"] != c.to_dict()["layers"]
    d = json.loads(json.dumps(a.to_dict()))
    assert d["n"] == 5_000 and d["layers"][0]["name"] == "z2" and d["seconds"] > 0
    lines = a.lines()
    assert len(lines) == 2 and lines[0].startswith("z2: x explains ") and "% of S(z2) linearly" in lines[0]
    assert "by an MLP" in lines[0]


def test_mixture_top_and_skipping_the_mlp():
    model = wakesleep.build_model(tiny_patch_model_config())
    res = latent_predictability(model, 2_000, 1_000, mlp_epochs=0)
    assert [r.n_targets for r in res.layers] == [2, 1]  # mixture top: z and z^2; Laplace (location 0): |z|
    assert all(r.mlp is None for r in res.layers) and all(math.isfinite(r.linear) for r in res.layers)
    assert "no MLP" in res.lines()[0]


def test_errors():
    model = wakesleep.build_model(lg_config())
    with pytest.raises(WakesleepError, match="HierarchicalModel"):
        latent_predictability(torch.nn.Linear(2, 2), 100, 100)
    no_latent = wakesleep.build_model(lg_config())
    del no_latent.layers["z2"], no_latent.layers["z1"]
    with pytest.raises(WakesleepError, match="no latent layer"):
        latent_predictability(no_latent, 100, 100)
    for kwargs, match in (
        ({"n": 9}, "n must be"),
        ({"n_test": 5}, "n_test must be"),
        ({"n": 100.0}, "n must be"),
        ({"mlp_epochs": -1}, "mlp_epochs"),
        ({"mlp_hidden": 0}, "mlp_hidden"),
        ({"ridge_grid": ()}, "ridge_grid"),
        ({"ridge_grid": (1e-3, -1.0)}, "ridge_grid"),
        ({"statistics": "moments"}, "statistics"),
    ):
        with pytest.raises(WakesleepError, match=match):
            latent_predictability(model, **{"n": 100, "n_test": 100, **kwargs})
