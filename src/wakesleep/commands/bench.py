"""``wakesleep bench sbn --out DIR``: time the SBN experiment's algorithms (time, memory, FLOPs, MMD, NLL).

Trains every algorithm of ``configs/sbn.yaml`` for ``--epochs`` epochs, each in its own process, and writes
DIR/bench.json, DIR/bench.md and a grid of samples per algorithm (see :mod:`wakesleep.bench`). Every option,
the config and the data are checked before anything is written, and DIR appears only when the benchmark has
finished. The exit status is 1 when an algorithm failed (its row says why), 2 on a mistake in the options.
"""

from __future__ import annotations

import argparse
import sys

from wakesleep.bench.settings import BENCHMARKS, BenchSettings
from wakesleep.commands import add_overrides, naming_flags, settings_from_flags
from wakesleep.errors import WakesleepError

__all__ = ["add_arguments", "run", "settings_from_args"]

#: settings whose flag is not ``--`` + the name with dashes
FLAGS = {"overrides": "--set", "benchmark": "BENCHMARK"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the options of ``wakesleep bench``."""
    p.add_argument("benchmark", choices=BENCHMARKS, help="what to benchmark (sbn: the paper's 784-200-200-200 SBN)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs per algorithm (default 1)")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/bench.json and DIR/bench.md")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="experiment config (default: configs/sbn.yaml)")
    p.add_argument("--algorithms", default=None, help="comma-separated labels of experiment.algorithms (default: all)")
    p.add_argument("--n", type=int, default=None, help="training images (default: all)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the config's train.device)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--dtype", default=None, choices=["float32", "float64"])
    p.add_argument("--mmd-samples", type=int, default=10000, help="test images and model samples for the final MMD")
    p.add_argument("--curve-samples", type=int, default=2000, help="samples per point of the MMD learning curve")
    p.add_argument("--evals", type=int, default=10, help="points of the MMD learning curve")
    p.add_argument("--nll-k", type=int, default=5000, help="importance samples of the NLL")
    p.add_argument("--nll-points", type=int, default=1000, help="test images of the NLL")
    p.add_argument("--proposal-steps", type=int, default=2000, help="steps of fit_proposal (DDC-HM's NLL)")
    p.add_argument(
        "--ais-points",
        type=int,
        default=0,
        help="test images also scored by annealed importance sampling (default 0: none; DDC-HM's importance-"
        "sampled NLL can be tens of nats loose, AIS is not)",
    )
    p.add_argument("--ais-chains", type=int, default=16, help="AIS chains per image (default 16)")
    p.add_argument("--ais-temperatures", type=int, default=1000, help="AIS temperatures (default 1000)")
    add_overrides(p, "override the experiment config, e.g. --set algorithm.recognition_ridge=1e-3")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per algorithm (default: none)")


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """The validated :class:`~wakesleep.bench.BenchSettings` of the parsed flags (errors name the flag)."""
    algorithms = None
    if args.algorithms is not None:
        algorithms = tuple(a.strip() for a in args.algorithms.split(",") if a.strip())
        if not algorithms:
            raise WakesleepError("--algorithms: empty (give labels of experiment.algorithms, or leave it out)")
    settings = settings_from_flags(BenchSettings, args, algorithms=algorithms, overrides=tuple(args.overrides))
    with naming_flags(FLAGS):
        return settings.validate()


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print ``bench.md``. Returns 0, or 1 when an algorithm failed."""
    from wakesleep.bench import markdown, run_bench

    settings = settings_from_args(args)
    with naming_flags(FLAGS):
        result = run_bench(
            settings, args.out, overwrite=args.overwrite, command="wakesleep " + " ".join(sys.argv[1:]), log=_log
        )
    print(markdown(result))
    return 0 if all("error" not in r for r in result["algorithms"].values()) else 1
