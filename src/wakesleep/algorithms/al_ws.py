"""Amortised learning by wake-sleep (AL-WS; Wenliang, Moskovitz, Kanagawa & Sahani, seed 004).

The identity behind it: ``E_{p(z|x)}[grad_theta log p_theta(z, x)] = grad_theta log p_theta(x)``. A least-squares
regression of ``l_theta(z, x) = log p_theta(z, x)`` on x over sleep samples ``(z_n, x_n) ~ p_theta`` estimates the
conditional expectation; for *kernel ridge* regression the fit is linear in the targets,

    f_theta(x) = sum_n alpha_n(x) l_theta(z_n, x_n),      alpha(x) = (K + N lam I)^{-1} k(X_sleep, x),

so with alpha held fixed, autodiff of ``f_theta`` at the data gives ``sum_n alpha_n(x) grad l_theta(z_n, x_n)``:
the kernel regression of the per-sample gradients, a consistent estimate of ``grad log p_theta(x)``, without
ever forming a per-sample gradient. (This is DDC-HM's weighted-sum-over-sleep-samples trick with the
posterior short-circuited: see ``ddc_hm.py``.) The sleep samples are drawn without gradient and held fixed;
theta enters only through ``l_theta``.

Per wake step on a minibatch of B points the cost is one ``N x B`` kernel block, one Cholesky solve (or an
``M x M`` one with random features / Nystrom) and **one** backward pass through ``log_joint`` at the N sleep
samples with weights ``alpha_bar = mean_b alpha(x_b)``.

Exponential-family variant (``variant="expfam"``; the "Amortised Learning" slides): when
``log p(x | z) = eta_theta(z) . S(x) + log h(x) - A(eta_theta(z))``,

    E_{p(z|x)}[l_theta(z, x)] = E[eta_theta(z) | x] . S(x) - E[A(eta_theta(z)) - log p_theta(z) | x] + log h(x),

so only functions of z are regressed on x and ``S(x)`` is evaluated at the wake data instead of at the
sleep samples' x_n (no noise from x_n in the targets). Needs a model whose observation layer is an
exponential family: a ``HierarchicalModel``, or any model with ``obs_family``, ``obs_natural_params(zs)``
and ``log_prior(zs)``.

Hyperparameters: the Gaussian-kernel bandwidth and the ridge are chosen on held-out sleep samples
(``select_hyperparameters``) at every ``select_every``-th sleep phase, starting from the median heuristic.
The selection target is, by default, the quantity whose regression *is* the gradient estimate: directional
derivatives ``v_k . grad_theta l_theta(z_n, x_n)`` along a few random directions v_k in parameter space
(computed by forward-over-reverse autodiff, no per-sample gradients); ``select_target="logjoint"`` regresses
``l_theta`` itself instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from wakesleep.algorithms.base import Algorithm, WakeGradient
from wakesleep.algorithms.krr import (
    BANDWIDTH_FACTORS,
    KERNELS,
    RIDGE_GRID,
    make_regressor,
    median_bandwidth,
    select_hyperparameters,
)
from wakesleep.errors import NotReadyError, WakesleepError
from wakesleep.schema import SEED_MAX, option

__all__ = ["AmortisedLearningWakeSleep"]

INPUT_MAPS = ("auto", "identity", "random")


def _model_dtype_device(model: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    dt = getattr(model, "dtype", None)
    dev = getattr(model, "device", None)
    if dt is None or dev is None:
        ref = next(iter(model.parameters()), None)
        if ref is None:
            ref = next(iter(model.buffers()))
        dt, dev = dt or ref.dtype, dev or ref.device
    return dt, dev


class _InputMap:
    """x -> u, the input of the Gaussian kernel: standardisation (fitted on each sleep phase's x_n) followed by
    the identity, a fixed random tanh layer, or the model's own ``kernel_features``."""

    def __init__(self, kind: str | Callable, standardize: bool, n_features: int, scale: float, seed: int) -> None:
        self.kind, self.standardize, self.n_features, self.scale = kind, standardize, int(n_features), float(scale)
        self.gen = torch.Generator().manual_seed(int(seed) + 7919)
        self.w: Tensor | None = None

    def fit(self, x: Tensor, model: torch.nn.Module) -> None:
        self.pre = self._pre(model)
        v = self.pre(x)
        if self.standardize:
            self.centre = v.mean(0)
            s = v.std(0)
            self.scl = torch.where(s > 1e-8 * s.max().clamp_min(1e-300), s, torch.ones_like(s))
        if self.kind == "random" and self.w is None:
            d = v.shape[1]
            self.w = (
                torch.randn(d, self.n_features, generator=self.gen, dtype=torch.float64) * self.scale / math.sqrt(d)
            ).to(dtype=x.dtype, device=x.device)
            self.b = torch.randn(self.n_features, generator=self.gen, dtype=torch.float64).to(
                dtype=x.dtype, device=x.device
            )

    def _pre(self, model: torch.nn.Module) -> Callable[[Tensor], Tensor]:
        if callable(self.kind):
            return self.kind
        if self.kind == "auto" and hasattr(model, "kernel_features"):
            return model.kernel_features
        return lambda x: x.reshape(x.shape[0], -1)

    def __call__(self, x: Tensor) -> Tensor:
        v = self.pre(x)
        if self.standardize:
            v = (v - self.centre) / self.scl
        if self.kind == "random":
            v = torch.tanh(v @ self.w + self.b)
        return v


class AmortisedLearningWakeSleep(Algorithm):
    """AL-WS: kernel ridge regression of the log joint over sleep samples, autodiff at the wake data.

    Works with **any** model with ``sample(n) -> [z_L, ..., z_1, x]`` and ``log_joint(x, zs)`` (latents may be
    discrete, on a circle, whole time series, ...): no recognition model, no posterior.

    Parameters
    ----------
    model : torch.nn.Module
        The generative model.
    sleep_samples : int
        N, sleep samples per sleep phase (the regression's training set).
    kernel : {"exact", "rff", "nystrom"}
        Exact Gaussian-kernel ridge regression (Cholesky of the N x N kernel), random Fourier features or
        Nystrom with ``n_components`` features/landmarks.
    n_components : int
        M for ``rff`` / ``nystrom``.
    bandwidth : "auto" or float
        Gaussian-kernel bandwidth on the (standardised) kernel input; ``auto`` picks one of
        ``bandwidth_factors`` times the median heuristic by held-out error.
    ridge : "auto" or float
        lam of ``(K + N lam I)`` (scikit-learn's ``alpha = N lam``); ``auto`` picks from ``ridge_grid``.
    variant : {"direct", "expfam"}
        ``direct`` regresses ``log p(z, x)``; ``expfam`` regresses the observation layer's natural parameters and
        ``A(eta) - log p(z)`` and evaluates ``S(x)`` at the wake data (module docstring).
    input_map : {"auto", "identity", "random"} or callable
        Kernel input: ``identity`` (x itself), ``random`` (a fixed random tanh layer of ``input_features`` units on
        standardised x), ``auto`` (the model's ``kernel_features(x)`` if it has one, else identity), or a callable.
    input_features, input_scale : int, float
        Width and weight scale of the ``random`` input map.
    standardize : bool
        Standardise the kernel input per coordinate with the sleep samples' mean and standard deviation.
    intercept : bool
        Add an unpenalised constant to the regression (weights then sum to one).
    select_every : int
        Re-select bandwidth and ridge every this many sleep phases (in between they are kept).
    select_target : {"grad", "logjoint"}
        Held-out criterion: regression of random directional derivatives of the log joint (default), or of
        the log joint itself.
    select_directions : "blocks" or int
        Directions of the directional derivatives for ``select_target="grad"``: one random direction inside
        each parameter tensor (``blocks``: every block weighs equally in the criterion), or this many random
        directions in the whole parameter space.
    val_fraction : float
        Fraction of sleep samples held out for the selection (the final fit uses all N).
    select_samples : int
        The selection uses at most this many of the sleep samples (it costs a factorisation per grid point);
        default 1000 for ``exact`` (N_sel^3 per grid point), all N for ``rff``/``nystrom`` (N M^2).
    bandwidth_factors, ridge_grid : list of float
        The selection grid.
    seed : int
        Seed of the random features, landmarks and selection directions (sleep samples use the global RNG,
        which the Trainer seeds).
    """

    name = "al_ws"

    @dataclass(frozen=True)
    class Options:
        """The options of ``al_ws``; documented in the class's ``Parameters``."""

        sleep_samples: int = option(1000, minimum=4, doc="N, sleep samples per sleep phase (the regression's data)")
        kernel: str = option(
            "exact", choices=KERNELS, doc="exact Gaussian-kernel ridge, random Fourier features or Nystrom"
        )
        n_components: int = option(500, minimum=1, doc="M, features or landmarks of rff / nystrom")
        bandwidth: float | Literal["auto"] = option(
            "auto",
            minimum=0.0,
            exclusive_minimum=True,
            doc="Gaussian-kernel bandwidth (auto: chosen on held-out samples)",
        )
        ridge: float | Literal["auto"] = option(
            "auto", minimum=0.0, exclusive_minimum=True, doc="lam of (K + N lam I) (auto: chosen on held-out samples)"
        )
        variant: Literal["direct", "expfam"] = option(
            "direct", doc="regress log p(z, x) (direct) or the observation layer's natural parameters (expfam)"
        )
        input_map: Any = option(
            "auto", doc="kernel input: auto, identity, random (a fixed tanh layer) or a callable (Python API)"
        )
        input_features: int = option(200, minimum=1, doc="width of the random input map")
        input_scale: float = option(1.0, minimum=0.0, doc="weight scale of the random input map")
        standardize: bool = option(True, doc="standardise the kernel input with the sleep samples' moments")
        intercept: bool = option(False, doc="an unpenalised constant in the regression (weights sum to one)")
        select_every: int = option(1, minimum=1, doc="re-select bandwidth and ridge every this many sleep phases")
        select_target: Literal["grad", "logjoint"] = option(
            "grad", doc="held-out criterion: random directional derivatives of the log joint, or the log joint"
        )
        select_directions: int | Literal["blocks"] = option(
            "blocks", minimum=1, doc="directions of select_target grad: one per parameter tensor, or this many"
        )
        val_fraction: float = option(
            0.2, minimum=0.0, exclusive_minimum=True, doc="fraction of sleep samples held out, in (0, 0.9)"
        )
        select_samples: int | None = option(
            None, minimum=1, doc="sleep samples used by the selection (null: 1000 for exact, else all)"
        )
        bandwidth_factors: list[float] | None = option(
            None, minimum=0.0, exclusive_minimum=True, doc="selection grid, times the median heuristic"
        )
        ridge_grid: list[float] | None = option(None, minimum=0.0, doc="selection grid of the ridge")
        seed: int = option(0, minimum=0, maximum=SEED_MAX, doc="seed of random features, landmarks, directions")

        def validate(self, prefix: str) -> None:
            if not callable(self.input_map) and self.input_map not in INPUT_MAPS:
                raise WakesleepError(
                    f"{prefix}.input_map must be one of {', '.join(INPUT_MAPS)} or a callable, got {self.input_map!r}"
                )
            if not self.val_fraction < 0.9:
                raise WakesleepError(f"{prefix}.val_fraction must be in (0, 0.9), got {self.val_fraction!r}")

    def __init__(self, model: torch.nn.Module, **hyperparameters: Any) -> None:
        super().__init__(model, **hyperparameters)
        o = self.options
        if not callable(getattr(model, "sample", None)) or not callable(getattr(model, "log_joint", None)):
            raise WakesleepError("al_ws: the model needs sample(n) and log_joint(x, zs)")
        self.sleep_samples, self.kernel, self.n_components = o.sleep_samples, o.kernel, o.n_components
        self.bandwidth, self.ridge, self.variant = o.bandwidth, o.ridge, o.variant
        self.standardize, self.intercept = o.standardize, o.intercept
        self.select_every, self.select_target = o.select_every, o.select_target
        self.select_directions, self.val_fraction = o.select_directions, o.val_fraction
        select_samples = o.select_samples
        if select_samples is None:
            select_samples = 1000 if o.kernel == "exact" else self.sleep_samples
        self.select_samples = max(int(select_samples), 10)
        self.bandwidth_factors = tuple(float(f) for f in (o.bandwidth_factors or BANDWIDTH_FACTORS))
        self.ridge_grid = tuple(float(r) for r in (o.ridge_grid or RIDGE_GRID))
        self.seed = o.seed
        self.gen = torch.Generator().manual_seed(self.seed)
        self.input = _InputMap(o.input_map, self.standardize, o.input_features, o.input_scale, self.seed)
        if o.variant == "expfam":
            with torch.random.fork_rng(devices=[]):
                self._obs_parts(self._sample_nograd(2)[:-1])  # fail early if not expressible
        self._n_sleep = 0
        self._hyper: tuple[float, float] | None = None
        self._samples: list[Tensor] | None = None
        self.last_selection = None

    # --- model plumbing -------------------------------------------------------------------------------
    def _sample_nograd(self, n: int) -> list[Tensor]:
        with torch.no_grad():
            out = self.model.sample(n)
        return [t.detach() for t in out]

    def _obs_parts(self, zs: list[Tensor]):
        """``(family, eta [N, Dx, S], log p(z) [N])`` of the observation layer, for ``variant="expfam"``."""
        m = self.model
        if hasattr(m, "obs_family") and hasattr(m, "obs_natural_params") and hasattr(m, "log_prior"):
            return m.obs_family, m.obs_natural_params(zs), m.log_prior(zs)
        layers = list(getattr(m, "layers", {}).values()) if hasattr(m, "layers") else []
        if layers and getattr(layers[-1], "family", None) is not None and hasattr(layers[-1], "natural_params"):
            prior = layers[0].log_prob(zs[0])
            for i in range(1, len(layers) - 1):
                prior = prior + layers[i].log_prob(zs[i], layers[i - 1].embed(zs[i - 1]))
            eta = layers[-1].natural_params(layers[-2].embed(zs[-1]))
            return layers[-1].family, eta, prior
        raise WakesleepError(
            "al_ws: variant 'expfam' needs an exponential-family observation layer (a HierarchicalModel, or a model "
            "with obs_family, obs_natural_params(zs) and log_prior(zs))"
        )

    # --- selection targets ----------------------------------------------------------------------------
    def _directional_derivatives(self, x: Tensor, zs: list[Tensor]) -> Tensor:
        """``[N, K]``: ``v_k . grad_theta l_theta(z_n, x_n)`` for K random directions (forward-over-reverse:
        the gradient of ``u . l`` w.r.t. theta, dotted with v_k, differentiated w.r.t. the dummy ``u``)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise WakesleepError("al_ws: the model has no learnable parameters")
        with torch.enable_grad():
            lj = self.model.log_joint(x, zs)
            u = torch.zeros_like(lj, requires_grad=True)
            grads = torch.autograd.grad(lj, params, grad_outputs=u, create_graph=True, allow_unused=True)
            pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
            if self.select_directions == "blocks":  # one random direction inside each parameter tensor
                blocks = [[i] for i in range(len(pairs))]
            else:  # random directions in the whole parameter space
                blocks = [list(range(len(pairs)))] * int(self.select_directions)
            cols = []
            for block in blocks:
                vs = {
                    i: torch.randn(pairs[i][0].shape, generator=self.gen, dtype=torch.float64).to(pairs[i][0])
                    for i in block
                }
                s = sum((pairs[i][1] * v).sum() for i, v in vs.items())
                (col,) = torch.autograd.grad(s, u, retain_graph=True)
                cols.append(col.detach())
        return torch.stack(cols, dim=1)

    def _selection_targets(self, x: Tensor, zs: list[Tensor]) -> Tensor:
        if self.select_target == "grad":
            try:
                y = self._directional_derivatives(x, zs)
            except RuntimeError:  # an op without double backward: fall back to the log joint
                y = None
            if y is not None and torch.isfinite(y).all() and float(y.std()) > 0:
                return y
        with torch.no_grad():
            return self.model.log_joint(x, zs).reshape(-1, 1)

    # --- sleep ----------------------------------------------------------------------------------------
    def sleep(self) -> dict[str, float]:
        """Draw N sleep samples, (re)select bandwidth and ridge if due, fit the kernel regression."""
        t0 = time.perf_counter()
        samples = self._sample_nograd(self.sleep_samples)
        zs, x = samples[:-1], samples[-1]
        self.input.fit(x, self.model)
        u = self.input(x)
        if not torch.isfinite(u).all():
            raise WakesleepError("al_ws: sleep samples gave a non-finite kernel input (check the model's samples)")
        info: dict[str, float] = {}
        auto = self.bandwidth == "auto" or self.ridge == "auto"
        if self._hyper is None or (auto and self._n_sleep % self.select_every == 0):
            if auto:
                ns = min(self.select_samples, x.shape[0])
                y = self._selection_targets(x[:ns], [z[:ns] for z in zs])
                y = (y - y.mean(0)) / y.std(0).clamp_min(1e-300)
                if self.bandwidth == "auto":
                    h0 = median_bandwidth(u, generator=self.gen)
                    bws = [h0 * f for f in self.bandwidth_factors]
                else:
                    bws = [float(self.bandwidth)]
                ridges = self.ridge_grid if self.ridge == "auto" else (float(self.ridge),)
                sel = select_hyperparameters(
                    u[:ns], y, self.kernel, bws, ridges, self.val_fraction, self.n_components, self.gen
                )
                self._hyper = (sel.bandwidth, sel.ridge)
                self.last_selection = sel
                info["heldout_rel_error"] = sel.rel_error
            else:
                self._hyper = (float(self.bandwidth), float(self.ridge))
        bw, lam = self._hyper
        self.regressor = make_regressor(self.kernel, bw, lam, self.n_components, self.gen).fit(u)
        self._samples = samples
        self._n_sleep += 1
        info.update({"bandwidth": bw, "ridge": lam, "seconds": time.perf_counter() - t0})
        return info

    # --- wake -----------------------------------------------------------------------------------------
    def weights(self, x: Tensor) -> Tensor:
        """``alpha(x)``: ``[B, Dx] -> [N, B]``, the regression weights of the sleep samples at each x."""
        if self._samples is None:
            raise NotReadyError("al_ws: call sleep() before the wake phase (wake_gradient needs a fitted sleep phase)")
        dt, dev = _model_dtype_device(self.model)
        x = x.to(dtype=dt, device=dev)
        w = self.regressor.weights(self.input(x))
        if self.intercept:
            w = w + (1.0 - w.sum(0, keepdim=True)) / w.shape[0]
        return w

    def surrogate(self, x: Tensor) -> Tensor:
        """Scalar whose theta-gradient is the AL-WS estimate of ``grad (1/B) sum_b log p_theta(x_b)``."""
        if self._samples is None:
            raise NotReadyError("al_ws: call sleep() before the wake phase (wake_gradient needs a fitted sleep phase)")
        if x.ndim < 2 or x.shape[1:] != self._samples[-1].shape[1:]:
            raise WakesleepError(
                f"al_ws: x must be [batch, {', '.join(map(str, self._samples[-1].shape[1:]))}], got {tuple(x.shape)}"
            )
        w = self.weights(x).detach()  # [N, B]
        zs, xs = self._samples[:-1], self._samples[-1]
        a = w.mean(1)
        if self.variant == "direct":
            return (a * self.model.log_joint(xs, zs)).sum()
        fam, eta, prior = self._obs_parts(zs)
        xw = x.to(dtype=eta.dtype, device=eta.device)
        sx = fam.sufficient_statistics(xw).reshape(x.shape[0], -1)  # [B, Dx*S]
        m = w @ sx / x.shape[0]  # [N, Dx*S]
        return (m * eta.reshape(eta.shape[0], -1)).sum() - (a * (fam.log_normalizer(eta).sum(-1) - prior)).sum()

    def wake_gradient(self, x: Tensor) -> WakeGradient:
        """Estimate of ``grad_theta (1/B) sum_b log p_theta(x_b)``, keyed by parameter name."""
        with torch.enable_grad():
            return self._grad_dict(self.surrogate(x))

    # --- checkpoints: the selected hyperparameters and the generator, once a sleep phase has run -------
    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._hyper is not None:
            destination[prefix + "hyper"] = torch.tensor(self._hyper, dtype=torch.float64)
            destination[prefix + "n_sleep"] = torch.tensor(self._n_sleep, dtype=torch.int64)
            # random components and validation splits continue on resume
            destination[prefix + "generator"] = self.gen.get_state()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        own = {
            k[len(prefix) :]: state_dict.pop(k)
            for k in list(state_dict)
            if k.startswith(prefix) and k[len(prefix) :] in ("hyper", "n_sleep", "generator")
        }
        if "hyper" in own:
            self._hyper = tuple(float(v) for v in own["hyper"])
            self._n_sleep = int(own.get("n_sleep", torch.tensor(1)))
        if "generator" in own:
            self.gen.set_state(own["generator"].to(dtype=torch.uint8, device="cpu"))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
