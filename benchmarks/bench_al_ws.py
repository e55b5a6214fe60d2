"""Cost of one AL-WS iteration against the number of sleep samples N: exact KRR vs random Fourier features vs
Nystrom, with the accuracy each reaches on the `gradient` experiment's model.

    /work/venv/bin/python benchmarks/bench_al_ws.py [--sizes 300 1000 3000 10000] [--components 500]
        [--threads 2] [--out bench_al_ws.json]

One iteration = ``sleep()`` (N samples, held-out choice of bandwidth and ridge, the fit) + ``wake_gradient`` on a
minibatch of 100. Accuracy: cosine and relative error of the per-point gradients grad_b log p(x) at 30
observations against 2-D quadrature, for b = (1.5, 1.0), sigma_x = 0.3. Exact KRR is skipped above
``--exact-max`` (its cost is O(N^3)).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import wakesleep
from wakesleep.experiments.gradient import gradient_metrics as _metrics
from wakesleep.experiments.gradient import per_point_gradients as _per_point
from wakesleep.experiments.gradient import quadrature_gradient
from wakesleep.models.zoo import softplus_gradient_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 3000, 10000, 30000])
    ap.add_argument("--components", type=int, default=500)
    ap.add_argument("--exact-max", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b, sigma = (1.5, 1.0), 0.3
    torch.manual_seed(0)
    model = softplus_gradient_model(b, sigma)
    x = model.sample(30)[-1]
    batch = model.sample(100)[-1]
    _, true = quadrature_gradient(torch.tensor(b, dtype=torch.float64), sigma, x, 500)
    rows = []
    print("| kernel | N | M | sleep s | wake s (B=100) | iteration s | cosine | rel. error | bandwidth | ridge |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in args.sizes:
        for kernel in ("exact", "rff", "nystrom"):
            if kernel == "exact" and n > args.exact_max:
                continue
            torch.manual_seed(1)
            algo = wakesleep.build_algorithm(
                "al_ws", model, sleep_samples=n, kernel=kernel, n_components=args.components
            )
            t0 = time.perf_counter()
            info = algo.sleep()
            t1 = time.perf_counter()
            algo.wake_gradient(batch)
            t2 = time.perf_counter()
            m = _metrics(_per_point(algo, x), true)
            row = {
                "kernel": kernel,
                "N": n,
                "M": args.components if kernel != "exact" else None,
                "sleep_s": t1 - t0,
                "wake_s": t2 - t1,
                "iteration_s": t2 - t0,
                **m,
                "bandwidth": info["bandwidth"],
                "ridge": info["ridge"],
            }
            rows.append(row)
            print(
                f"| {kernel} | {n} | {row['M'] or '-'} | {row['sleep_s']:.2f} | {row['wake_s']:.3f} | "
                f"{row['iteration_s']:.2f} | {m['cosine']:.4f} | {m['rel_error']:.3g} | {info['bandwidth']:.3g} | "
                f"{info['ridge']:.0e} |",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
