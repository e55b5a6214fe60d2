"""The Distributed Distributional Code Helmholtz Machine (Vertes & Sahani; paper §5, Algorithm 1, appendix).

How the wake gradient is computed
---------------------------------
Every function of the latents that the free-energy gradient (appendix eqs. 19-21) needs is regressed, in
the sleep phase, on the encoding functions T(z_l) of sleep samples (eqs. 31-35), and its posterior
expectation is read off as ``alpha . r_l(x)`` (eq. 5). With ridge regression (unpenalised intercept)

    alpha . r = F^T T (T^T T + n Lambda)^{-1} r = sum_s w_s(r) F_s,     w(r) = T (T^T T + n Lambda)^{-1} r,

so each regression is a *weighted sum over sleep samples* of the per-sample target F_s. Because the targets
are gradients, ``sum_s w_s grad_theta f_s(theta) = grad_theta sum_s w_s f_s(theta)``: autodiff of one scalar
surrogate gives the whole of eq. 36 without ever forming alpha (whose size is K x dim(theta)). And
``w(r)`` is linear in r, so the minibatch average of r is taken before the solve. The sleep phase keeps
C_l = (T_l^T T_l / n + Lambda)^{-1} / n (K x K) and never forms the N x K matrix T_l C_l. Per wake step the cost
is a few K x K x B and N x K x B products, an ``N x B x D_x`` product for the observation layer (its integrand
depends on x through S_0(x); ``B x K x D_1 + D_x x B x D_1`` instead when its natural parameters are linear in
theta, as in a sigmoid belief network), and one backward pass through the links at the N sleep samples: O(N (K B + cost
of evaluating the model)), independent of dim(theta) apart from the backward pass. The links' forward pass at
the sleep samples is the one the sleep phase already made to draw them (its autograd graph is kept), as long
as theta has not changed since.

The posterior is never assumed to factorise across layers: the cross-layer term of eq. 20 is regressed on
T(z_l) using the sleep pair (z_l, z_{l+1}), which is a draw from p(z_{l+1} | z_l) (appendix eqs. 26-30).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import Tensor

from wakesleep.algorithms.base import Algorithm
from wakesleep.algorithms.features import EncodingFunctions
from wakesleep.algorithms.recognition import LinearDDCRecognition, MLPDDCRecognition
from wakesleep.algorithms.ridge import MEMORY_GRID, cholesky_factor, with_intercept
from wakesleep.errors import WakesleepError
from wakesleep.models._linear import full_precision, matmul


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


def _message_supported(model: torch.nn.Module) -> bool:
    """Whether eta(x | z_1) is affine in W e(z_1) + b (``recognition_input: message``, see ``bottom_up_message``)."""
    from wakesleep.models.links import LinearLink

    obs = list(model.layers.values())[-1]
    link = getattr(obs, "link", None)
    return type(link) is LinearLink and not link.softplus and obs.family.name in ("bernoulli", "gaussian")


def _observation_is_linear_in_theta(model: torch.nn.Module) -> bool:
    """Whether the observation layer's natural parameters are its link's output ``W e(z_1) + b`` itself (a
    ``LinearLink`` without softplus into a family whose eta is the link output, e.g. Bernoulli logits, checked by
    probing ``natural_from_param``) and the layer has no other trainable parameters. Then the data term of its
    wake gradient has a closed form in the posterior moments of e(z_1) (``DDCHelmholtzMachine._wake_terms``)."""
    from wakesleep.models.links import LinearLink

    obs = list(model.layers.values())[-1]
    link = getattr(obs, "link", None)
    if type(link) is not LinearLink or link.softplus or not hasattr(obs, "family"):
        return False
    if any(p.requires_grad for name, p in obs.named_parameters() if not name.startswith("link.")):
        return False
    with torch.no_grad():
        u = torch.linspace(-2.0, 3.0, 2 * link.weight.shape[0], dtype=link.weight.dtype).reshape(2, -1)
        try:
            eta = obs.family.natural_from_param(u, obs.extras())
        except Exception:  # noqa: BLE001 - a family that cannot take this probe does not qualify
            return False
    return eta.shape[:1] == u.shape[:1] and eta.numel() == u.numel() and bool(torch.equal(eta.reshape(2, -1), u))


def _auto_recognition_input(model: torch.nn.Module) -> str:
    """``linear`` up to D_x = 1024, else ``none``. Not ``message``: its inputs move with theta, and on the full
    SBN (60000 images, 30000 iterations) the running statistics mixing stale messages broke the read-out
    (R^2 of r_1 fell to -5.8) and DDC-HM learnt little more than the pixel marginals (docs/RESULTS.md)."""
    return "linear" if model.obs_dim <= 1024 else "none"


def _check_message_model(model: torch.nn.Module) -> None:
    obs = list(model.layers.values())[-1]
    if not _message_supported(model):
        raise WakesleepError(
            "algorithm.recognition_input: message needs an observation layer with link linear (no softplus) and "
            f"family bernoulli or gaussian, got family {obs.family.name}"
        )


class DDCHelmholtzMachine(Algorithm):
    """DDC-HM: sleep-phase regressions on encoding functions, wake-phase free-energy gradient (eq. 36).

    Parameters
    ----------
    model : HierarchicalModel
        The deep exponential-family model (its conditionals must be exponential families).
    sleep_samples : int
        N, number of samples drawn from the model in each sleep phase.
    features : int or list of int
        K_l, encoding functions per latent layer (one int for all, or a list top-first).
    recognition_hidden : int
        M, size of the random ReLU layer of the recognition model (eq. 8); for ``recognition="mlp"``
        the width of its hidden layers.
    encoding : {"sigmoid", "tanh", "linear"}
        Encoding functions T (eq. 4); ``linear`` recovers the classic mean-field machine's representation.
    feature_scale : float
        Spread of the random projections W relative to the standardised latent.
    extra_stats : {"none", "linear", "quadratic"}
        Also include z (and z z^T) among the encoding functions.
    recognition : {"ddc", "direct", "mlp"}
        ``ddc``: eq. 8, random ReLU layer then linear maps layer by layer; ``direct``: each r_l read out from
        the ReLU layer; ``mlp``: a trained multilayer perceptron.
    recognition_ridge : float or "auto"
        Ridge of the closed-form recognition fit; ``auto`` chooses it on held-out sleep samples.
    recognition_memory : float, "auto", "samples" or "adaptive"
        Decay of the recognition regression statistics across sleep phases (0 = latest phase only).
        ``auto`` (= ``samples``): ``1 - N / max(N, 200 M')`` with M' the read-out's input size, so the
        statistics always summarise about 200 sleep samples per read-out weight (20 was not enough in our
        measurements). With few sleep samples per phase (the paper's 200 against about 100 read-out inputs)
        a fit from one phase alone overfits, and training then diverges at larger learning rates
        (docs/RESULTS.md). ``adaptive``: one set of statistics per candidate decay (0, 0.5, 0.9, 0.97, 0.99,
        0.997 and the ``samples`` rule); at the third sleep phase and then every ``recognition_ridge_every``
        phases each candidate's fit predicts the new phase's sleep targets before they are added, and the
        decay with the smallest (smoothed) error is used; the choice is logged as ``recognition_memory``.
        Better than ``auto`` on the synthetic model, no better on image patches, hence not the default
        (docs/ddc_hm.md).
    recognition_input : {"auto", "none", "linear", "quadratic", "message", "message_only"}
        Inputs appended to the random ReLU layer of the closed-form recognition: nothing (eq. 8 as printed),
        the standardised x, x and its pairwise products (for low-dimensional x), or the generative model's
        bottom-up message c(x) W to z_1 (:meth:`bottom_up_message`; observation layers with a linear link and
        a Bernoulli or Gaussian family), through which alone the exact posterior depends on x. ``auto``:
        ``linear`` when D_x <= 1024, else ``none`` (the read-out's cost grows with the square of its input
        size). Without x (``none``) the 784-pixel SBN learns little beyond its pixel marginals. ``message`` is
        a third of ``linear``'s cost there and better on the quick image-patch runs, but its inputs move with
        theta: with the running statistics (``recognition_memory``) it failed on the full SBN run, so it is
        not the default (docs/RESULTS.md). ``message_only``: the ReLU layer reads the standardised message too,
        so x reaches the recognition only through it and directions of x the exact posterior ignores cannot
        move r (tested on data off a linear-Gaussian model's manifold); it did not rescue the (10, 10) patch
        model (docs/RESULTS.md).
    recognition_ridge_every : int
        With ``recognition_ridge="auto"``, re-choose the ridge every this many sleep phases (held-out
        selection costs a factorisation per grid point).
    grad_ridge : float
        Relative ridge of the gradient regressions alpha_l, beta_l (eqs. 31-35).
    free_stats : bool
        Leave exact statistics unpenalised: those of ``extra_stats`` (and linear encodings) in the gradient
        regressions, and x (x x^T) of ``recognition_input`` in the recognition read-out, so each regression
        explains with them what it can before using the random features.
    beta : {"analytic", "sample", "conditional"}
        ``analytic``: beta_l uses the mean parameters mu (eq. 32); ``sample``: the sample-based eq. 35;
        ``conditional``: both terms of a middle layer's gradient under the posterior of that layer, a_l (S(z_l) -
        mu(eta_l(z_{l+1}))), so the layer above enters only through the model's own conditional p(z_{l+1} | z_l)
        carried by the sleep pairs (exact by the Markov property: p(z_{l+1} | z_l, x) = p(z_{l+1} | z_l)) and
        never through r_{l+1}. Use it when the upper read-out is poor: with ``analytic`` a read-out of R^2 ~ 0
        makes q(z_{l+1} | x) the prior in one term only, and the wake gradient then pulls the layers apart.
    readout_weights : {"linear", "nonnegative"}
        How a posterior expectation is read out from the sleep samples (eq. 5 with ridge): ``linear``, the
        regression weights w(x) = T C r(x), which sum to one but may be negative, so that for data unlike the
        sleep samples an expectation of a non-negative function (a second moment) can come out negative;
        ``nonnegative``, those weights clipped at zero and renormalised to sum to one for each data point, so
        every expectation is a convex combination of sleep-sample values (biased where the linear read-out is
        right). Not available under data parallelism (the renormalisation would need every rank's data).
    wake_theta : {"current", "sleep"}
        Where the wake phase evaluates the gradient regressions alpha_l, beta_l (eqs. 31-35) when a trainer
        sleeps less often than every step (``sleep_every`` > 1). ``current``: re-evaluate the links
        eta_l(z_{l+1}) at the N sleep samples with the current theta in every wake phase (the cotangents then
        use the current mean parameters). ``sleep``: keep them as fitted in the last sleep phase, at the theta
        that drew the sleep samples (Algorithm 1's alpha_l, beta_l, used until the next sleep phase); the wake
        phase then only back-propagates through the links stored at that phase (about half of its work on a
        sigmoid belief network) at the price of a gradient whose sleep-sample terms are up to ``sleep_every``
        - 1 steps old. The links are evaluated on a copy of the model taken at the sleep phase
        (``sleep_model``), whose parameters' gradients are returned under the model's names. With a sleep
        phase every step the two are the same estimator.
    mlp_layers, mlp_steps, mlp_lr : int, int, float
        Depth, Adam steps per sleep phase and learning rate of the MLP recognition.
    seed : int
        Seed of the random encoding functions and ReLU layer.
    """

    name = "ddc_hm"

    def __init__(
        self,
        model: torch.nn.Module,
        sleep_samples: int = 1000,
        features: int | list[int] = 100,
        recognition_hidden: int = 100,
        encoding: str = "sigmoid",
        feature_scale: float = 1.0,
        extra_stats: str = "none",
        recognition: str = "ddc",
        recognition_ridge: float | str = "auto",
        recognition_memory: float | str = "auto",
        recognition_ridge_every: int = 10,
        recognition_input: str = "auto",
        grad_ridge: float = 1e-3,
        free_stats: bool = True,
        beta: str = "analytic",
        readout_weights: str = "linear",
        wake_theta: str = "current",
        mlp_layers: int = 2,
        mlp_steps: int = 50,
        mlp_lr: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__(model)
        if not hasattr(model, "conditionals") or not all(hasattr(c, "family") for c in model.conditionals):
            raise WakesleepError("ddc_hm: needs a deep exponential-family model (wakesleep.build_model)")
        if beta not in ("analytic", "sample", "conditional"):
            raise WakesleepError(f"algorithm.beta: must be 'analytic', 'sample' or 'conditional', got {beta!r}")
        if readout_weights not in ("linear", "nonnegative"):
            raise WakesleepError(
                f"algorithm.readout_weights: must be 'linear' or 'nonnegative', got {readout_weights!r}"
            )
        self.readout_weights = readout_weights
        if wake_theta not in ("current", "sleep"):
            raise WakesleepError(f"algorithm.wake_theta: must be 'current' or 'sleep', got {wake_theta!r}")
        if recognition not in ("ddc", "direct", "mlp"):
            raise WakesleepError(f"algorithm.recognition: must be ddc, direct or mlp, got {recognition!r}")
        if int(sleep_samples) < 2:
            raise WakesleepError("algorithm.sleep_samples: must be at least 2")
        self.sleep_samples = int(sleep_samples)
        self.features = features
        self.recognition_hidden = int(recognition_hidden)
        self.encoding, self.feature_scale, self.extra_stats = encoding, float(feature_scale), extra_stats
        self.recognition, self.recognition_ridge = recognition, recognition_ridge
        if recognition_input == "auto":
            recognition_input = _auto_recognition_input(model)
        if recognition_input not in ("none", "linear", "quadratic", "message", "message_only"):
            raise WakesleepError(
                "algorithm.recognition_input: must be auto, none, linear, quadratic, message or message_only, got "
                f"{recognition_input!r}"
            )
        if recognition_input in ("message", "message_only"):
            _check_message_model(model)
        self.recognition_input = recognition_input
        self.recognition_ridge_every = int(recognition_ridge_every)
        self.free_stats = bool(free_stats)
        self.grad_ridge, self.beta, self.wake_theta = float(grad_ridge), beta, wake_theta
        self.recognition_memory = recognition_memory
        self.mlp_layers, self.mlp_steps, self.mlp_lr, self.seed = int(mlp_layers), int(mlp_steps), float(mlp_lr), seed

        n_latent = len(model.latent_names)
        ks = [int(features)] * n_latent if isinstance(features, int) else [int(k) for k in features]
        if len(ks) != n_latent or any(k <= 0 for k in ks):
            raise WakesleepError(f"algorithm.features: need a positive int or a list of {n_latent} positive ints")
        gen = torch.Generator().manual_seed(int(seed))
        layers = list(model.layers.values())
        try:
            self.encoders = [
                EncodingFunctions(layers[i].embed_dim, ks[i], encoding, self.feature_scale, extra_stats, gen)
                for i in range(n_latent)
            ]
        except ValueError as exc:
            raise WakesleepError(f"algorithm: {exc}") from None
        out_dims = [e.n_out for e in self.encoders][::-1]  # recognition works bottom-up
        if recognition == "mlp":
            self.recognizer = MLPDDCRecognition(
                model.obs_dim,
                out_dims,
                [self.recognition_hidden] * self.mlp_layers,
                steps=self.mlp_steps,
                lr=self.mlp_lr,
            )
        else:
            n_inputs = (
                self.recognition_hidden
                + 1
                + {
                    "none": 0,
                    "linear": model.obs_dim,
                    "quadratic": model.obs_dim * (model.obs_dim + 3) // 2,
                    "message": list(model.layers.values())[-2].embed_dim,
                    "message_only": list(model.layers.values())[-2].embed_dim,
                }[recognition_input]
            )
            rule = 1.0 - self.sleep_samples / max(self.sleep_samples, 200 * n_inputs)  # ~200 samples per weight
            memory: float | tuple[float, ...]
            if recognition_memory == "adaptive":
                memory = tuple(sorted(set(MEMORY_GRID) | {rule}))
            elif recognition_memory in ("auto", "samples"):
                memory = rule
            else:
                try:
                    if isinstance(recognition_memory, bool):
                        raise TypeError
                    memory = float(recognition_memory)
                except (TypeError, ValueError):
                    memory = -1.0
                if not 0.0 <= memory < 1.0:
                    raise WakesleepError(
                        "algorithm.recognition_memory: must be 'auto', 'adaptive', 'samples' or a number in [0, 1),"
                        f" got {recognition_memory!r}"
                    )
            self.recognizer = LinearDDCRecognition(
                model.obs_dim,
                out_dims,
                self.recognition_hidden,
                structure="hierarchical" if recognition == "ddc" else "direct",
                ridge=recognition_ridge,
                memory=memory,
                memory_start=rule,
                ridge_every=recognition_ridge_every,
                free_inputs=bool(free_stats),
                include_input=recognition_input,
                generator=gen,
                message=self.bottom_up_message if recognition_input in ("message", "message_only") else None,
                message_dim=list(model.layers.values())[-2].embed_dim,
            )
        self._to_model()
        self._samples: list[Tensor] | None = None
        self._etas: list[Tensor | None] = []
        self._etas_version: tuple = ()
        self._etas_theta: list[Tensor] = []
        self.sleep_model: torch.nn.Module | None = None  # theta of the last sleep phase (wake_theta="sleep")
        self._reduce: Callable[[Tensor], Tensor] | None = None
        # observation layer eta = W e(z_1) + b: its data term is read from posterior moments (see _wake_terms)
        self._obs_linear = _observation_is_linear_in_theta(model)
        self._obs_moments: Tensor | None = None
        self.global_gradients = True  # wake_gradient is already the global gradient under data parallelism

    def bottom_up_message(self, x: Tensor) -> Tensor:
        """The generative model's message from x to z_1, ``J^T S(x)``: ``[B, D_x] -> [B, D_1]``.

        With a linear link, log p(x | z_1) = S(x) . eta(W e(z_1) + b) - A(eta) + const has x-dependence
        S(x) . eta(W e(z_1) + b) = c(x) . W e(z_1) + const, with c = d(S(x) . eta(u))/du (affine eta(u):
        c = x for Bernoulli, x / v for a Gaussian of variance v). So the exact posterior of
        every latent layer depends on x only through c(x) W, a D_1-vector (``recognition_input: message``):
        on the 784-pixel SBN 200 inputs instead of x's 784, with the same information. It moves with theta,
        so the running regression statistics mix messages of recent thetas (as they mix sleep samples).
        """
        obs = list(self.model.layers.values())[-1]
        with torch.no_grad():
            u = torch.zeros(2, x.shape[1], dtype=self.model.dtype, device=self.model.device)
            u[1] = 1.0
            eta = obs.family.natural_from_param(u, obs.extras())  # [2, D_x, S], affine in u
            s = obs.family.sufficient_statistics(x.to(dtype=self.model.dtype)).reshape(x.shape[0], *eta.shape[1:])
            slope = eta[1] - eta[0]  # d eta / du, [D_x, S]
            c = s[..., 0] if bool((slope == 1).all()) and s.shape[-1] == 1 else (s * slope).sum(-1)
        return matmul(c, obs.link.weight.detach())

    # --- plumbing -------------------------------------------------------------------------------------
    def _to_model(self) -> None:
        dev, dt = self.model.device, self.model.dtype
        for e in self.encoders:
            e.to(device=dev, dtype=dt)
        self.recognizer.to(device=dev, dtype=dt)

    def _encode(self, i: int, z: Tensor) -> Tensor:
        layer = list(self.model.layers.values())[i]
        return self.encoders[i](layer.embed(z))

    # --- sleep ----------------------------------------------------------------------------------------
    def set_reducer(self, reduce: Callable[[Tensor], Tensor] | None) -> None:
        """Data-parallel training: ``reduce`` sums a tensor over ranks (e.g. ``dist.all_reduce``).

        Each rank draws its own sleep samples and minibatch; the regression statistics (T^T T, h^T h, h^T T),
        the standardisation moments, the ridge-selection errors and the minibatch statistics of the wake
        phase are summed, so every rank solves the same systems, and :meth:`wake_gradient` returns on every
        rank the gradient for the union of all ranks' sleep samples and minibatches.
        """
        if reduce is not None and self.readout_weights == "nonnegative":
            raise WakesleepError("algorithm.readout_weights: 'nonnegative' does not support data-parallel training")
        self._reduce = reduce
        self.recognizer.reduce = reduce
        if hasattr(self.recognizer, "stats"):
            self.recognizer.stats.reduce = reduce

    def _sum(self, t: Tensor) -> Tensor:
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
        self._to_model()
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
                if not self.encoders[i].standardize.fitted:
                    self.encoders[i].standardize.fit(layers[i].embed(samples[i]), self._reduce)
            feats = [with_intercept(self._encode(i, samples[i])) for i in range(n_latent)]
            targets = [f[:, :-1] for f in feats][::-1]
        seconds["seconds_encode"] = clock.lap()
        info = self.recognizer.fit(samples[-1], targets)
        seconds["seconds_recognition"] = clock.lap()
        with torch.no_grad():
            n = float(self._sum(feats[0].new_tensor([samples[0].shape[0]])))
            self._samples = samples
            self._etas, self._etas_version = etas, self._param_versions()
            self._etas_theta = [p.detach().clone() for p in self.model.parameters()]
            self._feats = feats
            # the weights of every regression on T(z_l) are w = T_l C_l r with C_l = (T_l^T T_l / n + Lambda)^{-1} / n
            # (eq. 5 with ridge); C_l is K x K, and w is formed only for the (batch-averaged) r of the wake phase
            self._inv = []
            for f, e in zip(feats, self.encoders, strict=True):
                free = 1 + (e.n_stats if self.free_stats else 0)
                chol = cholesky_factor(self._sum(matmul(f.T, f)).double() / n, self.grad_ridge, free)  # K x K
                self._inv.append((torch.cholesky_inverse(chol) / n).to(f.dtype))
            # E_q[(e(z_1), 1) | x] = r(x) P with P = C_1 T_1^T [E_1, 1] (eq. 5): the observation layer's data term
            self._obs_moments = None
            if self._obs_linear and self.readout_weights == "linear":
                e1 = with_intercept(layers[-2].embed(samples[-2]).reshape(samples[-2].shape[0], -1))
                self._obs_moments = self._inv[-1] @ matmul(feats[-1].T, e1.to(feats[-1].dtype))  # [K_1 + 1, D_1 + 1]
        seconds["seconds_gradient_systems"] = clock.lap()
        return {**info, **seconds}

    # --- recognition and posterior expectations -------------------------------------------------------
    def recognise(self, x: Tensor) -> list[Tensor]:
        """DDC posterior representation r_l(x) ~ E_q[T(z_l)] for each latent layer, **top first**,
        each ``[B, K_l + 1]`` (the last entry is the constant feature, 1)."""
        self._require_sleep()
        with torch.no_grad(), full_precision(x.device):
            rs = self.recognizer(x)[::-1]
        return [with_intercept(r) for r in rs]

    def _weights(self, i: int, r: Tensor) -> Tensor:
        """w = T (T^T T / n + Lambda)^{-1} r / n over the sleep samples of layer i: ``r [..., K+1] -> [n, ...]``
        (with ``readout_weights="nonnegative"`` clipped at 0 and renormalised per column)."""
        with full_precision(r.device):  # the weights cancel in their sums: rounding them is not safe
            w = self._feats[i] @ (self._inv[i] @ r.reshape(-1, r.shape[-1]).T)
        if self.readout_weights == "nonnegative":
            w = w.clamp_min(0.0)
            w = w / w.sum(0, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        return w.reshape(w.shape[0], *r.shape[:-1])

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
            raise RuntimeError("ddc_hm: call sleep() before the wake phase")

    # --- wake -----------------------------------------------------------------------------------------
    def _wake_terms(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
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
        """
        self._require_sleep()
        if x.ndim != 2 or x.shape[1] != self.model.obs_dim:
            raise WakesleepError(f"ddc_hm: x must be [batch, {self.model.obs_dim}], got {tuple(x.shape)}")
        x = x.to(device=self.model.device, dtype=self.model.dtype)
        layers = list(self._links_model().layers.values())
        z = self._samples
        n_latent = len(layers) - 1
        rs = self.recognise(x)
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
            link = layers[-1].link
            top = top + (data_term[:, :-1] * link.weight).sum()
            if link.bias is not None:
                top = top + (data_term[:, -1] * link.bias).sum()
        return top, pairs

    def surrogate(self, x: Tensor) -> Tensor:
        """Scalar whose gradient w.r.t. theta is the DDC-HM wake gradient (eq. 36) averaged over ``x``
        (``top + sum_l G_l . eta_l`` with the cotangents G_l held fixed; :meth:`wake_gradient` applies the same
        vector-Jacobian products without forming it). With ``wake_theta="sleep"`` it depends on the parameters
        of ``sleep_model``, not on the model's."""
        top, pairs = self._wake_terms(x)
        return top + sum((g * eta).sum() for eta, g in pairs)

    def wake_gradient(self, x: Tensor) -> dict[str, Tensor]:
        """Estimate of grad_theta (1/B) sum_b log p_theta(x_b) (eq. 36), keyed by parameter name.

        With a reducer (:meth:`set_reducer`) the per-rank sums over sleep samples are summed across ranks, so
        the same (global) gradient is returned on every rank.
        """
        with torch.enable_grad():
            top, pairs = self._wake_terms(x)
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
        return grads

    # --- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        state = {}
        for i, e in enumerate(self.encoders):
            for k, v in e.state_dict().items():
                state[f"encoders.{i}.{k}"] = v
        for k, v in self.recognizer.state_dict().items():
            state[f"recognizer.{k}"] = v
        for i, phi in enumerate(getattr(self.recognizer, "maps", [])):
            state[f"recognizer.maps.{i}"] = phi
        if hasattr(self.recognizer, "fit_state"):  # running statistics, chosen ridges: a resume continues exactly
            for k, v in self.recognizer.fit_state().items():
                state[f"recognizer_fit.{k}"] = v
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for i, e in enumerate(self.encoders):
            e.load_state_dict({k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"encoders.{i}.")})
            e.standardize.fitted = True
        rec = {
            k[len("recognizer.") :]: v
            for k, v in state.items()
            if k.startswith("recognizer.") and not k.startswith("recognizer.maps.")
        }
        rec.pop("features._iu", None)  # saved by earlier versions (now recomputed, not stored)
        if hasattr(self.recognizer, "load_fit_state"):
            prefix = "recognizer_fit."
            self.recognizer.load_fit_state({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        self.recognizer.load_state_dict(rec)
        maps = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in state.items() if k.startswith("recognizer.maps."))
        if maps and hasattr(self.recognizer, "maps"):
            self.recognizer.maps = [v for _, v in maps]
        std = getattr(self.recognizer, "features", self.recognizer)
        if hasattr(std, "standardize"):
            std.standardize.fitted = True
        if getattr(std, "message_standardize", None) is not None:
            std.message_standardize.fitted = True
