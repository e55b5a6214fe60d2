"""Benchmark of the evaluation package: MMD / relative MMD test on 10000 x 10000 samples of dimension 784,
and the importance-sampled log-likelihood with K = 5000 for 1000 points of a 784-200-200-200 sigmoid belief
network (random weights).

Each case runs in a fresh subprocess so that its peak resident memory (``ru_maxrss``) is its own.

    PYTHONPATH=src python benchmarks/bench_eval.py --out bench_eval.json
    PYTHONPATH=src python benchmarks/bench_eval.py --quick          # small sizes, a smoke test
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


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _binary_images(n: int, d: int, p: float, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(d, generator=g) * 2 * p  # pixel-wise rates, mean p
    return (torch.rand(n, d, generator=g) < probs).float()


def case_mmd(n: int, d: int) -> dict:
    from wakesleep.eval import mmd_statistics

    x = _binary_images(n, d, 0.13, 0)
    y = _binary_images(n, d, 0.13, 1)
    base = _rss_mb()
    t0 = time.perf_counter()
    s = mmd_statistics(x, y)  # median heuristic, chunk 2048, float32 blocks, float64 sums
    dt = time.perf_counter() - t0
    return {
        "case": f"mmd {n}x{n}, d={d}",
        "seconds": dt,
        "peak_rss_mb": _rss_mb(),
        "rss_before_mb": base,
        "result": {"mmd2": s.mmd2, "bandwidth": s.bandwidth},
    }


def case_relative(n: int, d: int) -> dict:
    from wakesleep.eval import relative_mmd_test

    x = _binary_images(n, d, 0.13, 0)
    y = _binary_images(n, d, 0.13, 1)
    z = _binary_images(n, d, 0.13, 2)
    base = _rss_mb()
    t0 = time.perf_counter()
    r = relative_mmd_test(x, y, z)
    dt = time.perf_counter() - t0
    return {
        "case": f"relative_mmd_test 3 x {n}, d={d}",
        "seconds": dt,
        "peak_rss_mb": _rss_mb(),
        "rss_before_mb": base,
        "result": {"mmd_xy": r.mmd_xy, "mmd_xz": r.mmd_xz, "p": r.p_value},
    }


def case_mmd_test(n: int, d: int, perms: int) -> dict:
    from wakesleep.eval import mmd_test

    x = _binary_images(n, d, 0.13, 0)
    y = _binary_images(n, d, 0.13, 1)
    base = _rss_mb()
    t0 = time.perf_counter()
    r = mmd_test(x, y, n_permutations=perms)
    dt = time.perf_counter() - t0
    return {
        "case": f"mmd_test {n}x{n}, d={d}, {perms} permutations",
        "seconds": dt,
        "peak_rss_mb": _rss_mb(),
        "rss_before_mb": base,
        "result": {"mmd2": r.mmd2, "p": r.p_value},
    }


def case_loglik(points: int, k: int) -> dict:
    import torch

    import wakesleep
    from wakesleep.eval import FactorisedProposal, log_likelihood

    cfg = {
        "seed": 0,
        "dtype": "float32",
        "layers": [
            {"name": "z3", "family": "bernoulli", "dim": 200},
            {"name": "z2", "family": "bernoulli", "dim": 200, "link": "linear"},
            {"name": "z1", "family": "bernoulli", "dim": 200, "link": "linear"},
            {"name": "x", "family": "bernoulli", "dim": 784, "link": "linear"},
        ],
    }
    model = wakesleep.build_model(cfg)
    torch.manual_seed(0)
    x = model.sample(points)[-1]
    q = FactorisedProposal(model, hidden=None)  # untrained: a speed benchmark, not an NLL result
    base = _rss_mb()
    t0 = time.perf_counter()
    r = log_likelihood(model, x, q, k=k, seed=0)
    dt = time.perf_counter() - t0
    return {
        "case": f"log_likelihood SBN 784-200-200-200, {points} points, K={k}",
        "seconds": dt,
        "peak_rss_mb": _rss_mb(),
        "rss_before_mb": base,
        "result": {"mean_log_px": r.mean, "particles_per_s": points * k / dt},
    }


def _run_case(argv: list[str]) -> dict:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run([sys.executable, __file__, "--case", *argv], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"case {argv} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--n", type=int, default=10000, help="samples per set for MMD")
    ap.add_argument("--d", type=int, default=784)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--k", type=int, default=5000)
    ap.add_argument("--perms", type=int, default=100)
    ap.add_argument("--skip", default="", help="comma-separated cases to skip: mmd,relative,mmd_test,loglik")
    ap.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        name, *rest = args.case
        vals = [int(v) for v in rest]
        fn = {"mmd": case_mmd, "relative": case_relative, "mmd_test": case_mmd_test, "loglik": case_loglik}[name]
        print(json.dumps(fn(*vals)))
        return
    if args.quick:
        args.n, args.points, args.k, args.perms = 1000, 50, 200, 20
    import torch

    skip = set(filter(None, args.skip.split(",")))
    plan = [
        ("mmd", [args.n, args.d]),
        ("relative", [args.n, args.d]),
        ("mmd_test", [args.n, args.d, args.perms]),
        ("loglik", [args.points, args.k]),
    ]
    results = []
    for name, vals in plan:
        if name in skip:
            continue
        r = _run_case([name, *map(str, vals)])
        results.append(r)
        print(f"done: {r['case']}: {r['seconds']:.1f} s", file=sys.stderr, flush=True)
    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
    }
    print("| case | time (s) | peak RSS (MB) | RSS before timed call (MB) |")
    print("| --- | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['case']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
