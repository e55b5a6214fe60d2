"""The AL-WS experiments circle, dynamics, images and ica: tiny end-to-end runs, their measures, the zoo models'
log joints against hand computations, config files in sync with the modules' defaults."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from wakesleep.experiments import get_experiment, run_experiment

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["circle", "dynamics", "images", "ica"]


def _finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(_finite(v) for k, v in obj.items() if k != "config")
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


@pytest.mark.parametrize("name", NAMES)
def test_config_file_matches_default(name):
    from wakesleep.schema import fields_of

    experiment = get_experiment(name)
    assert (ROOT / "configs" / f"{name}.yaml").read_text() == experiment.defaults_text()
    section = yaml.safe_load(experiment.defaults_text())["experiment"]
    assert set(section) == set(fields_of(experiment.Options)) | {"quick"}


# --------------------------------------------------------------------------------------------------------
# zoo models: log_joint against hand computations
# --------------------------------------------------------------------------------------------------------
def test_circle_model_log_joint_by_hand():
    from wakesleep.models.zoo import CircleModel

    m = CircleModel(5, hidden=(4,), sigma_x=0.3, learn_sigma=True).double()
    z, x = m.sample(7)
    assert z.min() >= 0 and z.max() < 2 * math.pi
    mean = m.mean(z).detach().numpy()
    hand = -math.log(2 * math.pi) + stats.norm.logpdf(x.numpy(), mean, 0.3).sum(1)
    np.testing.assert_allclose(m.log_joint(x, [z]).detach().numpy(), hand, rtol=1e-6)
    # particle axis: zs [K, B, 1] against x [B, D]
    zk = torch.rand(3, 7, 1, dtype=torch.float64) * 2 * math.pi
    assert m.log_joint(x, [zk]).shape == (3, 7)
    # the mean is a function of the point on the circle: z and z + 2 pi agree
    torch.testing.assert_close(m.mean(z + 2 * math.pi), m.mean(z))


def test_uniform_logit_bernoulli_log_joint_by_hand():
    from wakesleep.models.zoo import UniformLogitBernoulli

    m = UniformLogitBernoulli(3, 6, init_std=1.0, seed=1).double()
    z, x = m.sample(10)
    logits = np.log(z.numpy() / (1 - z.numpy())) @ m.weight.detach().numpy().T + m.bias.detach().numpy()
    p = 1 / (1 + np.exp(-logits))
    hand = stats.bernoulli.logpmf(x.numpy(), p).sum(1)  # log p(z) = 0 on (0, 1)^3
    np.testing.assert_allclose(m.log_joint(x, [z]).detach().numpy(), hand, rtol=1e-8)


def test_population_dynamics_log_joint_by_hand():
    from wakesleep.models.zoo import PopulationDynamics

    m = PopulationDynamics(
        T=6,
        burn_in=4,
        max_tau=5,
        P=5.0,
        N0=1.5,
        delta=0.2,
        sigma_p=0.4,
        sigma_d=0.5,
        sigma_n=0.2,
        tau_logits=torch.tensor([0.1, -0.3, 0.5, 0.0, 0.2]),
    ).double()
    tau, e, eps, x = m.sample(4)
    assert set(tau.reshape(-1).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    logits = np.array([0.1, -0.3, 0.5, 0.0, 0.2])
    logm = logits - np.log(np.exp(logits).sum())
    out = []
    for i in range(4):
        t_i = int(tau[i, 0])
        hist = [1.0] * 6  # z_t = z_init for t <= 0
        for t in range(10):
            lag = hist[-1 - t_i]
            hist.append(
                5.0 * lag * math.exp(-lag / 1.5) * float(e[i, t]) + hist[-1] * math.exp(-0.2 * float(eps[i, t]))
            )
        z = np.array(hist[6:])[4:]
        lp = logm[t_i - 1]
        lp += stats.gamma.logpdf(e[i].numpy(), a=1 / 0.16, scale=0.16).sum()
        lp += stats.gamma.logpdf(eps[i].numpy(), a=1 / 0.25, scale=0.25).sum()
        lp += stats.lognorm.logpdf(x[i].numpy(), s=0.2, scale=z).sum()
        out.append(lp)
    np.testing.assert_allclose(m.log_joint(x, [tau, e, eps]).detach().numpy(), out, rtol=1e-6)


# --------------------------------------------------------------------------------------------------------
# measures
# --------------------------------------------------------------------------------------------------------
def test_orientation_estimator_recovers_known_orientations():
    from wakesleep.experiments.circle import OrientationEstimator, gabor, uniformity

    rng = np.random.default_rng(0)
    theta = rng.uniform(0, np.pi, 200)
    x = gabor(theta, 16, 0.15, 3.0) + 0.1 * rng.standard_normal((200, 256))
    estimator = OrientationEstimator(16, 0.15, 3.0, bank_size=60)  # bank spacing 3 degrees

    def err(est):
        return np.degrees(np.abs((est - theta + np.pi / 2) % np.pi - np.pi / 2))

    clean, _ = estimator(gabor(theta, 16, 0.15, 3.0))
    assert err(clean).max() < 0.5  # the parabolic refinement beats the bank's spacing
    est, corr = estimator(x)
    assert err(est).max() < 4.0 and err(est).mean() < 1.0 and corr.min() > 0.8
    assert uniformity(theta)["ks_pvalue"] > 0.01
    bad = uniformity(rng.uniform(0, np.pi / 2, 500))
    assert bad["ks_pvalue"] < 1e-6 and bad["rayleigh_pvalue"] < 1e-6


def test_ica_measures():
    from wakesleep.experiments.ica import amari_index, filter_match, ica_loglik, spatial_spread

    rng = np.random.default_rng(0)
    W = rng.standard_normal((5, 5))
    P = np.eye(5)[[2, 0, 4, 1, 3]] * np.array([1.0, -2.0, 0.5, 3.0, 1.0])
    assert amari_index(W, np.linalg.inv(W) @ P) < 1e-12
    assert amari_index(W, rng.standard_normal((5, 5))) > 0.1
    assert filter_match(P @ W, W) == pytest.approx(1.0)
    delta = np.zeros((1, 64))
    delta[0, 27] = 1.0
    assert spatial_spread(delta, 8)[0] == pytest.approx(0.0)
    # noiseless ICA likelihood with A = I is the Laplace log density
    x = rng.laplace(size=(100, 3))
    assert ica_loglik(np.eye(3), x, 1.0) == pytest.approx(stats.laplace.logpdf(x).sum(1).mean())


def test_images_inference_reconstructs_model_images():
    from wakesleep.experiments.images import decode, infer_latents
    from wakesleep.models.zoo import UniformLogitBernoulli

    m = UniformLogitBernoulli(2, 50, init_std=4.0, seed=0).double()
    z, x = m.sample(40)
    u = infer_latents(m, x, steps=200, lr=0.1)
    err = float(((decode(m, u) > 0.5).double() != x).double().mean())
    base = float(((decode(m, torch.zeros_like(u)) > 0.5).double() != x).double().mean())
    assert err < 0.5 * base


# --------------------------------------------------------------------------------------------------------
# tiny end-to-end runs
# --------------------------------------------------------------------------------------------------------
TINY = {
    "circle": [
        "experiment.size=8",
        "experiment.envelope=2.0",
        "experiment.n_train=300",
        "experiment.n_eval=200",
        "experiment.hidden=[16]",
        "train.max_iters=10",
        "train.log_every=5",
        "algorithm.sleep_samples=100",
    ],
    "dynamics": [
        "experiment.T=10",
        "experiment.burn_in=5",
        "experiment.n_series=200",
        "experiment.n_test=100",
        "train.max_iters=5",
        "train.log_every=5",
        "algorithm.sleep_samples=100",
    ],
    "images": [
        "experiment.downsample=4",
        "experiment.n_train=300",
        "experiment.n_test=50",
        "experiment.n_mmd=50",
        "experiment.infer_steps=10",
        "experiment.latent_dim=4",
        "train.max_iters=5",
        "train.log_every=5",
        "algorithm.sleep_samples=100",
    ],
    "ica": [
        "data.n=1000",
        "data.n_test=500",
        "data.pca_dim=8",
        "experiment.fastica_n=500",
        "train.max_iters=5",
        "train.log_every=5",
        "algorithm.sleep_samples=100",
    ],
}
FILES = {
    "circle": ["orientations.png", "samples.png", "sweep.png"],
    "dynamics": ["parameters.png", "series.png"],
    "images": ["samples.png", "downstream.png", "mmd_curve.png"],
    "ica": ["basis_alws.png", "basis_pca.png", "basis_fastica.png", "training.png"],
}


@pytest.mark.parametrize("name", NAMES)
def test_experiment_tiny(name, tmp_path):
    if name == "images" and not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed")
    out = tmp_path / name
    res = run_experiment(name, out, overrides=TINY[name], progress=False)
    for f in ["results.json", "report.md", "config.yaml", *FILES[name]]:
        assert (out / f).is_file(), f
    data = json.loads((out / "results.json").read_text())
    assert data["experiment"] == name and data["iterations"] > 0
    assert _finite(data)
    assert res["seconds"] > 0
