"""Gradient-estimation experiment of AL-WS (seed 004, experiment I).

Model: z1, z2 ~ N(0, 1), x | z ~ N(softplus(b . z) - ||b||^2, sigma_x^2) (:func:`wakesleep.models.zoo.
softplus_gradient_model`, a ``HierarchicalModel`` with a custom link, so DDC-HM applies too). For every cell of a
grid of b and sigma_x, ``experiment.points`` observations are drawn from the model and each estimator gives
grad_b log p(x) at each of them (one ``wake_gradient`` call per point). The truth is computed by 2-D
tensor-product composite Gauss-Legendre quadrature (10-node panels) over z in [-L, L]^2
(``experiment.quad_nodes`` nodes per axis) and
autodiff of the log of the sum; it is cross-checked against a 1-D quadrature (z enters only through
b . z ~ N(0, ||b||^2)). Per cell and estimator: the cosine between the stacked [points, 2] estimate and the
truth, and the relative error ||g_hat - g|| / ||g||, against the number of sleep samples N.

Estimators: AL-WS (``algorithm`` section's options, N varied), DDC-HM (same N), and VAE / IWAE when the library
has them (their recognition networks are first trained at the fixed model for ``recognition_steps`` Adam steps).
"""

from __future__ import annotations

import math
import time
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
    """The ``experiment:`` section (values: ``configs/gradient.yaml``)."""

    b_grid: list[list[float]] = option(doc="values of b (one grid axis)")
    sigma_grid: list[float] = option(minimum=0.0, exclusive_minimum=True, doc="values of sigma_x (the other)")
    sleep_sizes: list[int] = option(minimum=1, doc="N")
    points: int = option(minimum=1, doc="observations per cell")
    repeats: int = option(minimum=1, doc="independent sleep phases per (cell, N)")
    algorithms: list[str] = option(doc="estimators (one not in this library is reported as not run)")
    algorithm_options: dict = option(doc="name -> options of the estimators other than al_ws")
    exact_max: int = option(minimum=1, doc="AL-WS with kernel: exact switches to Nystrom above this N")
    n_components: int = option(minimum=1, doc="Nystrom landmarks")
    recognition_steps: int = option(minimum=0, doc="Adam steps of the VAE/IWAE encoders before estimating")
    quad_nodes: int = option(minimum=1, doc="Gauss-Legendre nodes per axis of the 2-D quadrature")
    quad_range: float = option(minimum=0.0, exclusive_minimum=True, doc="the quadrature covers [-range, range]^2")
    seed: int = option(minimum=0, maximum=SEED_MAX, doc="seeds the cells' data and the repeats")

    def validate(self, prefix: str) -> None:
        """Each b is a 2-vector."""
        for b in self.b_grid:
            if len(b) != 2:
                raise WakesleepError(f"{prefix}.b_grid: each entry must be [b1, b2], got {b!r}")


# --------------------------------------------------------------------------------------------------------
# the truth
# --------------------------------------------------------------------------------------------------------
def _gauss_legendre(n: int, lo: float, hi: float, order: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite Gauss-Legendre: ``n // order`` equal panels of ``order`` nodes each on [lo, hi]."""
    panels = max(int(n) // order, 1)
    t, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(lo, hi, panels + 1)
    half = 0.5 * (edges[1:] - edges[:-1])
    mid = 0.5 * (edges[1:] + edges[:-1])
    nodes = (mid[:, None] + half[:, None] * t[None]).reshape(-1)
    weights = (half[:, None] * w[None]).reshape(-1)
    return torch.as_tensor(nodes), torch.as_tensor(weights)


def quadrature_gradient(
    b: torch.Tensor, sigma: float, x: torch.Tensor, nodes: int = 800, rng: float = 8.0, chunk: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(x) [M], grad_b log p(x) [M, 2])`` by 2-D Gauss-Legendre quadrature of the N(0, I) prior."""
    z, w = _gauss_legendre(nodes, -rng, rng)
    z1, z2 = torch.meshgrid(z, z, indexing="ij")
    zz = torch.stack([z1.reshape(-1), z2.reshape(-1)], 1)  # [Q, 2]
    logw = (torch.log(w)[:, None] + torch.log(w)[None, :]).reshape(-1) - 0.5 * (zz**2).sum(1) - math.log(2 * math.pi)
    lps, grads = [], []
    for i in range(0, x.shape[0], chunk):
        bb = b.detach().clone().double().requires_grad_(True)
        m = torch.nn.functional.softplus(zz @ bb) - (bb * bb).sum()  # [Q]
        xi = x[i : i + chunk].double().reshape(-1, 1)
        ll = -0.5 * ((xi - m[None]) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
        lp = torch.logsumexp(logw[None] + ll, dim=1)  # [chunk]
        rows = [torch.autograd.grad(lp[j], bb, retain_graph=j < lp.shape[0] - 1)[0] for j in range(lp.shape[0])]
        lps.append(lp.detach())
        grads.append(torch.stack(rows))
    return torch.cat(lps), torch.cat(grads)


def quadrature_gradient_1d(b: torch.Tensor, sigma: float, x: torch.Tensor, nodes: int = 20000) -> torch.Tensor:
    """Cross-check: z enters only through u = b . z / |b| ~ N(0, 1); composite 1-D Gauss-Legendre on [-10, 10]."""
    u, w = _gauss_legendre(nodes, -10.0, 10.0)
    logw = torch.log(w) - 0.5 * u**2 - 0.5 * math.log(2 * math.pi)
    bb = b.detach().clone().double().requires_grad_(True)
    r = bb.norm()
    m = torch.nn.functional.softplus(r * u) - r * r
    ll = -0.5 * ((x.double().reshape(-1, 1) - m[None]) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    lp = torch.logsumexp(logw[None] + ll, dim=1)
    return torch.stack([torch.autograd.grad(lp[j], bb, retain_graph=True)[0] for j in range(lp.shape[0])])


# --------------------------------------------------------------------------------------------------------
# estimators
# --------------------------------------------------------------------------------------------------------
def per_point_gradients(algo: Any, x: torch.Tensor) -> torch.Tensor:
    """The estimate of grad_b log p(x) at each row of ``x`` (one ``wake_gradient`` call per point), ``[M, 2]``."""
    return torch.stack([algo.wake_gradient(x[i : i + 1])["layers.x.link.b"].detach() for i in range(x.shape[0])])


def _train_recognition(algo, model, steps: int, lr: float = 1e-3) -> None:
    params = [p for p in algo.recognition_parameters() if p.requires_grad]
    if not params:
        return
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        xb = model.sample(100)[-1]
        opt.zero_grad(set_to_none=True)
        algo.step_recognition(xb)
        opt.step()


def _estimate(name: str, options: dict, model: Any, x: torch.Tensor, n: int, exp: Options) -> torch.Tensor:
    from wakesleep.algorithms import build_algorithm

    opts = dict(options)
    if name in ("al_ws", "ddc_hm"):
        opts["sleep_samples"] = n
    if name == "al_ws" and n > exp.exact_max and opts.get("kernel", "exact") == "exact":
        opts["kernel"], opts["n_components"] = "nystrom", exp.n_components
    algo = build_algorithm(name, model, **opts)
    algo.sleep()
    if name not in ("al_ws", "ddc_hm"):
        _train_recognition(algo, model, exp.recognition_steps)
    return per_point_gradients(algo, x)


def gradient_metrics(est: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    """Cosine and relative error of the stacked estimate ``[M, 2]``, and the median per-point cosine."""
    e, t = est.reshape(-1), true.reshape(-1)
    cos = float(e @ t / (e.norm() * t.norm()).clamp_min(1e-300))
    rel = float((e - t).norm() / t.norm().clamp_min(1e-300))
    per = torch.nn.functional.cosine_similarity(est, true, dim=1)
    return {"cosine": cos, "rel_error": rel, "median_point_cosine": float(per.median())}


# --------------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------------
def _plot(path: Path, summary: dict[str, dict[int, dict[str, float]]], sizes: list[int]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, by_n in summary.items():
        ns = [n for n in sizes if n in by_n]
        if not ns:
            continue
        if len(ns) == 1 and name not in ("al_ws", "ddc_hm"):
            for ax, key in zip(axes, ("min_cosine", "mean_rel_error"), strict=True):
                ax.axhline(by_n[ns[0]][key], ls="--", label=name, color="C3" if name == "vae" else "C4")
            continue
        axes[0].plot(ns, [by_n[n]["min_cosine"] for n in ns], "o-", label=f"{name} (worst cell)")
        axes[0].plot(ns, [by_n[n]["mean_cosine"] for n in ns], "x:", label=f"{name} (mean)")
        axes[1].plot(ns, [by_n[n]["mean_rel_error"] for n in ns], "o-", label=name)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("sleep samples N")
    axes[0].set_ylabel("cosine with true gradient")
    axes[0].axhline(0.99, color="grey", lw=0.5)
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("sleep samples N")
    axes[1].set_ylabel("relative error")
    for ax in axes:
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=120)


def _summarise(raw: dict[str, dict[int, list[dict[str, float]]]]) -> dict[str, dict[int, dict[str, float]]]:
    summary: dict[str, dict[int, dict[str, float]]] = {}
    for name, by_n in raw.items():
        for n, ms in by_n.items():
            summary.setdefault(name, {})[n] = {
                "min_cosine": min(m["cosine"] for m in ms),
                "mean_cosine": float(np.mean([m["cosine"] for m in ms])),
                "mean_rel_error": float(np.mean([m["rel_error"] for m in ms])),
                "min_median_point_cosine": min(m["median_point_cosine"] for m in ms),
                "seconds": float(np.mean([m["seconds"] for m in ms])),
            }
    return summary


def report(res: dict[str, Any]) -> str:
    """The text of report.md."""
    lines = [
        "# AL-WS gradient estimation (seed 004, experiment I)",
        "",
        "z1, z2 ~ N(0, 1), x | z ~ N(softplus(b . z) - ||b||^2, sigma_x^2); grad_b log p(x) at "
        f"{res['points']} observations drawn from each cell's model; grid b in {res['b_grid']}, sigma_x in "
        f"{res['sigma_grid']}; {res['repeats']} repeat(s). Truth: 2-D Gauss-Legendre quadrature "
        f"({res['quad_nodes']}^2 nodes), max relative disagreement with the 1-D reduction "
        f"{res['quadrature_check']:.2e}. {'Quick run' if res['quick'] else 'Full run'}, {res['seconds']:.0f} s.",
        "",
        "Cosine: between the stacked [points, 2] estimate and the truth, per cell; *worst* and *mean* over the grid "
        "and repeats. Per-point cosine: between the 2-vectors at one x; its median over the points, worst cell. "
        "Relative error ||g_hat - g|| / ||g|| of the stacked vectors, mean over cells. AL-WS uses exact KRR up to "
        f"N = {res['exact_max']} and Nystrom ({res['n_components']} landmarks) above.",
        "",
    ]
    rows = [
        [
            name,
            n,
            f"{s['min_cosine']:.4f}",
            f"{s['mean_cosine']:.4f}",
            f"{s['min_median_point_cosine']:.4f}",
            f"{s['mean_rel_error']:.3g}",
            f"{s['seconds']:.1f}",
        ]
        for name, by_n in res["summary"].items()
        for n, s in sorted(by_n.items(), key=lambda kv: int(kv[0]))
    ]
    header = ["estimator", "N", "worst-cell cosine", "mean cosine", "worst-cell median per-point cosine"]
    lines += table([*header, "mean rel. error", "seconds"], rows)
    if res["unavailable"]:
        lines += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in res["unavailable"].items()) + "."]
    lines += ["", "![cosine and error against N](gradient.png)", ""]
    return "\n".join(lines)


class Gradient(Experiment):
    """Accuracy of each estimator's grad_b log p(x) against quadrature, over a grid of models and N."""

    name = "gradient"
    Options = Options

    def check(self, config: dict[str, Any], options: Options) -> None:
        """The ``algorithm`` section is AL-WS's."""
        if config["algorithm"]["name"] != "al_ws":
            raise WakesleepError(
                "experiment gradient: algorithm.name must be al_ws (the others go in experiment.algorithms)"
            )

    def run(self, ctx: ExperimentContext) -> dict[str, Any]:
        """Every estimator at every cell, N and repeat (see the module docstring)."""
        from wakesleep.algorithms import algorithm_class
        from wakesleep.models.zoo import softplus_gradient_model

        exp, config = ctx.options, ctx.config
        sizes = list(exp.sleep_sizes)
        base_opts = {k: v for k, v in config["algorithm"].items() if k != "name"}
        unavailable: dict[str, str] = {}
        algos = []
        for name in exp.algorithms:
            try:
                algorithm_class(name)
                algos.append(name)
            except WakesleepError as e:
                unavailable[name] = str(e).split(": ", 1)[-1]
        options = {
            name: ({**base_opts} if name == "al_ws" else dict(exp.algorithm_options.get(name) or {})) for name in algos
        }
        cells, check = [], 0.0
        raw: dict[str, dict[int, list[dict[str, float]]]] = {name: {} for name in algos}
        for ib, b in enumerate(exp.b_grid):
            for js, sigma in enumerate(exp.sigma_grid):
                torch.manual_seed(exp.seed + 1000 * ib + js)
                model = softplus_gradient_model(b, float(sigma))
                x = model.sample(exp.points)[-1]
                bt = torch.as_tensor(b, dtype=torch.float64)
                _, true = quadrature_gradient(bt, float(sigma), x, exp.quad_nodes, exp.quad_range)
                g1 = quadrature_gradient_1d(bt, float(sigma), x)
                check = max(check, float((true - g1).norm() / g1.norm()))
                cell: dict[str, Any] = {
                    "b": list(b),
                    "sigma_x": float(sigma),
                    "true_grad_norm": float(true.norm()),
                    "results": {},
                }
                for name in algos:
                    for n in sizes if name in ("al_ws", "ddc_hm") else [0]:
                        for r in range(exp.repeats):
                            torch.manual_seed(10_000 * (r + 1) + 100 * ib + js + n)
                            t0 = time.perf_counter()
                            try:
                                est = _estimate(name, options[name], model, x, n, exp)
                            except (WakesleepError, NotImplementedError, RuntimeError, TypeError) as e:
                                unavailable[name] = f"failed: {e}"
                                break
                            m = gradient_metrics(est, true)
                            m["seconds"] = time.perf_counter() - t0
                            raw[name].setdefault(n, []).append(m)
                            cell["results"].setdefault(name, {}).setdefault(str(n), []).append(m)
                cells.append(cell)
        summary = _summarise(raw)
        _plot(ctx.out_dir / "gradient.png", summary, sizes)
        return {
            "b_grid": exp.b_grid,
            "sigma_grid": exp.sigma_grid,
            "points": exp.points,
            "repeats": exp.repeats,
            "quad_nodes": exp.quad_nodes,
            "quadrature_check": check,
            "exact_max": exp.exact_max,
            "n_components": exp.n_components,
            "summary": {k: {str(n): v for n, v in d.items()} for k, d in summary.items()},
            "unavailable": unavailable,
            "cells": cells,
            "seconds": ctx.seconds(),
        }

    report = staticmethod(report)


EXPERIMENT = Gradient()
