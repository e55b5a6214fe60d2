"""Custom generative models for the AL-WS experiments (seed 004). Each is an ``nn.Module`` with the library's model
contract: ``sample(n) -> [z..., x]`` (no gradient) and ``log_joint(x, zs, per_layer=False)`` (leading axes
broadcast), plus ``dtype``/``device``. Where the observation layer is an exponential family the model also has
``obs_family``, ``obs_natural_params(zs)`` and ``log_prior(zs)`` (for AL-WS's ``variant="expfam"``), and a model
may define ``kernel_features(x)`` (the input of AL-WS's kernel, e.g. log of positive counts).

- :func:`softplus_gradient_model`: z1, z2 ~ N(0, 1), x | z ~ N(softplus(b . z) - ||b||^2, sigma_x^2), built as a
  :class:`HierarchicalModel` with a custom link (so DDC-HM applies to it too);
- :class:`CircleModel`: z uniform on the unit circle, x | z ~ N(NN_w(cos z, sin z), sigma_x^2 I);
- :class:`UniformLogitBernoulli`: z_i ~ U(0, 1), x_i ~ Bernoulli(sigmoid(w_i . logit(z) + b_i));
- :class:`PopulationDynamics`: the seed's delayed population model (tau ~ Categorical on {1..20}, Gamma
  process and demographic noise, LogNormal observations).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wakesleep.families import FAMILIES
from wakesleep.models.hierarchical import ExpFamLayer, HierarchicalModel, ModelBase
from wakesleep.models.links import ConstantLink, mlp

__all__ = [
    "SoftplusOffsetLink",
    "softplus_gradient_model",
    "CircleModel",
    "UniformLogitBernoulli",
    "PopulationDynamics",
]


class _Base(ModelBase):
    def log_joint(self, x: Tensor, zs: list[Tensor], per_layer: bool = False):
        return self._joint(self._terms(x, zs), per_layer)


# --------------------------------------------------------------------------------------------------------
# gradient-estimation model
# --------------------------------------------------------------------------------------------------------
class SoftplusOffsetLink(nn.Module):
    """``softplus(b . z) - ||b||^2`` (one output): the mean of x in the seed's gradient-estimation model."""

    def __init__(self, b: Tensor) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.as_tensor(b, dtype=torch.get_default_dtype()).clone())

    def forward(self, z: Tensor) -> Tensor:
        return (F.softplus(z @ self.b) - (self.b * self.b).sum()).unsqueeze(-1)


def softplus_gradient_model(
    b=(1.0, 0.5), sigma_x: float = 0.5, dtype: torch.dtype = torch.float64
) -> HierarchicalModel:
    """z ~ N(0, I_2), x | z ~ N(softplus(b . z) - ||b||^2, sigma_x^2); the only parameter is ``layers.x.link.b``.

    Built as a :class:`HierarchicalModel` (Gaussian top with fixed mean 0 and variance 1, Gaussian observation
    with fixed variance sigma_x^2) so that both AL-WS and DDC-HM apply.
    """
    b = torch.as_tensor(b, dtype=torch.float64)
    d = b.shape[0]
    gauss = FAMILIES["gaussian"]
    top = ExpFamLayer(
        "z", gauss(), d, ConstantLink(d, torch.zeros(d), learn=False), {"log_var": (torch.zeros(d), False)}
    )
    obs = ExpFamLayer(
        "x", gauss(), 1, SoftplusOffsetLink(b), {"log_var": (torch.full((1,), 2 * math.log(sigma_x)), False)}
    )
    return HierarchicalModel([top, obs]).to(dtype)


# --------------------------------------------------------------------------------------------------------
# latent on the circle
# --------------------------------------------------------------------------------------------------------
class CircleModel(_Base):
    """z ~ Uniform[0, 2 pi) (an angle: the unit circle), x | z ~ N(NN_w(cos z, sin z), sigma_x^2 I).

    Parameters
    ----------
    obs_dim : int
        Dimension of x.
    hidden : list of int
        Hidden widths of the tanh network NN_w.
    sigma_x : float
        Initial observation noise standard deviation.
    learn_sigma : bool
        Learn ``log_sigma`` too.
    """

    def __init__(
        self, obs_dim: int, hidden=(64, 64), sigma_x: float = 0.1, learn_sigma: bool = False, seed: int = 0
    ) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = mlp(2, hidden, "tanh", obs_dim)
        ls = torch.tensor(math.log(sigma_x))
        if learn_sigma:
            self.log_sigma = nn.Parameter(ls)
        else:
            self.register_buffer("log_sigma", ls)
        self.obs_dim = obs_dim
        self.obs_family = FAMILIES["gaussian"]()

    def mean(self, z: Tensor) -> Tensor:
        return self.net(torch.cat([torch.cos(z), torch.sin(z)], dim=-1))

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[Tensor]:
        with torch.no_grad():
            z = 2 * math.pi * torch.rand(n, 1, generator=generator, dtype=self.dtype, device=self.device)
            m = self.mean(z)
            x = m + torch.exp(self.log_sigma) * torch.randn(
                m.shape, generator=generator, dtype=m.dtype, device=m.device
            )
        return [z, x]

    def log_prior(self, zs: list[Tensor]) -> Tensor:
        return torch.full(zs[0].shape[:-1], -math.log(2 * math.pi), dtype=zs[0].dtype, device=zs[0].device)

    def obs_natural_params(self, zs: list[Tensor]) -> Tensor:
        m = self.mean(zs[0])
        return self.obs_family.natural_from_param(m, {"log_var": (2 * self.log_sigma).expand(m.shape[-1])})

    def _terms(self, x: Tensor, zs: list[Tensor]) -> list[Tensor]:
        m = self.mean(zs[0])
        s = torch.exp(self.log_sigma)
        ll = (-0.5 * ((x - m) / s) ** 2 - self.log_sigma - 0.5 * math.log(2 * math.pi)).sum(-1)
        return [self.log_prior(zs).expand_as(ll), ll]


# --------------------------------------------------------------------------------------------------------
# uniform latents, Bernoulli pixels
# --------------------------------------------------------------------------------------------------------
class UniformLogitBernoulli(_Base):
    """z_i ~ U(0, 1) (i = 1..K), x_j ~ Bernoulli(sigmoid(w_j . logit(z) + b_j)) (seed 004, experiment IV).

    ``logit(z)`` of a uniform z is standard logistic, so this is a logistic-latent sigmoid network.
    """

    def __init__(
        self, latent_dim: int, obs_dim: int, init_std: float = 0.1, seed: int = 0, bias_init: Tensor | None = None
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(obs_dim, latent_dim, generator=g) * init_std)
        self.bias = nn.Parameter(torch.zeros(obs_dim) if bias_init is None else torch.as_tensor(bias_init).clone())
        self.latent_dim, self.obs_dim = latent_dim, obs_dim
        self.obs_family = FAMILIES["bernoulli"]()
        self.eps = 1e-6

    def logits(self, z: Tensor) -> Tensor:
        z = z.clamp(self.eps, 1 - self.eps)
        return torch.logit(z) @ self.weight.T + self.bias

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[Tensor]:
        with torch.no_grad():
            z = torch.rand(n, self.latent_dim, generator=generator, dtype=self.dtype, device=self.device)
            p = torch.sigmoid(self.logits(z))
            x = (torch.rand(p.shape, generator=generator, dtype=p.dtype, device=p.device) < p).to(p.dtype)
        return [z, x]

    def log_prior(self, zs: list[Tensor]) -> Tensor:
        return torch.zeros(zs[0].shape[:-1], dtype=zs[0].dtype, device=zs[0].device)

    def obs_natural_params(self, zs: list[Tensor]) -> Tensor:
        return self.logits(zs[0]).unsqueeze(-1)

    def _terms(self, x: Tensor, zs: list[Tensor]) -> list[Tensor]:
        lo = self.logits(zs[0])
        ll = (x * lo - F.softplus(lo)).sum(-1)
        return [self.log_prior(zs).expand_as(ll), ll]


# --------------------------------------------------------------------------------------------------------
# population dynamics
# --------------------------------------------------------------------------------------------------------
class PopulationDynamics(_Base):
    """The seed's delayed population model (a stochastic blowfly model, Wood 2010) with noisy observations.

    Latents: the delay ``tau ~ Categorical(softmax(tau_logits))`` on {1, ..., max_tau}, and the noise series
    ``e_t ~ Gamma(1 / sigma_p^2, scale sigma_p^2)``, ``eps_t ~ Gamma(1 / sigma_d^2, scale sigma_d^2)`` (mean 1),
    t = 1..burn_in + T. The population follows

        z_{t+1} = P z_{t - tau} exp(-z_{t - tau} / N0) e_t + z_t exp(-delta eps_t)     (z_t = z_init for t <= 0)

    and the last T values are observed as ``x_t ~ LogNormal(log z_t, sigma_n^2)``. z is a deterministic,
    differentiable function of (tau, e, eps) and theta, so ``log_joint`` is exact:
    ``log p(tau) + sum log Gamma(e_t) + sum log Gamma(eps_t) + sum log LogNormal(x_t | log z_t, sigma_n^2)``.

    Parameters (all learnable, on the log scale): ``log_P``, ``log_N0``, ``log_delta``, ``log_sigma_p``,
    ``log_sigma_d``, ``log_sigma_n``, and ``tau_logits`` [max_tau]. ``sample(n)`` returns ``[tau, e, eps, x]``
    with tau as a float ``[n, 1]`` in {1..max_tau}.
    """

    PARAMS = ("P", "N0", "delta", "sigma_p", "sigma_d", "sigma_n")

    def __init__(
        self,
        T: int = 30,
        burn_in: int = 20,
        max_tau: int = 20,
        z_init: float = 1.0,
        P: float = 6.5,
        N0: float = 1.0,
        delta: float = 0.16,
        sigma_p: float = 0.3,
        sigma_d: float = 0.3,
        sigma_n: float = 0.1,
        tau_logits: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.T, self.burn_in, self.max_tau, self.z_init = int(T), int(burn_in), int(max_tau), float(z_init)
        for name, v in zip(self.PARAMS, (P, N0, delta, sigma_p, sigma_d, sigma_n), strict=True):
            setattr(self, f"log_{name}", nn.Parameter(torch.tensor(math.log(v))))
        self.tau_logits = nn.Parameter(torch.zeros(max_tau) if tau_logits is None else torch.as_tensor(tau_logits))
        self.obs_dim = self.T

    def values(self) -> dict[str, float]:
        out = {name: float(torch.exp(getattr(self, f"log_{name}").detach())) for name in self.PARAMS}
        probs = torch.softmax(self.tau_logits.detach(), 0)
        out["tau_mode"] = int(probs.argmax()) + 1
        out["tau_mean"] = float((probs * torch.arange(1, self.max_tau + 1, dtype=probs.dtype)).sum())
        return out

    def _gamma_log_prob(self, v: Tensor, log_sigma: Tensor) -> Tensor:
        s2 = torch.exp(2 * log_sigma)
        k = 1.0 / s2
        return (k - 1) * torch.log(v) - v / s2 - torch.lgamma(k) - k * torch.log(s2)

    def trajectory(self, tau: Tensor, e: Tensor, eps: Tensor) -> Tensor:
        """z_{1..burn_in+T} ``[..., burn_in + T]`` from the latents (differentiable in theta)."""
        shape = e.shape[:-1]
        tau_i = tau.reshape(-1).long()
        e, eps = e.reshape(-1, e.shape[-1]), eps.reshape(-1, eps.shape[-1])
        n, steps = e.shape
        P, N0, delta = torch.exp(self.log_P), torch.exp(self.log_N0), torch.exp(self.log_delta)
        hist = [torch.full((n,), self.z_init, dtype=e.dtype, device=e.device)] * (self.max_tau + 1)
        rows = torch.arange(n, device=e.device)
        out = []
        for t in range(steps):
            stack = torch.stack(hist[-(self.max_tau + 1) :], dim=1)  # [n, max_tau + 1], last = z_t
            lagged = stack[rows, self.max_tau - tau_i]  # z_{t - tau}
            z_new = P * lagged * torch.exp(-lagged / N0) * e[:, t] + hist[-1] * torch.exp(-delta * eps[:, t])
            z_new = z_new.clamp_min(1e-8)
            hist.append(z_new)
            out.append(z_new)
        return torch.stack(out, dim=1).reshape(*shape, steps)

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[Tensor]:
        with torch.no_grad():
            dt, dev = self.dtype, self.device
            probs = torch.softmax(self.tau_logits, 0)
            tau = torch.multinomial(probs, n, replacement=True, generator=generator).to(dt).unsqueeze(-1) + 1
            steps = self.burn_in + self.T
            sp2, sd2 = torch.exp(2 * self.log_sigma_p), torch.exp(2 * self.log_sigma_d)
            e = torch._standard_gamma(torch.full((n, steps), float(1 / sp2), dtype=dt, device=dev)) * sp2
            eps = torch._standard_gamma(torch.full((n, steps), float(1 / sd2), dtype=dt, device=dev)) * sd2
            e, eps = e.clamp_min(1e-12), eps.clamp_min(1e-12)
            z = self.trajectory(tau, e, eps)[:, self.burn_in :]
            x = torch.exp(
                torch.log(z)
                + torch.exp(self.log_sigma_n) * torch.randn(z.shape, generator=generator, dtype=dt, device=dev)
            )
        return [tau, e, eps, x]

    def kernel_features(self, x: Tensor) -> Tensor:
        """log x: AL-WS's kernel works on log counts."""
        return torch.log(x.clamp_min(1e-12))

    def _terms(self, x: Tensor, zs: list[Tensor]) -> list[Tensor]:
        tau, e, eps = zs
        batch = torch.broadcast_shapes(tau.shape[:-1], e.shape[:-1], eps.shape[:-1], x.shape[:-1])
        tau = tau.expand(*batch, 1)
        e, eps = e.expand(*batch, e.shape[-1]), eps.expand(*batch, eps.shape[-1])
        x = x.expand(*batch, x.shape[-1])
        logp = torch.log_softmax(self.tau_logits, 0)
        lp_tau = logp[tau[..., 0].long() - 1]
        lp_e = self._gamma_log_prob(e, self.log_sigma_p).sum(-1)
        lp_eps = self._gamma_log_prob(eps, self.log_sigma_d).sum(-1)
        z = self.trajectory(tau, e, eps)[..., self.burn_in :]
        sn = torch.exp(self.log_sigma_n)
        lx = torch.log(x)
        ll = (-0.5 * ((lx - torch.log(z)) / sn) ** 2 - self.log_sigma_n - 0.5 * math.log(2 * math.pi) - lx).sum(-1)
        return [lp_tau, lp_e, lp_eps, ll]
