"""Accuracy of DDC-HM's wake gradient against exact gradients, as a function of N (sleep samples) and K (features).

Oracles (float64): the Gaussian marginal of the two-layer linear-Gaussian model of ``tests/oracles.py``
(dims z2=2, z1=3, x=4, parameters perturbed away from the data-generating ones), and enumeration of a
sigmoid belief network 2-3-4-10 (9 binary latents). For each (N, K) and each of ``--repeats`` sleep phases
we record the cosine similarity between the estimate and the exact gradient of (1/B) sum_b log p(x_b)
(B = 100) for every parameter block, and report the minimum over blocks (mean and worst over repeats).

Usage::

    python benchmarks/bench_ddc_gradient.py --out docs/bench/ddc_gradient.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import wakesleep  # noqa: E402

from oracles import (  # noqa: E402
    build,
    cosine,
    enumerate_loglik,
    exact_gradient,
    linear_gaussian_loglik,
    linear_gaussian_problem,
    sbn_config,
)


def problems():
    model, x = linear_gaussian_problem()
    yield "linear-Gaussian 2-3-4", model, x, exact_gradient(model, x, linear_gaussian_loglik)
    truth = build(sbn_config((2, 3, 4, 10), 0))
    torch.manual_seed(11)
    x = truth.sample(100)[-1]
    model = build(sbn_config((2, 3, 4, 10), 5))
    yield "SBN 2-3-4-10", model, x, exact_gradient(model, x, enumerate_loglik)


SETTINGS = {
    "paper (sigmoid T, eq. 8 recognition)": {},
    "same statistics, penalised like the random features": {
        "extra_stats": "quadratic",
        "recognition_input": "quadratic",
        "free_stats": False,
    },
    "+ unpenalised z, zz^T in T and x, xx^T in recognition": {
        "extra_stats": "quadratic",
        "recognition_input": "quadratic",
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", type=int, nargs="+", default=[1000, 5000, 20000, 50000])
    ap.add_argument("--ks", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--settings",
        nargs="+",
        type=int,
        default=[0, 2],
        help="indices into SETTINGS (0: paper, 1: statistics penalised, 2: statistics unpenalised)",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for pname, model, x, exact in problems():
        for idx, (sname, extra) in enumerate(SETTINGS.items()):
            if idx not in args.settings:
                continue
            if pname.startswith("SBN") and extra:
                continue  # binary latents: z^2 = z, the quadratic statistics add nothing new
            for n in args.ns:
                for k in args.ks:
                    mins, per_block, t0 = [], {key: [] for key in exact}, time.perf_counter()
                    for rep in range(args.repeats):
                        torch.manual_seed(100 + rep)
                        algo = wakesleep.build_algorithm(
                            "ddc_hm", model, sleep_samples=n, features=k, recognition_hidden=k, seed=rep, **extra
                        )
                        algo.sleep()
                        est = algo.wake_gradient(x)
                        cos = {key: cosine(est[key], exact[key]) for key in exact}
                        for key, v in cos.items():
                            per_block[key].append(v)
                        mins.append(min(cos.values()))
                    row = {
                        "problem": pname,
                        "setting": sname,
                        "N": n,
                        "K": k,
                        "M": k,
                        "min_block_cosine_mean": sum(mins) / len(mins),
                        "min_block_cosine_worst": min(mins),
                        "per_block_mean": {key: sum(v) / len(v) for key, v in per_block.items()},
                        "seconds_per_repeat": (time.perf_counter() - t0) / args.repeats,
                    }
                    rows.append(row)
                    print(
                        f"{pname:22s} | {sname[:40]:40s} | N={n:6d} K={k:4d} | min-block cosine mean "
                        f"{row['min_block_cosine_mean']:.3f} worst {row['min_block_cosine_worst']:.3f}",
                        flush=True,
                    )
    print(f"\n| model | encoding / recognition | N | K = M | min-block cosine, mean | worst of {args.repeats} |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['problem']} | {r['setting']} | {r['N']} | {r['K']} | {r['min_block_cosine_mean']:.3f} | "
            f"{r['min_block_cosine_worst']:.3f} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
