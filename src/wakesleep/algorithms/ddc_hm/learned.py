"""Learned encoding functions (issue 16, item 4; the paper's §8 remedy): T's projections and offsets trained to
reduce the held-out sleep-sample error of the gradient regressions of eqs. 31-35.

Every gradient regression of DDC-HM regresses per-sample gradients F_s = grad_theta f_s(theta) on the encoding
functions T(z_l^s) of the sleep samples; how well a layer's T can express them is the held-out error of that
ridge regression. The targets are as large as theta (160 000 numbers per sample on the 784-200 layer of the SBN),
so they are *sketched*: for random directions v ~ N(0, I) in theta, y_s = v . F_s is the directional derivative
of f_s, one forward-mode pass for all samples (:func:`sketched_targets`). E_v (v . e)^2 = e . e, so the sketched
held-out error is an unbiased estimate of the full one. The ridge fit is differentiable in T's projection W and
offset b, which Adam moves (:class:`EncodingLearner`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from wakesleep.algorithms.ddc_hm.ridge import fit_ridge, ridge_solve, with_intercept

SMOOTHER_RIDGE = 1e-2  # relative ridge of the recognition read-out inside the amortised objective

__all__ = ["EncodingLearner", "gradient_target_terms", "random_directions", "sketched_targets"]


def gradient_target_terms(model: nn.Module, samples: list[Tensor], beta: str) -> tuple[list[Tensor], Tensor]:
    """The per-sample functions f_s whose gradients each layer's regressions of eq. 36 take as targets.

    The wake surrogate of eq. 36 is ``sum_l sum_s a^l_s f^l_s(theta) + sum_s m_s . eta_0(z_1^s)``, with a^l the
    regression weights on T(z_l) and m the data's statistics read through the same weights of the lowest latent
    layer (:mod:`wakesleep.algorithms.ddc_hm.wake`). This returns those f^l (one ``[n]`` tensor per latent
    layer, top first) and eta_0(z_1) ``[n, D_x, S]``, whose Jacobian the data term regresses on T(z_1).

    * top: f^L = log p(z_L);
    * middle layer l with eta_l = eta(z_{l+1}): ``conditional``: f^l += eta_l . S(z_l) - A(eta_l);
      ``analytic`` (eq. 32): f^l += eta_l . S(z_l) and f^{l+1} -= A(eta_l); ``sample`` (eq. 35): f^l += eta_l .
      S(z_l) and f^{l+1} -= eta_l . S(z_l);
    * observation: f^1 -= A(eta_0) (``sample``: eta_0 . S(x) of the sleep sample).
    """
    layers = list(model.layers.values())
    n_latent = len(layers) - 1
    top = layers[0]
    if hasattr(top, "natural_params"):  # eta . S(z) - A(eta): the log density up to log h(z), which theta does not move
        eta = top.natural_params(None)
        log_top = (eta * top.family.sufficient_statistics(samples[0])).sum((-2, -1)) - top.family.log_normalizer(
            eta
        ).sum(-1)
    else:  # a mixture-of-Gaussians top
        log_top = top.log_prob(samples[0])
    terms = [log_top] + [samples[0].new_zeros(samples[0].shape[0])] * (n_latent - 1)
    for i in range(1, n_latent):
        fam = layers[i].family
        eta = layers[i].natural_params(layers[i - 1].embed(samples[i - 1]))
        lin = (eta * fam.sufficient_statistics(samples[i])).sum((-2, -1))
        if beta == "conditional":
            terms[i] = terms[i] + lin - fam.log_normalizer(eta).sum(-1)
        elif beta == "analytic":
            terms[i] = terms[i] + lin
            terms[i - 1] = terms[i - 1] - fam.log_normalizer(eta).sum(-1)
        else:
            terms[i] = terms[i] + lin
            terms[i - 1] = terms[i - 1] - lin
    obs = layers[-1]
    eta0 = obs.natural_params(layers[-2].embed(samples[-2]))
    if beta == "sample":
        subtract = (eta0 * obs.family.sufficient_statistics(samples[-1])).sum((-2, -1))
    else:
        subtract = obs.family.log_normalizer(eta0).sum(-1)
    terms[-1] = terms[-1] - subtract
    return terms, eta0


class _Terms(nn.Module):
    """:func:`gradient_target_terms` as a module's forward, for :func:`torch.func.functional_call`."""

    def __init__(self, model: nn.Module, beta: str) -> None:
        super().__init__()
        self.model, self.beta = model, beta

    def forward(self, samples: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        return gradient_target_terms(self.model, samples, self.beta)


def random_directions(
    model: nn.Module, n_directions: int, generator: torch.Generator | None = None
) -> list[tuple[dict[str, Tensor], Tensor]]:
    """``n_directions`` pairs (v, u) for :func:`sketched_targets`: v standard normal over the model's trainable
    parameters (by name), u standard normal over the observation layer's natural parameters ``[D_x, S]``."""
    obs = list(model.layers.values())[-1]
    shape = (int(obs.dim), int(obs.family.n_stats))
    out = []
    for _ in range(n_directions):
        v = {
            k: torch.randn(p.shape, generator=generator, dtype=torch.float64)
            for k, p in model.named_parameters()
            if p.requires_grad
        }
        out.append((v, torch.randn(shape, generator=generator, dtype=torch.float64)))
    return out


def sketched_targets(
    model: nn.Module,
    samples: list[Tensor],
    beta: str,
    directions: list[tuple[dict[str, Tensor], Tensor]],
    data_tangents: list[Tensor] | None = None,
) -> list[Tensor]:
    """Random projections of every latent layer's regression targets: ``[n, n_directions]`` per layer, top first.

    For each direction (v, u) of :func:`random_directions`, column j of layer l is ``v_j . grad f^l_s``
    (:func:`gradient_target_terms`); the lowest latent layer has ``n_directions`` more columns for the data term,
    ``u_j . (d eta_0(z_1^s) / d theta) v_j``. Computed by forward-mode differentiation (:func:`torch.func.jvp`)
    of a float64 copy of the model. ``data_tangents``, if a list, receives the data term's tangents
    ``(d eta_0 / d theta) v_j``, ``[n, D_x, S]`` each (tests).
    """
    twin = copy.deepcopy(model).to(torch.float64)
    wrapper = _Terms(twin, beta)
    params = {f"model.{k}": p.detach() for k, p in twin.named_parameters() if p.requires_grad}
    buffers = {f"model.{k}": b for k, b in twin.named_buffers()}
    z = [s.detach().to(torch.float64) for s in samples]

    def f(theta: dict[str, Tensor]) -> tuple[list[Tensor], Tensor]:
        return torch.func.functional_call(wrapper, {**theta, **buffers}, (z,))

    columns: list[list[Tensor]] = [[] for _ in range(len(samples) - 1)]
    data_cols: list[Tensor] = []
    for v, u in directions:
        tangent = {f"model.{k}": t.to(torch.float64) for k, t in v.items()}
        _, (d_terms, d_eta0) = torch.func.jvp(f, (params,), (tangent,))
        for i, d in enumerate(d_terms):
            columns[i].append(d)
        data_cols.append((d_eta0 * u.to(torch.float64)).sum((-2, -1)))
        if data_tangents is not None:
            data_tangents.append(d_eta0)
    out = [torch.stack(c, dim=1) for c in columns]
    out[-1] = torch.cat([out[-1], torch.stack(data_cols, dim=1)], dim=1)
    return out


def recognition_smoother(inputs: Tensor, n_fit: int, ridge: float, n_free: int) -> Tensor:
    """S with ``S @ T_fit`` the closed-form read-out (eq. 7, ridge) of any targets T from the recognition inputs
    ``inputs`` ``[n, M']`` (with intercept), fitted on the first ``n_fit`` rows and evaluated at the others:
    ``[n - n_fit, n_fit]``."""
    h_fit, h_out = inputs[:n_fit], inputs[n_fit:]
    return h_out @ ridge_solve(h_fit.T @ h_fit / n_fit, h_fit.T / n_fit, ridge, n_free)


def _heldout_error(
    feats: Tensor, y: Tensor, n_fit: int, ridge: float, n_free: int, smoother: Tensor | None = None
) -> Tensor:
    """Fraction of the held-out variance of ``y`` left by a ridge regression on ``feats`` fitted to the first
    ``n_fit`` rows (the penalty relative to the mean penalised feature variance; the last ``n_free`` columns,
    the exact statistics and the constant, unpenalised), differentiable in ``feats``. With ``smoother``
    (:func:`recognition_smoother`) the held-out rows' features are not T(z) but the recognition's read-out of
    them from x, ``smoother @ feats[:n_fit]``: the error of the amortised gradient alpha . r(x) of eq. 36."""
    f_fit = feats[:n_fit]
    f_out = feats[n_fit:] if smoother is None else smoother @ f_fit
    y_fit, y_out = y[:n_fit], y[n_fit:]
    coef = fit_ridge(f_fit, y_fit, ridge, n_free)  # the penalty of the sleep phase's regressions (ridge.py)
    resid = y_out - f_out @ coef
    total = (y_out - y_out.mean(0)).pow(2).sum().clamp_min(torch.finfo(y.dtype).tiny)
    return resid.pow(2).sum() / total


class EncodingLearner:
    """Adam on the projections W and offsets b of each latent layer's encoding functions (``learn_features``).

    Each sleep phase: the regression targets of :func:`sketched_targets` at the phase's first ``n_samples``
    sleep samples (fresh directions every phase), then ``steps`` Adam steps on the sum over layers of the
    held-out error of :func:`_heldout_error` (fit on the first 80 % of those samples, error on the rest). Linear
    encodings (``encoding: linear``) have nothing to learn. The Adam state is the algorithm's (checkpoints).

    Parameters
    ----------
    encoders : list of EncodingFunctions
        The latent layers' encoding functions, top first.
    encode_stats : callable
        ``(i, z) -> S_l(z)`` or None: the exact statistics appended to layer i's encodings.
    steps, lr, n_directions, n_samples : int, float, int, int
        Adam steps per sleep phase, its learning rate, sketch directions and sleep samples used.
    phases : int
        Learn in the first this many sleep phases only (0: in every phase).
    objective : {"regression", "amortised"}
        ``regression``: the held-out error of the gradient regressions on T(z) (eqs. 31-35); ``amortised``: of
        the gradient the wake phase uses, alpha . r(x), with r(x) the closed-form read-out of T from the
        recognition's inputs (fitted on the same 80 %, relative ridge :data:`SMOOTHER_RIDGE`), so that T is also
        pushed towards functions of z whose posterior expectations x can tell.
    recognition_inputs : callable, optional
        ``x -> (h(x) with intercept, number of unpenalised columns)`` (``amortised``).
    ridge : float or list of float
        Relative ridge (``grad_ridge``), or one per latent layer (top first; ``grad_ridge: auto`` sets its
        choice here); ``free_stats`` leaves the exact statistics unpenalised.
    """

    def __init__(
        self,
        encoders: nn.ModuleList,
        encode_stats: Callable[[int, Tensor], Tensor | None],
        steps: int,
        lr: float,
        n_directions: int,
        n_samples: int,
        ridge: float | list[float],
        free_stats: bool,
        phases: int = 0,
        objective: str = "regression",
        recognition_inputs: Callable[[Tensor], tuple[Tensor, int]] | None = None,
    ) -> None:
        if objective not in ("regression", "amortised"):
            raise ValueError(f"feature_objective must be regression or amortised, got {objective!r}")
        if objective == "amortised" and recognition_inputs is None:
            raise ValueError("feature_objective 'amortised' needs the closed-form recognition (ddc or direct)")
        self.objective, self.recognition_inputs = objective, recognition_inputs
        self.encoders, self.encode_stats = encoders, encode_stats
        self.steps, self.lr, self.n_directions, self.n_samples = steps, lr, n_directions, n_samples
        self.ridge, self.free_stats, self.phases = ridge, free_stats, phases
        self.optimizer: torch.optim.Adam | None = None
        self.reduce: Callable[[Tensor], Tensor] | None = None

    def phases_done(self) -> int:
        """Sleep phases learnt so far (from Adam's step count, so that it resumes with the checkpoint)."""
        if self.optimizer is None or not self.optimizer.state:
            return 0
        step = next(iter(self.optimizer.state.values()))["step"]
        return int(step) // self.steps

    def parameters(self) -> list[Tensor]:
        """The learnt tensors: W and b of every layer with random encoding functions (buffers of the encoders)."""
        return [t for e in self.encoders if e.n_random > 0 for t in (e.weight, e.bias)]

    def _features(self, i: int, z: Tensor, stats: Tensor | None) -> Tensor:
        """T(z) of layer i with its constant, in float64 for the solves (differentiable in W and b)."""
        return with_intercept(self.encoders[i](z, stats).to(torch.float64))

    def heldout_errors(
        self,
        model: nn.Module,
        samples: list[Tensor],
        beta: str,
        embed: list[Tensor],
        directions: list[tuple[dict[str, Tensor], Tensor]],
    ) -> dict[int, Tensor]:
        """Held-out error of each learnable latent layer's gradient regressions (index top first) on ``samples``
        (the first 80 % fit, the rest measure), for the sketch ``directions``; differentiable in W and b."""
        return self._objective(model, samples, beta, embed, directions)()

    def _objective(
        self,
        model: nn.Module,
        samples: list[Tensor],
        beta: str,
        embed: list[Tensor],
        directions: list[tuple[dict[str, Tensor], Tensor]],
    ) -> Callable[[], dict[int, Tensor]]:
        """The held-out errors as a function of the current W and b: the sketched targets, exact statistics and
        (amortised) read-out, which do not depend on them, are computed once."""
        with torch.no_grad():
            targets = sketched_targets(model, samples, beta, directions)
            stats = [self.encode_stats(i, samples[i]) for i in range(len(self.encoders))]
            n_fit = max(1, int(0.8 * int(samples[0].shape[0])))
            smoother = None
            if self.objective == "amortised":
                h, n_free = self.recognition_inputs(samples[-1])
                smoother = recognition_smoother(h.to(torch.float64), n_fit, SMOOTHER_RIDGE, n_free)

        def errors() -> dict[int, Tensor]:
            out = {}
            for i, enc in enumerate(self.encoders):
                if enc.n_random == 0:
                    continue
                free = 1 + (enc.n_stats if self.free_stats else 0)
                feats = self._features(i, embed[i], stats[i])
                ridge = self.ridge[i] if isinstance(self.ridge, list) else self.ridge
                out[i] = _heldout_error(feats, targets[i], n_fit, ridge, free, smoother)
            return out

        return errors

    def step(self, model: nn.Module, samples: list[Tensor], beta: str, embed: list[Tensor]) -> dict[str, float]:
        """One phase of learning on ``samples`` (``[z_L, ..., x]``; ``embed``: the latents' embedded values).

        Returns the held-out error per latent layer before and after the steps (``feature_error_<l>_start`` and
        ``feature_error_<l>``, l = 1 at the bottom), on this phase's samples and directions.
        """
        params = self.parameters()
        if not params or (self.phases and self.phases_done() >= self.phases):
            return {}
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(params, lr=self.lr)
        n = min(self.n_samples, int(samples[0].shape[0]))
        directions = random_directions(model, self.n_directions)
        errors = self._objective(model, [s[:n] for s in samples], beta, [e[:n] for e in embed], directions)
        ones = torch.ones((), dtype=torch.float64)
        ranks = self.reduce(ones.clone()) if self.reduce is not None else ones
        info: dict[str, float] = {}
        n_latent = len(self.encoders)
        with torch.enable_grad():
            for t in params:
                t.requires_grad_(True)
            try:
                for step in range(self.steps + 1):
                    errs = errors()
                    if step == 0 or step == self.steps:
                        suffix = "_start" if step == 0 else ""
                        for i, e in errs.items():
                            info[f"feature_error_{n_latent - i}{suffix}"] = float(e.detach())
                    if step == self.steps:
                        break
                    self.optimizer.zero_grad()
                    torch.stack(list(errs.values())).sum().backward()
                    if self.reduce is not None:
                        for p in params:
                            if p.grad is not None:
                                p.grad = self.reduce(p.grad) / ranks.to(p.dtype)
                    self.optimizer.step()
            finally:
                for t in params:
                    t.requires_grad_(False)
                    t.grad = None
        return info
