"""Floating-point work of a training iteration, and the machine's matrix-multiply rate it is measured against.

* :class:`MatmulFlops` counts the FLOPs of the matrix products an operation dispatches (the formulas of
  ``torch.utils.flop_counter``, plus the oneDNN products of :mod:`wakesleep.ops`);
* :func:`solver_flops` adds DDC-HM's Cholesky factorisations and triangular solves, which the counter does not
  see (n^3 / 3 per factorisation, 2 n^2 m per solve with m right-hand sides);
* :func:`iteration_flops` measures an average training iteration (wake phase, recognition step, and the
  share of a sleep phase) without changing the model;
* :func:`matmul_rate` measures the machine's practical peak (float32 2048 x 2048 products).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

__all__ = ["MatmulFlops", "iteration_flops", "matmul_rate", "sleep_cycle", "solver_flops", "sync"]


def matmul_rate(
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    n: int = 2048,
    reps: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Measured matrix-multiply rate (FLOP/s) of ``n x n`` products, the faster of ``torch.mm`` and the oneDNN
    route of :func:`wakesleep.ops.matmul`: the machine's practical peak.

    With ``clock=time.process_time`` (CPU only) it is FLOPs per CPU second of all threads together.
    """
    from wakesleep.ops import matmul

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for product in (torch.mm, matmul):  # torch's own (MKL on CPU) and the oneDNN route our algorithms also take
        product(a, b)
        sync(device)
        for _ in range(reps):
            t = clock()
            product(a, b)
            sync(device)
            best = min(best, clock() - t)
    return 2 * n**3 / best


def sync(device: Any) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


_ONEDNN_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


class MatmulFlops(TorchDispatchMode):
    """Counts FLOPs with the formulas of ``torch.utils.flop_counter`` (mm, addmm, bmm, convolutions, attention),
    and the oneDNN products of ``wakesleep.ops``.

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
        elif func._overloadpacket is _ONEDNN_LINEAR:  # wakesleep.ops: x [.., k] @ w[m, k]^T
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
