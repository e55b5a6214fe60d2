"""DDC-HM's wake phase: the free-energy gradient of eq. 36 from the sleep phase's regressions.

The gradient is ``grad_theta`` of a top-layer term plus vector-Jacobian products ``G_l . d eta_l / d theta`` of
the natural parameters eta_l(z_{l+1}) at the sleep samples, with cotangents G_l written in closed form from the
family's mean parameters (:meth:`WakePhase._wake_terms`); one backward pass through the links gives it all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from wakesleep.algorithms.base import WakeGradient
from wakesleep.algorithms.ddc_hm.ridge import with_intercept
from wakesleep.errors import NotReadyError, WakesleepError
from wakesleep.ops import full_precision, matmul

__all__ = ["WakePhase", "observation_is_linear_in_theta"]


def observation_is_linear_in_theta(model: torch.nn.Module) -> bool:
    """Whether the observation layer's natural parameters are its link's output ``W e(z_1) + b`` itself (an
    affine link, ``link.is_affine``, into a family whose eta is the link output, e.g. Bernoulli logits, checked by
    probing ``natural_from_param``) and the layer has no other trainable parameters. Then the data term of its
    wake gradient has a closed form in the posterior moments of e(z_1) (``DDCHelmholtzMachine._wake_terms``)."""
    obs = list(model.layers.values())[-1]
    link = getattr(obs, "link", None)
    if not getattr(link, "is_affine", False) or not hasattr(obs, "family"):
        return False
    weight, _ = link.affine_weight_bias()
    if any(p.requires_grad for name, p in obs.named_parameters() if not name.startswith("link.")):
        return False
    with torch.no_grad():
        u = torch.linspace(-2.0, 3.0, 2 * weight.shape[0], dtype=weight.dtype).reshape(2, -1)
        try:
            eta = obs.family.natural_from_param(u, obs.extras())
        except Exception:  # noqa: BLE001 - a family that cannot take this probe does not qualify
            return False
    return eta.shape[:1] == u.shape[:1] and eta.numel() == u.numel() and bool(torch.equal(eta.reshape(2, -1), u))


class WakePhase:
    """The wake-phase methods of :class:`~wakesleep.algorithms.ddc_hm.DDCHelmholtzMachine` (a mixin: it reads
    what :class:`~wakesleep.algorithms.ddc_hm.sleep.SleepPhase` left: ``_samples``, ``_etas``, ``_feats``,
    ``_inv``, ``_obs_moments``)."""

    def recognise(self, x: Tensor) -> list[Tensor]:
        """DDC posterior representation r_l(x) ~ E_q[T(z_l)] for each latent layer, **top first**,
        each ``[B, K_l + 1]`` (the last entry is the constant feature, 1)."""
        self._require_sleep()
        with torch.no_grad(), full_precision(x.device):
            rs = self.recognizer(x)[::-1]
        return [with_intercept(r) for r in rs]

    def encoding_functions(self, z: Tensor, layer: str) -> Tensor:
        """T(z_l) of latent ``layer`` with the constant feature appended (eq. 4): ``[..., D_l] -> [..., K_l + 1]``,
        what :meth:`recognise` approximates in expectation. E.g. a reference posterior's expectations of it give
        the wake gradient with a perfect recognition (``wake_gradient(x, representation=...)``)."""
        self._require_sleep()
        i = self.model.latent_names.index(layer)
        flat = z.reshape(-1, z.shape[-1]).to(device=self.model.device, dtype=self.model.dtype)
        with torch.no_grad(), full_precision(flat.device):
            t = with_intercept(self._encode(i, flat))
        return t.reshape(*z.shape[:-1], t.shape[-1])

    def expectation(self, x: Tensor, layer: str, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """E_q[fn(z_l) | x] for latent ``layer``, by regressing fn on T(z_l) over sleep samples (eq. 5).

        ``fn`` maps ``[n, D_l]`` to ``[n, ...]``; the result is ``[B, ...]``.
        """
        i = self.model.latent_names.index(layer)
        w = self._weights(i, self.recognise(x)[i])  # [n, B]
        vals = fn(self._samples[i])
        return torch.einsum("nb,n...->b...", w, vals)

    def posterior_mean(self, x: Tensor) -> dict[str, Tensor]:
        """E_q[z_l | x] for every latent layer."""
        return {name: self.expectation(x, name, lambda z: z) for name in self.model.latent_names}

    def _require_sleep(self) -> None:
        if self._samples is None:
            raise NotReadyError("ddc_hm: call sleep() before the wake phase")

    # --- wake -----------------------------------------------------------------------------------------
    def _weights(self, i: int, r: Tensor) -> Tensor:
        """w = T (T^T T / n + Lambda)^{-1} r / n over the sleep samples of layer i: ``r [..., K+1] -> [n, ...]``
        (with ``readout_weights="nonnegative"`` clipped at 0 and renormalised per column)."""
        with full_precision(r.device):  # the weights cancel in their sums: rounding them is not safe
            w = self._feats[i] @ (self._inv[i] @ r.reshape(-1, r.shape[-1]).T)
        if self.readout_weights == "nonnegative":
            w = w.clamp_min(0.0)
            w = w / w.sum(0, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        return w.reshape(w.shape[0], *r.shape[:-1])

    def _wake_terms(
        self, x: Tensor, representation: list[Tensor] | None = None
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """The wake gradient (eq. 36) as ``(top, [(eta_l, G_l), ...])``: grad_theta of the scalar ``top`` plus the
        vector-Jacobian products ``G_l . d eta_l / d theta`` of the natural parameters eta_l(z_{l+1}) at the sleep
        samples. Each cotangent G_l = d(eq. 36)/d eta_l is written in closed form from the family's mean
        parameters mu = grad A(eta), so the log-normaliser is never evaluated and differentiated elementwise:

        * middle layers: G_l = a_l S(z_l) - a_{l+1} mu(eta_l)   (``beta="sample"``: (a_l - a_{l+1}) S(z_l);
          ``beta="conditional"``: a_l (S(z_l) - mu(eta_l)));
        * observation layer: G_0 = m - a_1 mu(eta_0), with m_s = sum_b w_b(s) S_0(x_b) / B
          (``beta="sample"``: m - a_1 S(x_s)). When eta_0 = W e(z_1) + b itself (e.g. Bernoulli pixels with a
          linear link), m's part of the gradient of [W, b], sum_s m_s (e(z_1s), 1)^T, is the posterior moment
          S_0(x)^T E_q[(e(z_1), 1) | x] / B = S_0(x)^T r_1(x) P / B with P = C_1 T_1^T [E_1, 1] fixed at the sleep
          phase, and enters through ``top``; G_0 is then -a_1 mu(eta_0) alone;

        where a_l = w(mean_b r_l(x_b)) are the regression weights of the sleep samples (module docstring).
        ``representation`` replaces r_l(x) (:meth:`wake_gradient`).
        """
        self._require_sleep()
        if x.ndim != 2 or x.shape[1] != self.model.obs_dim:
            raise WakesleepError(f"ddc_hm: x must be [batch, {self.model.obs_dim}], got {tuple(x.shape)}")
        x = x.to(device=self.model.device, dtype=self.model.dtype)
        layers = list(self._links_model().layers.values())
        z = self._samples
        n_latent = len(layers) - 1
        rs = self.recognise(x) if representation is None else self._given_representation(x, representation)
        b_total = self._sum(x.new_tensor([x.shape[0]]))
        if self.readout_weights == "nonnegative":  # weights are not linear in r: average them over the batch
            a = [self._weights(i, rs[i]).mean(1) for i in range(n_latent)]
        else:
            a = [self._weights(i, self._sum(rs[i].sum(0)) / b_total) for i in range(n_latent)]  # batch-averaged, [n]
        # theta unchanged since the sleep phase, or the links are kept at that phase's theta (wake_theta="sleep")
        fresh = self.wake_theta == "sleep" or self._theta_unchanged()

        def natural_params(i: int) -> Tensor:  # eta_i(z_{i-1}) at the sleep samples, with its autograd graph
            cached = self._etas[i]
            if fresh and cached is not None:
                return cached
            return layers[i].natural_params(layers[i - 1].embed(z[i - 1]))

        top = (a[0] * layers[0].log_prob(z[0])).sum()  # eq. 36, top layer (alpha_L r_L - grad Phi)
        etas = [natural_params(i) for i in range(1, n_latent + 1)]
        pairs = []
        # only the links above run in mixed precision (train.precision); the cotangents weight sleep samples by
        # signed regression weights whose sums cancel, and stay in full precision
        with torch.no_grad(), full_precision(x.device):
            for i in range(1, n_latent):  # eq. 36, middle layers: alpha_l r_l - beta_{l+1} r_{l+1}
                fam = layers[i].family
                eta = etas[i - 1]
                s = fam.sufficient_statistics(z[i])
                if self.beta == "analytic":
                    g = a[i][:, None, None] * s - a[i - 1][:, None, None] * fam.mean_parameters(eta.detach())
                elif self.beta == "conditional":
                    g = a[i][:, None, None] * (s - fam.mean_parameters(eta.detach()))
                else:
                    g = (a[i] - a[i - 1])[:, None, None] * s
                pairs.append((eta, g))
            # observation layer: S_0(x)^T alpha_0 r_1(x) - beta_1 r_1(x), eq. 36
            fam = layers[-1].family
            eta = etas[-1]  # [n, Dx, S]
            sx = fam.sufficient_statistics(x).reshape(x.shape[0], -1)  # [B, Dx*S]
            feats, inv, r = self._feats[-1], self._inv[-1], rs[-1]
            n, k, b, ds = feats.shape[0], feats.shape[1], x.shape[0], sx.shape[1]
            subtrahend = (
                fam.mean_parameters(eta.detach()) if self.beta != "sample" else fam.sufficient_statistics(z[-1])
            )
            moments = self._obs_moments
            if moments is not None:
                # eta = W e(z_1) + b: the m-part of G_0 contributes sum_s m_s (e(z_1s), 1)^T to the gradient of
                # [W, b], which is S_0(x)^T E_q[(e(z_1), 1) | x] / B with E_q[.] = r P: no N x B x D_x product
                d1 = moments.shape[1]
                if self._reduce is None and b * d1 * (k + ds) <= ds * k * (b + d1):
                    data_term = matmul(sx.T, r @ moments) / b_total
                else:
                    data_term = matmul(self._sum(sx.T @ r) / b_total, moments)  # [D_x S, D_1 + 1]
                g = subtrahend.mul(a[-1][:, None, None]).neg_()  # -a mu
            else:
                # m = sum_b w_b(s) S_0(x_b) / B = T C r^T S_0(x) / B: the cheaper order of the three products
                if self.readout_weights == "nonnegative":
                    m = matmul(self._weights(n_latent - 1, r) / b_total, sx)
                elif self._reduce is None and k * b * (k + n) + n * b * ds <= k * ds * (b + k + n):
                    m = matmul(feats @ (inv @ r.T) / b_total, sx)
                else:
                    m = matmul(feats, inv @ (self._sum(r.T @ sx) / b_total))
                m = m.reshape(eta.shape)
                g = m.addcmul_(a[-1][:, None, None], subtrahend, value=-1.0)  # m - a mu, in place (a large tensor)
            pairs.append((eta, g))
        if moments is not None:
            weight, bias = layers[-1].link.affine_weight_bias()
            top = top + (data_term[:, :-1] * weight).sum()
            if bias is not None:
                top = top + (data_term[:, -1] * bias).sum()
        return top, pairs

    def _given_representation(self, x: Tensor, representation: list[Tensor]) -> list[Tensor]:
        dims = [int(f.shape[1]) for f in self._feats]
        rs = list(representation)
        if len(rs) != len(dims) or any(tuple(r.shape) != (x.shape[0], k) for r, k in zip(rs, dims, strict=False)):
            want = ", ".join(f"[{x.shape[0]}, {k}]" for k in dims)
            raise WakesleepError(f"ddc_hm: representation must be {len(dims)} tensors ({want}), top first")
        return [r.to(device=self.model.device, dtype=self._feats[i].dtype) for i, r in enumerate(rs)]

    def surrogate(self, x: Tensor) -> Tensor:
        """Scalar whose gradient w.r.t. theta is the DDC-HM wake gradient (eq. 36) averaged over ``x``
        (``top + sum_l G_l . eta_l`` with the cotangents G_l held fixed; :meth:`wake_gradient` applies the same
        vector-Jacobian products without forming it). With ``wake_theta="sleep"`` it depends on the parameters
        of ``sleep_model``, not on the model's."""
        top, pairs = self._wake_terms(x)
        return top + sum((g * eta).sum() for eta, g in pairs)

    def wake_gradient(self, x: Tensor, *, representation: list[Tensor] | None = None) -> WakeGradient:
        """Estimate of grad_theta (1/B) sum_b log p_theta(x_b) (eq. 36), keyed by parameter name.

        ``representation`` (diagnostics): posterior expectations E[T(z_l) | x_b] to use in place of the
        recognition's r_l(x_b), one ``[B, K_l + 1]`` tensor per latent layer, top first (e.g. a reference
        posterior's expectations of :meth:`encoding_functions`): the gradient the regressions of eqs. 31-35 give
        with a perfect recognition.

        With a reducer (:meth:`set_reducer`) the per-rank sums over sleep samples are summed across ranks, so
        the same (global) gradient is returned on every rank.
        """
        with torch.enable_grad():
            top, pairs = self._wake_terms(x, representation)
            outputs = [top] + [eta for eta, _ in pairs]
            cotangents = [torch.ones_like(top)] + [g for _, g in pairs]
            keep = [i for i, o in enumerate(outputs) if o.requires_grad]
            names = [k for k, p in self.model.named_parameters() if p.requires_grad]
            links = dict(self._links_model().named_parameters())  # the model, or its copy at the sleep phase
            params = [links[k] for k in names]
            found = torch.autograd.grad(
                [outputs[i] for i in keep],
                params,
                grad_outputs=[cotangents[i] for i in keep],
                allow_unused=True,
                retain_graph=True,  # the sleep phase's graph of eta is reused by later wake phases
            )
        grads = {k: torch.zeros_like(p) if g is None else g for k, p, g in zip(names, params, found, strict=True)}
        if self._reduce is not None:
            grads = {k: self._reduce(v) for k, v in grads.items()}
        return WakeGradient(grads)
