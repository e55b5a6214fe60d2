"""Time, floating-point work and peak memory of one DDC-HM iteration (sleep + wake + Adam step).

Models: the paper's synthetic model (eq. 13; N = 200 sleep samples, K = 100, recognition hidden 100, as in
section 7) and a sigmoid belief network 784-200-200-200 with batch 100, N = 1000, K = 200 (recognition
hidden 300, as the paper's SBN) with three read-out inputs: x itself (``recognition_input: linear``, what
``auto`` and ``configs/sbn.yaml`` use), the bottom-up message W^T x (``message``) and eq. 8 as printed
without either (``none``)).
Matrix-product work is counted with the formulas of ``torch.utils.flop_counter``
(``wakesleep.bench.MatmulFlops``: its ``FlopCounterMode`` fails under ``torch.autograd.grad`` in torch 2.13);
the Cholesky factorisations and triangular solves of the ridge regressions, which it does not count, are
added analytically (n^3 / 3 per factorisation, 2 n^2 m per solve with m right-hand sides). Each
configuration runs in its own process, so its peak resident memory is its own.

Usage::

    python benchmarks/bench_ddc_speed.py --out docs/bench/ddc_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SBN_X = {"sleep_samples": 1000, "features": 200, "recognition_hidden": 300, "recognition_input": "linear"}
DEEP_S15 = {**SBN_X, "sleep_samples": 10000, "extra_stats": "sufficient", "beta": "conditional", "recognition": "deep"}

CONFIGS = {
    "synthetic eq. 13 (N=200, K=100, M=100, B=100)": {
        "model": {
            "layers": [
                {"name": "z2", "family": "mog", "dim": 1, "means": [[3.0], [-3.0]], "std": 0.1, "learn": False},
                {"name": "z1", "family": "laplace", "dim": 2, "link": "softplus_linear", "bias": False},
                {"name": "x", "family": "gaussian", "dim": 2, "link": "linear", "bias": False},
            ]
        },
        "algo": {"sleep_samples": 200, "features": 100, "recognition_hidden": 100},
        "batch": 100,
    },
    "SBN 784-200-200-200 (N=1000, K=200, M=300 + message W^T x, B=100)": {
        "model": {
            "layers": [
                {"name": "z3", "family": "bernoulli", "dim": 200},
                {"name": "z2", "family": "bernoulli", "dim": 200, "link": "linear"},
                {"name": "z1", "family": "bernoulli", "dim": 200, "link": "linear"},
                {"name": "x", "family": "bernoulli", "dim": 784, "link": "linear"},
            ]
        },
        "algo": {
            "sleep_samples": 1000,
            "features": 200,
            "recognition_hidden": 300,
            "recognition_input": "message",
            "beta": "analytic",
        },
        "batch": 100,
    },
    "SBN 784-200-200-200, x in the read-out (M=300 + x)": {
        "model": "SBN",
        "algo": {**SBN_X, "beta": "analytic"},
        "batch": 100,
    },
    "SBN 784-200-200-200, recognition as eq. 8 (no x in the read-out)": {
        "model": "SBN",
        "algo": {**SBN_X, "recognition_input": "none", "beta": "analytic"},
        "batch": 100,
    },
    # issue 16's options, each on the row above with x in the read-out (session 9's settings otherwise)
    "SBN, x in the read-out, beta conditional (the default since session 10)": {
        "model": "SBN",
        "algo": {**SBN_X, "beta": "conditional"},
        "batch": 100,
    },
    "SBN, x in the read-out, beta conditional, N=10000 (configs/sbn.yaml since session 10)": {
        "model": "SBN",
        "algo": {**SBN_X, "beta": "conditional", "sleep_samples": 10000},
        "batch": 100,
    },
    # session 12: learned encoding functions, on the configs/sbn.yaml row (a sleep phase every iteration here)
    "SBN, x in the read-out, beta conditional, N=10000, learn_features": {
        "model": "SBN",
        "algo": {
            **SBN_X,
            "beta": "conditional",
            "sleep_samples": 10000,
            "learn_features": True,
        },
        "batch": 100,
    },
    "SBN, x in the read-out, beta conditional, N=10000, learn_features, recognition_memory adaptive": {
        "model": "SBN",
        "algo": {
            **SBN_X,
            "beta": "conditional",
            "sleep_samples": 10000,
            "learn_features": True,
            "recognition_memory": "adaptive",
        },
        "batch": 100,
    },
    "SBN, x in the read-out, beta conditional, N=10000, recognition_memory adaptive": {
        "model": "SBN",
        "algo": {**SBN_X, "beta": "conditional", "sleep_samples": 10000, "recognition_memory": "adaptive"},
        "batch": 100,
    },
    # session 13: the gradient regressions' ridge chosen on held-out samples (every 10 phases: the mean sleep
    # time of 10 iterations includes one choice, the median none)
    "SBN, x in the read-out, beta conditional, N=10000, grad_ridge auto": {
        "model": "SBN",
        "algo": {**SBN_X, "beta": "conditional", "sleep_samples": 10000, "grad_ridge": "auto"},
        "batch": 100,
    },
    "SBN, x in the read-out, extra_stats sufficient": {
        "model": "SBN",
        "algo": {**SBN_X, "beta": "analytic", "extra_stats": "sufficient"},
        "batch": 100,
    },
    "SBN, x in the read-out, K=1000": {
        "model": "SBN",
        "algo": {**SBN_X, "beta": "analytic", "features": 1000},
        "batch": 100,
    },
    "SBN, x in the read-out, recognition deep": {
        "model": "SBN",
        "algo": {**SBN_X, "beta": "analytic", "recognition": "deep"},
        "batch": 100,
    },
    # session 15: the deep recognition as in the SBN runs (N=10000, sufficient statistics, beta conditional, 50 Adam
    # steps a phase), on fresh samples per step and with its calibrating regressions
    "SBN, recognition deep, N=10000, extra_stats sufficient, beta conditional": {
        "model": "SBN",
        "algo": DEEP_S15,
        "batch": 100,
    },
    "SBN, recognition deep, N=10000, extra_stats sufficient, beta conditional, recognition_fresh": {
        "model": "SBN",
        "algo": {**DEEP_S15, "recognition_fresh": True},
        "batch": 100,
    },
    "SBN, recognition deep, N=10000, extra_stats sufficient, beta conditional, recognition_calibrate features": {
        "model": "SBN",
        "algo": {**DEEP_S15, "recognition_calibrate": "features"},
        "batch": 100,
    },
    "SBN, recognition deep, N=10000, extra_stats sufficient, beta conditional, recognition_calibrate residual": {
        "model": "SBN",
        "algo": {**DEEP_S15, "recognition_calibrate": "residual"},
        "batch": 100,
    },
}


def run_one(name: str, iters: int, dtype: str, threads: int = 2) -> dict:
    import wakesleep
    from wakesleep.bench import MatmulFlops, matmul_rate, solver_flops
    from wakesleep.runtime import keep_freed_memory

    keep_freed_memory()  # as the command line does (wakesleep.runtime)
    torch.set_num_threads(threads)
    spec = CONFIGS[name]
    model_cfg = (
        CONFIGS["SBN 784-200-200-200 (N=1000, K=200, M=300 + message W^T x, B=100)"]["model"]
        if spec["model"] == "SBN"
        else spec["model"]
    )
    model = wakesleep.build_model({**model_cfg, "dtype": dtype})
    data = model.sample(spec["batch"] * 20)[-1]
    algo = wakesleep.build_algorithm("ddc_hm", model, **spec["algo"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def iteration(i: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        algo.sleep()
        t1 = time.perf_counter()
        x = data[(i % 20) * spec["batch"] : (i % 20 + 1) * spec["batch"]]
        grads = algo.wake_gradient(x)
        for n_, p in model.named_parameters():
            p.grad = -grads[n_]
        opt.step()
        return t1 - t0, time.perf_counter() - t1

    for i in range(3):
        iteration(i)
    sleeps, wakes = [], []
    for i in range(iters):
        s, w = iteration(i)
        sleeps.append(s)
        wakes.append(w)
    with MatmulFlops() as fc:
        iteration(0)
    mm_flops = fc.total
    flops = mm_flops + solver_flops(algo)
    rate = matmul_rate(torch.float64 if dtype == "float64" else torch.float32)  # best of MKL and oneDNN
    sleep_mean = sum(sleeps) / len(sleeps)  # with the phases that re-choose a ridge (grad_ridge auto)
    sleeps.sort()
    wakes.sort()
    sec = sleeps[len(sleeps) // 2] + wakes[len(wakes) // 2]
    return {
        "config": name,
        "dtype": dtype,
        "seconds_per_iteration": sec,
        "sleep_seconds": sleeps[len(sleeps) // 2],
        "sleep_seconds_mean": sleep_mean,
        "wake_seconds": wakes[len(wakes) // 2],
        "gflop_per_iteration": flops / 1e9,
        "matmul_gflops": rate / 1e9,
        "fraction_of_matmul_rate": flops / sec / rate,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_increase_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--only", default=None, help="run only the configurations whose name contains this text")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.iters, args.dtype, args.threads)))
        return
    rows = []
    for name in CONFIGS:
        if args.only and args.only not in name:
            continue
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                name,
                "--iters",
                str(args.iters),
                "--dtype",
                args.dtype,
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads, "
        f"torch {torch.__version__}"
    )
    print(f"machine: {machine}")
    print(
        "| configuration | dtype | s / iteration (sleep + wake) | GFLOP / iteration | % of matmul rate | peak RSS, MB |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['config']} | {r['dtype']} | {r['seconds_per_iteration']:.4f} ({r['sleep_seconds']:.4f} + "
            f"{r['wake_seconds']:.4f}) | {r['gflop_per_iteration']:.3f} | "
            f"{100 * r['fraction_of_matmul_rate']:.1f} % of {r['matmul_gflops']:.0f} GFLOP/s | {r['peak_rss_mb']:.0f} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
