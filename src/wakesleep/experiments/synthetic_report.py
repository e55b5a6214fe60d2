"""Plots, Fig. 1 summary and report of the synthetic experiment (:mod:`wakesleep.experiments.synthetic`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from wakesleep.experiments.base import fmt, pyplot, table

__all__ = ["plot_samples", "plot_histogram", "sign_test", "fig1_summary", "report"]


def plot_samples(path: Path, data: np.ndarray, panels: dict[str, np.ndarray], n_show: int = 3000) -> None:
    """Scatter plots of the training data and of each panel's samples (shared axes), as ``path``."""
    plt = pyplot()
    cols = 1 + len(panels)
    fig, axes = plt.subplots(1, cols, figsize=(3.3 * cols, 3.4), sharex=True, sharey=True, squeeze=False)
    lo, hi = np.percentile(data, [0.5, 99.5], axis=0)
    pad = 0.1 * (hi - lo)
    for ax, (title, arr) in zip(axes[0], [("training data", data), *panels.items()], strict=True):
        ax.scatter(
            arr[:n_show, 0],
            arr[:n_show, 1],
            s=1.5,
            alpha=0.4,
            color="k" if title == "training data" else "C0",
            rasterized=True,
        )
        ax.set_title(title, fontsize=10)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_xlabel("$x_1$")
    axes[0][0].set_ylabel("$x_2$")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_histogram(path: Path, log_mmd: dict[str, list[float | None]]) -> None:
    """Fig. 1 (right): histogram of log MMD^2 per algorithm on shared bins.

    Non-positive unbiased estimates (indistinguishable from 0) have no logarithm; the legend says how many data
    sets each histogram holds.
    """
    plt = pyplot()
    finite = {name: [v for v in vals if v is not None and math.isfinite(v)] for name, vals in log_mmd.items()}
    everything = [v for vals in finite.values() for v in vals]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    if everything:
        lo, hi = min(everything), max(everything)
        n_bins = max(8, min(30, len(everything) // 3))
        bins = np.linspace(lo - 0.05 * (hi - lo + 1), hi + 0.05 * (hi - lo + 1), n_bins + 1)
        for name, vals in finite.items():
            if vals:
                floor = name == "true model"
                style = {"histtype": "step", "color": "k", "linestyle": "--"} if floor else {"alpha": 0.5}
                ax.hist(vals, bins=bins, label=f"{name} ({len(vals)}/{len(log_mmd[name])})", **style)
    ax.set_xlabel("log MMD$^2$ (training data vs model samples)")
    ax.set_ylabel("data sets")
    ax.set_title("Fig. 1 (right): fits from the true parameters", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sign_test(wins: int, n: int) -> float:
    """Two-sided exact sign test: P(|W - n/2| >= |wins - n/2|) for W ~ Binomial(n, 1/2)."""
    if n == 0:
        return 1.0
    k = min(wins, n - wins)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def fig1_summary(datasets: list[dict[str, Any]], reference: str = "ddc_hm") -> dict[str, Any]:
    """The summary across data sets (Fig. 1).

    Per algorithm the median/mean MMD^2, the median log MMD^2 (positive estimates), the number of data sets
    where it has the lowest MMD^2 and its median drift; and ``reference`` (DDC-HM) against every other
    algorithm: on how many data sets its MMD^2 is lower, with a two-sided sign test.
    """
    names = list(datasets[0]["algorithms"]) if datasets else []
    per: dict[str, Any] = {}
    for name in names:
        vals = np.array([d["algorithms"][name]["mmd"]["mmd2"] for d in datasets], dtype=float)
        pos = vals[vals > 0]
        drift = np.array([d["algorithms"][name]["parameter_drift"] for d in datasets], dtype=float)
        best = sum(1 for d in datasets if min(d["algorithms"], key=lambda a: d["algorithms"][a]["mmd"]["mmd2"]) == name)
        per[name] = {
            "median_mmd2": float(np.median(vals)),
            "mean_mmd2": float(vals.mean()),
            "median_log_mmd2": float(np.median(np.log(pos))) if pos.size else None,
            "n_positive": int(pos.size),
            "best_on": int(best),
            "median_drift": float(np.median(drift)),
        }
    floor = np.array([d["true_model"]["mmd2"] for d in datasets], dtype=float)
    per["true model"] = {
        "median_mmd2": float(np.median(floor)) if floor.size else None,
        "mean_mmd2": float(floor.mean()) if floor.size else None,
    }
    versus: dict[str, Any] = {}
    if reference in names:
        for name in names:
            if name == reference:
                continue
            wins = sum(
                1 for d in datasets if d["algorithms"][reference]["mmd"]["mmd2"] < d["algorithms"][name]["mmd"]["mmd2"]
            )
            versus[name] = {"reference_lower": wins, "n": len(datasets), "sign_test_p": sign_test(wins, len(datasets))}
    return {"reference": reference, "algorithms": per, "versus": versus}


def report(results: dict[str, Any]) -> str:
    """The text of report.md."""
    cfg = results["config"]
    lines = [
        "# Synthetic experiment (paper section 7, eq. 13)",
        "",
        f"{'Quick run' if results['quick'] else 'Run'}: {results['iterations']} iterations "
        f"({results['iterations'] / results['iters_per_epoch']:.0f} epochs"
        + (f" of the configured {cfg['train']['epochs']}" if cfg["train"]["max_iters"] else "")
        + f"), batch {cfg['train']['batch_size']}, Adam lr {cfg['train']['lr']:g}, "
        f"N = {cfg['data']['n']} training points, {results['n_datasets']} data set(s); "
        f"total {results['seconds']:.0f} s.",
        "",
        "MMD^2: unbiased estimate, Gaussian kernel "
        f"({cfg['experiment']['mmd_bandwidth']} bandwidth), training data vs {cfg['experiment']['mmd_samples']} "
        "samples. The *true model* row is the floor set by sampling noise (samples from the parameters that "
        "generated the data); a learnt model that matches the data has an MMD^2 of the same size.",
        "",
    ]
    rows = []
    for ds in results["datasets"]:
        tm = ds["true_model"]
        rows.append([ds["index"], "true model", fmt(tm["mmd2"]), fmt(tm["std"]), 0, "", ""])
        for name, r in ds["algorithms"].items():
            m = r["mmd"]
            drift, its = fmt(r["parameter_drift"]), r["iterations"]
            rows.append([ds["index"], name, fmt(m["mmd2"]), fmt(m["std"]), drift, its, f"{r['seconds']:.0f}"])
    header = ["data set", "model", "MMD^2", "+- (1 sd)", "parameter drift", "iterations", "seconds"]
    lines += table(header, rows)
    lines += [
        "",
        "Parameter drift: |theta - theta_true| / |theta_true| over all learnt parameters (the model starts at "
        "theta_true; an unbiased learner stays near it).",
        "",
    ]
    fig1 = results.get("fig1")
    if fig1 and fig1["algorithms"]:
        n = results["n_datasets"]
        lines += [f"## Fig. 1: summary over {n} data set(s)", ""]
        rows = [
            [
                name,
                fmt(r["median_mmd2"]),
                fmt(r["mean_mmd2"]),
                f"{fmt(r['median_log_mmd2'])} ({r['n_positive']}/{n})",
                f"{r['best_on']}/{n}",
                fmt(r["median_drift"]),
            ]
            for name, r in fig1["algorithms"].items()
            if name != "true model"
        ]
        tm = fig1["algorithms"]["true model"]
        rows.append(["true model", fmt(tm["median_mmd2"]), fmt(tm["mean_mmd2"]), "", "", 0])
        header = ["model", "median MMD^2", "mean MMD^2", "median log MMD^2 (positive estimates)"]
        lines += table([*header, "lowest MMD^2 on", "median drift"], rows)
        lines.append("")
        for name, v in fig1["versus"].items():
            lines.append(
                f"- {fig1['reference']} has a lower MMD^2 than {name} on {v['reference_lower']}/{v['n']} "
                f"data sets (two-sided sign test p = {v['sign_test_p']:.3g})."
            )
        lines.append("")
    lines += ["![data and model samples](samples.png)", ""]
    if results["n_datasets"] > 1:
        lines += ["![log MMD histogram](mmd_hist.png)", ""]
    lines += [
        f"MMD implementation: {results['mmd_implementation']}.",
        "",
        "Files: `results.json` (all numbers; `datasets[i].algorithms.<name>.samples` is the path of the samples "
        "the MMD was computed on), `true_params_<i>.npz`, `data_<i>.npz`, `true_model_samples_<i>.npz`, and one "
        "run directory per algorithm and data set (`<algorithm>_<i>/`: config.yaml, metrics.jsonl, "
        "model.safetensors, samples.npz, mmd_samples.npz; `wakesleep train --config <algorithm>_<i>/config.yaml` "
        "reruns it).",
        "",
    ]
    return "\n".join(lines)
