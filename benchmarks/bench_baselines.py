"""Per-iteration and per-epoch time of every registered algorithm on the sigmoid belief network 784-200-200-200
(batch 100, float32), against Pyro's ``ReweightedWakeSleep``, ``RenyiELBO(alpha=0)`` and ``Trace_ELBO`` on the
same model and proposal with the same number of particles.

    PYTHONPATH=src python benchmarks/bench_baselines.py --out bench_baselines.json
    PYTHONPATH=src python benchmarks/bench_baselines.py --quick        # 3 timed iterations, a smoke test

One iteration is what the Trainer does per minibatch: ``wake_gradient`` + Adam on the model, then
``step_recognition`` + Adam on the recognition model (Pyro: one ``SVI.step``, which is the same work).
Every case is timed over ``--iters`` iterations after ``--warmup``; the *median* iteration time is reported
(robust to other processes on a shared machine), and an epoch is 600 iterations (60000 images / 100).

Floating-point work: only the dense matrix products are counted (elementwise sigmoid/softplus/sampling work
is O(1/200) of it). With R = K*B particle rows, a linear map n_in -> n_out costs 2 R n_in n_out forward and
the same again backward: the particles of these score-function / importance-weighted estimators are leaves, so
only weight gradients are formed. The count is divided by the best measured float32 product rate on this
machine (best over the run of a large ``torch.mm``, which is MKL, and of the oneDNN products that
``wakesleep.ops.linear`` uses for float32 layers when it can). Cases with the same K are timed
round-robin, one iteration of each in turn, so that on a shared machine they see the same background load;
besides the wall-clock median, the median CPU time of the timing thread (``time.thread_time``) is reported,
which is less sensitive to other processes taking the core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

DIMS = [200, 200, 200, 784]  # z3, z2, z1, x
BATCH = 100
ITERS_PER_EPOCH = 600


def sbn_config():
    names = ["z3", "z2", "z1", "x"]
    layers = [{"name": "z3", "family": "bernoulli", "dim": DIMS[0]}]
    for name, d in zip(names[1:], DIMS[1:], strict=True):
        layers.append({"name": name, "family": "bernoulli", "dim": d, "link": "linear"})
    return {"layers": layers, "seed": 0, "dtype": "float32"}


def matmul_rate(n: int = 2048, reps: int = 5) -> float:
    """Measured float32 torch.mm rate in FLOP/s (best of ``reps``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def onednn_rate(n: int = 2048, reps: int = 5) -> float:
    """Measured float32 rate of the oneDNN product behind ``wakesleep``'s linear layers (0 if not used)."""
    from wakesleep.ops import onednn_enabled
    from wakesleep.ops import onednn_mm as _mm

    if not onednn_enabled():
        return 0.0
    a, b = torch.randn(n, n), torch.randn(n, n)
    _mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        _mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def flops(k: int, sleep_rows: int = 0, gen_backward: bool = True) -> float:
    """Matrix-product FLOPs of one iteration with K particles (see the module docstring)."""
    r = k * BATCH
    gen = 2 * r * (DIMS[0] * DIMS[1] + DIMS[1] * DIMS[2] + DIMS[2] * DIMS[3])  # p(x, z) at the particles
    rec_x = 2 * BATCH * DIMS[3] * DIMS[2]  # q(z1 | x): once per data point
    rec_z = 2 * r * (DIMS[2] * DIMS[1] + DIMS[1] * DIMS[0])  # q(z2 | z1), q(z3 | z2)
    total = gen * (2 if gen_backward else 1) + 2 * rec_x + 2 * rec_z
    if sleep_rows:  # dream (forward, no grad) + log q(z | x) on the dreams (forward + weight backward)
        s = sleep_rows
        total += 2 * s * (DIMS[0] * DIMS[1] + DIMS[1] * DIMS[2] + DIMS[2] * DIMS[3])
        total += 2 * 2 * s * (DIMS[3] * DIMS[2] + DIMS[2] * DIMS[1] + DIMS[1] * DIMS[0])
    return float(total)


def data_batch(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(DIMS[-1], generator=g) * 0.26
    return (torch.rand(BATCH, DIMS[-1], generator=g) < probs).float()


# --------------------------------------------------------------------------------------------------------
# wakesleep algorithms
# --------------------------------------------------------------------------------------------------------
def wakesleep_case(name: str, options: dict, x: torch.Tensor, tag: str):
    import wakesleep

    torch.manual_seed(0)
    model = wakesleep.build_model(sbn_config())
    algo = wakesleep.build_algorithm(name, model, **options)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)
    rec = [p for p in algo.recognition_parameters() if p.requires_grad]
    rec_opt = torch.optim.Adam(rec, lr=1e-4) if rec else None
    named = dict(model.named_parameters())
    state = {"it": 0}

    def step():
        if hasattr(algo, "sleep") and state["it"] % 1 == 0:
            algo.sleep()
        grads = algo.wake_gradient(x)
        for n, g in grads.items():
            named[n].grad = -g
        opt.step()
        opt.zero_grad(set_to_none=True)
        if rec_opt is not None:
            rec_opt.zero_grad(set_to_none=True)
            algo.step_recognition(x)
            rec_opt.step()
        else:
            algo.step_recognition(x)
        state["it"] += 1

    return step


# --------------------------------------------------------------------------------------------------------
# Pyro on the same model and proposal
# --------------------------------------------------------------------------------------------------------
def pyro_case(kind: str, k: int, x: torch.Tensor, tag: str):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, RenyiELBO, ReweightedWakeSleep, Trace_ELBO
    from torch import nn

    pyro.set_rng_seed(0)
    gen = nn.ModuleDict(
        {"z2": nn.Linear(DIMS[0], DIMS[1]), "z1": nn.Linear(DIMS[1], DIMS[2]), "x": nn.Linear(DIMS[2], DIMS[3])}
    )
    top = nn.Parameter(torch.zeros(DIMS[0]))
    rec = nn.ModuleDict(
        {"z1": nn.Linear(DIMS[3], DIMS[2]), "z2": nn.Linear(DIMS[2], DIMS[1]), "z3": nn.Linear(DIMS[1], DIMS[0])}
    )

    def model(xb):
        pyro.module(f"gen_{tag}", gen)
        t = pyro.param(f"top_{tag}", top)
        with pyro.plate("data", xb.shape[0]):
            z3 = pyro.sample("z3", dist.Bernoulli(logits=t.expand(xb.shape[0], DIMS[0])).to_event(1))
            z2 = pyro.sample("z2", dist.Bernoulli(logits=gen["z2"](z3)).to_event(1))
            z1 = pyro.sample("z1", dist.Bernoulli(logits=gen["z1"](z2)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=gen["x"](z1)).to_event(1), obs=xb)

    def guide(xb):
        pyro.module(f"rec_{tag}", rec)
        with pyro.plate("data", xb.shape[0]):
            z1 = pyro.sample("z1", dist.Bernoulli(logits=rec["z1"](xb)).to_event(1))
            z2 = pyro.sample("z2", dist.Bernoulli(logits=rec["z2"](z1)).to_event(1))
            pyro.sample("z3", dist.Bernoulli(logits=rec["z3"](z2)).to_event(1))

    common = {"num_particles": k, "vectorize_particles": True, "max_plate_nesting": 1}
    if kind == "rws":  # insomnia=1: wake-phase q update only (no sleep phase), like rws q_update="wake"
        loss = ReweightedWakeSleep(insomnia=1.0, model_has_params=True, **common)
    elif kind == "renyi0":
        loss = RenyiELBO(alpha=0.0, **common)
    else:
        loss = Trace_ELBO(**common)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-4}), loss=loss)
    return lambda: svi.step(x)


# --------------------------------------------------------------------------------------------------------
def cases(ks):
    out = [
        ("ddc_hm", {}, None, None),
        ("wake_sleep", {}, 1, flops(1, sleep_rows=BATCH)),
        ("wake_sleep", {"variant": "mean_field"}, None, flops(1, sleep_rows=BATCH)),
    ]
    for k in ks:
        out += [
            ("rws", {"k": k, "q_update": "wake"}, k, flops(k)),
            ("rws", {"k": k, "q_update": "both"}, k, flops(k, sleep_rows=BATCH)),
            ("vimco", {"k": k}, k, flops(k)),
            ("bbvi", {"k": k, "control_variate": "loo"}, k, flops(k)),
            ("bbvi", {"k": k, "control_variate": "ranganath"}, k, None),
            ("iwae", {"k": k}, k, flops(k)),
            ("pyro:rws", {}, k, flops(k)),
            ("pyro:renyi0", {}, k, flops(k)),
            ("pyro:trace_elbo", {}, k, flops(k)),
        ]
    out += [("vae", {}, 1, flops(1)), ("flow", {}, 1, None), ("al_ws", {}, None, None)]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 50])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="cap on the timed seconds per case of a group")
    ap.add_argument("--only", default=None, help="comma-separated case names to run (e.g. rws,pyro:rws)")
    args = ap.parse_args(argv)
    from wakesleep.runtime import keep_freed_memory

    keep_freed_memory()  # as the command line does (wakesleep.runtime); Pyro's cases run in the same process
    if args.threads:
        torch.set_num_threads(args.threads)
    iters, warmup = (3, 1) if args.quick else (args.iters, args.warmup)
    mm_rate, dnn_rate = matmul_rate(), onednn_rate()
    x = data_batch()
    rows = []
    only = set(args.only.split(",")) if args.only else None
    # cases sharing K are timed round-robin (one iteration of each in turn), so that on a shared machine they
    # see the same background load; the comparison with Pyro is within a group
    groups: dict = {}
    for i, (name, options, k, fl) in enumerate(cases(args.ks)):
        if only and name not in only:
            continue
        groups.setdefault(k, []).append((i, name, options, k, fl))
    for group in groups.values():
        steps = []
        for i, name, options, k_, fl in group:
            label = name + ("" if not options else " " + ",".join(f"{a}={b}" for a, b in options.items() if a != "k"))
            row = {"algorithm": label.strip(), "k": k_, "flops_per_iter": fl}
            try:
                if name.startswith("pyro:"):
                    step = pyro_case(name.split(":")[1], k_, x, f"c{i}")
                else:
                    step = wakesleep_case(name, options, x, f"c{i}")
                for _ in range(warmup):
                    step()
            except Exception as exc:  # noqa: BLE001 - a missing or inapplicable algorithm is reported
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
                print(f"{label:45s} K={k_}: skipped ({row['error']})", file=sys.stderr, flush=True)
                rows.append(row)
                continue
            steps.append((row, step, []))
            rows.append(row)
        t_start = time.perf_counter()
        for it in range(iters):
            for _row, step, times in steps:
                t, c = time.perf_counter(), time.thread_time()
                step()
                times.append((time.perf_counter() - t, time.thread_time() - c))
            if it >= 2 and time.perf_counter() - t_start > args.max_seconds * max(len(steps), 1):
                break
        rate = max(mm_rate, dnn_rate)
        for row, _, times in steps:
            wall = [w for w, _ in times]
            med, cpu = statistics.median(wall), statistics.median([c for _, c in times])
            fl = row["flops_per_iter"]
            row.update(
                {
                    "ms_per_iter": 1e3 * med,
                    "cpu_ms_per_iter": 1e3 * cpu,
                    "timed_iters": len(times),
                    "ms_per_iter_min": 1e3 * min(wall),
                    "s_per_epoch": med * ITERS_PER_EPOCH,
                    "fraction_of_mm_rate": (fl / cpu / rate) if fl else None,  # of the CPU time
                    "load_average": os.getloadavg()[0],
                }
            )
            print(
                f"{row['algorithm']:45s} K={row['k']}: {1e3 * med:8.2f} ms/iter, CPU {1e3 * cpu:8.2f} ms "
                f"({len(times)} iters, load {os.getloadavg()[0]:.1f})",
                file=sys.stderr,
                flush=True,
            )
        # re-measure between groups; keep the best (least loaded) rates
        mm_rate, dnn_rate = max(mm_rate, matmul_rate()), max(dnn_rate, onednn_rate())

    # speed-up against Pyro's RWS / RenyiELBO at the same K (wall-clock medians; CPU-time ratio in brackets)
    pyro_ms = {(r["algorithm"], r["k"]): r for r in rows if "ms_per_iter" in r}
    print(
        f"\nfloat32 product rate: torch.mm {mm_rate / 1e9:.1f} GFLOP/s, oneDNN {dnn_rate / 1e9:.1f} GFLOP/s; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    print(
        "| algorithm | K | ms/iter (median) | CPU ms/iter | s/epoch | GFLOP/iter | % of best product rate "
        "| vs Pyro RWS | vs Pyro Renyi(0) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['algorithm']} | {r['k'] if r['k'] else '-'} | n/a ({r['error']}) | | | | | | |")
            continue
        fl = r["flops_per_iter"]
        rel = []
        for ref in ("pyro:rws", "pyro:renyi0"):
            base = pyro_ms.get((ref, r["k"]))
            rel.append(
                f"{base['ms_per_iter'] / r['ms_per_iter']:.2f}x ({base['cpu_ms_per_iter'] / r['cpu_ms_per_iter']:.2f}x)"
                if base and r["k"]
                else ""
            )
        print(
            f"| {r['algorithm']} | {r['k'] if r['k'] else '-'} | {r['ms_per_iter']:.2f} | {r['cpu_ms_per_iter']:.2f} "
            f"| {r['s_per_epoch']:.1f} | {fl / 1e9 if fl else float('nan'):.3f} | "
            f"{100 * r['fraction_of_mm_rate'] if r['fraction_of_mm_rate'] else float('nan'):.1f} | "
            f"{rel[0]} | {rel[1]} |"
        )
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "mm_flops_per_s": mm_rate,
            "onednn_flops_per_s": dnn_rate,
            "load_average": os.getloadavg(),
        },
        "model": "sbn 784-200-200-200 float32",
        "batch": BATCH,
        "iters": iters,
        "warmup": warmup,
        "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
