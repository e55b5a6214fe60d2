"""Plots for evaluation (matplotlib, Agg backend; every function writes a PNG and returns its path)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep.errors import WakesleepError
from wakesleep.eval.curves import draw_curves

__all__ = ["plot_samples", "plot_image_grid", "plot_learning_curves", "plot_posterior_corner", "read_metrics"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _np(a: Any, name: str, fn: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise WakesleepError(f"{fn}: {name} is not a numeric array") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim not in (2, 3):
        raise WakesleepError(f"{fn}: {name} must be [n, d] (or [n, h, w] images), got shape {arr.shape}")
    return arr


def _save(fig: Any, path: str | Path) -> Path:
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_image_grid(images: Any, path: str | Path, image_shape: Sequence[int], *, n: int = 64, title: str = "") -> Path:
    """Tile up to ``n`` images (rows of ``[N, prod(image_shape)]``) into one grey-scale grid.

    Parameters
    ----------
    images : array-like
        ``[N, H*W]`` or ``[N, H, W]``.
    path : path-like
        Output PNG.
    image_shape : (int, int)
        ``(H, W)``.
    n : int
        Maximum number of images shown.
    title : str
        Figure title.
    """
    fn = "plot_image_grid"
    arr = _np(images, "images", fn)
    h, w = (int(v) for v in image_shape)
    arr = arr.reshape(arr.shape[0], -1)
    if arr.shape[1] != h * w:
        raise WakesleepError(f"{fn}: images have {arr.shape[1]} pixels, image_shape {h}x{w} has {h * w}")
    arr = arr[:n]
    cols = int(math.ceil(math.sqrt(arr.shape[0])))
    rows = int(math.ceil(arr.shape[0] / cols))
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1)) * np.nan
    for i, img in enumerate(arr):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img.reshape(h, w)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(2.0, cols * w / 14), max(2.0, rows * h / 14)))
    ax.imshow(grid, cmap="gray", interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_samples(
    samples: Any | Mapping[str, Any],
    path: str | Path,
    data: Any | None = None,
    *,
    image_shape: Sequence[int] | None = None,
    max_points: int = 2000,
    n_images: int = 36,
) -> Path:
    """Model samples beside data: scatter plots for 2-D (or 1-D: histograms), image grids for images.

    Parameters
    ----------
    samples : array-like or mapping of name to array-like
        ``[n, d]`` samples of one model, or ``{"VAE": ..., "DDC-HM": ...}``; one panel per set.
    path : path-like
        Output PNG.
    data : array-like, optional
        ``[n, d]`` data, shown in the first panel.
    image_shape : (int, int), optional
        Show rows as ``H x W`` images (one grid per set).
    max_points : int
        Points per scatter panel.
    n_images : int
        Images per grid.
    """
    fn = "plot_samples"
    sets: dict[str, np.ndarray] = {}
    if data is not None:
        sets["data"] = _np(data, "data", fn)
    if isinstance(samples, Mapping):
        for k, v in samples.items():
            sets[str(k)] = _np(v, f"samples[{k!r}]", fn)
    else:
        sets["model"] = _np(samples, "samples", fn)
    flat = {k: v.reshape(v.shape[0], -1) for k, v in sets.items()}
    dims = {v.shape[1] for v in flat.values()}
    if len(dims) != 1:
        raise WakesleepError(f"{fn}: sample sets have different dimensions {sorted(dims)}")
    d = dims.pop()
    plt = _plt()
    k = len(flat)
    if image_shape is not None:
        h, w = (int(v) for v in image_shape)
        if h * w != d:
            raise WakesleepError(f"{fn}: samples have {d} columns, image_shape {h}x{w} has {h * w}")
        cols = int(math.ceil(math.sqrt(n_images)))
        fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.4), squeeze=False)
        for ax, (name, arr) in zip(axes[0], flat.items(), strict=True):
            arr = arr[:n_images]
            rows = int(math.ceil(arr.shape[0] / cols))
            grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1), np.nan)
            for i, img in enumerate(arr):
                r, c = divmod(i, cols)
                grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img.reshape(h, w)
            ax.imshow(grid, cmap="gray", interpolation="nearest")
            ax.set_title(name)
            ax.set_axis_off()
        return _save(fig, path)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.2), squeeze=False, sharex=True, sharey=(d >= 2))
    for ax, (name, arr) in zip(axes[0], flat.items(), strict=True):
        arr = arr[:max_points]
        if d == 1:
            ax.hist(arr[:, 0], bins=50, density=True, color="C0" if name == "data" else "C1")
        else:
            if d > 2:
                name = f"{name} (dims 1-2 of {d})"
            ax.scatter(arr[:, 0], arr[:, 1], s=2, alpha=0.5, color="C0" if name == "data" else "C1")
        ax.set_title(name)
    return _save(fig, path)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file (one JSON object per line); blank lines are skipped."""
    fn = "read_metrics"
    path = Path(path)
    if not path.is_file():
        raise WakesleepError(f"{fn}: file not found: {path}")
    rows = []
    with path.open() as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise WakesleepError(f"{fn}: {path} line {i} is not JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise WakesleepError(f"{fn}: {path} line {i} is not a JSON object")
            rows.append(obj)
    return rows


def plot_learning_curves(
    metrics: str | Path | Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    keys: Sequence[str] | None = None,
    step_key: str = "step",
    log_y: Sequence[str] = (),
) -> Path:
    """One panel per numeric metric against ``step`` from a ``metrics.jsonl`` file (or parsed rows).

    One run's curves, as ``evaluate`` draws them (:func:`wakesleep.eval.curves.draw_curves`; ``wakesleep plot``
    draws several runs with :func:`wakesleep.eval.curves.plot_learning_curves`).

    Parameters
    ----------
    metrics : path-like or list of dict
        The ``metrics.jsonl`` file or its rows.
    path : path-like
        Output PNG.
    keys : sequence of str, optional
        Metrics to plot (default: every numeric field other than ``step_key``).
    step_key : str
        The x-axis field.
    log_y : sequence of str
        Metrics drawn on a log scale.
    """
    fn = "plot_learning_curves"
    rows = read_metrics(metrics) if isinstance(metrics, str | Path) else list(metrics)
    rows = [r for r in rows if step_key in r]
    if not rows:
        raise WakesleepError(f"{fn}: no rows with a {step_key!r} field")
    if keys is None:
        keys = []
        for r in rows:
            for k, v in r.items():
                if k != step_key and k not in keys and isinstance(v, int | float) and not isinstance(v, bool):
                    keys.append(k)
    if not keys:
        raise WakesleepError(f"{fn}: no numeric metrics to plot")
    for key in keys:
        if not any(isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool) for r in rows):
            raise WakesleepError(f"{fn}: metric {key!r} has no numeric values")
    return draw_curves(path, list(keys), [None], [rows], step_key=step_key, log_y=log_y)


def plot_posterior_corner(
    sample_sets: Mapping[str, Any],
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    truth: Sequence[float] | None = None,
    bins: int = 30,
) -> Path:
    """Overlaid corner plots of several posterior sample sets (as the paper's Fig. 2), with ``corner``.

    Parameters
    ----------
    sample_sets : mapping of name to array-like
        ``{"true model": [S, D], "DDC-HM": [S, D], ...}``: samples of the same latents (e.g. from
        :func:`~wakesleep.eval.nuts_posterior`, layers concatenated).
    path : path-like
        Output PNG.
    labels : sequence of str, optional
        Axis labels (default ``z[0]``, ``z[1]``, ...).
    truth : sequence of float, optional
        True latent values to mark.
    bins : int
        Histogram bins.
    """
    fn = "plot_posterior_corner"
    try:
        import corner
    except ImportError:  # pragma: no cover
        raise WakesleepError(f"{fn}: the 'corner' package is needed: pip install 'wakesleep[plots]'") from None
    if not sample_sets:
        raise WakesleepError(f"{fn}: sample_sets is empty")
    arrays = {str(k): _np(v, f"sample_sets[{k!r}]", fn).reshape(len(v), -1) for k, v in sample_sets.items()}
    dims = {a.shape[1] for a in arrays.values()}
    if len(dims) != 1:
        raise WakesleepError(f"{fn}: sample sets have different dimensions {sorted(dims)}")
    d = dims.pop()
    if labels is not None and len(labels) != d:
        raise WakesleepError(f"{fn}: {len(labels)} labels for {d} dimensions")
    labels = list(labels) if labels is not None else [f"z[{i}]" for i in range(d)]
    lo = np.min([np.percentile(a, 0.5, axis=0) for a in arrays.values()], axis=0)
    hi = np.max([np.percentile(a, 99.5, axis=0) for a in arrays.values()], axis=0)
    pad = 0.05 * np.maximum(hi - lo, 1e-9)
    ranges = [(float(lo_ - p), float(hi_ + p)) for lo_, hi_, p in zip(lo, hi, pad, strict=True)]
    plt = _plt()
    fig = None
    handles = []
    for i, (name, arr) in enumerate(arrays.items()):
        color = f"C{i}"
        fig = corner.corner(
            arr,
            fig=fig,
            bins=bins,
            range=ranges,
            labels=labels,
            color=color,
            truths=list(truth) if (truth is not None and i == 0) else None,
            plot_datapoints=False,
            plot_density=False,
            fill_contours=False,
            levels=(0.393, 0.865),
            hist_kwargs={"density": True},
        )
        handles.append(plt.Line2D([], [], color=color, label=name))
    fig.legend(handles=handles, loc="upper right")
    return _save(fig, path)
