"""Learning curves of one run or several, from their ``metrics.jsonl`` (what ``wakesleep plot`` draws).

:func:`plot_learning_curves` draws one panel per metric against the step, the runs overlaid and labelled by
their directory names, into one PNG (matplotlib, Agg backend). It reads only complete lines, so a run that is
still training (its ``DIR.partial``) can be drawn while it goes. The PNG carries a ``Software: wakesleep`` text
chunk: an existing file is replaced only when asked (``overwrite=True``) and only when wakesleep wrote it.

Errors are :class:`~wakesleep.errors.WakesleepError` about one setting (``exc.setting``: ``run_dirs``,
``metrics`` or ``out``), one line each.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from wakesleep import io as wio
from wakesleep.errors import setting_error

__all__ = [
    "CURVES_FILE",
    "DEFAULT_SKIPPED",
    "check_curves",
    "curves_path",
    "draw_curves",
    "plot_learning_curves",
    "read_run_metrics",
    "written_here",
]

#: the default output file inside a run directory
CURVES_FILE = "curves.png"
#: numeric fields not drawn unless asked for (the step is the x axis; epochs and seconds grow with it)
DEFAULT_SKIPPED = ("step", "epoch", "seconds")
#: the value of the PNG text chunk ``Software`` that marks a plot as written by wakesleep
SOFTWARE = "wakesleep"


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def read_run_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete records of ``run_dir/metrics.jsonl`` that have a numeric ``step``.

    Parameters
    ----------
    run_dir : path
        A run directory written by ``wakesleep train`` (or one run of an experiment, or a ``DIR.partial``).

    Returns
    -------
    list of dict

    Raises
    ------
    WakesleepError
        ``run_dirs``: the directory or its ``metrics.jsonl`` is missing, or a line is not JSON.
    """
    path = Path(run_dir)
    if not path.is_dir():
        partial = path.parent / f"{path.name}.partial"
        hint = f" (an unfinished run is in {partial})" if partial.is_dir() else ""
        raise setting_error("run_dirs", f"run directory not found{hint}", value=str(path))
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise setting_error(
            "run_dirs", "has no metrics.jsonl (not a run directory written by 'wakesleep train')", value=str(path)
        )
    try:
        rows = wio.read_jsonl(metrics)
    except json.JSONDecodeError as exc:
        raise setting_error("run_dirs", f"{metrics}: line {exc.lineno} is not JSON", value=str(path)) from None
    except UnicodeDecodeError:
        raise setting_error("run_dirs", f"{metrics}: not a text file", value=str(path)) from None
    return [r for r in rows if isinstance(r, dict) and _number(r.get("step"))]


def curves_path(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> Path:
    """Where :func:`plot_learning_curves` writes: ``out``, or ``run_dirs[0]/curves.png`` for a single run.

    Parameters
    ----------
    run_dirs : sequence of path
        The runs drawn.
    out : path, optional
        A ``.png`` file (required for several runs).

    Returns
    -------
    Path

    Raises
    ------
    WakesleepError
        ``out``: missing with several runs, not ``.png``, or an existing directory.
    """
    if out is None:
        if len(run_dirs) != 1:
            raise setting_error("out", f"required when drawing {len(run_dirs)} runs (give a FILE.png)")
        return Path(run_dirs[0]) / CURVES_FILE
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise setting_error("out", "must be a .png file", value=str(path))
    if path.is_dir():
        raise setting_error("out", "is a directory (give a FILE.png)", value=str(path))
    return path


def written_here(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG written by wakesleep (its ``Software`` text chunk says so).

    Parameters
    ----------
    path : path

    Returns
    -------
    bool
    """
    try:
        from PIL import Image

        with Image.open(path) as img:
            text = dict(getattr(img, "text", None) or img.info)
    except Exception:  # noqa: BLE001 - not an image we can read: not ours
        return False
    return str(text.get("Software", "")).startswith(SOFTWARE)


def _labels(paths: Sequence[Path]) -> list[str]:
    """Legend labels: the directory names (``.partial`` dropped), longer paths where names repeat."""
    names = [p.name.removesuffix(".partial") or str(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    absolute = [p.absolute() for p in paths]
    try:
        common = Path(os.path.commonpath(absolute))
        rel = [str(p.relative_to(common)) or p.name for p in absolute]
    except ValueError:  # different drives
        rel = [str(p) for p in absolute]
    return rel if len(set(rel)) == len(rel) else [f"{r} ({i + 1})" for i, r in enumerate(rel)]


def _metric_names(runs: Iterable[list[dict[str, Any]]]) -> list[str]:
    names: list[str] = []
    for rows in runs:
        for row in rows:
            for k, v in row.items():
                if k not in names and (_number(v) or v is None):
                    names.append(k)
    return names


def plot_learning_curves(
    run_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    metrics: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Draw the learning curves of one run or several: one panel per metric against the step, runs overlaid.

    Parameters
    ----------
    run_dirs : path or sequence of path
        Run directories with a ``metrics.jsonl`` (``wakesleep train``'s ``DIR``, a run of an experiment, or the
        ``DIR.partial`` of a run in progress).
    metrics : sequence of str, optional
        The metrics drawn, in this order (each must be in at least one run). Default: every numeric field but
        ``step``, ``epoch`` and ``seconds``, in the order they first appear.
    out : path, optional
        The PNG written; default ``run_dirs[0]/curves.png`` (only for a single run).
    overwrite : bool
        Replace an existing ``out``, which must be a plot written by wakesleep.

    Returns
    -------
    Path
        The PNG written.

    Raises
    ------
    WakesleepError
        One line about one setting (``exc.setting``): ``run_dirs`` (a directory or its ``metrics.jsonl`` missing
        or unreadable, no records), ``metrics`` (a name in no run; the message lists the available ones), ``out``
        (see :func:`curves_path`; an existing file without ``overwrite``, or one that wakesleep did not write).
    """
    target, keys, labels, runs = _prepare(run_dirs, metrics, out)
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise setting_error("out", "exists (choose another file, or allow replacing it)", value=str(target))
        if target.is_symlink() or not target.is_file() or not written_here(target):
            raise setting_error("out", "exists and was not written by wakesleep; refusing to replace it", str(target))
    return draw_curves(target, keys, labels, runs)


def check_curves(
    run_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    metrics: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
) -> Path:
    """Check what :func:`plot_learning_curves` would draw (every run and metric) and return where it would write.

    Whether an existing output file may be replaced is not checked here.

    Parameters
    ----------
    run_dirs, metrics, out
        As for :func:`plot_learning_curves`.

    Returns
    -------
    Path
        The output file.

    Raises
    ------
    WakesleepError
        As :func:`plot_learning_curves` does, but for an existing output file.
    """
    return _prepare(run_dirs, metrics, out)[0]


def _prepare(
    run_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    metrics: Sequence[str] | None,
    out: str | os.PathLike | None,
) -> tuple[Path, list[str], list[str], list[list[dict[str, Any]]]]:
    """``(output file, metrics drawn, legend labels, each run's records)``, every input checked."""
    if isinstance(run_dirs, str | os.PathLike):
        run_dirs = [run_dirs]
    paths = [Path(d) for d in run_dirs]
    if not paths:
        raise setting_error("run_dirs", "give at least one run directory")
    runs = [read_run_metrics(p) for p in paths]
    for p, rows in zip(paths, runs, strict=True):
        if not rows:
            raise setting_error("run_dirs", "its metrics.jsonl has no records yet", value=str(p))
    available = _metric_names(runs)
    if metrics is None:
        keys = [k for k in available if k not in DEFAULT_SKIPPED]
        if not keys:
            raise setting_error("metrics", f"no metric to draw besides {', '.join(DEFAULT_SKIPPED)}")
    else:
        keys = list(dict.fromkeys(metrics))
        if not keys:
            raise setting_error("metrics", "give at least one metric name")
        drawable = [k for k in available if k != "step"]
        for k in keys:
            if k not in drawable:
                where = "the run" if len(paths) == 1 else "any of the runs"
                raise setting_error(
                    "metrics", f"not in {where} (available: {', '.join(drawable) or 'none'})", value=repr(k)
                )
    return curves_path(paths, out), keys, _labels(paths), runs


def draw_curves(
    target: str | os.PathLike,
    keys: Sequence[str],
    labels: Sequence[str | None],
    runs: Sequence[Sequence[dict[str, Any]]],
    *,
    step_key: str = "step",
    log_y: Sequence[str] = (),
) -> Path:
    """Draw one panel per metric of ``keys`` against ``step_key``, one line per run, into the PNG ``target``.

    The one drawing routine of the library's learning curves (``wakesleep plot`` and
    :func:`wakesleep.eval.plot_learning_curves`, which ``evaluate`` uses). Nothing is checked: the callers do.

    Parameters
    ----------
    target : path
        The PNG, written atomically (parents created) with a ``Software: wakesleep`` text chunk.
    keys : sequence of str
        The metrics, one panel each.
    labels : sequence of str or None
        Legend label per run (a single ``None``: no legend).
    runs : sequence of list of dict
        Each run's records.
    step_key : str
        The x-axis field.
    log_y : sequence of str
        Metrics drawn on a log scale.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from wakesleep import __version__

    ncol = min(3, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
    try:
        for ax, key in zip(axes.ravel(), keys, strict=False):
            for i, (label, rows) in enumerate(zip(labels, runs, strict=True)):
                pts = [(r[step_key], r[key] if _number(r.get(key)) else math.nan) for r in rows if key in r]
                if not pts:
                    continue
                steps, values = zip(*pts, strict=True)
                ax.plot(steps, values, lw=1.2, color=f"C{i % 10}", label=label, marker="." if len(pts) < 30 else None)
            ax.set_title(key, fontsize=10)
            ax.set_xlabel(step_key)
            if key in log_y:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        for ax in axes.ravel()[len(keys) :]:
            ax.set_axis_off()
        handles, names = axes.ravel()[0].get_legend_handles_labels()
        for ax in axes.ravel()[1 : len(keys)]:  # runs missing from the first panel
            for h, n in zip(*ax.get_legend_handles_labels(), strict=True):
                if n not in names:
                    handles.append(h)
                    names.append(n)
        if handles:
            fig.legend(handles, names, loc="upper center", ncol=min(len(names), 4), bbox_to_anchor=(0.5, 1.0))
            fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (nrow * 3.0) * math.ceil(len(names) / 4)))
        else:
            fig.tight_layout()
        metadata = {"Software": f"{SOFTWARE} {__version__}", "Title": "learning curves"}
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        with wio.atomic_write(target, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100, metadata=metadata)
    finally:
        plt.close(fig)
    return target
