"""The hand-written kernels of the sampling-based hot path equal the composite autograd expressions they replace.

* ``bernoulli_log_prob_sum`` (``Bernoulli.log_prob_sum``): value, gradients (also with broadcast logits or
  observations), double backward and batched (vmapped) gradients;
* ``wakesleep.ops.linear`` (float32 CPU products by oneDNN): forward, weight/input/bias gradients for
  both operand orientations of the weight gradient, double backward, batched gradients, the float64 fallback;
* a float32 sigmoid belief network: ``log_joint`` and the proposal's ``log_prob`` (both through the fused
  kernels) and their gradients against the unfused ``natural_params`` + ``family.log_prob`` route.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import wakesleep
from wakesleep import ops as _linear
from wakesleep.families import Bernoulli
from wakesleep.families.standard import bernoulli_log_prob_sum
from wakesleep.ops import linear, onednn_enabled

from oracles import sbn_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _onednn_for_small_products(monkeypatch):
    """Route even the tiny products of these tests through oneDNN (when available)."""
    monkeypatch.setattr(_linear, "MIN_WORK", 0)


SHAPES = [((3, 4, 5), (3, 4, 5)), ((3, 4, 5), (4, 5)), ((4, 5), (3, 4, 5)), ((3, 4, 5), (5,))]


def _reference(x, logits):
    return (x * logits - F.softplus(logits)).sum(-1)


@pytest.mark.parametrize(("x_shape", "l_shape"), SHAPES)
def test_bernoulli_log_prob_sum_matches_composite(x_shape, l_shape):
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(x_shape, generator=gen, dtype=torch.float64) < 0.4).double().requires_grad_()
    logits = (4 * torch.randn(l_shape, generator=gen, dtype=torch.float64)).requires_grad_()
    out, ref = bernoulli_log_prob_sum(x, logits), _reference(x, logits)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(bernoulli_log_prob_sum, (x, logits))
    assert torch.autograd.gradgradcheck(bernoulli_log_prob_sum, (x, logits))
    v = torch.randn(6, *out.shape, generator=gen, dtype=torch.float64)
    batched = torch.autograd.grad(bernoulli_log_prob_sum(x, logits), (x, logits), v, is_grads_batched=True)
    expected = torch.autograd.grad(_reference(x, logits), (x, logits), v, is_grads_batched=True)
    torch.testing.assert_close(batched, expected)
    # the in-place backward (observations without gradient, logits not broadcast)
    g = torch.autograd.grad(bernoulli_log_prob_sum(x.detach(), logits), logits, v[0])[0]
    torch.testing.assert_close(g, torch.autograd.grad(_reference(x.detach(), logits), logits, v[0])[0])


def test_bernoulli_family_log_prob_sum_is_summed_log_prob():
    fam = Bernoulli()
    eta = torch.randn(7, 5, 1, dtype=torch.float64)
    x = fam.sample(eta)
    torch.testing.assert_close(fam.log_prob_sum(x, eta), fam.log_prob(x, eta).sum(-1), rtol=0, atol=1e-12)
    assert set(x.unique().tolist()) <= {0.0, 1.0} and x.dtype == torch.float64
    assert not fam.sample(eta.clone().requires_grad_()).requires_grad  # samples carry no gradient


@pytest.mark.parametrize("w_shape", [(4, 3), (3, 7), (5, 5)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_lead", [(7,), (2, 6), ()])
def test_linear_matches_f_linear(w_shape, bias, x_lead):
    gen = torch.Generator().manual_seed(1)
    out_f, in_f = w_shape
    x = torch.randn(*x_lead, in_f, generator=gen).requires_grad_()
    w = torch.randn(w_shape, generator=gen).requires_grad_()
    b = torch.randn(out_f, generator=gen).requires_grad_() if bias else None
    ins = [x, w] + ([b] if bias else [])
    y, ref = linear(x, w, b), F.linear(x, w, b)
    torch.testing.assert_close(y, ref)
    g = torch.randn(y.shape, generator=gen)
    grads = torch.autograd.grad(y, ins, g)
    torch.testing.assert_close(grads, torch.autograd.grad(ref, ins, g))
    assert all(t.is_contiguous() for t in grads[1:])
    # double backward and batched gradients go through differentiable / vmappable ops
    gg = torch.autograd.grad(linear(x, w, b), ins, g, create_graph=True)
    gg_ref = torch.autograd.grad(F.linear(x, w, b), ins, g, create_graph=True)
    s, s_ref = sum((t * t).sum() for t in gg), sum((t * t).sum() for t in gg_ref)
    torch.testing.assert_close(
        torch.autograd.grad(s, ins, allow_unused=True), torch.autograd.grad(s_ref, ins, allow_unused=True)
    )
    v = torch.randn(3, *y.shape, generator=gen)
    torch.testing.assert_close(
        torch.autograd.grad(linear(x, w, b), ins, v, is_grads_batched=True),
        torch.autograd.grad(F.linear(x, w, b), ins, v, is_grads_batched=True),
    )


def test_linear_float64_falls_back_to_f_linear():
    x, w = torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    assert linear(x, w).grad_fn is None  # no autograd.Function involved without gradients
    xr = x.clone().requires_grad_()
    assert type(linear(xr, w).grad_fn).__name__ != "_OneDNNLinearBackward"
    torch.testing.assert_close(linear(x, w), F.linear(x, w), rtol=0, atol=0)


@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_matches_mm(monkeypatch, transposed):
    monkeypatch.setattr(_linear, "MIN_WORK", 0)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(37, 23, generator=g)
    a = a.T.contiguous().T if transposed else a  # a transposed view, as h.T in the Gram matrices
    b = torch.randn(23, 11, generator=g)
    torch.testing.assert_close(_linear.matmul(a, b), a @ b, rtol=1e-5, atol=1e-5)
    gappy = torch.randn(11, 40, generator=g).T[:23]  # column-major with a gap, as a slice of a Cholesky solve
    torch.testing.assert_close(_linear.matmul(a, gappy), a @ gappy, rtol=1e-5, atol=1e-5)
    a64, b64 = a.double(), b.double()
    torch.testing.assert_close(_linear.matmul(a64, b64), a64 @ b64, rtol=0, atol=0)  # float64: torch's own mm


def test_flop_counter_counts_onednn_products(monkeypatch):
    from wakesleep.bench import MatmulFlops

    monkeypatch.setattr(_linear, "MIN_WORK", 0)
    a, b, w = torch.randn(7, 5), torch.randn(5, 3), torch.randn(4, 5)
    with MatmulFlops() as fc:
        _linear.matmul(a, b)
        linear(a, w)
    assert fc.total == 2 * 7 * 5 * 3 + 2 * 7 * 5 * 4


def test_onednn_is_used_for_float32_when_available(monkeypatch):
    x = torch.randn(4, 3, requires_grad=True)
    name = type(linear(x, torch.randn(2, 3)).grad_fn).__name__
    assert (name == "_OneDNNLinearBackward") == onednn_enabled()
    monkeypatch.setattr(_linear, "MIN_WORK", 1000)  # small products stay with F.linear
    assert type(linear(x, torch.randn(2, 3)).grad_fn).__name__ != "_OneDNNLinearBackward"


def test_float32_sbn_fused_path_matches_unfused_route():
    """log_joint / proposal log_prob (fused kernels, oneDNN) vs natural_params + family.log_prob, float32."""
    torch.manual_seed(0)
    model = wakesleep.build_model(sbn_config((6, 8, 12), 0) | {"dtype": "float32"})
    algo = wakesleep.build_algorithm("rws", model, k=4, q_update="wake")
    x = model.sample(5)[-1]
    zs, _ = algo.proposal.sample(x, 4, reparameterize=False)
    layers = list(model.layers.values())
    values = list(zs) + [x]

    def unfused():
        total = layers[0].family.log_prob(values[0], layers[0].natural_params(None)).sum(-1)
        for i in range(1, len(layers)):
            eta = layers[i].natural_params(layers[i - 1].embed(values[i - 1]))
            total = total + layers[i].family.log_prob(values[i], eta).sum(-1)
        return total

    params = list(model.parameters())
    fused, ref = model.log_joint(x, zs), unfused()
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-4)
    w = torch.rand(fused.shape)
    torch.testing.assert_close(
        torch.autograd.grad(fused, params, w), torch.autograd.grad(ref, params, w), rtol=1e-4, atol=1e-4
    )
    # proposal: fused log_prob vs torch.distributions on the same factor outputs
    qp = list(algo.proposal.parameters())
    outs = algo.proposal.layer_params(x, zs)
    ref_q = sum(torch.distributions.Bernoulli(logits=o).log_prob(z).sum(-1) for o, z in zip(outs, zs, strict=True))
    lq = algo.proposal.log_prob(x, zs)
    torch.testing.assert_close(lq, ref_q, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(lq, qp, w), torch.autograd.grad(ref_q, qp, w), rtol=1e-4, atol=1e-4)


def test_bernoulli_log_prob_sum_retained_graph_and_no_grad():
    """The backward consumes the forward's sigmoid buffer in place: a second backward through a retained graph
    recomputes it, and without grad mode no buffer is kept."""
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(3, 4, 5, generator=gen, dtype=torch.float64) < 0.5).double()
    logits = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    expected = torch.autograd.grad(_reference(x, logits), logits, v)[0]
    out = bernoulli_log_prob_sum(x, logits)
    first = torch.autograd.grad(out, logits, v, retain_graph=True)[0]
    second = torch.autograd.grad(out, logits, v)[0]
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    with torch.no_grad():
        torch.testing.assert_close(bernoulli_log_prob_sum(x, logits), _reference(x, logits), rtol=0, atol=1e-12)
