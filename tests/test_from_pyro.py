"""``wakesleep.models.from_pyro``: Pyro programs as models, checked against the same models written in YAML.

Two models are written both ways with the same parameter values: the paper's eq. 13 model
(``configs/synthetic.yaml``: z2 ~ MoG, z1 | z2 ~ Laplace(0, softplus(B z2)), x | z1 ~ N(Lambda z1, Psi)) and a
2-3-4 sigmoid belief network. Pyro's Bernoulli and Normal draw from torch's RNG exactly as the library's
families do, so the SBN's samples (hence AL-WS's estimates and training) are bit for bit the same from the same
seed; eq. 13's Laplace and mixture draw in another order, so there the library model is given the Pyro
model's sampler (the same distribution) to compare estimates and training at equal samples.
"""

from __future__ import annotations

import copy
import itertools
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

import wakesleep
from wakesleep.errors import WakesleepError
from wakesleep.models import from_pyro
from wakesleep.training import Trainer

pyro = pytest.importorskip("pyro")
dist = pytest.importorskip("pyro.distributions")

from wakesleep.models import pyro_models  # noqa: E402
from wakesleep.models.pyro_models import PyroGuide  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

DT = torch.float64
EQ13_NAMES = {"B": "layers.z1.link.weight", "Lambda": "layers.x.link.weight", "log_psi": "layers.x.log_var"}
SBN_NAMES = {
    "b2": "layers.z2.link.value",
    "W1": "layers.z1.link.weight",
    "c1": "layers.z1.link.bias",
    "W0": "layers.x.link.weight",
    "c0": "layers.x.link.bias",
}
SBN_LAYERS = [
    {"name": "z2", "family": "bernoulli", "dim": 2},
    {"name": "z1", "family": "bernoulli", "dim": 3, "link": "linear"},
    {"name": "x", "family": "bernoulli", "dim": 4, "link": "linear"},
]


# --------------------------------------------------------------------------------------------------------
# the two models, both ways
# --------------------------------------------------------------------------------------------------------
def eq13_pair(seed: int = 0):
    """(library model, Pyro model, Pyro name -> library name) with the same parameter values."""
    torch.manual_seed(seed)
    with open("configs/synthetic.yaml") as f:
        lib = wakesleep.build_model(yaml.safe_load(f)["model"])
    prior = lib.layers.z2.prior
    logits, means, std = prior.logits.clone(), prior.means.clone(), prior.log_std.exp()
    init = {k: dict(lib.named_parameters())[v].detach().clone() for k, v in EQ13_NAMES.items()}

    def eq13():
        B = pyro.param("B", init["B"])  # read in the library's parameter order (AL-WS's random directions)
        log_psi = pyro.param("log_psi", init["log_psi"])
        Lam = pyro.param("Lambda", init["Lambda"])
        mix = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(means, std).to_event(1))
        z2 = pyro.sample("z2", mix)
        z1 = pyro.sample("z1", dist.Laplace(0.0, F.softplus(F.linear(z2, B))).to_event(1))
        pyro.sample("x", dist.Normal(F.linear(z1, Lam), torch.exp(0.5 * log_psi)).to_event(1))

    return lib, from_pyro(eq13, observed="x", dtype=DT), EQ13_NAMES


def sbn_program(init: dict):
    def sbn():
        b2 = pyro.param("b2", init["b2"])
        W1, c1 = pyro.param("W1", init["W1"]), pyro.param("c1", init["c1"])
        W0, c0 = pyro.param("W0", init["W0"]), pyro.param("c0", init["c0"])
        z2 = pyro.sample("z2", dist.Bernoulli(logits=b2).to_event(1))
        z1 = pyro.sample("z1", dist.Bernoulli(logits=F.linear(z2, W1, c1)).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=F.linear(z1, W0, c0)).to_event(1))

    return sbn


def sbn_pair(seed: int = 0, init_std: float = 1.0):
    torch.manual_seed(seed)
    lib = wakesleep.build_model({"layers": copy.deepcopy(SBN_LAYERS), "dtype": "float64"})
    with torch.no_grad():
        for p in lib.parameters():
            p.copy_(torch.randn_like(p) * init_std)
    init = {k: dict(lib.named_parameters())[v].detach().clone() for k, v in SBN_NAMES.items()}
    return lib, from_pyro(sbn_program(init), observed="x", dtype=DT), SBN_NAMES


def sbn_guide(x):
    V1, d1 = pyro.param("V1", torch.zeros(3, 4)), pyro.param("d1", torch.zeros(3))
    V2, d2 = pyro.param("V2", torch.zeros(2, 3)), pyro.param("d2", torch.zeros(2))
    z1 = pyro.sample("z1", dist.Bernoulli(logits=F.linear(x, V1, d1)).to_event(1))  # bottom-up: z1 first
    pyro.sample("z2", dist.Bernoulli(logits=F.linear(z1, V2, d2)).to_event(1))


def exact_sbn_loglik(model, x) -> float:
    """Mean exact log p(x) of a 2-3-4 SBN by enumerating the 32 latent configurations."""
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)), dtype=DT)
    zs = [configs[:, None, :2], configs[:, None, 2:]]
    with torch.no_grad():
        lj = model.log_joint(x, zs)  # [32, B]
    return float((torch.logsumexp(lj, 0)).mean())


def by_library_name(grads: dict, names: dict, pyro_model) -> dict:
    return {names[k]: grads[pyro_model.parameter_name(k)] for k in names}


PAIRS = {"eq13": eq13_pair, "sbn": sbn_pair}


# --------------------------------------------------------------------------------------------------------
# log joint and its gradient
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", sorted(PAIRS))
def test_log_joint_and_gradients_match_the_yaml_model(which):
    lib, pm, names = PAIRS[which]()
    assert pm.latent_names == lib.latent_names and pm.dims == lib.dims and pm.obs_dim == lib.obs_dim
    assert pm.dtype == DT and sorted(n for n, _ in pm.named_parameters()) == sorted(f"params.{k}" for k in names)
    torch.manual_seed(1)
    *zs, x = lib.sample(40)
    lp, ll = pm.log_joint(x, zs), lib.log_joint(x, zs)
    assert lp.shape == (40,) and torch.allclose(lp, ll, rtol=0, atol=1e-10)
    for a, b in zip(pm.log_joint(x, zs, per_layer=True), lib.log_joint(x, zs, per_layer=True), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
    # particles [K, B] against data [B]
    zk = [lib.sample(5 * 40)[i].reshape(5, 40, -1) for i in range(len(zs))]
    assert pm.log_joint(x, zk).shape == (5, 40)
    assert torch.allclose(pm.log_joint(x, zk), lib.log_joint(x, zk), rtol=0, atol=1e-10)
    # gradients w.r.t. the parameters
    gp = torch.autograd.grad(pm.log_joint(x, zs).sum(), [p for _, p in pm.named_parameters()])
    gl = dict(
        zip(
            [n for n, _ in lib.named_parameters()],
            torch.autograd.grad(lib.log_joint(x, zs).sum(), list(lib.parameters())),
            strict=True,
        )
    )
    gp = by_library_name(dict(zip([n for n, _ in pm.named_parameters()], gp, strict=True)), names, pm)
    for name, g in gp.items():
        assert torch.allclose(g, gl[name], rtol=0, atol=1e-10), name


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone():
    lib, pm, _ = sbn_pair()
    state = torch.get_rng_state()
    a = pm.sample(30, generator=torch.Generator().manual_seed(5))
    b = pm.sample(30, generator=torch.Generator().manual_seed(5))
    c = pm.sample(30, generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a, c, strict=True))
    assert [t.shape for t in a] == [(30, 2), (30, 3), (30, 4)] and all(t.dtype == DT for t in a)
    g = torch.Generator().manual_seed(5)  # the generator advances: two draws differ
    assert not torch.equal(pm.sample(30, generator=g)[-1], pm.sample(30, generator=g)[-1])
    # SBN: Pyro's Bernoulli draws from the global RNG exactly as the library's family does
    torch.manual_seed(3)
    s_pyro = pm.sample(50)
    torch.manual_seed(3)
    s_lib = lib.sample(50)
    assert all(torch.equal(u, v) for u, v in zip(s_pyro, s_lib, strict=True))


# --------------------------------------------------------------------------------------------------------
# AL-WS: the same estimates and the same learned parameters
# --------------------------------------------------------------------------------------------------------
ALWS = {"sleep_samples": 300, "kernel": "exact", "seed": 3}  # bandwidth and ridge chosen on held-out samples
ALWS_FIXED = {"sleep_samples": 200, "kernel": "exact", "seed": 3, "bandwidth": 1.0, "ridge": 1e-3}


def _shared_sampler(lib, which, monkeypatch):
    """eq. 13: the library model draws through a Pyro twin's sampler at its own current parameters (the same
    distribution; Pyro's Laplace and mixture consume the RNG in another order than the library's families)."""
    if which != "eq13":
        return
    _, twin, names = eq13_pair()

    def sample(n, generator=None):
        lib_params = dict(lib.named_parameters())
        with torch.no_grad():
            for k, lname in names.items():
                twin.params[k].copy_(lib_params[lname])
        return twin.sample(n, generator=generator)

    monkeypatch.setattr(lib, "sample", sample)


@pytest.mark.parametrize("which", sorted(PAIRS))
def test_al_ws_wake_gradient_is_the_same_from_the_same_seed(which, monkeypatch):
    lib, pm, names = PAIRS[which]()
    _shared_sampler(lib, which, monkeypatch)
    torch.manual_seed(11)
    x = lib.sample(50)[-1]
    grads = []
    for model in (lib, pm):
        algo = wakesleep.build_algorithm("al_ws", model, **ALWS)
        torch.manual_seed(7)
        algo.sleep()
        grads.append(algo.wake_gradient(x))
    gp = by_library_name(grads[1], names, pm)
    assert set(gp) == set(grads[0])
    for name, g in gp.items():
        assert torch.allclose(g, grads[0][name], rtol=1e-8, atol=1e-10), name


def _train(model, algorithm: str, data, iters: int, seed: int = 0, **options):
    algo = wakesleep.build_algorithm(algorithm, model, **options)
    Trainer(
        algo,
        epochs=100,
        batch_size=50,
        lr=1e-2,
        recognition_lr=1e-2,
        seed=seed,
        max_iters=iters,
        progress=False,
        monitor_samples=0,
        log_every=1000,
    ).fit(data)
    return algo


@pytest.mark.parametrize("which", sorted(PAIRS))
def test_al_ws_learns_the_same_parameters_from_the_same_seed(which, monkeypatch):
    lib, pm, names = PAIRS[which]()
    _shared_sampler(lib, which, monkeypatch)
    torch.manual_seed(21)
    data = lib.sample(200)[-1]
    start = {k: pm.param(k).detach().clone() for k in names}
    for model in (lib, pm):
        _train(model, "al_ws", data, iters=10, **ALWS_FIXED)
    moved = 0.0
    for k, lname in names.items():
        learned = pm.param(k).detach()
        moved = max(moved, float((learned - start[k]).abs().max()))
        assert torch.allclose(learned, dict(lib.named_parameters())[lname].detach(), rtol=0, atol=1e-8), k
    assert moved > 1e-3  # training did move the parameters (10 Adam steps of 1e-2)


# --------------------------------------------------------------------------------------------------------
# proposal-based algorithms
# --------------------------------------------------------------------------------------------------------
def _sbn_data():
    true, _, _ = sbn_pair(seed=42, init_std=2.0)
    torch.manual_seed(4)
    return true, true.sample(300)[-1]


@pytest.mark.parametrize("guide", [False, True], ids=["library_proposal", "pyro_guide"])
def test_rws_learns_a_pyro_sbn(guide):
    true, data = _sbn_data()
    _, pm, _ = sbn_pair(seed=1, init_std=0.1)
    before = exact_sbn_loglik(pm, data)
    options = {"k": 5}
    if guide:
        torch.manual_seed(0)
        options["proposal"] = PyroGuide(pm, sbn_guide)
        assert sorted(n for n, _ in options["proposal"].named_parameters()) == [
            "params.V1",
            "params.V2",
            "params.d1",
            "params.d2",
        ]
    algo = _train(pm, "rws", data, iters=300, **options)
    after = exact_sbn_loglik(pm, data)
    assert after > before + 0.3, (before, after, exact_sbn_loglik(true, data))
    if guide:
        assert algo.proposal.params["V1"].abs().sum() > 0  # the guide's parameters learned too


def test_pyro_guide_is_a_proposal():
    _, pm, _ = sbn_pair()
    torch.manual_seed(0)
    q = PyroGuide(pm, sbn_guide, init={"d2": torch.tensor([0.5, -0.5])})
    x = pm.sample(7)[-1]
    zs, log_q = q.sample(x, 3)
    assert [z.shape for z in zs] == [(3, 7, 2), (3, 7, 3)] and log_q.shape == (3, 7)
    assert torch.allclose(q.log_prob(x, zs), log_q, atol=1e-12)
    # by hand: q(z1 | x) q(z2 | z1)
    z2, z1 = zs
    d2 = torch.tensor([0.5, -0.5], dtype=DT)
    ref = dist.Bernoulli(logits=torch.zeros(3, dtype=DT)).log_prob(z1).sum(-1) + dist.Bernoulli(
        logits=d2.expand(3, 7, 2)
    ).log_prob(z2).sum(-1)
    assert torch.allclose(log_q, ref, atol=1e-12)
    assert not q.reparameterized and q.log_prob(x, [z[0] for z in zs]).shape == (7,)


@pytest.mark.parametrize("algorithm", ["vimco", "bbvi"])
def test_other_proposal_algorithms_take_a_pyro_model(algorithm):
    _, pm, _ = sbn_pair()
    algo = wakesleep.build_algorithm(algorithm, pm, k=3)
    grads = algo.wake_gradient(pm.sample(20)[-1])
    assert set(grads) == {n for n, _ in pm.named_parameters()} and all(torch.isfinite(g).all() for g in grads.values())


def test_rws_proposal_option_must_be_a_module():
    _, pm, _ = sbn_pair()
    with pytest.raises(WakesleepError, match="algorithm.proposal must be a torch.nn.Module") as exc:
        wakesleep.build_algorithm("rws", pm, proposal="guide")
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------------------------------------
# other site kinds: plates, categorical, interval, dtype
# --------------------------------------------------------------------------------------------------------
def test_plate_categorical_and_interval_sites():
    def mixture():
        logits = pyro.param("logits", torch.zeros(3))
        loc = pyro.param("loc", torch.tensor([-2.0, 0.0, 2.0]))
        u = pyro.sample("u", dist.Beta(2.0, 2.0))  # an interval-valued scalar
        with pyro.plate("units", 4):
            c = pyro.sample("c", dist.Categorical(logits=logits))
            pyro.sample("x", dist.Normal(loc[c] * u, 1.0))

    pm = from_pyro(mixture, observed="x", dtype=DT)
    assert pm.max_plate_nesting == 1 and pm.dims == [1, 4, 4]
    assert pm.sites["c"].family.support == "categorical" and pm.sites["c"].family.categories == 3
    assert pm.sites["u"].family.support == "interval" and pm.sites["c"].value_dtype == torch.int64
    u, c, x = pm.sample(6)
    assert c.dtype == DT and set(c.unique().tolist()) <= {0.0, 1.0, 2.0}
    lp = torch.distributions.Beta(2.0, 2.0).log_prob(u[:, 0]) + (
        math.log(1 / 3)
        + torch.distributions.Normal(torch.tensor([-2.0, 0.0, 2.0], dtype=DT)[c.long()] * u, 1.0).log_prob(x)
    ).sum(-1)
    assert torch.allclose(pm.log_joint(x, [u, c]), lp, atol=1e-12)
    assert pm.sites["c"].embed(c).shape == (6, 12)
    with pytest.raises(WakesleepError, match="'u' has interval-valued support"):
        wakesleep.build_algorithm("rws", pm)
    algo = wakesleep.build_algorithm("al_ws", pm, sleep_samples=50)
    algo.sleep()
    assert set(algo.wake_gradient(x)) == {"params.logits", "params.loc"}
    assert pm.float().sample(3)[0].dtype == torch.float32


def test_constrained_and_module_parameters():
    net = torch.nn.Linear(1, 2).double()

    def model():
        pyro.module("net", net)
        scale = pyro.param("noise.scale", torch.tensor(0.5), constraint=torch.distributions.constraints.positive)
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(net(z), scale).to_event(1))

    pm = from_pyro(model, dtype=DT)
    names = dict(pm.named_parameters())
    assert names["params.net$$$weight"] is net.weight  # shared, not copied
    assert pm.parameter_name("noise.scale") == "params.noise_scale"
    assert torch.allclose(names["params.noise_scale"], torch.tensor(math.log(0.5), dtype=DT))
    assert torch.allclose(pm.param("noise.scale"), torch.tensor(0.5, dtype=DT))
    z, x = pm.sample(4)
    g = torch.autograd.grad(pm.log_joint(x, [z]).sum(), [names["params.noise_scale"], net.weight])
    assert all(torch.isfinite(t).all() and t.abs().sum() > 0 for t in g)


# --------------------------------------------------------------------------------------------------------
# bad inputs: one line, naming the site
# --------------------------------------------------------------------------------------------------------
class NoSupport(dist.TorchDistribution):
    arg_constraints = {}

    def __init__(self):
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size())

    def sample(self, sample_shape=()):
        return torch.zeros(torch.Size(sample_shape) + self.batch_shape)

    def log_prob(self, value):
        return torch.zeros(value.shape)


def _z_then_x(z_dist=None, observe=None):
    def model():
        z = pyro.sample("z", z_dist if z_dist is not None else dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=observe)

    return model


def _raises_after_z():
    pyro.sample("z", dist.Normal(0.0, 1.0))
    raise RuntimeError("boom")


def _only_x():
    pyro.sample("x", dist.Normal(0.0, 1.0))


def _no_init():
    pyro.sample("z", dist.Normal(pyro.param("m"), 1.0))
    pyro.sample("x", dist.Normal(0.0, 1.0))


BAD = {
    "observed name wrong": (_z_then_x(), {"observed": "y"}, "no sample site 'y'.*'z', 'x'"),
    "no observed site": (lambda: pyro.sample("z", dist.Normal(0.0, 1.0)), {}, "no sample site 'x'"),
    "no latent site": (_only_x, {}, "no latent sample site"),
    "no support info": (_z_then_x(NoSupport()), {}, "site 'z'.*NoSupport.*declares no support"),
    "model raises": (_raises_after_z, {}, "raised after site 'z': RuntimeError: boom"),
    "shape error at a site": (_z_then_x(dist.Normal(torch.zeros(3), 1.0)), {}, "raised at site 'z'"),
    "observed inside": (_z_then_x(observe=torch.tensor(0.0)), {}, "site 'x' is observed inside the model"),
    "param without init": (_no_init, {}, "pyro.param 'm' has no initial value"),
    "not callable": (3, {}, "model_fn must be a callable"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_models_give_one_line_errors(case):
    fn, kwargs, pattern = BAD[case]
    with pytest.raises(WakesleepError, match=pattern) as exc:
        from_pyro(fn, **kwargs)
    assert "\n" not in str(exc.value)


def test_pyro_missing_is_a_clear_error(monkeypatch):
    pyro_models._pyro.cache_clear()
    monkeypatch.setitem(sys.modules, "pyro", None)
    try:
        with pytest.raises(WakesleepError, match=r"Pyro is not installed \(pip install 'wakesleep\[pyro\]'"):
            from_pyro(_z_then_x())
    finally:
        monkeypatch.undo()
        pyro_models._pyro.cache_clear()


def test_importing_wakesleep_does_not_import_pyro():
    code = "import sys, wakesleep, wakesleep.models; assert 'pyro' not in sys.modules; wakesleep.models.from_pyro"
    subprocess.run([sys.executable, "-c", code], check=True)
