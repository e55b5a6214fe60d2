"""Latent on the unit circle (seed 004, experiment II): AL-WS learns Gabor filters of uniform orientation.

Model (:class:`wakesleep.models.zoo.CircleModel`): z ~ Uniform[0, 2 pi) (a point on the unit circle),
x | z ~ N(NN_w(cos z, sin z), sigma_x^2 I), NN_w a tanh MLP. No reparameterisation or posterior is needed:
AL-WS only samples the model and differentiates ``log_joint``.

Data: ``experiment.n_train`` even-symmetric Gabor filters of side ``experiment.size`` with a fixed spatial
frequency (cycles per pixel) and Gaussian envelope, orientations uniform in [0, pi) (a cosine Gabor at
theta and theta + pi is the same image, so the data lie on a closed curve: a circle), plus white pixel noise
``experiment.data_noise``.

Evaluation: the orientation of each of ``experiment.n_eval`` generated filters (the model's noiseless means
NN_w(z) at z drawn from the prior, and noisy samples x) is estimated by matching against a bank of
``experiment.bank_size`` Gabors (largest normalised correlation, refined by a parabola through the peak).
Reported: a Kolmogorov-Smirnov test of the orientations against U[0, pi), a Rayleigh test on the doubled angles,
the mean peak correlation (how Gabor-like the samples are), the same numbers for the training data and for the
model at initialisation, the MMD^2 between samples and held-out Gabors, a histogram and image grids.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep import io as wio
from wakesleep.config import dump_config
from wakesleep.errors import WakesleepError

DEFAULT_CONFIG = """\
# Latent on the unit circle (seed 004, experiment II): `wakesleep experiment circle --out DIR [--quick]`.
# The model section is a deep exponential-family stand-in (used only by `wakesleep train`); the experiment builds
# z ~ U[0, 2 pi), x | z ~ N(NN_w(cos z, sin z), sigma_x^2 I) (wakesleep.models.zoo.CircleModel) itself.
model:
  layers:
    - {name: z, family: gaussian, dim: 2, learn: false, learn_variance: false}
    - {name: x, family: gaussian, dim: 256, link: mlp, hidden: [64, 64], learn_variance: false}
  dtype: float64
algorithm: {name: al_ws, sleep_samples: 1000, kernel: exact, bandwidth: auto, ridge: auto, select_every: 20}
train: {batch_size: 100, lr: 3.0e-3, seed: 0, max_iters: 3000, log_every: 250, threads: 1}
experiment:
  size: 16              # side of the Gabor images (pixels)
  frequency: 0.15       # spatial frequency of the carrier (cycles per pixel)
  envelope: 3.0         # standard deviation of the Gaussian envelope (pixels)
  data_noise: 0.05      # white noise added to the training Gabors
  n_train: 5000         # training filters
  hidden: [64, 64]      # widths of NN_w
  sigma_x: 0.1          # observation noise of the model (fixed)
  learn_sigma: false
  n_eval: 2000          # generated filters whose orientations are tested
  bank_size: 180        # orientations in the matching bank
  seed: 0
  quick: {experiment.size: 12, experiment.envelope: 2.5, train.max_iters: 1500}
"""

EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "size": 16,
    "frequency": 0.15,
    "envelope": 3.0,
    "data_noise": 0.05,
    "n_train": 5000,
    "hidden": [64, 64],
    "sigma_x": 0.1,
    "learn_sigma": False,
    "n_eval": 2000,
    "bank_size": 180,
    "seed": 0,
    "quick": {},
}


# --------------------------------------------------------------------------------------------------------
# Gabors and the orientation estimator
# --------------------------------------------------------------------------------------------------------
def gabor(theta, size: int = 16, frequency: float = 0.15, envelope: float = 3.0) -> np.ndarray:
    """Even-symmetric Gabor images ``[len(theta), size * size]`` (row-major) at orientations ``theta`` (radians).

    ``g(u, v) = exp(-(u^2 + v^2) / (2 envelope^2)) cos(2 pi frequency u')`` with ``u' = u cos theta + v sin theta``
    (u the column, v the row coordinate from the centre); theta and theta + pi give the same image.
    """
    r = np.arange(size) - (size - 1) / 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    th = np.atleast_1d(np.asarray(theta, dtype=float))[:, None, None]
    u = xx * np.cos(th) + yy * np.sin(th)
    g = np.exp(-(xx**2 + yy**2) / (2 * envelope**2)) * np.cos(2 * np.pi * frequency * u)
    return g.reshape(th.shape[0], -1)


class OrientationEstimator:
    """Orientation in [0, pi) of images by matching against a bank of Gabors (normalised correlation).

    The peak of the correlation over the (circular) bank is refined by a parabola through it and its two
    neighbours, so the resolution is much finer than ``pi / bank_size``.
    """

    def __init__(self, size: int, frequency: float, envelope: float, bank_size: int = 180) -> None:
        self.thetas = np.linspace(0.0, np.pi, int(bank_size), endpoint=False)
        bank = gabor(self.thetas, size, frequency, envelope)
        self.bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(theta [N] in [0, pi), peak correlation [N])`` of images ``[N, size * size]``."""
        x = np.asarray(images, dtype=float).reshape(len(images), -1)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        c = x @ self.bank.T  # [N, K]
        k = c.shape[1]
        i = c.argmax(1)
        rows = np.arange(len(x))
        y0, ym, yp = c[rows, i], c[rows, (i - 1) % k], c[rows, (i + 1) % k]
        denom = ym - 2 * y0 + yp
        shift = np.where(np.abs(denom) > 1e-12, 0.5 * (ym - yp) / np.where(denom == 0, 1, denom), 0.0)
        shift = np.clip(shift, -0.5, 0.5)
        theta = np.mod(self.thetas[i] + shift * (np.pi / k), np.pi)
        return theta, y0


def uniformity(theta: np.ndarray) -> dict[str, float]:
    """KS test of ``theta / pi`` against U(0, 1) and Rayleigh test of the doubled angles (uniform on the circle)."""
    from scipy import stats

    theta = np.asarray(theta, dtype=float)
    ks = stats.kstest(np.mod(theta, np.pi) / np.pi, "uniform")
    n = len(theta)
    r = float(np.abs(np.exp(2j * theta).mean()))
    z = n * r * r
    # Rayleigh p-value with the usual small-sample correction (Zar, Biostatistical Analysis, eq. 27.4)
    p_rayleigh = float(np.exp(math.sqrt(1 + 4 * n + 4 * (n * n - n * n * r * r)) - (1 + 2 * n)))
    return {
        "ks_statistic": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
        "rayleigh_r": r,
        "rayleigh_z": float(z),
        "rayleigh_pvalue": min(max(p_rayleigh, 0.0), 1.0),
    }


# --------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------
def _train(algo, data: torch.Tensor, config: dict[str, Any], progress: bool | None, callback=None):
    from wakesleep.train import trainer_from_config

    t = config["train"]
    epochs = int(t["epochs"]) if t["max_iters"] is None else 10**6  # max_iters, when set, ends the run
    return trainer_from_config(
        algo, config, epochs=epochs, progress=progress, callback=callback, monitor_samples=0
    ).fit(data)


def _evaluate(model, est: OrientationEstimator, n: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = 2 * math.pi * torch.rand(n, 1, generator=g, dtype=model.dtype)
        means = model.mean(z).numpy()
        x = (
            model.mean(z) + torch.exp(model.log_sigma) * torch.randn(n, model.obs_dim, generator=g, dtype=model.dtype)
        ).numpy()
    th_m, c_m = est(means)
    th_x, c_x = est(x)
    return {
        "means": means,
        "samples": x,
        "theta": th_m,
        "mean_filters": {**uniformity(th_m), "peak_correlation": float(c_m.mean())},
        "noisy_samples": {**uniformity(th_x), "peak_correlation": float(c_x.mean())},
    }


def _plots(out: Path, data_theta, ev, shape, hist_bins: int = 36) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wakesleep.eval.plots import plot_image_grid

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    bins = np.linspace(0, 180, hist_bins + 1)
    axes[0].hist(np.degrees(data_theta), bins=bins, density=True, alpha=0.5, label="training Gabors")
    axes[0].hist(np.degrees(ev["theta"]), bins=bins, density=True, alpha=0.5, label="generated (NN_w(z))")
    axes[0].axhline(1 / 180, color="k", lw=0.8)
    axes[0].set_xlabel("orientation (degrees)")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7)
    s = np.sort(np.degrees(ev["theta"]))
    axes[1].plot(s, np.arange(1, len(s) + 1) / len(s), label="generated")
    axes[1].plot([0, 180], [0, 1], "k--", lw=0.8, label="uniform")
    axes[1].set_xlabel("orientation (degrees)")
    axes[1].set_ylabel("empirical CDF")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "orientations.png", dpi=120)
    plt.close(fig)
    plot_image_grid(ev["means"][:64], out / "samples.png", shape, n=64, title="generated filters NN_w(z)")
    # the learned circle: z on a regular grid of angles
    plot_image_grid(ev["sweep"], out / "sweep.png", shape, n=len(ev["sweep"]), title="NN_w(z), z = 0 ... 2 pi")


def _report(res: dict[str, Any]) -> str:
    e, tr, init = res["learned"]["mean_filters"], res["data"], res["initial"]["mean_filters"]
    a = res["algorithm"]
    lines = [
        "# AL-WS: latent on the unit circle (seed 004, experiment II)",
        "",
        f"z ~ U[0, 2 pi), x | z ~ N(NN_w(cos z, sin z), {res['sigma_x']:.3g}^2 I), NN_w tanh MLP {res['hidden']}; "
        f"trained with AL-WS (N = {a['sleep_samples']} sleep samples, {a['kernel']} KRR, lr {res['lr']}) on "
        f"{res['n_train']} Gabor filters ({res['size']} x {res['size']}, "
        f"frequency {res['frequency']}, envelope {res['envelope']}, noise {res['data_noise']}) with orientations "
        f"uniform in [0, pi); {res['iterations']} iterations in {res['train_seconds']:.0f} s. "
        f"{'Quick run' if res['quick'] else 'Full run'}, {res['seconds']:.0f} s in all.",
        "",
        f"Orientations of {res['n_eval']} generated filters (noiseless means NN_w(z), z from the prior), estimated by "
        f"matching a bank of {res['bank_size']} Gabors; estimator error on clean Gabors: max "
        f"{res['estimator_max_error_deg']:.2g} degrees.",
        "",
        "| filters | KS statistic | KS p-value | Rayleigh R (2 theta) | Rayleigh p | mean peak correlation |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows = [
        ("training Gabors", tr),
        ("model at initialisation", init),
        ("learned model NN_w(z)", e),
        ("learned model, noisy x", res["learned"]["noisy_samples"]),
    ]
    for name, s in rows:
        lines.append(
            f"| {name} | {s['ks_statistic']:.4f} | {s['ks_pvalue']:.3g} | {s['rayleigh_r']:.4f} | "
            f"{s['rayleigh_pvalue']:.3g} | {s['peak_correlation']:.4f} |"
        )
    lines += [
        "",
        f"MMD^2 (Gaussian kernel, median bandwidth) between {res['n_eval']} model samples and held-out noisy Gabors: "
        f"learned {res['mmd2_learned']:.4g}, initial {res['mmd2_initial']:.4g}, a second draw of Gabors "
        f"(sampling floor) {res['mmd2_floor']:.4g}.",
        "",
        "A large KS p-value / Rayleigh p-value means no evidence against uniform orientations; the peak correlation "
        "says how Gabor-like the generated filters are (1 = a perfect Gabor of the bank's frequency and envelope).",
        "",
        "![orientations](orientations.png)",
        "",
        "![samples](samples.png)",
        "",
        "![sweep of z around the circle](sweep.png)",
        "",
    ]
    return "\n".join(lines)


def run(config: dict[str, Any], out_dir: Path, progress: bool | None = None) -> dict[str, Any]:
    from wakesleep.algorithms import build_algorithm
    from wakesleep.eval import mmd
    from wakesleep.models.zoo import CircleModel
    from wakesleep.train import apply_threads

    exp = config["experiment"]
    apply_threads(config)
    if config["algorithm"]["name"] != "al_ws":
        raise WakesleepError("experiment circle: algorithm.name must be al_ws")
    t_start = time.perf_counter()
    size, freq, env = int(exp["size"]), float(exp["frequency"]), float(exp["envelope"])
    seed = int(exp["seed"])
    rng = np.random.default_rng(seed)
    n = int(exp["n_train"])
    n_eval = int(exp["n_eval"])

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        th = rng.uniform(0, np.pi, m)
        return gabor(th, size, freq, env) + float(exp["data_noise"]) * rng.standard_normal((m, size * size)), th

    x_train, _ = draw(n)
    x_test, _ = draw(n_eval)
    x_floor, _ = draw(n_eval)
    est = OrientationEstimator(size, freq, env, int(exp["bank_size"]))
    probe = np.linspace(0, np.pi, 97, endpoint=False)
    est_err = float(
        np.degrees(np.abs(((est(gabor(probe, size, freq, env))[0] - probe) + np.pi / 2) % np.pi - np.pi / 2).max())
    )
    data_theta, data_c = est(x_train)
    data_stats = {**uniformity(data_theta), "peak_correlation": float(data_c.mean())}

    torch.manual_seed(int(config["train"]["seed"]))
    model = CircleModel(
        size * size,
        hidden=tuple(int(h) for h in exp["hidden"]),
        sigma_x=float(exp["sigma_x"]),
        learn_sigma=bool(exp["learn_sigma"]),
        seed=seed,
    ).double()
    initial = _evaluate(model, est, n_eval, seed + 1)
    mmd_init = float(mmd(torch.as_tensor(initial["samples"]), torch.as_tensor(x_test)))
    opts = {k: v for k, v in config["algorithm"].items() if k != "name"}
    algo = build_algorithm("al_ws", model, **opts)
    history: list[dict[str, Any]] = []

    def callback(trainer, rec):
        ev = _evaluate(model, est, 500, seed + 2)
        history.append(
            {
                "step": rec["step"],
                "seconds": rec["seconds"],
                "grad_norm": rec.get("grad_norm"),
                "ks_statistic": ev["mean_filters"]["ks_statistic"],
                "peak_correlation": ev["mean_filters"]["peak_correlation"],
            }
        )

    t0 = time.perf_counter()
    trainer = _train(algo, torch.as_tensor(x_train), config, progress, callback)
    train_seconds = time.perf_counter() - t0
    ev = _evaluate(model, est, n_eval, seed + 3)
    with torch.no_grad():
        ev["sweep"] = model.mean(torch.linspace(0, 2 * math.pi, 25, dtype=model.dtype)[:-1, None]).numpy()
    mmd_learned = float(mmd(torch.as_tensor(ev["samples"]), torch.as_tensor(x_test)))
    mmd_floor = float(mmd(torch.as_tensor(x_floor), torch.as_tensor(x_test)))
    _plots(out_dir, data_theta, ev, (size, size))
    results = {
        "experiment": "circle",
        "quick": bool(exp.get("quick_run", False)),
        "size": size,
        "frequency": freq,
        "envelope": env,
        "data_noise": float(exp["data_noise"]),
        "n_train": n,
        "n_eval": n_eval,
        "bank_size": int(exp["bank_size"]),
        "hidden": list(exp["hidden"]),
        "sigma_x": float(torch.exp(model.log_sigma)),
        "algorithm": {k: v for k, v in config["algorithm"].items()},
        "estimator_max_error_deg": est_err,
        "data": data_stats,
        "initial": {k: initial[k] for k in ("mean_filters", "noisy_samples")},
        "learned": {k: ev[k] for k in ("mean_filters", "noisy_samples")},
        "mmd2_learned": mmd_learned,
        "mmd2_initial": mmd_init,
        "mmd2_floor": mmd_floor,
        "lr": float(config["train"]["lr"]),
        "iterations": int(trainer.n_iter_),
        "train_seconds": train_seconds,
        "history": history,
        "seconds": time.perf_counter() - t_start,
        "config": config,
    }
    wio.save_json(out_dir / "results.json", results)
    wio.write_text(out_dir / "report.md", _report(results))
    wio.write_text(out_dir / "config.yaml", dump_config(config))
    return results
