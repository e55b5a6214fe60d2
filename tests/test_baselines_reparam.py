"""Reparameterised baselines: planar/radial flows, the VAE, the IWAE (against Pyro) and the flow VAE.

Every test runs in float64 with fixed seeds; tolerances are stated where used. Monte Carlo comparisons use
z-scores (difference / standard error of the mean over independent repetitions); each has a negative control
showing that the check can fail.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import wakesleep
from wakesleep.algorithms import build_algorithm
from wakesleep.algorithms.flows import FlowCascade, planar_flow, planar_u_hat, radial_flow
from wakesleep.errors import WakesleepError

from oracles import exact_gradient, linear_gaussian_config, linear_gaussian_loglik

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------------
# flows: log-determinants and invertibility constraints
# --------------------------------------------------------------------------------------------------------
def _autograd_logabsdet(fn, z: torch.Tensor) -> torch.Tensor:
    """log |det J| of ``fn`` at each row of ``z [n, d]`` from the full autograd Jacobian."""
    out = []
    for row in z:
        jac = torch.autograd.functional.jacobian(fn, row)
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_planar_log_det_equals_autograd_jacobian(d):
    gen = torch.Generator().manual_seed(d)
    for trial in range(5):
        u = 2.0 * torch.randn(d, generator=gen, dtype=DT)
        w = torch.randn(d, generator=gen, dtype=DT)
        if trial % 2 == 0:  # raw w^T u far below -1: the constraint must do the work
            u = u - (3.0 + (w @ u)) * w / (w @ w)
        b = torch.randn((), generator=gen, dtype=DT)
        z = 1.5 * torch.randn(20, d, generator=gen, dtype=DT)
        f, log_det = planar_flow(z, u, w, b)
        ref = _autograd_logabsdet(lambda v, u=u, w=w, b=b: planar_flow(v, u, w, b)[0], z)
        torch.testing.assert_close(log_det, ref, rtol=0, atol=1e-10)
        assert f.shape == z.shape


@pytest.mark.parametrize("d", [1, 2, 5])
def test_radial_log_det_equals_autograd_jacobian(d):
    gen = torch.Generator().manual_seed(10 + d)
    for raw_b in (-8.0, -0.5, 0.0, 2.0):  # beta from just above -alpha to positive
        z0 = torch.randn(d, generator=gen, dtype=DT)
        a = torch.randn((), generator=gen, dtype=DT)
        b = torch.tensor(raw_b, dtype=DT)
        z = z0 + 0.8 * torch.randn(20, d, generator=gen, dtype=DT)
        f, log_det = radial_flow(z, z0, a, b)
        ref = _autograd_logabsdet(lambda v, z0=z0, a=a, b=b: radial_flow(v, z0, a, b)[0], z)
        torch.testing.assert_close(log_det, ref, rtol=0, atol=1e-9)


def test_planar_constraint_keeps_the_flow_invertible():
    """w^T u_hat = -1 + softplus(w^T u) >= -1 for any raw (u, w), so the planar map is strictly increasing along
    w (it only moves points along u_hat) and its log-det is finite; the raw u with w^T u <= -3 (negative
    control) folds the map: its projection on w is not monotone."""
    gen = torch.Generator().manual_seed(0)
    for target in (-50.0, -3.0, -1.0, 0.0, 4.0):
        w = torch.randn(3, generator=gen, dtype=DT)
        u = torch.randn(3, generator=gen, dtype=DT)
        u = u + (target - w @ u) * w / (w @ w)  # raw w^T u = target
        u_hat = planar_u_hat(u, w)
        assert float(w @ u_hat) == pytest.approx(-1.0 + math.log1p(math.exp(target)), abs=1e-12)
        b = torch.tensor(0.3, dtype=DT)
        # points z = s w / |w|^2 - b w/|w|^2 + v (v orthogonal to w): w^T z + b = s, on a grid through s = 0
        s = torch.linspace(-4, 4, 4001, dtype=DT)
        z = (s - b)[:, None] * w / (w @ w) + torch.tensor([0.2, -0.1, 0.4], dtype=DT)
        f, log_det = planar_flow(z, u, w, b)
        assert torch.isfinite(log_det).all()
        proj = f @ w
        assert bool((proj[1:] - proj[:-1] > 0).all())
        if target <= -3.0:
            f_raw = z + u * torch.tanh(z @ w + b)[:, None]
            assert not bool(((f_raw @ w)[1:] - (f_raw @ w)[:-1] > 0).all())


def test_radial_constraint_beta_at_least_minus_alpha():
    """beta = -alpha + softplus(b) >= -alpha: f stays invertible (1 + beta h > 0 away from z0) even for raw
    b -> -inf."""
    z0 = torch.zeros(2, dtype=DT)
    a = torch.tensor(0.3, dtype=DT)
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(1), dtype=DT)
    for raw_b in (-30.0, -5.0, 0.0):
        _, log_det = radial_flow(z, z0, a, torch.tensor(raw_b, dtype=DT))
        assert torch.isfinite(log_det).all()
    # radial distance is mapped monotonically: r -> r (1 + beta / (alpha + r))
    r = torch.linspace(0, 5, 500, dtype=DT)[:, None] * torch.tensor([[1.0, 0.0]], dtype=DT)
    f, _ = radial_flow(r, z0, a, torch.tensor(-30.0, dtype=DT))
    assert bool((f[1:, 0] - f[:-1, 0] > 0).all())


@pytest.mark.parametrize("flow_type", ["planar", "radial"])
def test_flow_cascade_log_det_amortised(flow_type):
    """The summed log-det of an amortised cascade (parameters from a context) matches the autograd Jacobian
    of the composed map for every (particle, data point), with parameters broadcast over particles."""
    torch.manual_seed(0)
    d, c_dim, B, k = 3, 4, 2, 3
    cascade = FlowCascade(d, flow_type, length=3, context_dim=c_dim).to(DT)
    with torch.no_grad():
        cascade.head.weight.normal_(0, 0.5)
        cascade.theta0.normal_(0, 1.0)
    context = torch.randn(B, c_dim, dtype=DT)
    z = torch.randn(k, B, d, dtype=DT)
    zk, log_det = cascade(z, context)
    assert zk.shape == (k, B, d) and log_det.shape == (k, B)
    for i, j in itertools.product(range(k), range(B)):
        jac = torch.autograd.functional.jacobian(lambda v, j=j: cascade(v, context[j])[0], z[i, j])
        assert float(log_det[i, j].detach()) == pytest.approx(float(torch.linalg.slogdet(jac).logabsdet), abs=1e-10)


@pytest.mark.parametrize("flow_type", ["planar", "radial"])
def test_flow_posterior_log_q_is_a_normalised_density(flow_type):
    """E_q[f(z) / q(z)] = 1 for a normalised density f: checks the sign and size of the log-det terms in
    log q; a flipped sign (negative control) is rejected. f = N(0, s^2 I) with s chosen so that the ratio
    stays bounded (max/mean below ~50 with these seeds), z-score threshold 4.5 on 20000 particles."""
    torch.manual_seed(3)
    model = wakesleep.build_model(
        {
            "layers": [{"name": "z", "family": "gaussian", "dim": 2}, {"name": "x", "family": "gaussian", "dim": 3}],
            "dtype": "float64",
        }
    )
    algo = build_algorithm("flow", model, flow_type=flow_type, flow_length=4, proposal_hidden=[8])
    prop = algo.proposal
    with torch.no_grad():
        for fc in prop.flows.values():
            fc.head.weight.normal_(0, 0.3)
            if flow_type == "planar":
                fc.theta0[:, :2].normal_(0, 0.6)  # clear planar deformations
            else:
                fc.theta0[:, 3] = 1.0  # beta = softplus(1) - alpha > 0
        x = torch.randn(4, 3, dtype=DT)
        zs, log_q = prop.sample(x, 20000)
        sd = 0.5 if flow_type == "planar" else 1.0
        f = torch.distributions.Normal(0.0, sd).log_prob(zs[0]).sum(-1)
        ratio = torch.exp(f - log_q)  # [k, B]
        z_score = (ratio.mean(0) - 1.0) / (ratio.std(0) / math.sqrt(ratio.shape[0]))
        assert float(z_score.abs().max()) < 4.5
        # negative control: adding instead of subtracting the log-determinants
        zs0, lq0 = prop.base.sample(x, 20000)
        c = prop.context(x)
        zk, ld = prop.flows["z"](zs0[0], c)
        wrong = torch.exp(torch.distributions.Normal(0.0, sd).log_prob(zk).sum(-1) - (lq0 + ld))
        z_wrong = (wrong.mean(0) - 1.0) / (wrong.std(0) / math.sqrt(wrong.shape[0]))
        assert float(z_wrong.abs().max()) > 10
        assert float(ld.abs().mean()) > 0.5  # the flows really change the density


# --------------------------------------------------------------------------------------------------------
# IWAE against Pyro's RenyiELBO(alpha=0)
# --------------------------------------------------------------------------------------------------------
def _one_layer_model(seed=0):
    cfg = {
        "layers": [
            {"name": "z", "family": "gaussian", "dim": 2, "mean": 0.3, "variance": 1.5},
            {"name": "x", "family": "gaussian", "dim": 3, "link": "linear", "variance": 0.5},
        ],
        "seed": seed,
        "dtype": "float64",
    }
    return wakesleep.build_model(cfg)


def _pyro_model_fn(model):
    import pyro
    import pyro.distributions as pdist

    top, obs = model.layers["z"], model.layers["x"]

    def pyro_model(x):
        pyro.module("generative", model)
        loc0, sd0 = top.link(), torch.exp(0.5 * top.log_var)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pdist.Normal(loc0, sd0).expand([x.shape[0], loc0.shape[-1]]).to_event(1))
            loc = z @ obs.link.weight.T + obs.link.bias
            pyro.sample("x", pdist.Normal(loc, torch.exp(0.5 * obs.log_var)).to_event(1), obs=x)

    return pyro_model


def test_iwae_bound_and_gradients_equal_pyro_renyi_elbo_on_shared_samples():
    """Same q, same k particles: wakesleep's IWAE bound, theta-gradient and phi-gradient equal those of
    ``pyro.infer.RenyiELBO(alpha=0, num_particles=k)`` to 1e-10 (Pyro sums over the data plate, we average)."""
    import pyro
    import pyro.distributions as pdist
    from pyro.distributions.torch_distribution import TorchDistribution
    from torch.distributions import constraints

    class Precomputed(TorchDistribution):
        """A guide-site distribution that returns a particle drawn (reparameterised) by our proposal."""

        arg_constraints: dict = {}
        support = constraints.real_vector
        has_rsample = True

        def __init__(self, value, log_q):
            self.value, self.log_q = value, log_q
            super().__init__(batch_shape=value.shape[:-1], event_shape=value.shape[-1:], validate_args=False)

        def rsample(self, sample_shape=()):
            return self.value

        def log_prob(self, value):
            assert torch.equal(value, self.value)
            return self.log_q

    torch.manual_seed(0)
    model = _one_layer_model()
    k, B = 7, 5
    algo = build_algorithm("iwae", model, k=k, proposal_hidden=[6])
    x = model.sample(B)[-1]
    torch.manual_seed(123)
    grads = algo.wake_gradient(x)
    algo.step_recognition(x)
    ours_phi = [p.grad.clone() for p in algo.recognition_parameters()]

    torch.manual_seed(123)  # the same particles again, with their graph
    zs, log_q = algo.proposal.sample(x, k)
    ours_bound = float(algo.reduce(model.log_joint(x, zs) - log_q).mean().detach())
    counter = iter(range(k))

    def guide(x):
        pyro.module("recognition", algo.proposal)
        j = next(counter)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", Precomputed(zs[0][j], log_q[j]))

    pyro.clear_param_store()
    for p in list(model.parameters()) + algo.recognition_parameters():
        p.grad = None
    elbo = pyro.infer.RenyiELBO(alpha=0, num_particles=k, vectorize_particles=False)
    loss = elbo.loss_and_grads(_pyro_model_fn(model), guide, x)
    assert -loss / B == pytest.approx(ours_bound, abs=1e-10)
    for n, p in model.named_parameters():
        torch.testing.assert_close(-p.grad / B, grads[n], rtol=0, atol=1e-10)
    for p, g in zip(algo.recognition_parameters(), ours_phi, strict=True):
        torch.testing.assert_close(p.grad / B, g, rtol=0, atol=1e-10)
    assert pdist is not None


def test_iwae_bound_expectation_equals_pyro_renyi_elbo_with_independent_samples():
    """With independent particles (Pyro's guide samples the same Gaussian q itself), the two estimates of L_k
    agree in expectation: z-score of the difference of means over 300 repetitions below 4."""
    import pyro
    import pyro.distributions as pdist

    torch.manual_seed(1)
    model = _one_layer_model(seed=1)
    k, B, R = 5, 4, 300
    algo = build_algorithm("iwae", model, k=k, proposal_hidden=[6])
    x = model.sample(B)[-1]

    def guide(x):
        out = algo.proposal.factors[0].params(x)
        loc, log_std = out.chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pdist.Normal(loc, torch.exp(log_std)).to_event(1))

    pyro.clear_param_store()
    elbo = pyro.infer.RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    pm = _pyro_model_fn(model)
    with torch.no_grad():
        ours = torch.tensor([float(algo.bound(x).sum()) for _ in range(R)])
        theirs = torch.tensor([-elbo.loss(pm, guide, x) for _ in range(R)])
        # power: the k = 1 bound (the ELBO) is detectably lower than L_5 with this many repetitions
        vae = build_algorithm("vae", model, proposal=algo.proposal)
        elbo1 = torch.tensor([float(vae.bound(x).sum()) for _ in range(R)])
    se = math.sqrt(ours.var() / R + theirs.var() / R)
    assert abs(float(ours.mean() - theirs.mean())) / se < 4.0
    se1 = math.sqrt(ours.var() / R + elbo1.var() / R)
    assert float(ours.mean() - elbo1.mean()) / se1 > 4.0


# --------------------------------------------------------------------------------------------------------
# linear-Gaussian model whose exact posterior is a factorised, bottom-up layered Gaussian
# --------------------------------------------------------------------------------------------------------
def _factorised_chain():
    """z2 ~ N(0, I_2) -> z1 | z2 ~ N(A z2 + a, D1) -> x | z1 ~ N(C z1 + c, s^2 I_4), with A = [[1.2, 0],
    [0, -0.7], [0, 0]] (orthogonal rows and columns) and C with orthogonal columns: p(z1 | x) and
    p(z2 | z1, x) = p(z2 | z1) are diagonal Gaussians with means affine in x and z1."""
    model = wakesleep.build_model(linear_gaussian_config(dims=(2, 3, 4), bias=True, seed=0))
    gen = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(4, 3, generator=gen, dtype=DT))
    with torch.no_grad():
        model.layers["z1"].link.weight.copy_(torch.tensor([[1.2, 0.0], [0.0, -0.7], [0.0, 0.0]], dtype=DT))
        model.layers["z1"].link.bias.copy_(torch.tensor([0.5, -0.2, 0.1], dtype=DT))
        model.layers["z1"].log_var.copy_(torch.tensor([0.4, 0.9, 1.6], dtype=DT).log())
        model.layers["x"].link.weight.copy_(q @ torch.diag(torch.tensor([1.5, 0.8, 2.0], dtype=DT)))
        model.layers["x"].link.bias.copy_(torch.tensor([0.3, -0.1, 0.2, 0.0], dtype=DT))
        model.layers["x"].log_var.fill_(math.log(0.3))
    return model


def _set_exact_posterior(proposal, model, shift=0.0):
    """Write the exact posterior into an affine (``proposal_hidden=[]``) LayeredProposal; ``shift`` biases q(z1|x)."""
    A, a = model.layers["z1"].link.weight, model.layers["z1"].link.bias
    d1 = torch.exp(model.layers["z1"].log_var)
    C, c = model.layers["x"].link.weight, model.layers["x"].link.bias
    s2 = torch.exp(model.layers["x"].log_var)
    prior1 = A @ A.T + torch.diag(d1)  # diagonal by construction
    lam1 = torch.linalg.inv(prior1) + C.T @ torch.diag(1 / s2) @ C
    assert torch.allclose(lam1, torch.diag(torch.diag(lam1)), atol=1e-12)
    cov1 = torch.linalg.inv(lam1)
    M = cov1 @ C.T @ torch.diag(1 / s2)
    m = cov1 @ (torch.linalg.inv(prior1) @ a - C.T @ (c / s2))
    lam2 = torch.eye(2, dtype=DT) + A.T @ torch.diag(1 / d1) @ A
    cov2 = torch.linalg.inv(lam2)
    N = cov2 @ A.T @ torch.diag(1 / d1)
    with torch.no_grad():
        f1, f2 = proposal.factors[0].net[-1], proposal.factors[1].net[-1]  # bottom-up: z1 | x, then z2 | z1
        f1.weight.zero_()
        f1.weight[:3] = M
        f1.bias[:3] = m + shift
        f1.bias[3:] = 0.5 * torch.log(torch.diag(cov1))
        f2.weight.zero_()
        f2.weight[:2] = N
        f2.bias[:2] = -N @ a
        f2.bias[2:] = 0.5 * torch.log(torch.diag(cov2))


def _set_exact_top_down_posterior(proposal, model):
    """Write p(z2 | x) and p(z1 | z2, x) into an affine (``proposal_hidden=[]``) TopDownProposal."""
    A, a = model.layers["z1"].link.weight, model.layers["z1"].link.bias
    d1 = torch.exp(model.layers["z1"].log_var)
    C, c = model.layers["x"].link.weight, model.layers["x"].link.bias
    s2 = torch.exp(model.layers["x"].log_var)
    # joint Gaussian posterior of (z2, z1) given x: precision P, mean G x + g
    prior_cov = torch.cat([torch.cat([torch.eye(2, dtype=DT), A.T], 1), torch.cat([A, A @ A.T + torch.diag(d1)], 1)])
    prior_mean = torch.cat([torch.zeros(2, dtype=DT), a])
    P = torch.linalg.inv(prior_cov)
    P[2:, 2:] += C.T @ torch.diag(1 / s2) @ C
    S = torch.linalg.inv(P)
    lift = torch.cat([torch.zeros(2, 4, dtype=DT), C.T @ torch.diag(1 / s2)])  # [5, Dx]
    G = S @ lift
    g = S @ (torch.linalg.solve(prior_cov, prior_mean) - lift @ c)
    P11_inv = torch.linalg.inv(P[2:, 2:])
    R = P11_inv @ P[2:, :2]  # E[z1 | z2, x] = mu1 - R (z2 - mu2)
    assert torch.allclose(S[:2, :2], torch.diag(torch.diag(S[:2, :2])), atol=1e-12)
    assert torch.allclose(P11_inv, torch.diag(torch.diag(P11_inv)), atol=1e-12)
    with torch.no_grad():
        f2, f1 = proposal.factors[0].net[-1], proposal.factors[1].net[-1]  # top first: z2 | x, then z1 | (x, z2)
        f2.weight.zero_()
        f2.weight[:2] = G[:2]
        f2.bias[:2] = g[:2]
        f2.bias[2:] = 0.5 * torch.log(torch.diag(S[:2, :2]))
        f1.weight.zero_()
        f1.weight[:3, :4] = G[2:] + R @ G[:2]
        f1.weight[:3, 4:] = -R
        f1.bias[:3] = g[2:] + R @ g[:2]
        f1.bias[3:] = 0.5 * torch.log(torch.diag(P11_inv))


def _z_scores(algo, x, exact, reps):
    ests = [algo.wake_gradient(x) for _ in range(reps)]
    zs = {}
    for n, g in exact.items():
        stack = torch.stack([e[n] for e in ests])
        se = stack.std(0) / math.sqrt(reps)
        zs[n] = ((stack.mean(0) - g).abs() / (se + 1e-12)).max().item()
        zs[n] = 0.0 if float((stack.mean(0) - g).abs().max()) < 1e-10 else zs[n]
    return zs


@pytest.mark.parametrize(
    "name,k,reps,structure",
    [
        ("vae", 50, 200, "bottom_up"),
        ("iwae", 5, 400, "bottom_up"),
        ("iwae", 50, 200, "bottom_up"),
        ("vae", 50, 200, "top_down"),
    ],
)
def test_gradient_at_exact_posterior_is_exact_gradient(name, k, reps, structure):
    """With q set to the exact posterior, E[wake_gradient] = grad (1/B) sum log p(x) (Fisher's identity):
    every coordinate within 4.5 standard errors (32 coordinates). Negative control: shifting q's mean by 0.3
    makes the VAE gradient miss by more than 10 standard errors."""
    torch.manual_seed(0)
    model = _factorised_chain()
    algo = build_algorithm(name, model, k=k, proposal_hidden=[], structure=structure)
    if structure == "top_down":
        _set_exact_top_down_posterior(algo.proposal, model)
    else:
        _set_exact_posterior(algo.proposal, model)
    x = model.sample(16)[-1]
    # q is exact: log p(x, z) - log q(z | x) = log p(x) for every particle
    with torch.no_grad():
        log_w, _, _ = algo.log_weights(x)
        torch.testing.assert_close(log_w, linear_gaussian_loglik(model, x).expand_as(log_w), rtol=0, atol=1e-10)
    exact = exact_gradient(model, x, linear_gaussian_loglik)
    zs = _z_scores(algo, x, exact, reps)
    assert max(zs.values()) < 4.5, zs
    if name == "vae" and structure == "bottom_up":
        _set_exact_posterior(algo.proposal, model, shift=0.3)
        zs_bad = _z_scores(algo, x, exact, reps)
        assert max(zs_bad.values()) > 10, zs_bad


@pytest.mark.parametrize("name", ["vae", "iwae"])
def test_recognition_gradient_vanishes_at_exact_posterior(name):
    """At q = p(z | x) the bound is maximal in phi: the doubly reparameterised (STL for the VAE) phi-gradient
    is exactly zero (1e-9), and the total-derivative one is zero in expectation (z-score < 4.5)."""
    torch.manual_seed(0)
    model = _factorised_chain()
    x = model.sample(8)[-1]
    algo = build_algorithm(name, model, k=4, proposal_hidden=[], recognition_gradient="dreg")
    _set_exact_posterior(algo.proposal, model)
    algo.step_recognition(x)
    for p in algo.recognition_parameters():
        assert float(p.grad.abs().max()) < 1e-9
    algo = build_algorithm(name, model, k=4, proposal_hidden=[], recognition_gradient="total")
    _set_exact_posterior(algo.proposal, model)
    reps, grads = 300, []
    for _ in range(reps):
        for p in algo.recognition_parameters():
            p.grad = None
        algo.step_recognition(x)
        grads.append(torch.cat([p.grad.flatten() for p in algo.recognition_parameters()]))
    g = torch.stack(grads)
    z = g.mean(0).abs() / (g.std(0) / math.sqrt(reps) + 1e-12)
    z[g.std(0) < 1e-12] = 0.0  # coordinates that are exactly zero (zero weights of the unused rows)
    assert float(z.max()) < 4.5


# --------------------------------------------------------------------------------------------------------
# trainer protocol, errors, a short fit
# --------------------------------------------------------------------------------------------------------
def test_step_recognition_reuses_the_wake_backward_and_never_touches_model_grads():
    torch.manual_seed(0)
    model = _one_layer_model()
    x = model.sample(6)[-1]
    algo = build_algorithm("iwae", model, k=3, proposal_hidden=[5])
    torch.manual_seed(7)
    algo.wake_gradient(x)
    algo.step_recognition(x)
    stashed = [p.grad.clone() for p in algo.recognition_parameters()]
    assert all(p.grad is None for p in model.parameters())
    # the same particles, fresh: -grad of the bound w.r.t. phi
    for p in algo.recognition_parameters():
        p.grad = None
    torch.manual_seed(7)
    algo.step_recognition(x)  # no stash now: recomputes with the same RNG draw
    for g, p in zip(stashed, algo.recognition_parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())
    # a different tensor (x.clone()) does not use the stash of x: it recomputes with its own draw
    torch.manual_seed(7)
    algo.wake_gradient(x)
    for p in algo.recognition_parameters():
        p.grad = None
    torch.manual_seed(8)
    info = algo.step_recognition(x.clone())
    fresh_a = [p.grad.clone() for p in algo.recognition_parameters()]
    for p in algo.recognition_parameters():
        p.grad = None
    torch.manual_seed(8)
    algo.step_recognition(x)
    for a, p in zip(fresh_a, algo.recognition_parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=0, atol=1e-12)
    assert any(not torch.allclose(a, s) for a, s in zip(fresh_a, stashed, strict=True))
    assert "bound" in info and "ess" in info


def test_warmup_trains_only_the_recognition_model():
    from wakesleep.training import Trainer

    torch.manual_seed(0)
    model = _one_layer_model()
    data = model.sample(200)[-1]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    algo = build_algorithm("iwae", model, k=3, proposal_hidden=[8], warmup=6)
    q_before = [p.detach().clone() for p in algo.proposal.parameters()]
    Trainer(algo, epochs=3, batch_size=100, monitor_samples=0, progress=False).fit(data)  # 6 iterations
    assert algo.n_wake_ == 6 and algo.state_dict()["n_wake"] == 6
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    assert any(not torch.equal(a, b) for a, b in zip(q_before, algo.proposal.parameters(), strict=True))
    Trainer(algo, epochs=1, batch_size=100, monitor_samples=0, progress=False).fit(data)  # past the warm-up
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("name", ["vae", "iwae", "flow"])
def test_discrete_latents_are_refused(name):
    model = wakesleep.build_model(
        {"layers": [{"name": "z1", "family": "bernoulli", "dim": 3}, {"name": "x", "family": "gaussian", "dim": 2}]}
    )
    with pytest.raises(WakesleepError, match=f"{name}: latent z1 is binary; use vimco, rws or bbvi"):
        build_algorithm(name, model)


def test_bad_options_are_named():
    model = _one_layer_model()
    with pytest.raises(WakesleepError, match="algorithm.k"):
        build_algorithm("iwae", model, k=0)
    with pytest.raises(WakesleepError, match="algorithm.flow_type"):
        build_algorithm("flow", model, flow_type="sylvester")
    with pytest.raises(WakesleepError, match="algorithm.structure"):
        build_algorithm("vae", model, structure="sideways")
    with pytest.raises(WakesleepError, match="algorithm.recognition_gradient"):
        build_algorithm("vae", model, recognition_gradient="score")
    with pytest.raises(WakesleepError, match="algorithm.warmup"):
        build_algorithm("vae", model, warmup=-1)
    with pytest.raises(WakesleepError, match="unknown option"):
        build_algorithm("vae", model, particles=3)


@pytest.mark.parametrize(
    "name,opts",
    [
        ("vae", {}),
        ("iwae", {"k": 5}),
        ("vae", {"structure": "top_down"}),
        ("flow", {"flow_type": "planar"}),
        ("flow", {"flow_type": "radial", "amortized": False}),
    ],
)
def test_training_raises_the_log_likelihood_of_a_linear_gaussian_model(name, opts):
    """Trainer + algorithm on data from a one-layer linear-Gaussian model, from a perturbed start: the exact
    mean log-likelihood goes up by more than 0.2 nats in 300 iterations; samples are finite; checkpoints load."""
    from wakesleep.training import Trainer

    torch.manual_seed(0)
    true = _one_layer_model(seed=0)
    data = true.sample(500)[-1]
    model = _one_layer_model(seed=3)
    with torch.no_grad():
        model.layers["x"].log_var.fill_(math.log(2.0))
    ll0 = float(linear_gaussian_loglik(model, data).mean().detach())
    algo = build_algorithm(name, model, proposal_hidden=[16], seed=0, **opts)
    Trainer(algo, epochs=60, batch_size=100, lr=1e-2, recognition_lr=1e-2, monitor_samples=0, progress=False).fit(data)
    ll1 = float(linear_gaussian_loglik(model, data).mean().detach())
    assert ll1 > ll0 + 0.2, (ll0, ll1)
    state = algo.state_dict()
    other = build_algorithm(name, model, proposal_hidden=[16], seed=1, **opts)
    other.load_state_dict(state)
    for a, b in zip(algo.proposal.parameters(), other.proposal.parameters(), strict=True):
        assert torch.equal(a, b)
