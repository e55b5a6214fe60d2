"""Speed, memory, floating-point work, MMD and NLL of DDC-HM, VIMCO (K = 50), RWS and wake-sleep on the SBN.

A thin wrapper around ``wakesleep bench sbn`` (``src/wakesleep/bench.py``), with the settings used for
docs/RESULTS.md. Every algorithm trains in its own process, one after the other, on the same machine.

Usage::

    python benchmarks/bench_sbn.py --out docs/bench/sbn                      # paper settings, 1 epoch, all data
    python benchmarks/bench_sbn.py --out /tmp/sbn --quick                     # 3000 images, 3 epochs, small eval
    python benchmarks/bench_sbn.py --out DIR -- --set train.sleep_every=5     # extra arguments to wakesleep bench
"""

from __future__ import annotations

import argparse
import sys

QUICK = [
    "--epochs",
    "3",
    "--n",
    "3000",
    "--threads",
    "1",
    "--mmd-samples",
    "5000",
    "--curve-samples",
    "1000",
    "--evals",
    "9",
    "--nll-k",
    "1000",
    "--nll-points",
    "200",
    "--proposal-steps",
    "500",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small run (minutes on 2 CPU cores)")
    ap.add_argument("extra", nargs="*", help="further arguments for `wakesleep bench sbn` (after --)")
    args = ap.parse_args(argv)
    from wakesleep.cli import main as cli

    cmd = ["bench", "sbn", "--out", args.out]
    cmd += QUICK if args.quick else ["--epochs", str(args.epochs)]
    return cli(cmd + list(args.extra))


if __name__ == "__main__":
    sys.exit(main())
