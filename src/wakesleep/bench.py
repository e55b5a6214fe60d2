"""Benchmark algorithms on the paper's sigmoid belief network: time, memory, floating-point work, MMD and NLL.

``wakesleep bench sbn --epochs E --out DIR`` trains every algorithm of the SBN experiment (``configs/sbn.yaml``:
DDC-HM, VIMCO K = 50, RWS, wake-sleep) for E epochs on binarised Fashion-MNIST, each in its own process (so
its peak memory is its own), one after the other on the same machine, and writes ``DIR/bench.json`` and
``DIR/bench.md`` with, per algorithm:

* seconds per epoch (wall and CPU time of training only; evaluations during training are excluded);
* peak resident memory of the process (and peak CUDA memory on a GPU);
* floating-point work of one iteration: matrix products counted by ``torch.utils.flop_counter`` (forward and
  backward), plus the Cholesky factorisations and triangular solves of DDC-HM's ridge regressions, which it
  does not see (n^3 / 3 per factorisation, 2 n^2 m per solve with m right-hand sides), stated as a fraction of
  the machine's measured matrix-multiply rate (float32 2048 x 2048 products in the same process and threads):
  the achieved rate over the physical limit; an entry trained with ``train.precision: bfloat16`` (mixed
  precision) also gets the rate of bfloat16 products, the limit for the share of its work that is lowered;
* the test MMD^2 (Gaussian kernel, median-heuristic width on the test images) and importance-sampled NLL
  reached at the end, and an MMD^2 learning curve against training wall time (``--evals`` points) from which
  the time DDC-HM needs to reach VIMCO's final MMD^2 is read.
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
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from wakesleep.errors import WakesleepError

BENCHMARKS = ("sbn",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", choices=BENCHMARKS, help="what to benchmark (sbn: the paper's 784-200-200-200 SBN)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs per algorithm (default 1)")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/bench.json and DIR/bench.md")
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
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the experiment config, e.g. --set algorithm.recognition_ridge=1e-3",
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per algorithm (default: none)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--one-out", default=None, help=argparse.SUPPRESS)


# --------------------------------------------------------------------------------------------------------
# floating-point work
# --------------------------------------------------------------------------------------------------------
def matmul_rate(
    dtype: torch.dtype = torch.float32, device: str = "cpu", n: int = 2048, reps: int = 5, clock=time.perf_counter
) -> float:
    """Measured matrix-multiply rate (FLOP/s) of ``n x n`` products, the faster of ``torch.mm`` and the oneDNN
    route of :func:`wakesleep.models._linear.matmul`: the machine's practical peak.

    With ``clock=time.process_time`` (CPU only) it is FLOPs per CPU second of all threads together.
    """
    from wakesleep.models._linear import matmul

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for product in (torch.mm, matmul):  # torch's own (MKL on CPU) and the oneDNN route our algorithms also take
        product(a, b)
        _sync(device)
        for _ in range(reps):
            t = clock()
            product(a, b)
            _sync(device)
            best = min(best, clock() - t)
    return 2 * n**3 / best


def _sync(device: Any) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


_ONEDNN_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


class MatmulFlops(TorchDispatchMode):
    """Counts FLOPs with the formulas of ``torch.utils.flop_counter`` (mm, addmm, bmm, convolutions, attention),
    and the oneDNN products of ``wakesleep.models._linear``.

    ``FlopCounterMode`` itself tracks modules with backward hooks that fail under ``torch.autograd.grad`` (which
    the algorithms' wake gradients use) in this PyTorch, so this mode applies its registry directly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        elif func._overloadpacket is _ONEDNN_LINEAR:  # wakesleep.models._linear: x [.., k] @ w[m, k]^T
            x, w = args[0], args[1]
            self.total += 2 * x.numel() * w.shape[0]
        return out


def solver_flops(algo: Any) -> float:
    """Cholesky factorisations and solves of one DDC-HM sleep phase, which FlopCounterMode does not count."""
    if getattr(algo, "name", None) != "ddc_hm" or getattr(algo, "_feats", None) is None:
        return 0.0
    total = 0.0
    for f in algo._feats:  # gradient-regression Gram: factorise and invert (K x K); later products are counted
        k = f.shape[1]
        total += k**3 / 3 + 2 * k**3 / 3
    rec = algo.recognizer
    if hasattr(rec, "features"):
        m = rec.features.n_out + 1
        # "auto" re-chooses the ridge every `ridge_every` sleep phases among the previous choice and its two
        # neighbours on the grid (the whole 10-point grid only at the first phase): amortise it
        grid = 3 / getattr(rec, "ridge_every", 1) if rec.ridge == "auto" else 0
        dims = [m] + [d + 1 for d in rec.out_dims[:-1]]
        for d, out in zip(dims, rec.out_dims, strict=True):
            total += (grid + 1) * (d**3 / 3 + 2 * d * d * out)
    return total


def sleep_cycle(algo: Any) -> int:
    """Sleep phases after which an algorithm's sleep-phase work repeats: DDC-HM's recognition ``ridge_every``
    when it chooses its ridge (``recognition_ridge: auto``), else 1."""
    rec = getattr(algo, "recognizer", None)
    if getattr(algo, "name", None) == "ddc_hm" and getattr(rec, "ridge", None) == "auto":
        return max(int(getattr(rec, "ridge_every", 1)), 1)
    return 1


def iteration_flops(algo: Any, x: torch.Tensor, sleep_every: int = 1) -> dict[str, float]:
    """FLOPs of an average training iteration without changing the model: the wake phase and recognition step
    of every iteration plus 1 / ``sleep_every`` of a sleep phase.

    The sleep phase's products are averaged over :func:`sleep_cycle` consecutive sleep phases (DDC-HM's
    recognition re-chooses its ridge on held-out samples in one phase of every ``ridge_every``, with extra
    products), so the algorithm's state moves on by that many sleep phases.

    With ``sleep_every > 1`` only the first wake phase of a cycle sees the parameters of the sleep phase; the
    other ``sleep_every - 1`` follow parameter updates (DDC-HM then re-evaluates its links at the sleep samples
    instead of reusing the sleep phase's forward pass), so one wake phase is also counted with the parameters
    moved, and the parameters are then put back exactly.
    """

    def wake() -> float:
        with MatmulFlops() as fw:
            algo.wake_gradient(x)
            params = algo.recognition_parameters()
            algo.step_recognition(x)
        for p in params:
            p.grad = None
        return float(fw.total)

    period = sleep_cycle(algo)
    sleep_mm = 0.0
    for _ in range(period):
        with MatmulFlops() as fs:
            algo.sleep()
        sleep_mm += fs.total / period
    first = moved = wake()
    if sleep_every > 1:
        params = list(algo.model.parameters())
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                p.add_(1e-3)
        try:
            moved = wake()
        finally:
            with torch.no_grad():
                for p, v in zip(params, saved, strict=True):
                    p.copy_(v)
    wake_flops = (first + (sleep_every - 1) * moved) / sleep_every
    solve = solver_flops(algo) / sleep_every
    mm = sleep_mm / sleep_every + wake_flops
    return {
        "matmul_flops": mm,
        "solver_flops": solve,
        "flops": mm + solve,
        "sleep_flops": sleep_mm + solve * sleep_every,
        "sleep_cycle": period,
        "wake_flops": wake_flops,
        "wake_flops_after_sleep": first,
        "wake_flops_moved": moved,
    }


# --------------------------------------------------------------------------------------------------------
# one algorithm (in its own process)
# --------------------------------------------------------------------------------------------------------
def _config(args: argparse.Namespace) -> dict[str, Any]:
    from wakesleep.experiments import experiment_config

    overrides = list(args.overrides)
    if args.n is not None:
        overrides.append(f"data.n={args.n}")
    if args.device is not None:
        overrides.append(f"train.device={args.device}")
    if args.threads is not None:
        overrides.append(f"train.threads={args.threads}")
    if args.dtype is not None:
        overrides.append(f"train.dtype={args.dtype}")
    return experiment_config("sbn", args.config, False, overrides)


def run_one(args: argparse.Namespace, label: str) -> dict[str, Any]:
    from wakesleep.data import load_dataset
    from wakesleep.eval import median_bandwidth
    from wakesleep.experiments.patches import algorithm_entries, draw_samples, model_ais_nll
    from wakesleep.experiments.sbn import mmd_to, nll_estimate
    from wakesleep.train import Trainer, apply_threads, build_algorithm_from_config, build_model_from_config

    config = _config(args)
    entries = algorithm_entries(config, "bench sbn")
    if label not in entries:
        raise WakesleepError(f"--algorithms: {label!r} is not a label of experiment.algorithms ({', '.join(entries)})")
    cfg = entries[label]
    t = cfg["train"]
    apply_threads(cfg)
    torch.manual_seed(t["seed"])
    model = build_model_from_config(cfg)
    algo = build_algorithm_from_config(cfg, model)
    dataset = load_dataset(dict(cfg["data"]), 784, dtype=model.dtype).to(device=model.device)
    test = dataset.test.double().cpu()
    n_curve = min(args.curve_samples, test.shape[0])
    bw = float(median_bandwidth(test[: min(args.mmd_samples, test.shape[0])]))
    n_train = dataset.train.shape[0]
    per_epoch = -(-n_train // t["batch_size"])
    total = per_epoch * args.epochs
    eval_every = max(1, total // max(args.evals, 1))
    curve: list[dict[str, float]] = []
    spent = {"wall": 0.0, "cpu": 0.0}
    t_wall0, t_cpu0 = [0.0], [0.0]

    def callback(trainer: Trainer, record: dict) -> None:
        w0, c0 = time.perf_counter(), time.process_time()
        if record["step"] == 0:  # training time counts from the first record (after the Trainer's set-up)
            t_wall0[0], t_cpu0[0] = w0, c0
        s = draw_samples(model, n_curve, seed=30_000 + record["step"])
        m = mmd_to(test[:n_curve], s, bw)
        curve.append(
            {
                "step": record["step"],
                "epoch": record["epoch"],
                "train_seconds": (w0 - t_wall0[0]) - spent["wall"],
                "train_cpu_seconds": (c0 - t_cpu0[0]) - spent["cpu"],
                "mmd2": m,
            }
        )
        spent["wall"] += time.perf_counter() - w0
        spent["cpu"] += time.process_time() - c0

    trainer = Trainer(
        algo,
        epochs=args.epochs,
        batch_size=t["batch_size"],
        lr=t["lr"],
        recognition_lr=t["recognition_lr"],
        seed=t["seed"],
        sleep_every=t["sleep_every"],
        precision=t["precision"],
        log_every=eval_every,
        progress=False,
        monitor_samples=0,
        callback=callback,
    )
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _sync(model.device)
    t_wall0[0], t_cpu0[0] = time.perf_counter(), time.process_time()
    trainer.fit(dataset)
    _sync(model.device)
    wall = time.perf_counter() - t_wall0[0] - spent["wall"]
    cpu = time.process_time() - t_cpu0[0] - spent["cpu"]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if model.device.type == "cuda" else None

    n_mmd = min(args.mmd_samples, test.shape[0])
    final_samples = draw_samples(model, n_mmd, seed=40_000)
    final_mmd = mmd_to(test[:n_mmd], final_samples, bw)
    if args.out:
        from wakesleep.eval.plots import plot_image_grid

        plot_image_grid(final_samples[:64], Path(args.out) / f"{label}_samples.png", (28, 28), n=64, title=label)
    n_fit = min(n_train, 10_000)
    nll = nll_estimate(
        model, algo, dataset.draw_train()[:n_fit], test[: args.nll_points], args.nll_k, args.proposal_steps
    )
    ais = None
    if args.ais_points > 0:  # the same images, chains and seed for every algorithm: paired differences
        settings = {"chains": args.ais_chains, "temperatures": args.ais_temperatures}
        ais = model_ais_nll(model, test[: args.ais_points].to(model.device), settings, seed=30_000)
    x = dataset.draw_train()[: t["batch_size"]]
    flops = iteration_flops(algo, x, int(t["sleep_every"]))
    rate = matmul_rate(model.dtype, str(model.device))
    cpu_rate = matmul_rate(model.dtype, str(model.device), clock=time.process_time)  # FLOP per CPU second
    precision = t.get("precision", "float32")
    # the rate of products in the lowered dtype (train.precision): the limit for the share of the work lowered
    low_rate = None if precision == "float32" else matmul_rate(getattr(torch, precision), str(model.device))
    sec_iter = wall / max(trainer.n_iter_, 1)
    cpu_iter = cpu / max(trainer.n_iter_, 1)
    return {
        "label": label,
        "algorithm": cfg["algorithm"]["name"],
        "options": cfg["algorithm"],
        "sleep_every": int(t["sleep_every"]),
        "epochs": args.epochs,
        "iterations": trainer.n_iter_,
        "iterations_per_epoch": per_epoch,
        "n_train": int(n_train),
        "batch_size": t["batch_size"],
        "train_seconds": wall,
        "train_cpu_seconds": cpu,
        "seconds_per_epoch": wall / args.epochs,
        "cpu_seconds_per_epoch": cpu / args.epochs,
        "seconds_per_iteration": sec_iter,
        "peak_rss_mb": peak_rss,
        "rss_before_training_mb": rss0,
        "peak_cuda_mb": peak_cuda,
        "gflop_per_iteration": flops["flops"] / 1e9,
        "gflop_matmul": flops["matmul_flops"] / 1e9,
        "gflop_solver": flops["solver_flops"] / 1e9,
        "gflop_per_epoch": flops["flops"] * per_epoch / 1e9,
        "matmul_gflops": rate / 1e9,
        "achieved_gflops": flops["flops"] / sec_iter / 1e9,
        "fraction_of_matmul_rate": flops["flops"] / sec_iter / rate,
        "cpu_seconds_per_iteration": cpu_iter,
        "matmul_gflops_per_cpu_second": cpu_rate / 1e9,
        "cpu_fraction_of_matmul_rate": flops["flops"] / cpu_iter / cpu_rate if cpu_iter > 0 else None,
        "final_mmd2": final_mmd,
        "mmd_samples": n_mmd,
        "bandwidth": bw,
        "nll": nll,
        "ais_nll": ais,
        "curve": curve,
        "threads": torch.get_num_threads(),
        "device": str(model.device),
        "dtype": str(model.dtype),
        "precision": precision,
        "matmul_gflops_lowered": None if low_rate is None else low_rate / 1e9,
    }


# --------------------------------------------------------------------------------------------------------
# the whole benchmark
# --------------------------------------------------------------------------------------------------------
def _independent_pixels(args: argparse.Namespace, row: dict[str, Any]) -> dict[str, float] | None:
    """MMD^2 and exact NLL of independent pixels with the training marginals, with the models' kernel."""
    if not row:
        return None
    from wakesleep.data import load_dataset
    from wakesleep.experiments.sbn import independent_pixels

    cfg = _config(args)
    dataset = load_dataset(dict(cfg["data"]), 784, dtype=torch.float64)
    test = dataset.test.double().cpu()
    return independent_pixels(
        dataset.draw_train().cpu(),
        test,
        row["mmd_samples"],
        args.nll_points,
        row["bandwidth"],
        ais_points=args.ais_points,
    )


def _summary(rows: dict[str, dict[str, Any]], candidate: str = "ddc_hm", reference: str = "vimco_k50") -> dict:
    out: dict[str, Any] = {"candidate": candidate, "reference": reference}
    c, r = rows.get(candidate), rows.get(reference)
    if not c or not r or "error" in c or "error" in r:
        return out
    out["epoch_speedup"] = r["seconds_per_epoch"] / c["seconds_per_epoch"]
    out["epoch_speedup_cpu"] = r["cpu_seconds_per_epoch"] / c["cpu_seconds_per_epoch"]
    out["flop_ratio_per_epoch"] = r["gflop_per_epoch"] / c["gflop_per_epoch"]
    target = r["curve"][-1]["mmd2"] if r["curve"] else r["final_mmd2"]
    out["target_mmd2"] = target
    hit = next((p for p in c["curve"] if p["mmd2"] <= target), None)
    out["candidate_seconds_to_target"] = hit["train_seconds"] if hit else None
    out["reference_seconds"] = r["train_seconds"]
    out["time_to_target_fraction"] = hit["train_seconds"] / r["train_seconds"] if hit else None
    r_cpu = r["curve"][-1].get("train_cpu_seconds") if r["curve"] else None
    hit_cpu = hit.get("train_cpu_seconds") if hit else None
    out["time_to_target_fraction_cpu"] = hit_cpu / r_cpu if hit_cpu is not None and r_cpu else None
    from wakesleep.experiments.patches import paired_nll_difference

    diff = paired_nll_difference(c.get("ais_nll"), r.get("ais_nll"))  # candidate minus reference, same images
    if diff is not None:
        out["ais_nll_difference"] = diff
    out["goal_epoch_speedup_5x"] = out["epoch_speedup"] >= 5
    out["goal_time_to_target_one_fifth"] = bool(hit) and out["time_to_target_fraction"] <= 0.2
    return out


def _fmt(v: Any, d: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{d}g}"
    return str(v)


def _reached(s: dict[str, Any]) -> str:
    if s.get("time_to_target_fraction") is None:
        return "not reached within the run"
    text = (
        f"{s['candidate_seconds_to_target']:.1f} s = {s['time_to_target_fraction']:.2f} of {s['reference']}'s "
        f"{s['reference_seconds']:.1f} s"
    )
    if s.get("time_to_target_fraction_cpu") is not None:
        text += f" (in CPU time: {s['time_to_target_fraction_cpu']:.2f})"
    return text


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# wakesleep bench sbn ({result['epochs']} epoch(s), {result['n_train']} training images)",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}`.",
        "",
        "| algorithm | s / epoch (wall) | CPU s / epoch | GFLOP / iteration | achieved GFLOP/s | "
        "% of matmul rate (wall) | % of matmul rate (CPU time) | peak RSS (MB) | test MMD^2 | NLL (K) | AIS NLL |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in result["algorithms"].items():
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} | | | | | | | | | |")
            continue
        ais = r.get("ais_nll")
        name = label + (f" (sleep every {r['sleep_every']})" if r.get("sleep_every", 1) > 1 else "")
        if r.get("precision", "float32") != "float32":
            name += f" ({r['precision']} mixed; its products' rate {r['matmul_gflops_lowered']:.0f} GFLOP/s)"
        lines.append(
            f"| {name} | {r['seconds_per_epoch']:.1f} | {r['cpu_seconds_per_epoch']:.1f} | "
            f"{r['gflop_per_iteration']:.3g} | {r['achieved_gflops']:.3g} | "
            f"{100 * r['fraction_of_matmul_rate']:.1f} % of {r['matmul_gflops']:.0f} | "
            + (
                f"{100 * r['cpu_fraction_of_matmul_rate']:.1f} % of {r['matmul_gflops_per_cpu_second']:.0f} | "
                if r.get("cpu_fraction_of_matmul_rate") is not None
                else "n/a | "
            )
            + f"{r['peak_rss_mb']:.0f} | "
            f"{r['final_mmd2']:.3g} | {r['nll']['nll']:.2f} ({r['nll']['k']}) | "
            + (f"{ais['nll']:.2f} +- {ais['sem']:.2f} |" if ais else "n/a |")
        )
    ind = result.get("independent_pixels")
    if ind:
        lines.append(
            f"| independent pixels (training marginals; reference) | | | | | | | | {ind['mmd2']:.3g} | "
            f"{ind['nll']:.2f} (exact) | "
            + (f"{ind['nll_ais_points']:.2f} (exact) |" if "nll_ais_points" in ind else "n/a |")
        )
    s = result["summary"]
    if "epoch_speedup" in s:
        lines += [
            "",
            f"{s['candidate']} vs {s['reference']}: per-epoch speed-up {s['epoch_speedup']:.2f}x wall "
            f"({s['epoch_speedup_cpu']:.2f}x CPU time; FLOP ratio {s['flop_ratio_per_epoch']:.2f}); goal >= 5x: "
            f"{'met' if s['goal_epoch_speedup_5x'] else 'NOT met'}. Time to reach {s['reference']}'s final curve "
            f"MMD^2 {s['target_mmd2']:.3g}: "
            + _reached(s)
            + f"; goal <= 1/5: {'met' if s['goal_time_to_target_one_fifth'] else 'NOT met'}.",
        ]
    first = next((r for r in result["algorithms"].values() if r.get("ais_nll")), None)
    if first:
        a = first["ais_nll"]
        lines += [
            "",
            f"NLL: importance sampling with K particles on the first {first['nll']['points']} test images (a "
            "stochastic upper bound; DDC-HM's evaluation-only proposal can leave it tens of nats loose). AIS NLL: "
            f"annealed importance sampling on the first {a['points']} test images, {a['chains']} chains, "
            f"{a['temperatures']} temperatures, Gibbs sweeps (`wakesleep.eval.ais_log_likelihood`), +- its "
            "standard error over images."
            + (
                f" {s['candidate']} minus {s['reference']}, paired over the same images: "
                f"{s['ais_nll_difference']['mean']:+.1f} +- {s['ais_nll_difference']['sem']:.1f} nats."
                if s.get("ais_nll_difference")
                else ""
            ),
        ]
    lines += [
        "",
        "Wall times on a shared machine are inflated by other processes; CPU time is the steadier figure "
        "for single-threaded runs. FLOPs: matrix products (torch.utils.flop_counter, forward + backward) plus "
        "DDC-HM's Cholesky factorisations and solves (analytic).",
        "",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.one:
        res = run_one(args, args.one)
        Path(args.one_out).write_text(json.dumps(res))
        return 0
    if args.epochs < 1:
        raise WakesleepError(f"--epochs: must be a positive integer, got {args.epochs}")
    if args.ais_points < 0:
        raise WakesleepError(f"--ais-points: must be a non-negative integer, got {args.ais_points}")
    for flag, v in (("--ais-chains", args.ais_chains), ("--ais-temperatures", args.ais_temperatures)):
        if v < 1:
            raise WakesleepError(f"{flag}: must be a positive integer, got {v}")
    from wakesleep.experiments.patches import algorithm_entries

    config = _config(args)  # validates the config and overrides before anything runs
    labels = list(algorithm_entries(config, "bench sbn"))
    if args.algorithms:
        wanted = [a.strip() for a in args.algorithms.split(",") if a.strip()]
        for w in wanted:
            if w not in labels:
                raise WakesleepError(
                    f"--algorithms: {w!r} is not a label of experiment.algorithms ({', '.join(labels)})"
                )
        labels = wanted
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    for label in labels:
        tmp = out / f".{label}.json"
        cmd = [
            sys.executable,
            "-m",
            "wakesleep",
            "bench",
            "sbn",
            "--epochs",
            str(args.epochs),
            "--out",
            str(out),
            "--one",
            label,
            "--one-out",
            str(tmp),
            "--mmd-samples",
            str(args.mmd_samples),
            "--curve-samples",
            str(args.curve_samples),
            "--evals",
            str(args.evals),
            "--nll-k",
            str(args.nll_k),
            "--nll-points",
            str(args.nll_points),
            "--proposal-steps",
            str(args.proposal_steps),
            "--ais-points",
            str(args.ais_points),
            "--ais-chains",
            str(args.ais_chains),
            "--ais-temperatures",
            str(args.ais_temperatures),
        ]
        for flag, v in (
            ("--config", args.config),
            ("--n", args.n),
            ("--device", args.device),
            ("--threads", args.threads),
            ("--dtype", args.dtype),
        ):
            if v is not None:
                cmd += [flag, str(v)]
        for o in args.overrides:
            cmd += ["--set", o]
        print(f"bench sbn: {label} ...", file=sys.stderr, flush=True)
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
        except subprocess.TimeoutExpired:
            rows[label] = {"error": f"timed out after {args.timeout} s"}
            continue
        if proc.returncode != 0 or not tmp.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            rows[label] = {"error": tail[0][:300]}
            continue
        rows[label] = json.loads(tmp.read_text())
        tmp.unlink()
        r = rows[label]
        print(
            f"  {r['seconds_per_epoch']:.1f} s/epoch, MMD^2 {r['final_mmd2']:.3g}, NLL {r['nll']['nll']:.2f}",
            file=sys.stderr,
            flush=True,
        )
    first = next((r for r in rows.values() if "error" not in r), {})
    result = {
        "independent_pixels": _independent_pixels(args, first),
        "benchmark": "sbn",
        "epochs": args.epochs,
        "n_train": first.get("n_train"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{first.get('threads')} torch threads, device {first.get('device')}, torch {torch.__version__}",
        "command": "wakesleep " + " ".join(sys.argv[1:]),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "algorithms": rows,
        "summary": _summary(rows),
    }
    from wakesleep import io as wio

    wio.save_json(out / "bench.json", result)
    wio.write_text(out / "bench.md", _markdown(result))
    print(_markdown(result))
    return 0 if all("error" not in r for r in rows.values()) else 1
