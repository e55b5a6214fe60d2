"""DDC-HM's sleep phase: ancestral samples, the recognition fit (eq. 7) and the gradient regressions (eqs. 31-35).

Every regression on the encoding functions T(z_l) of the sleep samples is a weighted sum over the samples with
weights ``w = T_l C_l r``, ``C_l = (T_l^T T_l / n + Lambda)^{-1} / n`` (eq. 5 with ridge); the sleep phase keeps
``C_l`` (K x K) and the features ``T_l``, and the wake phase (:mod:`wakesleep.algorithms.ddc_hm.wake`) forms
``w`` only for the batch-averaged ``r(x)``.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import Tensor

from wakesleep.algorithms.ddc_hm.learned import random_directions, sketched_targets
from wakesleep.algorithms.ddc_hm.ridge import cholesky_factor, select_ridge, with_intercept
from wakesleep.errors import WakesleepError
from wakesleep.ops import full_precision, matmul

__all__ = ["SleepPhase"]


class _Clock:
    """Seconds since the last lap (synchronising a CUDA device first, so GPU work is counted where it runs)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.t = time.perf_counter()

    def lap(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        t, self.t = self.t, time.perf_counter()
        return self.t - t


class SleepPhase:
    """The sleep-phase methods of :class:`~wakesleep.algorithms.ddc_hm.DDCHelmholtzMachine` (a mixin: it reads
    the algorithm's options, encoders and recognizer, and sets ``_samples``, ``_etas``, ``_feats``, ``_inv``
    and ``_obs_moments`` for the wake phase)."""

    def _encode(self, i: int, z: Tensor) -> Tensor:
        layer = list(self.model.layers.values())[i]
        enc = self.encoders[i]
        stats = self._layer_stats[i](z) if enc.stats_standardize is not None else None
        return enc(layer.embed(z), stats)

    def _sum(self, t: Tensor) -> Tensor:
        """``t`` summed over data-parallel ranks (itself without a reducer)."""
        return t if self._reduce is None else self._reduce(t)

    def _draw_sleep_samples(self, model: torch.nn.Module) -> tuple[list[Tensor], list[Tensor | None]]:
        """Ancestral samples ``[z_L, ..., z_1, x]`` from ``model`` and the natural parameters eta_l(z_{l+1}) that
        drew them.

        The natural parameters keep their autograd graph: while theta is unchanged (one wake phase per sleep
        phase, Algorithm 1), or always with ``wake_theta="sleep"``, the wake surrogate reuses them instead of
        re-evaluating every link at the N sleep samples, which is a third of the wake phase's work on a
        sigmoid belief network.
        """
        layers = list(model.layers.values())
        with torch.no_grad():
            samples = [layers[0].sample(self.sleep_samples)]
        etas: list[Tensor | None] = [None]
        for layer, parent in zip(layers[1:], layers[:-1], strict=True):
            with torch.enable_grad():
                eta = layer.natural_params(parent.embed(samples[-1]))
            with torch.no_grad():
                samples.append(layer.family.sample(eta.detach()))
            etas.append(eta if eta.requires_grad else None)
        return samples, etas

    def _fresh_recognition_batch(self, n: int) -> tuple[Tensor, list[Tensor]]:
        """``n`` new ancestral samples of the current model: x and the targets T(z_l), bottom-up
        (``recognition_fresh``; encoded with this phase's standardisation of T)."""
        with torch.no_grad():
            samples = self.model.sample(n)
            return samples[-1], [self._encode(i, samples[i]) for i in range(len(samples) - 1)][::-1]

    def _links_model(self) -> torch.nn.Module:
        """The model whose parameters the wake phase's sleep-sample terms are evaluated at."""
        return self.sleep_model if self.wake_theta == "sleep" and self.sleep_model is not None else self.model

    def _snapshot(self) -> None:
        """Copy theta into ``sleep_model`` (``wake_theta="sleep"``)."""
        if self.sleep_model is None:
            self.sleep_model = copy.deepcopy(self.model)
        else:
            with torch.no_grad():
                for p_copy, p in zip(self.sleep_model.parameters(), self.model.parameters(), strict=True):
                    p_copy.copy_(p)
                    p_copy.requires_grad_(p.requires_grad)

    def _param_versions(self) -> tuple:
        return tuple((id(p), p.data_ptr(), p._version) for p in self.model.parameters())

    def _theta_unchanged(self) -> bool:
        """Whether theta is the sleep phase's: same tensors, versions *and* values (fused optimisers, e.g.
        ``torch.optim.Adam(fused=True)``, update parameters in place without bumping their version counters)."""
        if self._etas_version != self._param_versions():
            return False
        return all(torch.equal(p, q) for p, q in zip(self.model.parameters(), self._etas_theta, strict=True))

    def sleep(self, samples: list[Tensor] | None = None) -> dict[str, float]:
        """Sample from the model, fit the recognition (eq. 7) and prepare the gradient regressions (eqs. 31-35).

        Parameters
        ----------
        samples : list of Tensor, optional
            Ancestral samples ``[z_L, ..., z_1, x]`` (each ``[N, D_l]``) to use instead of drawing N new ones,
            e.g. to replay a fixed set in a test or to share one draw between algorithms.

        Returns
        -------
        dict
            The recognition fit's diagnostics (R^2 per layer, chosen ridge, ...) and the seconds spent in each
            part: ``seconds_sample``, ``seconds_encode``, ``seconds_recognition``, ``seconds_gradient_systems``.
        """
        clock = _Clock(self.model.device)
        if self.wake_theta == "sleep":
            self._snapshot()
        if samples is None:
            samples, etas = self._draw_sleep_samples(self._links_model())
        else:
            if len(samples) != len(self.model.layers) or len({int(s.shape[0]) for s in samples}) != 1:
                raise WakesleepError(
                    f"ddc_hm.sleep: samples must be {len(self.model.layers)} tensors [N, D_l] with one N, top first"
                )
            samples = [s.to(device=self.model.device, dtype=self.model.dtype) for s in samples]
            etas = [None] * len(samples)
            if self.wake_theta == "sleep":  # evaluate the links once, at the theta of this phase
                links = list(self._links_model().layers.values())
                with torch.enable_grad():
                    for i in range(1, len(links)):
                        eta = links[i].natural_params(links[i - 1].embed(samples[i - 1]))
                        etas[i] = eta if eta.requires_grad else None
        seconds = {"seconds_sample": clock.lap()}
        with full_precision(self.model.device):  # mixed precision (train.precision) stops at the regressions
            return self._fit_regressions(samples, etas, clock, seconds)

    def _fit_regressions(
        self, samples: list[Tensor], etas: list[Tensor | None], clock: _Clock, seconds: dict[str, float]
    ) -> dict[str, float]:
        """The part of :meth:`sleep` after sampling: recognition fit (eq. 7) and the gradient systems."""
        with torch.no_grad():
            layers = list(self.model.layers.values())
            n_latent = len(layers) - 1
            for i in range(n_latent):
                enc = self.encoders[i]
                stats = self._layer_stats[i](samples[i]) if enc.stats_standardize is not None else None
                enc.fit_standardization(layers[i].embed(samples[i]), stats, self._reduce)
        info: dict[str, float] = {}
        if self.feature_learner is not None:  # learned encoding functions: before T is used anywhere this phase
            embed = [layers[i].embed(samples[i]) for i in range(n_latent)]
            info = self.feature_learner.step(self.model, samples, self.beta, embed)
            seconds["seconds_features"] = clock.lap()
        with torch.no_grad():
            feats = [with_intercept(self._encode(i, samples[i])) for i in range(n_latent)]
            targets = [f[:, :-1] for f in feats][::-1]
        seconds["seconds_encode"] = clock.lap()
        if self.recognition_fresh:
            info = {**info, **self.recognizer.fit(samples[-1], targets, draw=self._fresh_recognition_batch)}
        else:
            info = {**info, **self.recognizer.fit(samples[-1], targets)}
        seconds["seconds_recognition"] = clock.lap()
        with torch.no_grad():
            n = float(self._sum(feats[0].new_tensor([samples[0].shape[0]])))
            self._samples = samples
            self._etas, self._etas_version = etas, self._param_versions()
            self._etas_theta = [p.detach().clone() for p in self.model.parameters()]
            self._feats = feats
            # the weights of every regression on T(z_l) are w = T_l C_l r with C_l = (T_l^T T_l / n + Lambda)^{-1} / n
            # (eq. 5 with ridge); C_l is K x K, and w is formed only for the (batch-averaged) r of the wake phase
            ridges = self._gradient_ridges(samples, feats)
            if self.grad_ridge == "auto":
                info.update({f"grad_ridge_{len(ridges) - i}": lam for i, lam in enumerate(ridges)})
            self._inv = []
            for f, e, lam in zip(feats, self.encoders, ridges, strict=True):
                free = 1 + (e.n_stats if self.free_stats else 0)
                chol = cholesky_factor(self._sum(matmul(f.T, f)).double() / n, lam, free)  # K x K
                self._inv.append((torch.cholesky_inverse(chol) / n).to(f.dtype))
            # E_q[(e(z_1), 1) | x] = r(x) P with P = C_1 T_1^T [E_1, 1] (eq. 5): the observation layer's data term
            self._obs_moments = None
            if self._obs_linear and self.readout_weights == "linear":
                e1 = with_intercept(layers[-2].embed(samples[-2]).reshape(samples[-2].shape[0], -1))
                self._obs_moments = self._inv[-1] @ matmul(feats[-1].T, e1.to(feats[-1].dtype))  # [K_1 + 1, D_1 + 1]
        seconds["seconds_gradient_systems"] = clock.lap()
        return {**info, **seconds}

    def _gradient_ridges(self, samples: list[Tensor], feats: list[Tensor]) -> list[float]:
        """The relative ridge of each latent layer's gradient regressions (top first): ``grad_ridge``, or with
        ``auto`` the per-layer choice, renewed every ``recognition_ridge_every`` phases.

        The choice: the targets of each layer's regressions (per-sample gradients, as large as theta) are
        projected on 8 random directions (:func:`~wakesleep.algorithms.ddc_hm.learned.sketched_targets`, the
        directions drawn from a generator seeded by the phase, so every data-parallel rank and a resumed run
        draw the same), and :func:`~wakesleep.algorithms.ddc_hm.ridge.select_ridge` picks the grid ridge with
        the smallest held-out squared error on the phase's first ``grad_ridge_samples`` samples (80 % fit).
        A relative ridge's best value falls as 1 / n, so the choice is scaled by (fit size) / N.
        """
        if self.grad_ridge != "auto":
            return [float(self.grad_ridge)] * len(feats)
        phase, self._grad_ridge_phase = self._grad_ridge_phase, self._grad_ridge_phase + 1
        if self._grad_ridges and phase % self.recognition_ridge_every != 0:
            return self._grad_ridges
        n_all = int(samples[0].shape[0])
        n = min(self.grad_ridge_samples, n_all)
        n_fit = n - max(int(0.2 * n), 1)
        gen = torch.Generator().manual_seed(1_000_003 * self.seed + phase)
        with torch.enable_grad():  # forward-mode passes through the model's links
            targets = sketched_targets(
                self.model, [s[:n] for s in samples], self.beta, random_directions(self.model, 8, gen)
            )
        chosen = []
        for f, y, e in zip(feats, targets, self.encoders, strict=True):
            free = 1 + (e.n_stats if self.free_stats else 0)
            lam = select_ridge(f[:n].double(), y, n_free=free, reduce=self._reduce)
            chosen.append(lam * n_fit / n_all)
        self._grad_ridges = chosen
        if self.feature_learner is not None:
            self.feature_learner.ridge = chosen
        return chosen
