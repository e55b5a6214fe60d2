"""``wakesleep plot --run DIR [--run DIR2 ...] [--metric NAME ...] [--out FILE.png]``: draw learning curves.

One panel per metric of the runs' ``metrics.jsonl`` against the step, the runs overlaid and labelled by their
directory names (:func:`wakesleep.eval.curves.plot_learning_curves`). Default metrics: every number logged but
``step``, ``epoch`` and ``seconds``; default output ``DIR/curves.png`` for one run (``--out`` is required for
several). An existing output file is replaced only with ``--overwrite``, and only when wakesleep wrote it. A run
still training can be drawn from its ``DIR.partial``.
"""

from __future__ import annotations

import argparse

from wakesleep.commands import naming_flags
from wakesleep.errors import WakesleepError

__all__ = ["add_arguments", "run"]

#: the flags of the library's settings
FLAGS = {"run_dirs": "--run", "metrics": "--metric", "out": "--out"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the options of ``wakesleep plot``."""
    p.add_argument(
        "--run",
        dest="runs",
        action="append",
        required=True,
        metavar="DIR",
        help="a run directory with metrics.jsonl (repeat to overlay several runs)",
    )
    p.add_argument(
        "--metric",
        dest="metrics",
        action="append",
        default=None,
        metavar="NAME",
        help="a metric to draw, e.g. cov_gap (repeatable or comma-separated; default: all but epoch and seconds)",
    )
    p.add_argument("--out", default=None, metavar="FILE.png", help="the PNG (default DIR/curves.png for one run)")
    p.add_argument("--overwrite", action="store_true", help="replace FILE.png if wakesleep wrote it")


def run(args: argparse.Namespace) -> int:
    """Draw the curves of ``--run`` into ``--out``; print the file written."""
    from wakesleep.eval.curves import check_curves, plot_learning_curves

    metrics = None
    if args.metrics is not None:
        metrics = [m.strip() for text in args.metrics for m in text.split(",") if m.strip()]
    with naming_flags(FLAGS):
        out = check_curves(args.runs, metrics, args.out)  # the runs, the metrics, the file's name
    if (out.exists() or out.is_symlink()) and not args.overwrite:
        raise WakesleepError(f"--out: {out} exists (choose another file or pass --overwrite)")
    with naming_flags(FLAGS):
        path = plot_learning_curves(args.runs, metrics, out, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0
