"""An evaluation-only proposal for importance-sampled log-likelihoods of any learned model.

A model learned by the DDC Helmholtz machine has no sampling posterior, so its log-likelihood is estimated
with a proposal trained *after* learning, with the generative model frozen: a bottom-up factorised
recognition model

    q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1}),

each factor a diagonal Gaussian (real-valued latents) or independent Bernoulli (binary latents) whose
parameters are an MLP of the layer below. It is trained by reweighted wake-sleep's recognition updates
(Bornschein & Bengio 2015):

* wake-phase q update: for data ``x``, draw ``K`` particles ``z_k ~ q(z | x)``, normalise the importance
  weights ``w_k ∝ p(x, z_k) / q(z_k | x)`` and ascend ``sum_k w_k grad log q(z_k | x)`` (a self-normalised
  estimate of ``-grad KL(p(z|x) || q(z|x))``);
* sleep-phase q update (optional, on by default): ascend ``grad log q(z | x)`` on ``(z, x)`` dreamt from
  the model.

Both updates minimise the inclusive KL ``KL(p || q)``, which gives mass-covering proposals, the right
property for importance sampling. The estimate remains a stochastic lower bound whatever the proposal.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from wakesleep.errors import WakesleepError
from wakesleep.eval._checks import check_positive_int
from wakesleep.eval._model import check_obs, family_name, layer_kind, layers_of, model_dtype_device

__all__ = ["FactorisedProposal", "fit_proposal"]

_LOG_2PI = math.log(2 * math.pi)
_LOG_STD_MIN, _LOG_STD_MAX = -7.0, 4.0


class FactorisedProposal(nn.Module):
    """Bottom-up factorised proposal ``q(z | x) = prod_l q(z_l | z_{l-1})``, z_0 = x (proposal protocol of DESIGN.md).

    Parameters
    ----------
    model : HierarchicalModel
        The generative model (only its structure is read: dimensions, families, embeddings).
    hidden : int or None
        Hidden units of each factor's one-hidden-layer tanh MLP; ``None``/``0`` for affine factors.

    Notes
    -----
    Real-valued latents (Gaussian, Laplace, mixture-of-Gaussians top) get a diagonal Gaussian factor,
    binary latents a Bernoulli factor; other families raise ``WakesleepError``.
    """

    def __init__(self, model: nn.Module, hidden: int | None = 200) -> None:
        super().__init__()
        fn = "FactorisedProposal"
        layers = layers_of(model, fn)
        self._layers = [layers[i] for i in range(len(layers))]  # plain list: not registered as submodules
        self.kinds: list[str] = []
        self.dims: list[int] = []
        nets = []
        # factor i (bottom-up) infers latent layer L-1-i from the layer below it
        for below, layer in zip(layers[::-1][:-1], layers[::-1][1:], strict=True):
            kind = layer_kind(layer)
            if kind not in ("real", "binary"):
                raise WakesleepError(
                    f"{fn}: latent layer {layer.name} is {family_name(layer)}; only real-valued and binary "
                    "latents are supported"
                )
            in_dim = int(below.embed_dim)
            out_dim = layer.dim * (2 if kind == "real" else 1)
            if hidden:
                net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))
            else:
                net = nn.Linear(in_dim, out_dim)
            nets.append(net)
            self.kinds.append(kind)
            self.dims.append(layer.dim)
        self.nets = nn.ModuleList(nets)
        dtype, device = model_dtype_device(model)
        self.to(dtype=dtype, device=device)

    def _embed(self, i: int, value: Tensor) -> Tensor:
        # the input of factor i is the value of bottom-up layer i (0 = observation)
        return self._layers[::-1][i].embed(value)

    def _factor(self, i: int, h: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.nets[i](h)
        if self.kinds[i] == "real":
            mean, log_std = out.chunk(2, dim=-1)
            return mean, log_std.clamp(_LOG_STD_MIN, _LOG_STD_MAX)
        return out, None

    @staticmethod
    def _log_prob(kind: str, z: Tensor, a: Tensor, log_std: Tensor | None) -> Tensor:
        if kind == "real":
            u = (z - a) * torch.exp(-log_std)
            return (-0.5 * u * u - log_std - 0.5 * _LOG_2PI).sum(-1)
        return (z * a - torch.nn.functional.softplus(a)).sum(-1)

    def sample(self, x: Tensor, k: int) -> tuple[list[Tensor], Tensor]:
        """``k`` particles per row of ``x [B, Dx]``: ``([z_L, ..., z_1] each [k, B, D_l], log_q [k, B])``."""
        with torch.no_grad():
            h = self._embed(0, x).expand(k, *x.shape[:-1], -1)
            zs, lq = [], torch.zeros(k, *x.shape[:-1], dtype=x.dtype, device=x.device)
            for i, kind in enumerate(self.kinds):
                a, log_std = self._factor(i, h)
                if kind == "real":
                    z = a + torch.exp(log_std) * torch.randn_like(a)
                else:
                    z = (torch.rand_like(a) < torch.sigmoid(a)).to(a.dtype)
                lq = lq + self._log_prob(kind, z, a, log_std)
                zs.append(z)
                h = self._embed(i + 1, z)
        return zs[::-1], lq

    def log_prob(self, x: Tensor, zs: list[Tensor]) -> Tensor:
        """``log q(z | x)`` for ``zs = [z_L, ..., z_1]`` (differentiable in the proposal's parameters)."""
        bottom_up = list(zs)[::-1]
        h = self._embed(0, x)
        total = None
        for i, kind in enumerate(self.kinds):
            z = bottom_up[i]
            h = h.expand(*z.shape[:-1], h.shape[-1])
            a, log_std = self._factor(i, h)
            lp = self._log_prob(kind, z, a, log_std)
            total = lp if total is None else total + lp
            h = self._embed(i + 1, z)
        return total


def fit_proposal(
    model: nn.Module,
    data: Any,
    *,
    steps: int = 2000,
    k: int = 10,
    batch_size: int = 100,
    lr: float = 3e-3,
    sleep: bool = True,
    hidden: int | None = 200,
    proposal: FactorisedProposal | None = None,
    seed: int = 0,
) -> FactorisedProposal:
    """Train an evaluation-only proposal for ``model`` on ``data`` with the model frozen.

    Parameters
    ----------
    model : HierarchicalModel
        The (learned) generative model; its parameters are not changed.
    data : array-like
        ``[N, Dx]`` observations (e.g. the training set).
    steps : int
        Adam steps.
    k : int
        Particles per data point of the wake-phase update.
    batch_size : int
        Minibatch size (data points; also the number of dreamt samples of the sleep update).
    lr : float
        Adam learning rate.
    sleep : bool
        Add the sleep-phase update ``-log q(z | x)`` on dreamt ``(z, x) ~ p``.
    hidden : int or None
        Hidden units per factor (see :class:`FactorisedProposal`).
    proposal : FactorisedProposal, optional
        Continue training this proposal (e.g. one returned by an earlier call) instead of a new one; Adam
        starts afresh.
    seed : int
        Seed of initialisation, minibatches and sampling (the global RNG is restored afterwards).

    Returns
    -------
    FactorisedProposal
        Pass it as ``proposal`` to :func:`~wakesleep.eval.log_likelihood`.
    """
    fn = "fit_proposal"
    xt, _ = check_obs(model, data, fn)
    steps = check_positive_int(fn, "steps", steps, 0)
    k = check_positive_int(fn, "k", k)
    batch_size = check_positive_int(fn, "batch_size", batch_size)
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise WakesleepError(f"{fn}: lr must be a positive number, got {lr!r}")
    devices = [xt.device] if xt.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        q = proposal if proposal is not None else FactorisedProposal(model, hidden=hidden)
        for p in q.parameters():  # a proposal returned by an earlier call comes frozen
            p.requires_grad_(True)
        q.train()
        opt = torch.optim.Adam(q.parameters(), lr=lr)
        n = xt.shape[0]
        for _ in range(steps):
            idx = torch.randint(0, n, (min(batch_size, n),), device=xt.device)
            xb = xt[idx]
            zs, lq = q.sample(xb, k)
            with torch.no_grad():
                lw = model.log_joint(xb, zs) - lq
                w = torch.softmax(torch.nan_to_num(lw, nan=-math.inf), dim=0)
            loss = -(w * q.log_prob(xb, zs)).sum(0).mean()
            if sleep:
                dream = model.sample(batch_size)
                loss = loss - q.log_prob(dream[-1], list(dream[:-1])).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for p in q.parameters():
            p.requires_grad_(False)
    return q.eval()
