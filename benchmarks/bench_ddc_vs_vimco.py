"""Where the time of a DDC-HM iteration goes, part by part, against one VIMCO K = 50 iteration (SBN 784-200-200-200).

Issue 6 asks DDC-HM to be 5x faster per epoch than VIMCO K = 50 on the paper's sigmoid belief network. This
script accounts for the floating-point work and time of each part of a DDC-HM iteration (Algorithm 1: ancestral
sampling, encoding functions, the closed-form recognition fit of eq. 7, the gradient-regression systems of
eqs. 31-35, the wake gradient of eq. 36 and the Adam step) for several numbers N of sleep samples, and of a
VIMCO iteration (gradient of generative and proposal parameters, both Adam steps), all in one process, timed
round-robin so that load from other processes affects every case alike. Matrix products are counted with
``wakesleep.bench.MatmulFlops`` (torch's FLOP formulas); Cholesky factorisations and inverses are added with
``wakesleep.bench.solver_flops``. The recognition ridge is re-chosen on held-out samples every 10 sleep
phases ("auto"); the median over iterations excludes those phases and the FLOP count amortises them.

Usage::

    python benchmarks/bench_ddc_vs_vimco.py --sizes 200 500 1000 --out docs/bench/ddc_vs_vimco.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import wakesleep
from wakesleep.bench import MatmulFlops, matmul_rate, solver_flops
from wakesleep.runtime import keep_freed_memory
from wakesleep.training import adam

SBN = {
    "layers": [
        {"name": "z3", "family": "bernoulli", "dim": 200},
        {"name": "z2", "family": "bernoulli", "dim": 200, "link": "linear"},
        {"name": "z1", "family": "bernoulli", "dim": 200, "link": "linear"},
        {"name": "x", "family": "bernoulli", "dim": 784, "link": "linear"},
    ]
}
PARTS = (
    "sample",
    "encode",
    "recognition fit",
    "gradient systems",
    "wake gradient",
    "wake (theta moved)",
    "Adam step",
)


def ddc_case(n: int, recognition_input: str, data: torch.Tensor, batch: int):
    """One DDC-HM iteration; ``run()`` returns the seconds of each part (the sleep phase reports its own)."""
    model = wakesleep.build_model(SBN)
    algo = wakesleep.build_algorithm(
        "ddc_hm", model, sleep_samples=n, features=200, recognition_hidden=300, recognition_input=recognition_input
    )
    opt = adam(list(model.parameters()), lr=1e-4)
    state = {"i": 0}
    sleep_parts = {
        "sample": "seconds_sample",
        "encode": "seconds_encode",
        "recognition fit": "seconds_recognition",
        "gradient systems": "seconds_gradient_systems",
    }

    def run(
        count_sleep: MatmulFlops | None = None,
        count_wake: MatmulFlops | None = None,
        count_moved: MatmulFlops | None = None,
    ) -> dict[str, float]:
        with count_sleep or contextlib.nullcontext():
            info = algo.sleep()
        out = {part: info[key] for part, key in sleep_parts.items()}
        t = time.perf_counter()
        x = data[(state["i"] % 20) * batch : (state["i"] % 20 + 1) * batch]
        with count_wake or contextlib.nullcontext():
            grads = algo.wake_gradient(x)
        out["wake gradient"] = time.perf_counter() - t
        t = time.perf_counter()
        for name, p in model.named_parameters():
            p.grad = -grads[name]
        opt.step()
        out["Adam step"] = time.perf_counter() - t
        # a second wake phase after the step: theta has changed, so the links are re-evaluated at the sleep
        # samples (what sleep_every > 1 runs between sleep phases)
        t = time.perf_counter()
        with count_moved or contextlib.nullcontext():
            grads = algo.wake_gradient(x)
        out["wake (theta moved)"] = time.perf_counter() - t
        for name, p in model.named_parameters():
            p.grad = -grads[name]
        opt.step()
        state["i"] += 1
        return out

    return run, algo


def vimco_case(k: int, data: torch.Tensor, batch: int):
    model = wakesleep.build_model(SBN)
    algo = wakesleep.build_algorithm("vimco", model, k=k)
    opt = adam(list(model.parameters()), lr=1e-4)
    ropt = adam(list(algo.recognition_parameters()), lr=1e-4)
    state = {"i": 0}

    def run(
        count_sleep: MatmulFlops | None = None,
        count_wake: MatmulFlops | None = None,
        count_moved: MatmulFlops | None = None,
    ) -> dict[str, float]:
        t = time.perf_counter()
        x = data[(state["i"] % 20) * batch : (state["i"] % 20 + 1) * batch]
        with count_wake or contextlib.nullcontext():
            grads = algo.wake_gradient(x)
            for name, p in model.named_parameters():
                p.grad = -grads[name]
            algo.step_recognition(x)
        opt.step()
        ropt.step()
        ropt.zero_grad(set_to_none=True)
        state["i"] += 1
        return {"iteration": time.perf_counter() - t}

    return run, algo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--cases",
        nargs="+",
        default=["200:none", "1000:none", "1000:linear", "1000:message"],
        help="DDC-HM cases N:recognition_input (sleep samples and what the recognition read-out sees of x)",
    )
    ap.add_argument("--sleep-every", type=int, nargs="+", default=[1, 10], help="sleep-phase periods to amortise")
    ap.add_argument("--vimco-k", type=int, default=50)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    keep_freed_memory()  # as the command line does (wakesleep.runtime)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = wakesleep.build_model(SBN).sample(20 * 100)[-1]
    cases = {}
    for case in args.cases:
        n, _, rec_input = case.partition(":")
        cases[f"DDC-HM N={n}, input {rec_input or 'none'}"] = ddc_case(int(n), rec_input or "none", data, 100)
    vimco_name = f"VIMCO K={args.vimco_k}"
    cases[vimco_name] = vimco_case(args.vimco_k, data, 100)
    flops = {}
    for name, (run, algo) in cases.items():
        for _ in range(3):
            run()
        fs, fw, fm = MatmulFlops(), MatmulFlops(), MatmulFlops()
        run(fs, fw, fm)
        solve = solver_flops(algo)
        flops[name] = {"sleep": fs.total + solve, "wake": fw.total, "moved": fm.total}
    times: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for _ in range(args.iters):
        for name, (run, _) in cases.items():
            times[name].append(run())
    rate = matmul_rate(torch.float32)
    load = os.getloadavg()[0]
    rows = []
    for name, ts in times.items():
        parts = {p: 1000 * statistics.median(t[p] for t in ts) for p in ts[0]}
        sleep_ms = sum(v for p, v in parts.items() if p in PARTS[:4])
        for every in args.sleep_every if name != vimco_name else [1]:
            if name == vimco_name:
                ms = parts["iteration"]
            else:  # one wake right after the sleep phase (reusing its forward pass), every - 1 after steps
                wake = (parts["wake gradient"] + (every - 1) * parts["wake (theta moved)"]) / every
                ms = sleep_ms / every + wake + parts["Adam step"]
            f = flops[name]
            gflop = (f["sleep"] + f["wake"] + (every - 1) * f["moved"]) / every / 1e9
            rows.append(
                {
                    "case": name,
                    "sleep_every": every if name != vimco_name else None,
                    "ms_per_iteration": ms,
                    "ms_by_part": parts,
                    "gflop_per_iteration": gflop,
                    "fraction_of_matmul_rate": gflop * 1e9 / (ms / 1000) / rate,
                }
            )
    vimco = rows[-1]["ms_per_iteration"]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s), torch {torch.__version__}"
    print(f"machine: {machine}; float32 matmul rate {rate / 1e9:.0f} GFLOP/s; load average {load:.1f}")
    header = ["case", "sleep every", "ms / iteration", *PARTS, "GFLOP / iteration", "% of matmul rate", "VIMCO / this"]
    print("| " + " | ".join(header) + " |")
    print("| --- " * len(header) + "|")
    for r in rows:
        cells = [f"{r['ms_by_part'][p]:.1f}" if p in r["ms_by_part"] else "" for p in PARTS]
        print(
            "| "
            + " | ".join(
                [
                    r["case"],
                    str(r["sleep_every"] or "-"),
                    f"{r['ms_per_iteration']:.1f}",
                    *cells,
                    f"{r['gflop_per_iteration']:.2f}",
                    f"{100 * r['fraction_of_matmul_rate']:.0f}",
                    f"{vimco / r['ms_per_iteration']:.2f}",
                ]
            )
            + " |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": machine,
            "command": "python benchmarks/bench_ddc_vs_vimco.py " + " ".join(sys.argv[1:]),
            "matmul_gflops": rate / 1e9,
            "load_average": load,
            "rows": rows,
        }
        args.out.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
