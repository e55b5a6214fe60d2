"""Dynamical model (seed 004, experiment III): recover a delayed population model's parameters with AL-WS.

Model (:class:`wakesleep.models.zoo.PopulationDynamics`, a stochastic blowfly model, Wood 2010):
tau ~ Categorical(m) on {1, ..., 20}, process noise e_t ~ Gamma(1/sigma_p^2, sigma_p^2), demographic noise
eps_t ~ Gamma(1/sigma_d^2, sigma_d^2),

    z_{t+1} = P z_{t-tau} exp(-z_{t-tau} / N0) e_t + z_t exp(-delta eps_t),    x_t ~ LogNormal(log z_t, sigma_n^2),

observed for T steps after a burn-in. The latent is a whole time series plus a discrete delay: AL-WS needs only
samples and the differentiable ``log_joint`` (the trajectory is a deterministic function of (tau, e, eps)).

``experiment.n_series`` series are simulated from the true parameters (``experiment.true_params``; the delay
distribution m is a discretised Gaussian bump at ``true_tau`` with width ``true_tau_width``), then a model started
at ``experiment.init_params`` (and a uniform m) is trained on them with AL-WS (kernel on log x). Reported: each
parameter's true, initial and learned value and the relative error |learned / true - 1|, the total-variation
distance between the true and learned delay distributions, the MMD^2 between held-out series and model samples
(log scale) before and after training, and plots of the parameter trajectories, the delay pmf and series.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep.errors import WakesleepError
from wakesleep.experiments.base import Experiment, ExperimentContext, pyplot, save_figure, table
from wakesleep.schema import SEED_MAX, option


@dataclass(frozen=True)
class Options:
    """The ``experiment:`` section (values: ``configs/dynamics.yaml``)."""

    T: int = option(minimum=1, doc="observed steps")
    burn_in: int = option(minimum=0, doc="unobserved steps before them")
    max_tau: int = option(minimum=1, doc="delays 1..max_tau")
    z_init: float = option(minimum=0.0, exclusive_minimum=True, doc="the population before the first step")
    true_params: dict = option(doc="P, N0, delta, sigma_p, sigma_d, sigma_n of the true model (missing: shipped)")
    true_tau: int | float = option(doc="centre of the true delay distribution m")
    true_tau_width: float = option(minimum=0.0, exclusive_minimum=True, doc="width of its Gaussian bump")
    init_params: dict = option(doc="the parameters training starts at (m uniform)")
    n_series: int = option(minimum=1, doc="training series from the true model")
    n_test: int = option(minimum=2, doc="held-out series (MMD)")
    seed: int = option(minimum=0, maximum=SEED_MAX, doc="seeds the simulated series")

    def validate(self, prefix: str) -> None:
        """The delay's centre inside 1..max_tau."""
        if not 1 <= float(self.true_tau) <= self.max_tau:
            raise WakesleepError(f"{prefix}.true_tau: must be in 1..{self.max_tau}")


PARAMS = ("P", "N0", "delta", "sigma_p", "sigma_d", "sigma_n")


def tau_logits(center: float, width: float, max_tau: int) -> torch.Tensor:
    """Log-probabilities (up to a constant) of a discretised Gaussian bump on {1..max_tau}."""
    t = torch.arange(1, max_tau + 1, dtype=torch.float64)
    return -0.5 * ((t - center) / width) ** 2


def _build(exp: Options, values: dict[str, float], logits: torch.Tensor | None) -> Any:
    from wakesleep.models.zoo import PopulationDynamics

    unknown = set(values) - set(PARAMS)
    if unknown:
        raise WakesleepError(f"experiment dynamics: unknown parameter(s) {sorted(unknown)} (known: {PARAMS})")
    for k, v in values.items():
        if not (isinstance(v, int | float) and v > 0):
            raise WakesleepError(f"experiment dynamics: parameter {k} must be a positive number, got {v!r}")
    return PopulationDynamics(
        T=exp.T,
        burn_in=exp.burn_in,
        max_tau=exp.max_tau,
        z_init=exp.z_init,
        tau_logits=logits,
        **{k: float(v) for k, v in values.items()},
    ).double()


def recovery(model: Any, true_vals: dict[str, float], true_probs: torch.Tensor) -> dict[str, Any]:
    """Per-parameter learned value and relative error, and the delay pmf's total-variation distance."""
    v = model.values()
    probs = torch.softmax(model.tau_logits.detach(), 0)
    tv = float(0.5 * (probs - true_probs).abs().sum())
    per = {
        k: {"true": float(true_vals[k]), "learned": v[k], "rel_error": abs(v[k] / float(true_vals[k]) - 1)}
        for k in PARAMS
    }
    return {
        "params": per,
        "tau_tv": tv,
        "tau_mode": v["tau_mode"],
        "tau_mean": v["tau_mean"],
        "tau_probs": probs.tolist(),
        "mean_rel_error": float(np.mean([p["rel_error"] for p in per.values()])),
    }


def _plots(
    out: Path, history, true_vals, true_probs, rec, x_test: np.ndarray, x_model: np.ndarray, x_init: np.ndarray
) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.5))
    steps = [h["step"] for h in history]
    for ax, k in zip(axes.flat[:6], PARAMS, strict=True):
        ax.plot(steps, [h[k] for h in history], label="AL-WS")
        ax.axhline(true_vals[k], color="k", ls="--", label="true")
        ax.set_title(k)
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
    axes.flat[0].legend(fontsize=7)
    ax = axes.flat[6]
    t = np.arange(1, len(true_probs) + 1)
    ax.bar(t - 0.2, true_probs, width=0.4, label="true m")
    ax.bar(t + 0.2, rec["tau_probs"], width=0.4, label="learned m")
    ax.set_xlabel("tau")
    ax.set_title("delay distribution")
    ax.legend(fontsize=7)
    ax = axes.flat[7]
    ax.plot(steps, [h["tau_tv"] for h in history])
    ax.set_title("TV(true m, learned m)")
    ax.set_xlabel("iteration")
    save_figure(fig, out / "parameters.png")

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), sharey=True)
    tt = np.arange(x_test.shape[1])
    for ax, x, name in zip(
        axes, (x_test, x_model, x_init), ("held-out data", "learned model", "initial model"), strict=True
    ):
        lx = np.log(x)
        for i in range(5):
            ax.plot(tt, lx[i], lw=0.8)
        q = np.quantile(lx, [0.1, 0.5, 0.9], axis=0)
        ax.fill_between(tt, q[0], q[2], color="grey", alpha=0.3, label="10-90%")
        ax.plot(tt, q[1], "k", lw=1.5, label="median")
        ax.set_title(name)
        ax.set_xlabel("t")
    axes[0].set_ylabel("log x_t")
    axes[0].legend(fontsize=7)
    save_figure(fig, out / "series.png")


def report(res: dict[str, Any]) -> str:
    """The text of report.md."""
    r, r0 = res["learned"], res["initial"]
    lines = [
        "# AL-WS: delayed population dynamics (seed 004, experiment III)",
        "",
        f"{res['n_series']} series of T = {res['T']} observations (after {res['burn_in']} burn-in steps) simulated "
        f"from the true model; delay m: a bump at tau = {res['true_tau']} (width {res['true_tau_width']}) on "
        f"1..{res['max_tau']}. AL-WS (N = {res['sleep_samples']} sleep samples, kernel on log x), "
        f"{res['iterations']} iterations in {res['train_seconds']:.0f} s. "
        f"{'Quick run' if res['quick'] else 'Full run'}, {res['seconds']:.0f} s in all.",
        "",
    ]
    rows = []
    for k in PARAMS:
        p, p0 = r["params"][k], r0["params"][k]
        rows.append(
            [
                k,
                f"{p['true']:.4g}",
                f"{p0['learned']:.4g}",
                f"{p['learned']:.4g}",
                f"{p['rel_error']:.3f}",
                f"{p0['rel_error']:.3f}",
            ]
        )
    rows.append(["delay m (total variation to the truth)", 0, f"{r0['tau_tv']:.3f}", f"{r['tau_tv']:.3f}", "", ""])
    truth, learned = f"{res['true_tau']} / {res['true_tau_mean']:.2f}", f"{r['tau_mode']} / {r['tau_mean']:.2f}"
    rows.append(["delay mode / mean", truth, "-", learned, "", ""])
    header = ["parameter", "true", "initial", "learned", "relative error (learned)", "relative error (initial)"]
    lines += table(header, rows)
    lines += [
        "",
        f"Mean relative error over the six continuous parameters: {r['mean_rel_error']:.3f} (initial "
        f"{r0['mean_rel_error']:.3f}).",
        "",
        f"MMD^2 (Gaussian kernel on log x, median bandwidth) between {res['n_test']} held-out series and as many "
        f"model samples: learned {res['mmd2_learned']:.4g}, initial {res['mmd2_initial']:.4g}, true model "
        f"(sampling floor) {res['mmd2_true']:.4g}.",
        "",
        "![parameters](parameters.png)",
        "",
        "![series](series.png)",
        "",
    ]
    return "\n".join(lines)


class Dynamics(Experiment):
    """AL-WS recovers the parameters and the delay distribution of a stochastic population model."""

    name = "dynamics"
    Options = Options
    algorithm = "al_ws"

    def run(self, ctx: ExperimentContext) -> dict[str, Any]:
        """Simulate from the true model, train from ``init_params``, compare (see the module docstring)."""
        from wakesleep.eval import mmd

        exp = ctx.options
        shipped = self.defaults()["experiment"]  # parameters a given mapping leaves out keep their shipped values
        true_vals = {**shipped["true_params"], **(exp.true_params or {})}
        init_vals = {**shipped["init_params"], **(exp.init_params or {})}
        logits = tau_logits(float(exp.true_tau), exp.true_tau_width, exp.max_tau)
        truth = _build(exp, true_vals, logits)
        true_probs = torch.softmax(logits, 0)
        g = torch.Generator().manual_seed(exp.seed)
        x_train = truth.sample(exp.n_series, generator=g)[-1]
        x_test = truth.sample(exp.n_test, generator=g)[-1]
        x_true2 = truth.sample(exp.n_test, generator=g)[-1]
        if not torch.isfinite(x_train).all():
            raise WakesleepError("experiment dynamics: the true model produced non-finite series")

        def mmd_log(a: torch.Tensor, b: torch.Tensor) -> float:
            return float(mmd(torch.log(a), torch.log(b)))

        torch.manual_seed(ctx.spec.train.seed)
        model = _build(exp, init_vals, None)
        initial = recovery(model, true_vals, true_probs)
        x_init = model.sample(exp.n_test, generator=torch.Generator().manual_seed(exp.seed + 1))[-1]
        mmd_init = mmd_log(x_init, x_test)

        def track() -> dict[str, float]:
            r = recovery(model, true_vals, true_probs)
            return {
                **{k: r["params"][k]["learned"] for k in PARAMS},
                "tau_tv": r["tau_tv"],
                "mean_rel_error": r["mean_rel_error"],
            }

        trainer, history = ctx.fit(ctx.algorithm(model), x_train, track=track)
        learned = recovery(model, true_vals, true_probs)
        x_model = model.sample(exp.n_test, generator=torch.Generator().manual_seed(exp.seed + 2))[-1]
        plot_args = (true_probs.numpy(), learned, x_test.numpy(), x_model.numpy(), x_init.numpy())
        _plots(ctx.out_dir, history, true_vals, *plot_args)
        return {
            "T": exp.T,
            "burn_in": exp.burn_in,
            "max_tau": exp.max_tau,
            "true_tau": exp.true_tau,
            "true_tau_width": exp.true_tau_width,
            "true_tau_mean": float((true_probs * torch.arange(1, exp.max_tau + 1, dtype=torch.float64)).sum()),
            "n_series": exp.n_series,
            "n_test": exp.n_test,
            "sleep_samples": int(ctx.config["algorithm"].get("sleep_samples", 1000)),
            "true": true_vals,
            "init": init_vals,
            "initial": initial,
            "learned": learned,
            "mmd2_learned": mmd_log(x_model, x_test),
            "mmd2_initial": mmd_init,
            "mmd2_true": mmd_log(x_true2, x_test),
            "iterations": int(trainer.n_iter_),
            "train_seconds": trainer.seconds_,
            "history": history,
            "seconds": ctx.seconds(),
        }

    report = staticmethod(report)


EXPERIMENT = Dynamics()
