"""Single-site Gibbs sweeps, the AIS transition kernel for sigmoid belief networks (the algorithm, and the
arithmetic of a flip: :mod:`wakesleep.eval.ais`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from wakesleep.eval._ais_hmc import _GaussianObservation
from wakesleep.eval._model import family_name, sample_latents

#: Gibbs sweeps: at most this many factors ``q + p exp(s W)`` are multiplied before taking one logarithm.
GIBBS_GROUP = 16


class _BernoulliChain:
    """A sigmoid belief network's parameters, prepared for Gibbs sweeps (see :mod:`wakesleep.eval.ais`).

    ``w[l], b[l]`` are layer ``l``'s link weight ``[D_l, D_{l-1}]`` and bias (layers top first, 1..L; ``w[0]`` is
    None). For each latent layer ``l`` whose child is Bernoulli, ``ew[l], ewn[l]`` are the ``D_l`` contiguous
    vectors ``exp(+-W[:, j])`` of ``W = w[l + 1]``, and ``group[l]`` the number of factors multiplied per
    logarithm: the largest power of two up to :data:`GIBBS_GROUP` that divides ``D_{l+1}`` and keeps every
    product within ``exp(+-64)`` (float32; ``exp(+-512)`` in float64), bounded by the sums of ``|W_kj|`` over its
    factors. ``gauss`` is the quadratic form of a Gaussian observation layer (else None). Arithmetic is in
    ``dtype``: the model's, or float64 for a float32 model with a child weight above 64 in magnitude (``exp(W)``
    would overflow).
    """

    def __init__(self, layers: list[Any], dtype: torch.dtype) -> None:
        self.n_latent = len(layers) - 1
        self.dims = [int(layer.dim) for layer in layers]
        with torch.no_grad():
            weights = [None] + [layer.link.weight.detach() for layer in layers[1:]]
            biases = [None] + [
                layer.link.bias.detach() if layer.link.bias is not None else torch.zeros_like(w[:, 0])
                for layer, w in zip(layers[1:], weights[1:], strict=True)
            ]
            gaussian_obs = family_name(layers[-1]) == "gaussian"
            children = range(1, self.n_latent + (0 if gaussian_obs else 1))  # layers with a bernoulli family
            w_max = max((float(weights[c].abs().max()) for c in children), default=0.0)
            wide = dtype == torch.float64 or w_max > 64.0
            self.dtype = torch.float64 if wide else torch.float32
            limit = 512.0 if self.dtype == torch.float64 else 64.0  # bound on |log| of a product of factors
            self.w = [None if w is None else w.to(self.dtype) for w in weights]
            self.b = [None if b is None else b.to(self.dtype) for b in biases]
            self.top_logits = layers[0].natural_params(None)[..., 0].detach().to(self.dtype)
            self.ew: dict[int, tuple[Tensor, ...]] = {}
            self.ewn: dict[int, tuple[Tensor, ...]] = {}
            self.group: dict[int, int] = {}
            for c in children:
                w = self.w[c]
                self.ew[c - 1] = torch.exp(w).T.contiguous().unbind(0)
                self.ewn[c - 1] = torch.exp(-w).T.contiguous().unbind(0)
                m, d, aw = 1, w.shape[0], w.abs().double()
                # the tree multiplies columns k, k + d/m, k + 2 d/m, ... of a row
                while (
                    2 * m <= GIBBS_GROUP and d % (2 * m) == 0 and aw.view(2 * m, -1, w.shape[1]).sum(0).max() <= limit
                ):
                    m *= 2
                self.group[c - 1] = m
            self.gauss = None
            if gaussian_obs:
                obs = layers[-1]
                var = obs.extras()["log_var"].detach().exp().expand(obs.dim)
                self.gauss = _GaussianObservation(weights[-1], biases[-1], var)


class _ChildBuffers:
    """Scratch arrays of the sweeps over a Bernoulli child's parent, ``R`` rows by ``Dc`` child units: ``u`` (the
    child's pre-activations), ``pq`` (``sigmoid(u)`` and ``sigmoid(-u)``, ``[R, 2, Dc]``), ``f`` (``exp(s W_j)``,
    then the factors), ``gathered`` and ``multipliers`` (for the flipped rows), the product tree (``(left, right,
    out)`` views, ``out = left * right``), the logs and their row sums. Allocated once per batch: fresh blocks of
    a few MB cost a page fault per 4 KiB page (see :mod:`wakesleep.runtime`)."""

    def __init__(self, rows: int, width: int, group: int, dtype: torch.dtype, device: torch.device) -> None:
        self.u, self.f, self.gathered = (torch.empty(rows, width, dtype=dtype, device=device) for _ in range(3))
        self.pq, self.multipliers = (torch.empty(rows, 2, width, dtype=dtype, device=device) for _ in range(2))
        self.p, self.q = self.pq[:, 0], self.pq[:, 1]
        self.tree = []
        g = self.f
        while group > 1:
            width, group = width // 2, group // 2
            out = torch.empty(rows, width, dtype=dtype, device=device)
            self.tree.append((g[:, :width], g[:, width:], out))
            g = out
        self.products = g
        self.logs = torch.empty(rows, width, dtype=dtype, device=device)
        self.lsum = torch.empty(rows, dtype=dtype, device=device)


def _sweep_bernoulli_child(
    z: Tensor, thr: Tensor, ew: Sequence[Tensor], ewn: Sequence[Tensor], buf: _ChildBuffers, flip: Tensor
) -> None:
    """Gibbs-update every unit of a layer whose child is Bernoulli with pre-activations ``buf.u`` (``[R, Dc]``,
    overwritten).

    ``z`` is the layer ``[D, R]`` (read only: its flips go to ``flip``, ``[D, R]`` bool); unit ``j`` flips in row
    ``r`` iff ``sum_k log(q_k + p_k exp(s W_kj)) < thr[j, r]``, with ``thr`` folding in the prior logits, the
    child's ``s c.W_j``, the temperature and the logistic noise of the draw. ``ew[j], ewn[j]`` are
    ``exp(+-W[:, j])``.
    """
    p, q, f = buf.p, buf.q, buf.f
    torch.sigmoid(buf.u, out=p)
    torch.sigmoid(buf.u.neg_(), out=q)
    units = zip(z.unsqueeze(-1).unbind(0), thr.unbind(0), flip.unbind(0), ew, ewn, strict=True)
    for zj, thr_j, flip_j, ew_j, ewn_j in units:
        torch.lerp(ew_j, ewn_j, zj, out=f)  # exp(s W_kj): exactly exp(W_kj) where z_j = 0, exp(-W_kj) where 1
        torch.addcmul(q, p, f, out=f)  # exp(softplus(u + s W_j) - softplus(u)), in [exp(-|W|), exp(|W|)]
        for left, right, out in buf.tree:  # products of groups of factors, then one log per group
            torch.mul(left, right, out=out)
        torch.sum(torch.log(buf.products, out=buf.logs), 1, out=buf.lsum)
        torch.lt(buf.lsum, thr_j, out=flip_j)
        idx = flip_j.nonzero().squeeze(1)
        if n := idx.numel():  # flipped rows: p <- p exp(s W_j) / f = sigmoid(u + s W_j), q <- q / f
            m = buf.multipliers[:n]
            torch.reciprocal(torch.index_select(f, 0, idx, out=buf.gathered[:n]), out=m[:, 1])
            torch.lerp(ew_j, ewn_j, zj.index_select(0, idx), out=m[:, 0]).mul_(m[:, 1])
            buf.pq.index_reduce_(0, idx, m, "prod")


def _sweep_gaussian_child(
    z: Tensor, s: Tensor, prior: Tensor, h: Tensor, precision: Tensor, beta: float, noise: Tensor, flip: Tensor
) -> None:
    """Gibbs-update ``z_1`` (``[D1, R]``) under a Gaussian observation with ``log p(x | z_1) = h.z_1 -
    z_1^T A z_1 / 2 + const``: flipping unit j changes it by ``s (h_j - (A z_1)_j) - A_jj / 2``."""
    az = precision @ z  # [D1, R], updated as units flip
    base = s * (prior + beta * h) - noise - (0.5 * beta) * precision.diagonal()[:, None]
    for j in range(z.shape[0]):
        torch.lt((beta * s[j]) * az[j], base[j], out=flip[j])
        az.addr_(precision[:, j], s[j] * flip[j])


def _gibbs_batch(
    chain: _BernoulliChain, model: nn.Module, xb: Tensor, chains: int, beta: Tensor
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """AIS with Gibbs sweeps for the rows ``xb`` (``[nb, Dx]``): log weights ``[C, nb]`` (float64), fraction of
    units changed per sweep ``[L, nb]`` and the final states ``[z_L, ..., z_1]`` (each ``[C, nb, D_l]``, model
    dtype). Every array of the loop is allocated here, once."""
    nb, dev, dt = xb.shape[0], xb.device, chain.dtype
    rows, n_lat, dims = chains * nb, chain.n_latent, chain.dims
    zs = [z.to(dt).T.contiguous() for z in sample_latents(model, rows)]  # [D_l, R]; row c * nb + b: chain c, x_b
    xr = xb.to(dt).repeat(chains, 1)
    gauss = chain.gauss
    if gauss is None:
        w_x, b_x = chain.w[-1], chain.b[-1]
        cw_x = (xr @ w_x).T.contiguous()  # [D1, R]: x.W_j, the child's own term of z_1's units
    else:
        h64, c64 = gauss.at(xr)
        h_t, precision = h64.to(dt).T.contiguous(), gauss.precision.to(dt)
    bufs = {l: _ChildBuffers(rows, dims[l + 1], chain.group[l], dt, dev) for l in chain.group}
    flips = [torch.empty(d, rows, dtype=torch.bool, device=dev) for d in dims[:-1]]
    s, prior, thr, noise, cw, flipf = (
        [torch.empty(d, rows, dtype=dt, device=dev) for d in dims[:-1]] for _ in range(6)
    )
    noise64 = [torch.empty(d, rows, dtype=torch.float64, device=dev) for d in dims[:-1]]
    changed = torch.zeros(n_lat, rows, dtype=torch.float64, device=dev)
    lw = torch.zeros(rows, dtype=torch.float64, device=dev)
    for t in range(1, beta.numel()):
        b_prev, b_now = float(beta[t - 1]), float(beta[t])
        z1 = zs[-1].T
        if gauss is None:  # log p(x | z_1) = sum x u - softplus(u), softplus(u) = max(u, 0) + log1p(exp(-|u|))
            xbuf = bufs[n_lat - 1]
            u_x, sp, tmp = xbuf.u, xbuf.f, xbuf.gathered
            torch.addmm(b_x, z1, w_x.T, out=u_x)
            torch.abs(u_x, out=tmp).neg_().exp_().log1p_()
            torch.clamp(u_x, min=0.0, out=sp).add_(tmp)
            log_obs = torch.addcmul(sp, xr, u_x, value=-1.0, out=sp).sum(-1).double().neg_()
        else:
            log_obs = gauss.log_prob(z1, h64, c64)
        lw += (b_now - b_prev) * torch.nan_to_num(log_obs, nan=-math.inf)
        for l in range(n_lat):
            z = zs[l]
            torch.mul(z, -2.0, out=s[l]).add_(1.0)  # s = 1 - 2 z: +1 where a flip is 0 -> 1
            if l == 0:
                prior[l].copy_(chain.top_logits[:, None].expand_as(z))
            else:
                torch.addmm(chain.b[l][:, None], chain.w[l], zs[l - 1], out=prior[l])
            # logistic noise, drawn in float64: the unit flips iff noise < its flip log-odds
            noise[l].copy_(torch.rand(z.shape, dtype=torch.float64, device=dev, out=noise64[l]).logit_())
            if l < n_lat - 1 or gauss is None:
                if l < n_lat - 1:  # child z_{l+1}: its pre-activations and c.W_j, from scratch
                    w_c = chain.w[l + 1]
                    torch.addmm(chain.b[l + 1], z.T, w_c.T, out=bufs[l].u)
                    child_term, scale = torch.mm(w_c.T, zs[l + 1], out=cw[l]), 1.0
                else:  # child x, weighted by beta (u_x above is still that of the current z_1)
                    child_term, scale = cw_x, b_now
                torch.add(prior[l], child_term, alpha=scale, out=thr[l]).mul_(s[l]).sub_(noise[l]).div_(scale)
                _sweep_bernoulli_child(z, thr[l], chain.ew[l], chain.ewn[l], bufs[l], flips[l])
            else:
                _sweep_gaussian_child(z, s[l], prior[l], h_t, precision, b_now, noise[l], flips[l])
            z.addcmul_(s[l], flipf[l].copy_(flips[l]))  # z + s * flip: 0 <-> 1
            changed[l] += flipf[l].sum(0)
    finals = [z.T.reshape(chains, nb, -1).to(xb.dtype) for z in zs]
    sweeps = (beta.numel() - 1) * torch.tensor(dims[:-1], dtype=torch.float64, device=dev)
    per_unit = changed / sweeps[:, None]
    return lw.view(chains, nb), per_unit.view(n_lat, chains, nb).mean(1), finals
