"""Expected gradients of wake_sleep, rws, vimco and bbvi on an enumerable sigmoid belief network.

Model: z2 (2 bits) -> z1 (3 bits) -> x (5 bits), so the 32 latent configurations can be enumerated, and for
K <= 3 particles also the 32^K particle tuples. Exact targets (float64, by enumeration):

* ``exact_loglik``: grad (1/B) sum_b log p(x_b);
* ``exact_elbo``: grad of the ELBO E_q[log p(x, z) - log q(z | x)] (w.r.t. theta and phi);
* ``exact_iwae(K)``: grad of the K-sample bound L_K = E_q[log (1/K) sum_k p(x, z_k) / q(z_k | x)].

Monte Carlo protocol: one call on the minibatch repeated M times is the mean of M independent estimates;
R = 100 such calls give a mean and a standard error per gradient component, and an estimator is declared unbiased
for a target when max_i |mean_i - target_i| / se_i < Z_TOL over all components (Z_TOL = 5, i.e. a
Bonferroni-corrected two-sided level ~2e-5 for ~30 components). Each unbiasedness test also checks that the
same statistic *rejects* a wrong target (the likelihood gradient), so the tests can fail.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import wakesleep

from oracles import cosine, enumerate_loglik, exact_gradient, sbn_config

Z_TOL = 5.0
DIMS = (2, 3, 5)
B = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def make_problem(name, seed=0, **options):
    """Model, algorithm (proposal perturbed away from the posterior) and a minibatch of B observations."""
    model = wakesleep.build_model(sbn_config(DIMS, seed))
    gen = torch.Generator().manual_seed(seed + 100)
    x = model.sample(B, generator=gen)[-1]
    algo = wakesleep.build_algorithm(name, model, **options)
    with torch.no_grad():
        for p in algo.proposal.parameters():
            p.copy_(0.7 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model, algo, x


# --------------------------------------------------------------------------------------------------------
# exact targets by enumeration
# --------------------------------------------------------------------------------------------------------
def configurations(model):
    dims = model.dims[:-1]
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=sum(dims))), dtype=model.dtype)
    zs, start = [], 0
    for d in dims:
        zs.append(configs[:, start : start + d].unsqueeze(1))  # [C, 1, d]
        start += d
    return zs


def enumerated(model, proposal, x):
    """log p(x, z_c) and log q(z_c | x) for every configuration c: ``[C, B]`` each (differentiable)."""
    zs = configurations(model)
    return model.log_joint(x.unsqueeze(0), zs), proposal.log_prob(x, [z.expand(-1, x.shape[0], -1) for z in zs])


def iwae_objective(model, proposal, x, k):
    """Exact L_K = sum over K-tuples of prod_k q(z_{t_k}) [logsumexp_k log w_{t_k} - log K] (batch mean)."""
    log_p, log_q = enumerated(model, proposal, x)
    log_w = log_p - log_q
    c = log_p.shape[0]
    tuples = torch.tensor(list(itertools.product(range(c), repeat=k)))  # [C^K, K]
    lw = log_w[tuples]  # [C^K, K, B]
    lq = log_q[tuples].sum(1)  # [C^K, B]
    inner = torch.logsumexp(lw, 1) - math.log(k)
    return (torch.exp(lq) * inner).sum(0).mean()


def elbo_objective(model, proposal, x):
    log_p, log_q = enumerated(model, proposal, x)
    return (torch.exp(log_q) * (log_p - log_q)).sum(0).mean()


def grads_of(objective, params):
    names, ps = zip(*params, strict=True)
    gs = torch.autograd.grad(objective, ps, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(ps, gs, strict=True)])


def theta_vec(model, grads):
    return torch.cat([grads[n].flatten() for n, _ in model.named_parameters()])


def exact_loglik_grad(model, x):
    return theta_vec(model, exact_gradient(model, x, enumerate_loglik))


# --------------------------------------------------------------------------------------------------------
# Monte Carlo expectations
# --------------------------------------------------------------------------------------------------------
def mc_theta(algo, x, reps=100, copies=600):
    """Mean and standard error of ``wake_gradient`` (flattened over the model parameters)."""
    xr = x.repeat(copies, 1)
    est = torch.stack([theta_vec(algo.model, algo.wake_gradient(xr)) for _ in range(reps)])
    return est.mean(0), est.std(0) / math.sqrt(reps)


def mc_phi(algo, x, reps=100, copies=600):
    """Mean and standard error of the recognition ascent direction ``-grad`` filled by ``step_recognition``."""
    xr = x.repeat(copies, 1)
    params = algo.recognition_parameters()
    out = []
    for _ in range(reps):
        algo.wake_gradient(xr)
        for p in params:
            p.grad = None
        algo.step_recognition(xr)
        out.append(-torch.cat([p.grad.flatten() for p in params]))
    est = torch.stack(out)
    return est.mean(0), est.std(0) / math.sqrt(reps)


def max_z(mean, se, target):
    return float(((mean - target).abs() / se.clamp_min(1e-12)).max())


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------------------------------------------------------
# rws and vimco: generative gradient = grad L_K (unbiased), biased for the likelihood, bias shrinking in K
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rws", "vimco"])
@pytest.mark.parametrize("k", [2, 3])
def test_iw_theta_gradient_matches_exact_iwae_gradient(name, k):
    torch.manual_seed(k)
    model, algo, x = make_problem(name, k=k)
    target = grads_of(iwae_objective(model, algo.proposal, x, k), list(model.named_parameters()))
    mean, se = mc_theta(algo, x)
    z = max_z(mean, se, target)
    z_ll = max_z(mean, se, exact_loglik_grad(model, x))
    print(f"{name} K={k}: max|z| vs grad L_K {z:.2f}, vs grad log p(x) {z_ll:.1f}")
    assert z < Z_TOL
    assert z_ll > 3 * Z_TOL  # the statistic has the power to see the finite-K bias


def test_rws_bias_to_likelihood_gradient_shrinks_with_k():
    """Exact for K = 1, 2, 3 (enumeration); Monte Carlo (mean of many estimates) for K = 10, 50, 250."""
    torch.manual_seed(0)
    model, algo, x = make_problem("rws", k=1)
    exact_ll = exact_loglik_grad(model, x)
    params = list(model.named_parameters())
    rows = []
    for k in (1, 2, 3):
        g = grads_of(iwae_objective(model, algo.proposal, x, k), params)
        rows.append((k, rel_err(g, exact_ll), cosine(g, exact_ll), 0.0))
    for k in (10, 50, 250):
        algo.k = k
        mean, se = mc_theta(algo, x, reps=20, copies=50_000 // k)
        rows.append((k, rel_err(mean, exact_ll), cosine(mean, exact_ll), float(se.norm() / exact_ll.norm())))
    for k, err, cos, noise in rows:
        print(f"rws K={k:3d}: relative bias {err:.4f} (MC noise {noise:.4f}), cosine {cos:.5f}")
    errs = [r[1] for r in rows]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < 0.2 * errs[0]


def test_rws_wake_q_update_approaches_inclusive_kl_gradient():
    """sum_k w~_k grad log q(z_k | x) -> sum_z p(z | x) grad log q(z | x) = -grad KL(p || q) as K grows."""
    torch.manual_seed(0)
    model, algo, x = make_problem("rws", k=2, q_update="wake")
    log_p, log_q = enumerated(model, algo.proposal, x)
    post = torch.softmax(log_p.detach(), 0)
    target = grads_of((post * log_q).sum(0).mean(), list(algo.proposal.named_parameters()))
    errs = []
    for k in (2, 10, 100):
        algo.k = k
        mean, se = mc_phi(algo, x, reps=10, copies=1000)
        errs.append(rel_err(mean, target))
        print(f"rws wake-phase q update K={k}: relative bias to -grad KL(p||q) {errs[-1]:.4f}")
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("k", [2, 3])
def test_vimco_phi_gradient_matches_exact_iwae_gradient(k):
    torch.manual_seed(10 + k)
    model, algo, x = make_problem("vimco", k=k)
    target = grads_of(iwae_objective(model, algo.proposal, x, k), list(algo.proposal.named_parameters()))
    mean, se = mc_phi(algo, x)
    z = max_z(mean, se, target)
    wrong = grads_of(elbo_objective(model, algo.proposal, x), list(algo.proposal.named_parameters()))
    z_wrong = max_z(mean, se, wrong)
    print(f"vimco K={k}: phi max|z| vs grad_phi L_K {z:.2f}, vs grad_phi ELBO {z_wrong:.1f}")
    assert z < Z_TOL
    assert z_wrong > 2 * Z_TOL


# --------------------------------------------------------------------------------------------------------
# bbvi: unbiased for the ELBO (theta and phi)
# --------------------------------------------------------------------------------------------------------
def test_bbvi_theta_gradient_matches_exact_elbo_gradient():
    torch.manual_seed(1)
    model, algo, x = make_problem("bbvi", k=4)
    target = grads_of(elbo_objective(model, algo.proposal, x), list(model.named_parameters()))
    mean, se = mc_theta(algo, x, copies=300)
    z, z_ll = max_z(mean, se, target), max_z(mean, se, exact_loglik_grad(model, x))
    print(f"bbvi theta: max|z| vs grad ELBO {z:.2f}, vs grad log p(x) {z_ll:.1f}")
    assert z < Z_TOL
    assert z_ll > 3 * Z_TOL


@pytest.mark.parametrize("cv", ["none", "loo", "ranganath"])
def test_bbvi_phi_gradient_matches_exact_elbo_gradient(cv):
    """'none' and 'loo' are unbiased; 'ranganath' estimates a* from the same particles (O(1/K) bias, K = 20
    here), which the z-test at this precision does not detect. Also reports the variance reduction."""
    torch.manual_seed(2)
    k = 20 if cv == "ranganath" else 4
    model, algo, x = make_problem("bbvi", k=k, control_variate=cv)
    phi = list(algo.proposal.named_parameters())
    target = grads_of(elbo_objective(model, algo.proposal, x), phi)
    mean, se = mc_phi(algo, x, copies=150 if cv == "ranganath" else 300)
    z = max_z(mean, se, target)
    wrong = grads_of(iwae_objective(model, algo.proposal, x, 2), phi)
    print(
        f"bbvi phi ({cv}, K={k}): max|z| vs grad ELBO {z:.2f}, vs grad L_2 {max_z(mean, se, wrong):.1f}, "
        f"mean se {float(se.mean()):.2e}"
    )
    assert z < Z_TOL
    assert max_z(mean, se, wrong) > 2 * Z_TOL


def test_bbvi_control_variates_reduce_variance():
    torch.manual_seed(3)
    spread = {}
    for cv in ("none", "loo", "ranganath"):
        model, algo, x = make_problem("bbvi", k=10, control_variate=cv)
        _, se = mc_phi(algo, x, reps=30, copies=1)
        spread[cv] = float(se.norm())
    print("bbvi phi-gradient standard deviation (relative):", {k: v / spread["none"] for k, v in spread.items()})
    assert spread["loo"] < spread["none"] and spread["ranganath"] < spread["none"]


# --------------------------------------------------------------------------------------------------------
# wake_sleep: sampled wake gradient = grad_theta ELBO (biased for the likelihood); mean field, eq. 12
# --------------------------------------------------------------------------------------------------------
def test_wake_sleep_sampled_wake_gradient_is_elbo_gradient_and_bias_is_reported():
    torch.manual_seed(4)
    model, algo, x = make_problem("wake_sleep", k=4)
    target = grads_of(elbo_objective(model, algo.proposal, x), list(model.named_parameters()))
    exact_ll = exact_loglik_grad(model, x)
    mean, se = mc_theta(algo, x, copies=300)
    z = max_z(mean, se, target)
    print(
        f"wake_sleep sampled: max|z| vs grad_theta ELBO {z:.2f}; bias to grad log p(x): relative "
        f"{rel_err(mean, exact_ll):.3f}, cosine {cosine(mean, exact_ll):.4f}"
    )
    assert z < Z_TOL
    assert max_z(mean, se, exact_ll) > 3 * Z_TOL


def test_wake_sleep_mean_field_bias_reported_and_shrinks_when_q_is_posterior_point_mass():
    """With near-deterministic recognition (|logits| = 30) on the MAP configuration, eq. 12 is exactly
    -log p(x, z*), so the mean-field wake gradient is grad log p(x, z*) (checked to 1e-8)."""
    torch.manual_seed(5)
    model, algo, x = make_problem("wake_sleep", variant="mean_field")
    exact_ll = exact_loglik_grad(model, x)
    g = theta_vec(model, algo.wake_gradient(x))
    print(
        f"wake_sleep mean_field: bias to grad log p(x): relative {rel_err(g, exact_ll):.3f}, "
        f"cosine {cosine(g, exact_ll):.4f}"
    )
    # point-mass recognition on a single datum: q logits = +-30 at a chosen configuration
    x1 = x[:1]
    zstar = [torch.tensor([[1.0, 0.0]], dtype=x.dtype), torch.tensor([[0.0, 1.0, 1.0]], dtype=x.dtype)]
    with torch.no_grad():
        for factor, z in zip(algo.proposal.factors, zstar[::-1], strict=True):
            lin = factor.net[-1]
            lin.weight.zero_()
            lin.bias.copy_(30.0 * (2 * z[0] - 1))
    f = algo.free_energy(x1)
    lj = model.log_joint(x1, zstar)
    assert abs(float(f.detach()) + float(lj.detach())) < 1e-8
    g1 = theta_vec(model, algo.wake_gradient(x1))
    names, ps = zip(*model.named_parameters(), strict=True)
    g_exact = torch.cat([g.flatten() for g in torch.autograd.grad(lj.sum(), ps)])
    assert torch.allclose(g1, g_exact, atol=1e-8)


def test_free_energy_eq12_by_hand():
    """eq. 12 term by term with numpy-style loops, both generative activations (eq. 9 analogue, eq. 11)."""
    torch.manual_seed(6)
    for ga in (False, True):
        model, algo, x = make_problem("wake_sleep", variant="mean_field", generative_activation=ga)
        if ga:  # eq. 11 is a probability for non-negative weights
            with torch.no_grad():
                for p in model.parameters():
                    p.abs_()
        layers = list(model.layers.values())
        q1 = torch.sigmoid(algo.proposal.factors[0].net(x))
        q2 = torch.sigmoid(algo.proposal.factors[1].net(q1))
        qs = [q2, q1, x]
        total = torch.zeros(B, dtype=x.dtype)
        for b in range(B):
            for li, layer in enumerate(layers):
                for j in range(layer.dim):
                    q = float(qs[li][b, j].detach())
                    if li == 0:
                        p = float(torch.sigmoid(layer.link.value[j]))
                    elif not ga:
                        w, bias = layer.link.weight, layer.link.bias
                        p = float(torch.sigmoid((w[j] * qs[li - 1][b]).sum() + bias[j]))
                    else:
                        th = torch.cat([layer.link.weight[j], layer.link.bias[j : j + 1]])
                        qa = torch.cat([qs[li - 1][b], torch.ones(1, dtype=x.dtype)])
                        first = 1 - 1 / (1 + float((qa * th).sum()))
                        prod = 1.0
                        for qk, tk in zip(qa.tolist(), th.tolist(), strict=True):
                            prod *= 1 - qk * tk / (1 + tk)
                        p = first * (1 - prod)
                    term = 0.0
                    if q > 0:
                        term += q * math.log(q / p)
                    if q < 1:
                        term += (1 - q) * math.log((1 - q) / (1 - p))
                    total[b] += term
        f = algo.free_energy(x, per_example=True).detach()
        assert torch.allclose(f, total, rtol=1e-10, atol=1e-10), (ga, f, total)
        if ga:
            assert algo.last_eq11_clipped == 0.0


def test_wake_sleep_trains_and_reports_free_energy():
    from wakesleep.training import Trainer

    torch.manual_seed(7)
    truth = wakesleep.build_model(sbn_config(DIMS, 0))
    data = truth.sample(300)[-1]
    for opts in ({}, {"variant": "mean_field"}, {"variant": "mean_field", "q_update": "free_energy"}):
        model = wakesleep.build_model(sbn_config(DIMS, 1))
        algo = wakesleep.build_algorithm("wake_sleep", model, **opts)
        before = float(enumerate_loglik(model, data).mean())
        tr = Trainer(algo, epochs=15, batch_size=50, lr=3e-2, recognition_lr=3e-2, monitor_samples=0).fit(data)
        after = float(enumerate_loglik(model, data).mean())
        fe = tr.history_[-1]["recognition/free_energy"]
        print(f"wake_sleep {opts}: log p(x) {before:.3f} -> {after:.3f}, eq. 12 free energy {fe:.3f}")
        assert after > before + 0.5
        assert math.isfinite(fe)


@pytest.mark.parametrize("name", ["rws", "vimco", "bbvi"])
def test_trainer_improves_likelihood(name):
    from wakesleep.training import Trainer

    torch.manual_seed(8)
    truth = wakesleep.build_model(sbn_config(DIMS, 0))
    data = truth.sample(300)[-1]
    model = wakesleep.build_model(sbn_config(DIMS, 1))
    algo = wakesleep.build_algorithm(name, model, k=5)
    before = float(enumerate_loglik(model, data).mean())
    tr = Trainer(algo, epochs=15, batch_size=50, lr=3e-2, recognition_lr=3e-2, monitor_samples=0).fit(data)
    after = float(enumerate_loglik(model, data).mean())
    print(f"{name}: log p(x) {before:.3f} -> {after:.3f}; last record {tr.history_[-1]}")
    assert after > before + 0.5
    # the recognition update never touched the model's .grad
    assert all(p.grad is None for p in model.parameters())
