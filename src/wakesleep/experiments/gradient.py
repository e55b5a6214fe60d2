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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep import io as wio
from wakesleep.config import dump_config
from wakesleep.errors import WakesleepError

DEFAULT_CONFIG = """\
# AL-WS gradient estimation (seed 004, experiment I): `wakesleep experiment gradient --out DIR [--quick]`.
# The model section is the closest deep exponential-family stand-in (used only by `wakesleep train`); the
# experiment builds z ~ N(0, I_2), x | z ~ N(softplus(b . z) - |b|^2, sigma_x^2) itself for each grid cell.
model:
  layers:
    - {name: z, family: gaussian, dim: 2, learn: false, learn_variance: false}
    - {name: x, family: gaussian, dim: 1, link: mlp, hidden: [8], learn_variance: false}
  dtype: float64
algorithm: {name: al_ws, kernel: exact, bandwidth: auto, ridge: auto}
train: {threads: 2}
experiment:
  b_grid: [[0.5, 0.5], [1.0, -0.5], [1.5, 1.0]]   # values of b (one grid axis)
  sigma_grid: [0.1, 0.3, 1.0]                      # values of sigma_x (the other)
  sleep_sizes: [100, 300, 1000, 3000, 10000, 30000]  # N
  points: 50                                       # observations per cell
  repeats: 2                                       # independent sleep phases per (cell, N)
  algorithms: [al_ws, ddc_hm, vae, iwae]
  algorithm_options:
    ddc_hm: {features: 100, extra_stats: quadratic, recognition_input: quadratic, recognition_hidden: 100}
    vae: {}
    iwae: {}
  exact_max: 3000          # AL-WS with kernel: exact switches to Nystrom above this N ...
  n_components: 1000       # ... with this many landmarks
  recognition_steps: 500   # Adam steps of the VAE/IWAE encoders at the fixed model before estimating
  quad_nodes: 800          # Gauss-Legendre nodes per axis of the 2-D quadrature on [-quad_range, quad_range]^2
  quad_range: 8.0
  seed: 0
  quick: {experiment.sleep_sizes: [100, 1000, 10000], experiment.repeats: 1, experiment.points: 30,
          experiment.quad_nodes: 500, experiment.recognition_steps: 200}
"""

EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "b_grid": [[0.5, 0.5], [1.0, -0.5], [1.5, 1.0]],
    "sigma_grid": [0.1, 0.3, 1.0],
    "sleep_sizes": [100, 300, 1000, 3000, 10000, 30000],
    "exact_max": 3000,
    "n_components": 1000,
    "points": 50,
    "repeats": 2,
    "algorithms": ["al_ws", "ddc_hm", "vae", "iwae"],
    "algorithm_options": {},
    "recognition_steps": 500,
    "quad_nodes": 800,
    "quad_range": 8.0,
    "seed": 0,
    "quick": {},
}


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
def _per_point(algo, x: torch.Tensor) -> torch.Tensor:
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


def _estimate(name: str, options: dict, model, x: torch.Tensor, n: int, exp: dict) -> torch.Tensor:
    from wakesleep.algorithms import build_algorithm

    opts = dict(options)
    if name in ("al_ws", "ddc_hm"):
        opts["sleep_samples"] = n
    if name == "al_ws" and n > int(exp["exact_max"]) and opts.get("kernel", "exact") == "exact":
        opts["kernel"], opts["n_components"] = "nystrom", int(exp["n_components"])
    algo = build_algorithm(name, model, **opts)
    algo.sleep()
    if name not in ("al_ws", "ddc_hm"):
        _train_recognition(algo, model, int(exp["recognition_steps"]))
    return _per_point(algo, x)


def _metrics(est: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    e, t = est.reshape(-1), true.reshape(-1)
    cos = float(e @ t / (e.norm() * t.norm()).clamp_min(1e-300))
    rel = float((e - t).norm() / t.norm().clamp_min(1e-300))
    per = torch.nn.functional.cosine_similarity(est, true, dim=1)
    return {"cosine": cos, "rel_error": rel, "median_point_cosine": float(per.median())}


# --------------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------------
def _plot(path: Path, summary: dict[str, dict[int, dict[str, float]]], sizes: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _report(res: dict[str, Any]) -> str:
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
        "| estimator | N | worst-cell cosine | mean cosine | worst-cell median per-point cosine | mean rel. error "
        "| seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, by_n in res["summary"].items():
        for n, s in sorted(by_n.items()):
            lines.append(
                f"| {name} | {n} | {s['min_cosine']:.4f} | {s['mean_cosine']:.4f} | "
                f"{s['min_median_point_cosine']:.4f} | {s['mean_rel_error']:.3g} | {s['seconds']:.1f} |"
            )
    if res["unavailable"]:
        lines += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in res["unavailable"].items()) + "."]
    lines += ["", "![cosine and error against N](gradient.png)", ""]
    return "\n".join(lines)


def run(config: dict[str, Any], out_dir: Path, progress: bool | None = None) -> dict[str, Any]:
    from wakesleep.algorithms import algorithm_class
    from wakesleep.models.zoo import softplus_gradient_model
    from wakesleep.train import apply_threads

    exp = config["experiment"]
    apply_threads(config)
    t_start = time.perf_counter()
    sizes = [int(n) for n in exp["sleep_sizes"]]
    base_opts = {k: v for k, v in config["algorithm"].items() if k != "name"}
    if config["algorithm"]["name"] != "al_ws":
        raise WakesleepError(
            "experiment gradient: algorithm.name must be al_ws (the others go in experiment.algorithms)"
        )
    unavailable: dict[str, str] = {}
    algos = []
    for name in exp["algorithms"]:
        try:
            algorithm_class(name)
            algos.append(name)
        except WakesleepError as e:
            unavailable[name] = str(e).split(": ", 1)[-1]
    options = {
        name: ({**base_opts} if name == "al_ws" else dict((exp["algorithm_options"] or {}).get(name) or {}))
        for name in algos
    }
    cells, check = [], 0.0
    raw: dict[str, dict[int, list[dict[str, float]]]] = {name: {} for name in algos}
    for ib, b in enumerate(exp["b_grid"]):
        for js, sigma in enumerate(exp["sigma_grid"]):
            torch.manual_seed(int(exp["seed"]) + 1000 * ib + js)
            model = softplus_gradient_model(b, float(sigma))
            x = model.sample(int(exp["points"]))[-1]
            bt = torch.as_tensor(b, dtype=torch.float64)
            _, true = quadrature_gradient(bt, float(sigma), x, int(exp["quad_nodes"]), float(exp["quad_range"]))
            g1 = quadrature_gradient_1d(bt, float(sigma), x)
            check = max(check, float((true - g1).norm() / g1.norm()))
            cell: dict[str, Any] = {
                "b": list(b),
                "sigma_x": float(sigma),
                "true_grad_norm": float(true.norm()),
                "results": {},
            }
            for name in algos:
                ns = sizes if name in ("al_ws", "ddc_hm") else [0]
                for n in ns:
                    for r in range(int(exp["repeats"])):
                        torch.manual_seed(10_000 * (r + 1) + 100 * ib + js + n)
                        t0 = time.perf_counter()
                        try:
                            est = _estimate(name, options[name], model, x, n, exp)
                        except (WakesleepError, NotImplementedError, RuntimeError, TypeError) as e:
                            unavailable[name] = f"failed: {e}"
                            break
                        m = _metrics(est, true)
                        m["seconds"] = time.perf_counter() - t0
                        raw[name].setdefault(n, []).append(m)
                        cell["results"].setdefault(name, {}).setdefault(str(n), []).append(m)
            cells.append(cell)
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
    _plot(out_dir / "gradient.png", summary, sizes)
    results = {
        "experiment": "gradient",
        "quick": bool(exp.get("quick_run", False)),
        "b_grid": exp["b_grid"],
        "sigma_grid": exp["sigma_grid"],
        "points": exp["points"],
        "repeats": exp["repeats"],
        "quad_nodes": exp["quad_nodes"],
        "quadrature_check": check,
        "exact_max": exp["exact_max"],
        "n_components": exp["n_components"],
        "summary": {k: {str(n): v for n, v in d.items()} for k, d in summary.items()},
        "unavailable": unavailable,
        "cells": cells,
        "seconds": time.perf_counter() - t_start,
        "config": config,
    }
    wio.save_json(out_dir / "results.json", results)
    wio.write_text(out_dir / "report.md", _report({**results, "summary": summary}))
    wio.write_text(out_dir / "config.yaml", dump_config(config))
    return results
