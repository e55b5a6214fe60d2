"""DDC-HM's wake gradient against exact gradients (float64).

Oracles: the Gaussian marginal of a two-layer linear-Gaussian model, and enumeration of a sigmoid belief
network with at most 12 binary latents. Criterion (issue 2): cosine similarity >= 0.95 with the exact
gradient of (1/B) sum_b log p(x_b) for every parameter block, batch of 100, parameters away from the optimum.
"""

import copy
import math

import pytest
import torch

import wakesleep
from wakesleep.algorithms.ddc_hm.ridge import fit_ridge, with_intercept
from wakesleep.training import adam

from oracles import (
    build,
    cosine,
    enumerate_loglik,
    exact_gradient,
    linear_gaussian_config,
    linear_gaussian_loglik,
    linear_gaussian_posterior_mean,
    linear_gaussian_problem,
    sbn_config,
    tiny_patch_model_config,
)


@pytest.mark.parametrize("seed", [0, 3])
def test_linear_gaussian_gradient_cosine(seed):
    """N = 50000 sleep samples, K = 100 sigmoid features plus the unpenalised quadratic statistics of z,
    recognition from M = 100 ReLU units plus x and x x^T. Over 5 repeats the worst block's cosine was
    at least 0.962 (docs/RESULTS.md has the table against N and K)."""
    model, x = linear_gaussian_problem()
    exact = exact_gradient(model, x, linear_gaussian_loglik)
    torch.manual_seed(seed)
    algo = wakesleep.build_algorithm(
        "ddc_hm",
        model,
        sleep_samples=50000,
        features=100,
        recognition_hidden=100,
        extra_stats="quadratic",
        recognition_input="quadratic",
        seed=seed,
    )
    algo.sleep()
    est = algo.wake_gradient(x)
    assert set(est) == {n for n, _ in model.named_parameters()}
    cos = {k: cosine(est[k], exact[k]) for k in exact}
    assert min(cos.values()) >= 0.95, cos


@pytest.mark.parametrize(
    "dims, beta", [((2, 4, 10), "analytic"), ((2, 3, 4, 10), "analytic"), ((2, 3, 4, 10), "conditional")]
)
def test_sigmoid_belief_network_gradient_cosine(dims, beta):
    """N = 20000 sleep samples, K = 200 sigmoid features per layer, M = 200 ReLU units; exact by enumeration.
    ``beta="conditional"`` (middle layers' gradients under their own posterior weights only) on the deepest net."""
    truth = build(sbn_config(dims, 0))
    torch.manual_seed(11)
    x = truth.sample(100)[-1]
    model = build(sbn_config(dims, 5))
    exact = exact_gradient(model, x, enumerate_loglik)
    torch.manual_seed(2)
    algo = wakesleep.build_algorithm(
        "ddc_hm", model, sleep_samples=20000, features=200, recognition_hidden=200, beta=beta
    )
    algo.sleep()
    est = algo.wake_gradient(x)
    cos = {k: cosine(est[k], exact[k]) for k in exact}
    print(beta, cos)
    assert min(cos.values()) >= 0.95, cos


def test_weighted_sum_equals_explicit_regression_of_eq_36():
    """The weighted-sum surrogate equals forming alpha_0, beta_1, alpha_1, ... by ridge regression of the
    per-sample gradients (eqs. 31-34) and applying eq. 36 -- to float64 precision."""
    model = build(sbn_config((2, 3, 5), 1))
    x = build(sbn_config((2, 3, 5), 0)).sample(8)[-1]
    algo = wakesleep.build_algorithm(
        "ddc_hm", model, sleep_samples=300, features=20, recognition_hidden=30, beta="analytic"
    )
    algo.sleep()
    est = algo.wake_gradient(x)
    layers = list(model.layers.values())
    z = algo._samples
    params = dict(model.named_parameters())
    rs = algo.recognise(x)

    def per_sample_grad(fn, n):
        rows = []
        for s in range(n):
            g = torch.autograd.grad(fn(s), list(params.values()), allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if gi is None else gi).flatten()
                        for p, gi in zip(params.values(), g, strict=True)
                    ]
                )
            )
        return torch.stack(rows)  # [n, P]

    def alpha(i, targets):  # ridge regression of the per-sample gradients on T(z_i) (eqs. 31-34)
        f = with_intercept(algo._encode(i, z[i]))
        return fit_ridge(f, targets, algo.grad_ridge, n_free=1)  # [K+1, P]

    n = z[0].shape[0]
    # top: alpha_L maps T(z_L) to grad log p(z_L)
    total = alpha(0, per_sample_grad(lambda s: layers[0].log_prob(z[0][s]), n)).T @ rs[0].mean(0)
    # middle: alpha_1 (S(z_1) grad g(z_2)) on T(z_1), minus beta_2 (mu grad g(z_2)) on T(z_2)
    fam = layers[1].family

    def sg(s):
        eta = layers[1].natural_params(z[0][s])
        return (eta * fam.sufficient_statistics(z[1][s])).sum()

    def mug(s):
        return fam.log_normalizer(layers[1].natural_params(z[0][s])).sum()

    total = (
        total + alpha(1, per_sample_grad(sg, n)).T @ rs[1].mean(0) - alpha(0, per_sample_grad(mug, n)).T @ rs[0].mean(0)
    )
    # observation: S_0(x)^T alpha_0 r_1 - beta_1 r_1, alpha_0: T(z_1) -> grad eta(z_1) per unit
    fam = layers[2].family
    obs = 0
    for b in range(x.shape[0]):

        def sx(s, b=b):
            return (layers[2].natural_params(z[1][s]) * fam.sufficient_statistics(x[b])).sum()

        obs = obs + alpha(1, per_sample_grad(sx, n)).T @ rs[1][b]

    def mux(s):
        return fam.log_normalizer(layers[2].natural_params(z[1][s])).sum()

    total = total + obs / x.shape[0] - alpha(1, per_sample_grad(mux, n)).T @ rs[1].mean(0)
    flat = torch.cat([est[k].flatten() for k in params])
    torch.testing.assert_close(flat, total.detach(), rtol=1e-8, atol=1e-10)


def test_wake_gradient_does_not_touch_model_grads_and_needs_sleep():
    model = build(sbn_config((2, 3, 5), 1))
    algo = wakesleep.build_algorithm("ddc_hm", model, sleep_samples=200, features=10, recognition_hidden=10)
    x = model.sample(4)[-1]
    with pytest.raises(RuntimeError, match="sleep"):
        algo.wake_gradient(x)
    algo.sleep()
    algo.wake_gradient(x)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("beta", "readout_weights"),
    [("analytic", "linear"), ("sample", "linear"), ("conditional", "linear"), ("analytic", "nonnegative")],
)
def test_closed_form_cotangents_equal_autodiff_of_the_log_normaliser(beta, readout_weights):
    """wake_gradient's cotangents G = a S - a' mu(eta) equal autodiff of eq. 36 written with A(eta) (float64,
    the paper's model: mixture top, Laplace middle, Gaussian observations)."""
    cfg = {
        "layers": [
            {"name": "z2", "family": "mog", "dim": 1, "means": [[3.0], [-3.0]], "std": 0.1, "learn": False},
            {"name": "z1", "family": "laplace", "dim": 2, "link": "softplus_linear", "bias": False},
            {"name": "x", "family": "gaussian", "dim": 2, "link": "linear"},
        ],
        "dtype": "float64",
    }
    model = wakesleep.build_model(cfg)
    x = model.sample(16)[-1]
    algo = wakesleep.build_algorithm(
        "ddc_hm",
        model,
        sleep_samples=300,
        features=20,
        recognition_hidden=20,
        beta=beta,
        readout_weights=readout_weights,
    )
    algo.sleep()
    est = algo.wake_gradient(x)
    layers, z = list(model.layers.values()), algo._samples
    rs = algo.recognise(x)
    a = [algo._weights(i, rs[i]).mean(1) for i in range(2)]  # the average of each data point's weights
    with torch.enable_grad():
        total = (a[0] * layers[0].log_prob(z[0])).sum()
        fam, eta = layers[1].family, layers[1].natural_params(layers[0].embed(z[0]))
        s1 = fam.sufficient_statistics(z[1])
        if beta == "analytic":
            total = total + (a[1][:, None, None] * eta * s1).sum() - (a[0][:, None] * fam.log_normalizer(eta)).sum()
        elif beta == "conditional":
            total = total + (a[1][:, None, None] * eta * s1).sum() - (a[1][:, None] * fam.log_normalizer(eta)).sum()
        else:
            total = total + ((a[1] - a[0])[:, None, None] * eta * s1).sum()
        fam, eta = layers[2].family, layers[2].natural_params(layers[1].embed(z[1]))
        w = algo._weights(1, rs[1])  # [n, B]: per-data-point weights, S_0(x_b) weighted explicitly
        sx = fam.sufficient_statistics(x)
        total = total + torch.einsum("nb,bds,nds->", w, sx, eta) / x.shape[0]
        if beta != "sample":
            total = total - (a[1][:, None] * fam.log_normalizer(eta)).sum()
        else:
            total = total - (a[1][:, None, None] * eta * fam.sufficient_statistics(z[2])).sum()
        names = [k for k, p in model.named_parameters() if p.requires_grad]
        ref = torch.autograd.grad(total, [dict(model.named_parameters())[k] for k in names])
    for k, g in zip(names, ref, strict=True):
        torch.testing.assert_close(est[k], g, rtol=1e-9, atol=1e-11)


def test_nonnegative_readout_weights_give_valid_expectations_off_the_sleep_samples():
    """readout_weights="nonnegative": per data point the weights are >= 0 and sum to 1, so E[z^2] >= E[z]^2 >= 0
    even for inputs unlike any sleep sample, where the linear read-out's second moments go negative."""
    model = build(linear_gaussian_config())
    x = 5.0 * model.sample(64)[-1]  # far outside the model's own samples
    opts = {"sleep_samples": 400, "features": 30, "recognition_hidden": 30}
    checks = {}
    for kind in ("linear", "nonnegative"):
        torch.manual_seed(0)
        algo = wakesleep.build_algorithm("ddc_hm", model, readout_weights=kind, **opts)
        algo.sleep()
        w = algo._weights(0, algo.recognise(x)[0])
        torch.testing.assert_close(w.sum(0), torch.ones_like(w[0]), rtol=1e-8, atol=1e-8)
        mean = algo.expectation(x, "z2", lambda z: z)
        second = algo.expectation(x, "z2", lambda z: z * z)
        checks[kind] = (w, second - mean**2)
    w, var = checks["nonnegative"]
    assert bool((w >= 0).all()) and bool((var >= -1e-12).all())
    w, var = checks["linear"]
    assert bool((w < 0).any()) and bool((var < 0).any())  # what the option is for


def _close(a, b):
    return all(torch.allclose(a[k], b[k], rtol=1e-10, atol=1e-12) for k in a)


def test_wake_reuses_the_sleep_forward_pass_only_while_theta_is_unchanged():
    model = build(sbn_config((2, 3, 5), 1))
    x = build(sbn_config((2, 3, 5), 0)).sample(8)[-1]
    algo = wakesleep.build_algorithm("ddc_hm", model, sleep_samples=300, features=20, recognition_hidden=30)
    algo.sleep()
    cached = algo._etas
    g_cached = algo.wake_gradient(x)
    assert _close(algo.wake_gradient(x), g_cached)  # the kept graph survives a second wake phase
    algo._etas = [None] * len(cached)  # force re-evaluation of the links at the sleep samples
    assert _close(algo.wake_gradient(x), g_cached)
    algo._etas = cached
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3)
    g_moved = algo.wake_gradient(x)  # theta changed in place: the cached natural parameters are stale
    algo._etas = [None] * len(cached)
    assert _close(g_moved, algo.wake_gradient(x))
    assert not _close(g_moved, g_cached)


def test_wake_sees_theta_moved_by_a_fused_optimiser():
    """torch.optim.Adam(fused=True) (the trainer's) updates parameters without bumping their version counters:
    the wake phase must still notice that theta moved and re-evaluate the links at the sleep samples."""
    model = build(sbn_config((2, 3, 5), 1))
    x = build(sbn_config((2, 3, 5), 0)).sample(8)[-1]
    algo = wakesleep.build_algorithm("ddc_hm", model, sleep_samples=300, features=20, recognition_hidden=30)
    algo.sleep()
    g0 = algo.wake_gradient(x)
    opt = adam(list(model.parameters()), lr=0.1)
    for k, p in model.named_parameters():
        p.grad = -g0[k]
    opt.step()
    g_moved = algo.wake_gradient(x)
    algo._etas = [None] * len(algo._etas)  # force re-evaluation of the links
    assert _close(g_moved, algo.wake_gradient(x))
    assert not _close(g_moved, g0)


@pytest.mark.parametrize("beta", ["analytic", "sample", "conditional"])
@pytest.mark.parametrize("wake_theta", ["current", "sleep"])
def test_observation_data_term_from_posterior_moments_equals_the_weighted_sum(beta, wake_theta):
    """Bernoulli pixels with a linear link: the data term of the observation layer's gradient read from the
    posterior moments r_1(x) P equals the explicit weighted sum over sleep samples, sum_s m_s (z_1s, 1)^T, before
    and after theta moves (float64, to rounding)."""
    model = build(sbn_config((2, 3, 5), 1))
    x = build(sbn_config((2, 3, 5), 0)).sample(8)[-1]
    opts = {"sleep_samples": 300, "features": 20, "recognition_hidden": 30, "beta": beta, "wake_theta": wake_theta}
    algo = wakesleep.build_algorithm("ddc_hm", model, **opts)
    algo.sleep()
    assert algo._obs_moments is not None

    def both():
        direct = algo.wake_gradient(x)
        kept, algo._obs_moments = algo._obs_moments, None  # the N x B x D_x weighted sum
        summed = algo.wake_gradient(x)
        algo._obs_moments = kept
        return direct, summed

    for _ in range(2):
        direct, summed = both()
        for k in summed:
            torch.testing.assert_close(direct[k], summed[k], rtol=1e-10, atol=1e-12)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.2)
    # where eta is not the link's output itself, the weighted sum is kept
    for cfg in (linear_gaussian_config(), sbn_config((2, 3, 5), 1)):
        if cfg["layers"][-1]["family"] == "bernoulli":
            cfg["layers"][-1]["link"] = "softplus_linear"
        other = wakesleep.build_algorithm("ddc_hm", build(cfg), sleep_samples=50, features=5, recognition_hidden=5)
        other.sleep()
        assert other._obs_moments is None


@pytest.mark.parametrize("given", [False, True])
def test_wake_theta_sleep_keeps_the_gradient_regressions_of_the_last_sleep_phase(given):
    """wake_theta="sleep": after theta moves, the wake gradient is the one that theta at the sleep phase would
    give (Algorithm 1's alpha_l, beta_l), returned for the model's parameters, which training then moves."""
    model = build(sbn_config((2, 3, 5), 1))
    x = build(sbn_config((2, 3, 5), 0)).sample(8)[-1]
    opts = {"sleep_samples": 300, "features": 20, "recognition_hidden": 30, "recognition_input": "linear"}
    stale = wakesleep.build_algorithm("ddc_hm", model, wake_theta="sleep", **opts)
    if given:
        stale.sleep(samples=model.sample(300))
    else:
        stale.sleep()
    at_sleep = copy.deepcopy(model)
    current = wakesleep.build_algorithm("ddc_hm", at_sleep, **opts)
    current.sleep(samples=stale._samples)
    g_sleep = stale.wake_gradient(x)
    assert set(g_sleep) == {k for k, p in model.named_parameters() if p.requires_grad}
    assert _close(g_sleep, current.wake_gradient(x))  # theta unchanged: the two estimators agree
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3)
    g_moved = stale.wake_gradient(x)
    assert _close(g_moved, g_sleep)  # the links stay at the sleep phase's theta ...
    moved = wakesleep.build_algorithm("ddc_hm", model, **opts)
    moved.sleep(samples=stale._samples)
    assert not _close(moved.wake_gradient(x), g_moved)  # ... where wake_theta="current" would move with theta
    assert all(p.grad is None for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for k, p in model.named_parameters():
        p.grad = -g_moved[k]
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert _close(stale.wake_gradient(x), g_sleep)  # in-place updates of theta do not break the kept graph
    with pytest.raises(wakesleep.WakesleepError, match="wake_theta"):
        wakesleep.build_algorithm("ddc_hm", model, wake_theta="stale")


def test_sleep_on_given_samples_equals_drawing_them():
    model = build(sbn_config((2, 3, 5), 1))
    x = model.sample(8)[-1]
    opts = {"sleep_samples": 300, "features": 20, "recognition_hidden": 30}
    torch.manual_seed(3)
    drawn = wakesleep.build_algorithm("ddc_hm", model, **opts)
    drawn.sleep()
    torch.manual_seed(3)
    samples = model.sample(300)
    given = wakesleep.build_algorithm("ddc_hm", model, **opts)
    given.sleep(samples=samples)
    assert _close(drawn.wake_gradient(x), given.wake_gradient(x))
    with pytest.raises(wakesleep.WakesleepError, match="samples"):
        given.sleep(samples=samples[:-1])


@pytest.mark.parametrize(
    "options",
    [
        {"recognition": "direct"},
        {"recognition": "mlp", "mlp_steps": 5},
        {"encoding": "linear"},
        {"encoding": "tanh", "beta": "sample"},
        {"recognition_memory": 0.9},
    ],
)
def test_options_run_on_the_paper_model(options):
    cfg = {
        "layers": [
            {"name": "z2", "family": "mog", "dim": 1, "means": [[3.0], [-3.0]], "std": 0.1, "learn": False},
            {"name": "z1", "family": "laplace", "dim": 2, "link": "softplus_linear", "bias": False},
            {"name": "x", "family": "gaussian", "dim": 2, "link": "linear", "bias": False},
        ]
    }
    model = wakesleep.build_model(cfg)
    algo = wakesleep.build_algorithm("ddc_hm", model, sleep_samples=200, features=20, recognition_hidden=20, **options)
    x = model.sample(10)[-1]
    for _ in range(2):
        algo.sleep()
    g = algo.wake_gradient(x)
    assert all(torch.isfinite(v).all() for v in g.values())
    means = algo.posterior_mean(x)
    assert means["z1"].shape == (10, 2) and means["z2"].shape == (10, 1)


def test_posterior_mean_matches_exact_gaussian_posterior():
    """E_q[z_1 | x] from the DDC against the exact conditional mean of a linear-Gaussian model."""
    model = build(linear_gaussian_config())
    torch.manual_seed(4)
    zs = model.sample(200)
    x = zs[-1]
    algo = wakesleep.build_algorithm(
        "ddc_hm",
        model,
        sleep_samples=20000,
        features=200,
        recognition_hidden=200,
        extra_stats="quadratic",
        recognition_input="quadratic",
    )
    algo.sleep()
    est = algo.posterior_mean(x)["z1"]
    exact = linear_gaussian_posterior_mean(model, x)
    err = (est - exact).norm() / exact.norm()
    assert err < 0.05, float(err)


def test_unknown_option_is_a_user_error():
    model = build(sbn_config((2, 3, 5), 1))
    with pytest.raises(wakesleep.WakesleepError, match="algorithm.sleep_sample"):
        wakesleep.build_algorithm("ddc_hm", model, sleep_sample=10)


# quadrature grid over (z_2, z_1) of ``tiny_patch_model_config``
_TINY_PATCH_GRID = (torch.linspace(-3.6, 3.6, 241).double(), torch.linspace(-30.0, 30.0, 2001).double())


def _tiny_patch_exact_gradient(model, x):
    """Gradient of the mean log p(x) of a ``tiny_patch_model_config`` model by quadrature over (z_2, z_1)."""
    g2, g1 = torch.meshgrid(*_TINY_PATCH_GRID, indexing="ij")
    params = dict(model.named_parameters())
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(0, len(x), 5):
        rows = x[i : i + 5]
        log_joint = [model.log_joint(row.expand(g1.numel(), 2), [g2.reshape(-1, 1), g1.reshape(-1, 1)]) for row in rows]
        ll = torch.stack([torch.logsumexp(v, 0) for v in log_joint]).sum() / len(x)
        for k, g in zip(params, torch.autograd.grad(ll, list(params.values()), allow_unused=True), strict=True):
            if g is not None:
                total[k] += g
    return {k: v for k, v in total.items() if v.abs().sum() > 0}


@pytest.mark.parametrize("extra_stats", ["sufficient", "sufficient_child"])
def test_child_statistics_make_the_observation_gradient_exact(extra_stats):
    """The eq. 13 model with D1 = D2 = 1 and two pixels (parameters moved off the data's), with a perfect
    recognition (E[T(z_l) | x] by quadrature). With ``sufficient_child`` z_1's encodings hold |z_1| (its S), z_1
    and z_1^2, which is all the Gaussian x's gradient needs of z_1, so that block is exact up to rounding (relative
    error < 1e-8; measured 1.4e-12). With z_1's own S alone the random features must stand in for z_1 and z_1^2
    (measured 4.6 %; > 1e-3 asserted). N = 20000, K = 5."""
    model = build(tiny_patch_model_config(2))
    torch.manual_seed(1)
    x = model.sample(100)[-1]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    algo = wakesleep.build_algorithm(
        "ddc_hm", model, sleep_samples=20000, features=5, recognition_hidden=20, extra_stats=extra_stats
    )
    n_z1 = 5 + 1 + (2 if extra_stats == "sufficient_child" else 0)
    assert [e.n_out for e in algo.encoders] == [5 + 2, n_z1]  # z2 (mixture top): z, z^2
    torch.manual_seed(0)
    algo.sleep()
    g2, g1 = (g.reshape(-1, 1) for g in torch.meshgrid(*_TINY_PATCH_GRID, indexing="ij"))
    with torch.no_grad():
        w = torch.stack([torch.softmax(model.log_joint(row.expand(len(g1), 2), [g2, g1]), 0) for row in x])
        exact_r = [w @ algo.encoding_functions(g2, "z2"), w @ algo.encoding_functions(g1, "z1")]
    est = algo.wake_gradient(x, representation=exact_r)
    exact = _tiny_patch_exact_gradient(model, x)
    err = max(float((est[k] - exact[k]).norm() / exact[k].norm()) for k in ("layers.x.link.weight", "layers.x.log_var"))
    if extra_stats == "sufficient_child":
        assert err < 1e-8, err
    else:
        assert err > 1e-3, err


def test_child_statistics_of_a_laplace_layer_above_a_gaussian_one():
    from wakesleep.algorithms.ddc_hm.features import child_statistics

    model = wakesleep.build_model(
        {
            "layers": [
                {"name": "z1", "family": "laplace", "dim": 3},
                {"name": "x", "family": "gaussian", "dim": 4, "link": "linear"},
            ],
            "dtype": "float64",
        }
    )
    fn, n, support = child_statistics(model.layers["z1"], model.layers["x"])
    z = torch.tensor([[1.0, -2.0, 3.0]], dtype=torch.float64)
    products = [1.0, -2.0, 3.0, 4.0, -6.0, 9.0]  # z_i z_j, i <= j
    assert n == 3 + 3 + 6 and torch.equal(fn(z), torch.tensor([[1.0, 2.0, 3.0, 1.0, -2.0, 3.0, *products]]).double())
    assert support[:3] == [(0.0, math.inf)] * 3 and support[6] == (0.0, math.inf) and support[7][0] == -math.inf
