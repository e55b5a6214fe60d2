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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep.experiments.base import Experiment, ExperimentContext, pyplot, save_figure, table
from wakesleep.schema import SEED_MAX, option


@dataclass(frozen=True)
class Options:
    """The ``experiment:`` section (values: ``configs/circle.yaml``)."""

    size: int = option(minimum=2, doc="side of the Gabor images (pixels)")
    frequency: float = option(minimum=0.0, exclusive_minimum=True, doc="spatial frequency (cycles per pixel)")
    envelope: float = option(minimum=0.0, exclusive_minimum=True, doc="std of the Gaussian envelope (pixels)")
    data_noise: float = option(minimum=0.0, doc="white noise added to the training Gabors")
    n_train: int = option(minimum=1, doc="training filters")
    hidden: list[int] = option(minimum=1, doc="widths of NN_w")
    sigma_x: float = option(minimum=0.0, exclusive_minimum=True, doc="observation noise of the model")
    learn_sigma: bool = option(doc="learn sigma_x too")
    n_eval: int = option(minimum=2, doc="generated filters whose orientations are tested")
    bank_size: int = option(minimum=3, doc="orientations in the matching bank")
    seed: int = option(minimum=0, maximum=SEED_MAX, doc="seeds the data, the network and the evaluations")


# --------------------------------------------------------------------------------------------------------
# Gabors and the orientation estimator
# --------------------------------------------------------------------------------------------------------
def gabor(theta: Any, size: int = 16, frequency: float = 0.15, envelope: float = 3.0) -> np.ndarray:
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
# evaluation and outputs
# --------------------------------------------------------------------------------------------------------
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
    from wakesleep.eval.plots import plot_image_grid

    plt = pyplot()
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
    save_figure(fig, out / "orientations.png", dpi=120)
    plot_image_grid(ev["means"][:64], out / "samples.png", shape, n=64, title="generated filters NN_w(z)")
    # the learned circle: z on a regular grid of angles
    plot_image_grid(ev["sweep"], out / "sweep.png", shape, n=len(ev["sweep"]), title="NN_w(z), z = 0 ... 2 pi")


def report(res: dict[str, Any]) -> str:
    """The text of report.md."""
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
    ]
    rows = [
        ("training Gabors", tr),
        ("model at initialisation", init),
        ("learned model NN_w(z)", e),
        ("learned model, noisy x", res["learned"]["noisy_samples"]),
    ]
    header = ["filters", "KS statistic", "KS p-value", "Rayleigh R (2 theta)", "Rayleigh p", "mean peak correlation"]
    lines += table(
        header,
        [
            [
                name,
                f"{s['ks_statistic']:.4f}",
                f"{s['ks_pvalue']:.3g}",
                f"{s['rayleigh_r']:.4f}",
                f"{s['rayleigh_pvalue']:.3g}",
                f"{s['peak_correlation']:.4f}",
            ]
            for name, s in rows
        ],
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


class Circle(Experiment):
    """AL-WS on Gabor filters of uniform orientation: are the learned filters' orientations uniform?"""

    name = "circle"
    Options = Options
    algorithm = "al_ws"

    def run(self, ctx: ExperimentContext) -> dict[str, Any]:
        """Train the circle model with AL-WS and test the generated filters' orientations."""
        from wakesleep.eval import mmd
        from wakesleep.models.zoo import CircleModel

        exp = ctx.options
        size, freq, env, seed = exp.size, exp.frequency, exp.envelope, exp.seed
        rng = np.random.default_rng(seed)

        def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
            th = rng.uniform(0, np.pi, m)
            return gabor(th, size, freq, env) + exp.data_noise * rng.standard_normal((m, size * size)), th

        x_train, _ = draw(exp.n_train)
        x_test, _ = draw(exp.n_eval)
        x_floor, _ = draw(exp.n_eval)
        est = OrientationEstimator(size, freq, env, exp.bank_size)
        probe = np.linspace(0, np.pi, 97, endpoint=False)
        errors = ((est(gabor(probe, size, freq, env))[0] - probe) + np.pi / 2) % np.pi - np.pi / 2
        data_theta, data_c = est(x_train)
        data_stats = {**uniformity(data_theta), "peak_correlation": float(data_c.mean())}

        torch.manual_seed(ctx.spec.train.seed)
        hidden = tuple(exp.hidden)
        model = CircleModel(size * size, hidden=hidden, sigma_x=exp.sigma_x, learn_sigma=exp.learn_sigma, seed=seed)
        model = model.double()
        initial = _evaluate(model, est, exp.n_eval, seed + 1)
        mmd_init = float(mmd(torch.as_tensor(initial["samples"]), torch.as_tensor(x_test)))

        def track() -> dict[str, float]:
            ev = _evaluate(model, est, 500, seed + 2)
            return {k: ev["mean_filters"][k] for k in ("ks_statistic", "peak_correlation")}

        trainer, history = ctx.fit(ctx.algorithm(model), torch.as_tensor(x_train), track=track)
        ev = _evaluate(model, est, exp.n_eval, seed + 3)
        with torch.no_grad():
            ev["sweep"] = model.mean(torch.linspace(0, 2 * math.pi, 25, dtype=model.dtype)[:-1, None]).numpy()
        _plots(ctx.out_dir, data_theta, ev, (size, size))
        return {
            "size": size,
            "frequency": freq,
            "envelope": env,
            "data_noise": exp.data_noise,
            "n_train": exp.n_train,
            "n_eval": exp.n_eval,
            "bank_size": exp.bank_size,
            "hidden": list(exp.hidden),
            "sigma_x": float(torch.exp(model.log_sigma)),
            "algorithm": ctx.config["algorithm"],
            "estimator_max_error_deg": float(np.degrees(np.abs(errors).max())),
            "data": data_stats,
            "initial": {k: initial[k] for k in ("mean_filters", "noisy_samples")},
            "learned": {k: ev[k] for k in ("mean_filters", "noisy_samples")},
            "mmd2_learned": float(mmd(torch.as_tensor(ev["samples"]), torch.as_tensor(x_test))),
            "mmd2_initial": mmd_init,
            "mmd2_floor": float(mmd(torch.as_tensor(x_floor), torch.as_tensor(x_test))),
            "lr": ctx.spec.train.lr,
            "iterations": int(trainer.n_iter_),
            "train_seconds": trainer.seconds_,
            "history": history,
            "seconds": ctx.seconds(),
        }

    report = staticmethod(report)


EXPERIMENT = Circle()
