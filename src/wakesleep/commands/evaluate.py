"""``wakesleep evaluate --run DIR``: evaluate a trained run and write ``DIR/eval.json`` and plots.

Metrics (``--metrics``, comma-separated; default ``mmd,nll,plots``): ``mmd`` (MMD^2 against the reference data,
with its variance), ``nll`` (negative log-likelihood of ``--nll-points`` reference points drawn at random,
seeded by ``--seed``, by ``--nll-method`` proposal, gaussian or ais; plus the exact value where tractable),
``plots`` (samples.png, learning_curves.png), ``posterior`` (NUTS posterior of the first reference point,
posterior.png). See :mod:`wakesleep.eval.run`.

Reference data: ``--data FILE.npz`` (array ``x``, or the file's only array), else the data the run trained on
(its test set when it has one; drawn again as training drew them for ``data: {source: model}``). Nothing is
written into DIR when the evaluation fails.
"""

from __future__ import annotations

import argparse
import math

from wakesleep.commands import naming_flags, settings_from_flags
from wakesleep.errors import WakesleepError
from wakesleep.eval.run import METRICS, NLL_METHODS, EvalSettings

__all__ = ["add_arguments", "run", "settings_from_args"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the options of ``wakesleep evaluate``."""
    p.add_argument("--run", required=True, help="run directory written by 'wakesleep train'")
    p.add_argument("--data", help="reference data .npz (array 'x'); default: the run's data (test set if any)")
    p.add_argument("--metrics", default="mmd,nll,plots", help=f"comma-separated, from {', '.join(METRICS)}")
    p.add_argument("--n-samples", type=int, default=10000, help="model samples (and data points) for MMD")
    p.add_argument("--bandwidth", default="median", help="MMD bandwidth: a number, 'median' or 'power'")
    p.add_argument(
        "--nll-points",
        type=int,
        default=1000,
        help="reference points scored by the NLL (drawn at random, seeded by --seed)",
    )
    p.add_argument("--k", type=int, default=1000, help="importance samples per point for the NLL")
    p.add_argument("--proposal-steps", type=int, default=2000, help="training steps of the evaluation proposal")
    p.add_argument(
        "--nll-method",
        choices=NLL_METHODS,
        default="proposal",
        help=(
            "NLL estimator: 'proposal' (IS with a fitted proposal, any model), 'gaussian' (IS with the Gaussian "
            "posterior proposal, Gaussian-linear observation layer), 'ais' (annealed IS, real-valued latents or "
            "sigmoid belief networks)"
        ),
    )
    p.add_argument("--ais-chains", type=int, default=16, help="AIS chains per point (--nll-method ais)")
    p.add_argument("--ais-temperatures", type=int, default=1000, help="AIS temperatures (--nll-method ais)")
    p.add_argument(
        "--ais-leapfrog", type=int, default=10, help="leapfrog steps per HMC move (--nll-method ais, real latents)"
    )
    p.add_argument("--posterior-samples", type=int, default=1000, help="NUTS samples for 'posterior'")
    p.add_argument(
        "--image-shape", help="HxW to draw samples as images (default: 28x28 when the data have 784 columns)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device (default: the run's)")


def _bandwidth(text: str) -> float | str:
    if text in ("median", "power"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise WakesleepError(f"--bandwidth: must be a number, 'median' or 'power', got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise WakesleepError(f"--bandwidth: must be a positive number, 'median' or 'power', got {text!r}")
    return value


def _image_shape(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise WakesleepError(f"--image-shape: expected HxW like 28x28, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise WakesleepError(f"--image-shape: expected positive HxW like 28x28, got {text!r}")
    return h, w


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    """The validated :class:`~wakesleep.eval.run.EvalSettings` of the parsed flags (errors name the flag)."""
    settings = settings_from_flags(
        EvalSettings,
        args,
        metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
        bandwidth=_bandwidth(args.bandwidth),
        image_shape=_image_shape(args.image_shape),
    )
    with naming_flags():
        return settings.validate()


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)  # eval.json holds None for NaN or inf


def run(args: argparse.Namespace) -> int:
    """Evaluate ``--run``; write ``eval.json`` (and plots) into it and print the headline numbers."""
    from pathlib import Path

    from wakesleep.eval.run import evaluate_run

    settings = settings_from_args(args)
    with naming_flags():
        result = evaluate_run(args.run, settings, data=args.data, device=args.device)
    parts = []
    if "mmd" in result:
        parts.append(f"MMD^2 {_number(result['mmd']['mmd2'], '.3g')}")
    if "nll" in result:
        parts.append(f"NLL {_number(result['nll']['nll'], '.3f')} nats ({result['nll']['method']})")
    print(f"wrote {Path(args.run) / 'eval.json'}" + (f" ({', '.join(parts)})" if parts else ""))
    return 0
