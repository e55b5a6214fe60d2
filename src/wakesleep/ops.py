"""``linear(x, weight, bias)``: ``F.linear`` with the float32 CPU products done by oneDNN.

PyTorch's CPU ``addmm``/``mm`` go to MKL, which on some CPUs (AMD Zen 5 here) runs its AVX2 kernels at half
the rate oneDNN's AVX-512 kernels reach on the same core (about 80 against 160-200 GFLOP/s on the
``[500, 200] x [200, 784]`` products of a K = 5 sigmoid belief network). :func:`linear` computes the forward
product and the weight/input gradients with ``torch.ops.mkldnn._linear_pointwise`` (the op behind
``torch.compile``'s CPU linear layers; full float32 arithmetic, only the blocking differs) and falls back to
``F.linear`` for other dtypes and devices, when oneDNN is unavailable or fails a first self-check, and when the
backward must itself be differentiable (``create_graph=True``). ``WAKESLEEP_ONEDNN=0`` disables it.

Mixed precision (``train.precision``, :func:`autocast`): inside ``torch.autocast`` :func:`linear` lets autocast
do the product in its lower precision (bfloat16 or float16 inputs, float32 accumulation) and returns the result
in the input's dtype, so everything after a product (log-densities, sums over pixels) stays in full precision.
:func:`matmul`, the helper of regression statistics and read-outs, is never lowered.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PRECISIONS", "autocast", "full_precision", "linear", "matmul", "onednn_enabled", "onednn_mm"]

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}

_STATE: dict[str, bool] = {}
# below this many multiply-adds (rows * in * out) a oneDNN call (~15 us of fixed cost) is slower than F.linear
MIN_WORK = 1_000_000


def _dense(t: Tensor) -> Tensor:
    """``t`` itself when it is row- or column-major without gaps, else a contiguous copy: oneDNN reads other
    layouts (e.g. a slice of a column-major solve) through a reference path about 1000x slower."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def onednn_mm(a: Tensor, b_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b_t.T (+ bias)`` by oneDNN; ``a`` ``[n, k]``, ``b_t`` ``[m, k]`` (any strides)."""
    return torch.ops.mkldnn._linear_pointwise(_dense(a), _dense(b_t), bias, "none", [], "")


def onednn_enabled() -> bool:
    """Whether :func:`linear` uses oneDNN for float32 CPU tensors (checked once per process)."""
    if "ok" not in _STATE:
        ok = os.environ.get("WAKESLEEP_ONEDNN", "1") != "0" and torch.backends.mkldnn.is_available()
        if ok:
            try:  # the op is internal to PyTorch: check that it exists and computes x W^T + b
                g = torch.Generator().manual_seed(0)
                a, w, b, c = (torch.randn(s, generator=g) for s in ((5, 3), (4, 3), (4,), (5, 4)))
                ok = bool(torch.allclose(onednn_mm(a, w, b), torch.addmm(b, a, w.t()), atol=1e-5))
                ok = ok and bool(torch.allclose(onednn_mm(c.t(), a.t()), c.t() @ a, atol=1e-5))  # transposed operands
                ok = ok and bool(torch.allclose(onednn_mm(c, w.t()), c @ w, atol=1e-5))
            except Exception:  # noqa: BLE001 - any failure means: use F.linear
                ok = False
        _STATE["ok"] = ok
    return _STATE["ok"]


class _OneDNNLinear(torch.autograd.Function):
    # ctx-in-forward style: cheaper ``apply`` than the setup_context style (no ``inspect`` binding per call)
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        x2 = x.reshape(-1, x.shape[-1])
        return onednn_mm(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, weight.shape[0])
        x2 = x.reshape(-1, x.shape[-1])
        need_x, need_w, need_b = ctx.needs_input_grad
        differentiable = torch.is_grad_enabled()  # create_graph=True: stay with ops that have derivatives
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = (g2 @ weight if differentiable else onednn_mm(g2, weight.t())).view(x.shape)
        if need_w:  # [out, in] = G^T X. oneDNN copies a transposed input operand but reads a transposed weight
            # operand in place, so the larger of G and X goes in as the weight (for out > in that gives X^T G,
            # made contiguous again: a transposed gradient would slow every later elementwise op, e.g. Adam's)
            if differentiable:
                grad_w = g2.t() @ x2
            elif weight.shape[0] <= weight.shape[1]:
                grad_w = onednn_mm(g2.t(), x2.t())
            else:
                grad_w = onednn_mm(x2.t(), g2.t()).t().contiguous()
        if need_b:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b


def autocast(device: torch.device | str, precision: str = "float32") -> contextlib.AbstractContextManager:
    """Context for mixed precision: ``torch.autocast`` with the ``precision``'s dtype on ``device``'s type, a
    no-op context for ``float32``."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def full_precision(device: torch.device | str) -> torch.autocast:
    """Context that switches mixed precision off (for regressions whose solves amplify rounding errors)."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` over the last axis of ``x`` (as ``F.linear``), differentiable; under
    ``torch.autocast`` the product is in autocast's precision and the result in ``x``'s dtype."""
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        return F.linear(x, weight, bias).to(x.dtype)
    if (
        x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.layout == torch.strided
        and x.numel() * weight.shape[0] >= MIN_WORK
        and (bias is None or (bias.dtype == torch.float32 and bias.device.type == "cpu"))
        and onednn_enabled()
    ):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for 2-D tensors, by oneDNN for large float32 CPU products (no autograd: sleep-phase statistics)."""
    if (
        a.dtype == torch.float32
        and b.dtype == torch.float32
        and a.device.type == "cpu"
        and b.device.type == "cpu"
        and a.ndim == 2
        and b.ndim == 2
        and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))
        and a.shape[0] * a.shape[1] * b.shape[1] >= MIN_WORK
        and onednn_enabled()
    ):
        return onednn_mm(a, b.t())
    return a @ b
