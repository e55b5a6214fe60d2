"""The DDC Helmholtz machine: options, construction, data parallelism and checkpoints.

The sleep phase is :class:`~wakesleep.algorithms.ddc_hm.sleep.SleepPhase`, the wake phase
:class:`~wakesleep.algorithms.ddc_hm.wake.WakePhase`; the package docstring explains the estimator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from wakesleep.algorithms.base import Algorithm, Capabilities
from wakesleep.algorithms.ddc_hm.features import (
    EncodingFunctions,
    child_statistics,
    layer_statistics,
    layer_support,
)
from wakesleep.algorithms.ddc_hm.learned import EncodingLearner
from wakesleep.algorithms.ddc_hm.options import (
    DEFAULT_GRAD_RIDGE,
    DDCOptions,
    auto_recognition_input,
    readout_inputs,
    recognition_memory,
)
from wakesleep.algorithms.ddc_hm.recognition import LinearDDCRecognition
from wakesleep.algorithms.ddc_hm.ridge import with_intercept
from wakesleep.algorithms.ddc_hm.sleep import SleepPhase
from wakesleep.algorithms.ddc_hm.trained_recognition import (
    DeepDDCRecognition,
    MLPDDCRecognition,
    adam_from_state_tensors,
    adam_state_tensors,
)
from wakesleep.algorithms.ddc_hm.wake import WakePhase, observation_is_linear_in_theta
from wakesleep.errors import WakesleepError
from wakesleep.ops import linear, matmul

__all__ = ["DDCHelmholtzMachine", "message_supported"]

_FIT_PREFIX = "recognizer_fit."  # state_dict keys of the recognition's running fit state
_FEATURE_PREFIX = "feature_learner."  # state_dict keys of the learned encodings' Adam state
_GRAD_RIDGE_PREFIX = "grad_ridge."  # state_dict keys of grad_ridge auto's choice (phase count, chosen ridges)


def _natural_slope(obs: nn.Module, dtype: torch.dtype, device: torch.device) -> Tensor:
    """d eta / du ``[D_x, S]`` of an observation layer whose natural parameter is affine in its link output u."""
    u = torch.zeros(2, obs.dim, dtype=dtype, device=device)
    u[1] = 1.0
    eta = obs.family.natural_from_param(u, obs.extras())  # [2, D_x, S]
    return eta[1] - eta[0]


def _observation_statistic(obs: nn.Module, x: Tensor) -> Tensor:
    """c(x) ``[B, D_x]``, the coefficient of the link output u in S(x) . eta(u) (x for Bernoulli, x / v for a
    Gaussian of variance v)."""
    slope = _natural_slope(obs, x.dtype, x.device)
    s = obs.family.sufficient_statistics(x).reshape(x.shape[0], *slope.shape)
    return s[..., 0] if s.shape[-1] == 1 and bool((slope == 1).all()) else (s * slope).sum(-1)


def message_supported(model: torch.nn.Module) -> bool:
    """Whether eta(x | z_1) is affine in W e(z_1) + b (``recognition_input: message``, see ``bottom_up_message``)."""
    obs = list(model.layers.values())[-1]
    link = getattr(obs, "link", None)
    return getattr(link, "is_affine", False) and obs.family.name in ("bernoulli", "gaussian")


class DDCHelmholtzMachine(SleepPhase, WakePhase, Algorithm):
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
    extra_stats : {"none", "linear", "quadratic", "sufficient", "sufficient_child"}
        Also include z (and z z^T) among the encoding functions; ``sufficient``: each layer's own sufficient
        statistics S_l(z) (any family: z for Bernoulli, (z, z^2) for Gaussian, (log z, z) for Gamma, ...), so the
        terms of eqs. 31-35 that are linear in S_l are represented exactly (and, with ``free_stats``, left
        unpenalised); ``sufficient_child``: also what the layer below's log-density needs of z_l
        (:func:`~wakesleep.algorithms.ddc_hm.features.child_statistics`: e(z_l) where S_l lacks it, e.g. for a
        Laplace layer, and e_i e_j above a Gaussian layer with an affine link).
    recognition : {"ddc", "direct", "mlp", "deep"}
        ``ddc``: eq. 8, random ReLU layer then linear maps layer by layer; ``direct``: each r_l read out from
        the ReLU layer; ``mlp``: a trained multilayer perceptron; ``deep``: one network per latent layer
        (:class:`~wakesleep.algorithms.ddc_hm.trained_recognition.DeepDDCRecognition`, the §8 remedy), trained by Adam
        on each phase's sleep samples (eq. 7), its output heads constrained to the range of the encoding
        functions, its weights and Adam state carried across phases (and in checkpoints).
    recognition_layers, recognition_width : int
        ``deep``: hidden layers (ReLU) of each network and their width.
    recognition_steps, recognition_lr, recognition_batch : int, float, int
        ``deep``: Adam steps per sleep phase, learning rate (the algorithm's own Adam: ``train.recognition_lr``
        does not apply) and sleep samples per step.
    recognition_replay : int
        ``deep``: also train on the sleep samples of this many earlier phases (0: the newest phase only).
    recognition_fresh : bool
        ``deep``: every Adam step of eq. 7 trains on ``recognition_batch`` new ancestral samples drawn from the
        current model (and encoded with this phase's T), instead of minibatches of the phase's N sleep samples;
        the network never sees a sample twice, so more steps per phase cannot overfit them (docs/ddc_hm.md).
    recognition_calibrate : {"none", "features", "residual", "mean"}
        ``deep``: after each phase's Adam steps, read every r_l out of ``[the network's last hidden layer, its
        output, 1]`` (and x for r_1) by ridge regression on the phase's sleep samples (``features``), or add to
        the network's r_l such a regression of its error (``residual``), or a regression of its error on
        ``[x, 1]`` for r_1 and on the constant for the others (``mean``); clipped to the encoding functions'
        range. The regression's intercept makes the mean of r_l over the sleep samples that of T(z_l), as the
        closed-form read-out's does; a network trained by Adam has a mean error there, which biases the wake
        gradient even where the model is the data's (docs/ddc_hm.md).
    recognition_chain : bool
        ``deep``: the networks follow the model's hierarchy, x -> r_1 -> r_2 -> ... (eq. 8's structure), each
        trained on its own targets with its input held fixed; false: every r_l reads x.
    recognition_ridge : float or "auto"
        Ridge of the closed-form recognition fit; ``auto`` chooses it on held-out sleep samples.
    recognition_memory : float, "auto", "samples" or "adaptive"
        Decay of the recognition regression statistics across sleep phases (0 = latest phase only).
        ``auto`` (= ``samples``): ``1 - N / max(N, 200 M')`` with M' the read-out's input size, so the
        statistics always summarise about 200 sleep samples per read-out weight (20 was not enough in our
        measurements). With ``learn_features`` on the SBN set ``adaptive``: the encoding functions move, and the
        long memory of ``auto`` mixes targets of different T (docs/ddc_hm.md). With few sleep samples per phase
        (the paper's 200 against about 100 read-out inputs) a fit from one phase alone overfits, and training then
        diverges at larger learning rates (docs/RESULTS.md). ``adaptive``: one set of statistics per candidate
        decay (0, 0.5, 0.9, 0.97, 0.99, 0.997 and the ``samples`` rule); at the third sleep phase and then every
        ``recognition_ridge_every`` phases each candidate's fit predicts the new phase's sleep targets before
        they are added, and the decay with the smallest (smoothed) error is used; the choice is logged as
        ``recognition_memory``. Better than ``auto`` on the synthetic model, no better on image patches, hence
        not the default (docs/ddc_hm.md).
    recognition_input : {"auto", "none", "linear", "quadratic", "message", "message_only", "mean_field"}
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
        model (docs/RESULTS.md). ``mean_field`` (sigmoid belief networks): x and the factorised posterior
        means of z_1 given x under the current model (:meth:`mean_field_means`), which are as sharp as the exact
        posterior where a linear read-out of random ReLU features of x is not.
    recognition_ridge_every : int
        With ``recognition_ridge="auto"``, re-choose the ridge every this many sleep phases (held-out
        selection costs a factorisation per grid point).
    grad_ridge : float or "auto"
        Relative ridge of the gradient regressions alpha_l, beta_l (eqs. 31-35). ``auto`` chooses it per latent
        layer every ``recognition_ridge_every`` sleep phases, from 1e-8 ... 10, by the held-out error of that
        layer's regressions on random projections of their per-sample gradient targets (the sketch of
        :func:`~wakesleep.algorithms.ddc_hm.learned.sketched_targets`), fitted on 80 % of the phase's first
        ``grad_ridge_samples`` sleep samples; the chosen value is scaled by the ratio of that fit's size to N
        (a relative ridge's best value falls as 1 / n). Far from the optimum of a linear-Gaussian chain the fixed
        1e-3 biases the gradient and ``auto`` does not; on the eq. 13 toy model (N = 200) ``auto`` learns worse
        models, so it is not the default (docs/RESULTS.md, session 13).
    grad_ridge_samples : int
        Sleep samples of ``grad_ridge="auto"``'s choice.
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
    learn_features : bool
        Learned encoding functions (issue 16, the paper's §8): each sleep phase, Adam moves the projections W and
        offsets b of every layer's T(z) = sigma(W z_hat + b) to reduce the held-out error of that layer's gradient
        regressions (eqs. 31-35), measured on random projections of the per-sample gradients
        (:class:`~wakesleep.algorithms.ddc_hm.learned.EncodingLearner`). The held-out errors are logged as
        ``feature_error_<l>``.
    feature_steps, feature_lr, feature_directions, feature_samples : int, float, int, int
        ``learn_features``: Adam steps per sleep phase, learning rate, random directions of the sketch and sleep
        samples used (the first 80 % fit the regressions, the rest measure their error).
    feature_objective : {"regression", "amortised"}
        ``learn_features``: what T is trained to reduce. ``regression``: the held-out error of the gradient
        regressions on T(z) (issue 16 item 4 as written); ``amortised``: the held-out error of the gradient the
        wake phase actually forms, alpha . r(x), with r the closed-form read-out of T from the recognition's
        inputs h(x), so T also has to be something x can tell (closed-form recognition only).
    feature_phases : int
        ``learn_features``: learn only in the first this many sleep phases and keep T fixed afterwards, so the
        recognition's running statistics (``recognition_memory``) stop mixing targets of different T (0: learn in
        every phase).
    seed : int
        Seed of the random encoding functions and ReLU layer.

    Notes
    -----
    The encoding functions (``encoders``) and the recognition (``recognizer``: its random layer, read-out maps
    and, for ``mlp``, its weights) are submodules, created on the model's device in its dtype; the running
    recognition statistics, chosen ridges and adaptive-memory scores are added to the ``state_dict`` under
    ``recognizer_fit.``. Move the algorithm with ``.to()`` together with the model. The sleep phase's
    samples and regressions are not state: they are rebuilt by every :meth:`sleep`.
    """

    name = "ddc_hm"
    Options = DDCOptions
    capabilities = Capabilities(closed_form_recognition=True, data_parallel="statistics")
    _unregistered = Algorithm._unregistered | {"sleep_model"}  # the copy of theta at the sleep phase

    def __init__(self, model: torch.nn.Module, **hyperparameters: Any) -> None:
        super().__init__(model, **hyperparameters)
        o = self.options
        if not hasattr(model, "conditionals") or not all(hasattr(c, "family") for c in model.conditionals):
            raise WakesleepError("ddc_hm: needs a deep exponential-family model (wakesleep.build_model)")
        self.sleep_samples, self.features, self.recognition_hidden = o.sleep_samples, o.features, o.recognition_hidden
        self.encoding, self.feature_scale, self.extra_stats = o.encoding, o.feature_scale, o.extra_stats
        self.recognition, self.recognition_ridge = o.recognition, o.recognition_ridge
        recognition_input = auto_recognition_input(model) if o.recognition_input == "auto" else o.recognition_input
        if recognition_input in ("message", "message_only") and not message_supported(model):
            raise WakesleepError(
                "algorithm.recognition_input: message needs an observation layer with link linear (no softplus) "
                f"and family bernoulli or gaussian, got family {list(model.layers.values())[-1].family.name}"
            )
        if recognition_input == "mean_field" and not (
            message_supported(model)
            and all(getattr(layer.family, "name", None) == "bernoulli" for layer in list(model.layers.values())[:-1])
        ):
            raise WakesleepError(
                "algorithm.recognition_input: mean_field needs Bernoulli latent layers (a sigmoid belief network) "
                "and an observation layer with link linear (no softplus) and family bernoulli or gaussian"
            )
        self.recognition_input = recognition_input
        self.recognition_ridge_every, self.free_stats = o.recognition_ridge_every, o.free_stats
        self.grad_ridge, self.beta, self.wake_theta = o.grad_ridge, o.beta, o.wake_theta
        self.grad_ridge_samples = o.grad_ridge_samples
        self.recognition_fresh = o.recognition_fresh
        self._grad_ridge_phase = 0  # sleep phases seen by grad_ridge auto, and its current per-layer choice
        self._grad_ridges: list[float] = []
        self.readout_weights, self.recognition_memory = o.readout_weights, o.recognition_memory
        self.mlp_layers, self.mlp_steps, self.mlp_lr, self.seed = o.mlp_layers, o.mlp_steps, o.mlp_lr, o.seed

        n_latent = len(model.latent_names)
        ks = [o.features] * n_latent if isinstance(o.features, int) else list(o.features)
        if len(ks) != n_latent:
            raise WakesleepError(f"algorithm.features: need a positive int or a list of {n_latent} positive ints")
        gen = torch.Generator().manual_seed(o.seed)
        layers = list(model.layers.values())
        stats = [
            child_statistics(layers[i], layers[i + 1])
            if o.extra_stats == "sufficient_child"
            else layer_statistics(layers[i])
            for i in range(n_latent)
        ]
        self._layer_stats = [fn for fn, _, _ in stats]  # S_l(z) for extra_stats: sufficient
        try:
            self.encoders = nn.ModuleList(
                EncodingFunctions(
                    layers[i].embed_dim,
                    ks[i],
                    o.encoding,
                    o.feature_scale,
                    o.extra_stats,
                    gen,
                    support=layer_support(layers[i]),
                    n_sufficient=stats[i][1] if o.extra_stats.startswith("sufficient") else 0,
                    stats_support=stats[i][2] if o.extra_stats.startswith("sufficient") else None,
                )
                for i in range(n_latent)
            )
        except ValueError as exc:
            raise WakesleepError(f"algorithm: {exc}") from None
        out_dims = [e.n_out for e in self.encoders][::-1]  # recognition works bottom-up
        message_dim = layers[-2].embed_dim
        if o.recognition == "deep":
            self.recognizer = DeepDDCRecognition(
                model.obs_dim,
                out_dims,
                layers=o.recognition_layers,
                width=o.recognition_width,
                steps=o.recognition_steps,
                lr=o.recognition_lr,
                batch_size=o.recognition_batch,
                replay=o.recognition_replay,
                fresh=o.recognition_fresh,
                calibrate=o.recognition_calibrate,
                chain=o.recognition_chain,
                bounds=self._encoding_bounds,
                generator=gen,
            )
        elif o.recognition == "mlp":
            self.recognizer = MLPDDCRecognition(
                model.obs_dim, out_dims, [o.recognition_hidden] * o.mlp_layers, steps=o.mlp_steps, lr=o.mlp_lr
            )
        else:
            n_inputs = readout_inputs(recognition_input, o.recognition_hidden, model.obs_dim, message_dim)
            rule, memory = recognition_memory(o.recognition_memory, o.sleep_samples, n_inputs)
            self.recognizer = LinearDDCRecognition(
                model.obs_dim,
                out_dims,
                o.recognition_hidden,
                structure="hierarchical" if o.recognition == "ddc" else "direct",
                ridge=o.recognition_ridge,
                memory=memory,
                memory_start=rule,
                ridge_every=o.recognition_ridge_every,
                free_inputs=o.free_stats,
                include_input=recognition_input,
                generator=gen,
                message={
                    "message": self.bottom_up_message,
                    "message_only": self.bottom_up_message,
                    "mean_field": self.mean_field_means,
                }.get(recognition_input),
                message_dim=message_dim,
            )
        self.to(device=model.device, dtype=model.dtype)
        self.learn_features = o.learn_features
        if o.learn_features and o.feature_objective == "amortised" and o.recognition not in ("ddc", "direct"):
            raise WakesleepError(
                f"algorithm.feature_objective: amortised needs recognition ddc or direct, got {o.recognition!r}"
            )
        self.feature_learner = (
            EncodingLearner(
                self.encoders,
                self._exact_stats,
                steps=o.feature_steps,
                lr=o.feature_lr,
                n_directions=o.feature_directions,
                n_samples=o.feature_samples,
                ridge=DEFAULT_GRAD_RIDGE if o.grad_ridge == "auto" else o.grad_ridge,
                free_stats=o.free_stats,
                phases=o.feature_phases,
                objective=o.feature_objective,
                recognition_inputs=self._recognition_inputs if o.recognition in ("ddc", "direct") else None,
            )
            if o.learn_features
            else None
        )
        self._samples: list[Tensor] | None = None
        self._etas: list[Tensor | None] = []
        self._etas_version: tuple = ()
        self._etas_theta: list[Tensor] = []
        self.sleep_model: torch.nn.Module | None = None  # theta of the last sleep phase (wake_theta="sleep")
        self._reduce: Callable[[Tensor], Tensor] | None = None
        # observation layer eta = W e(z_1) + b: its data term is read from posterior moments (see _wake_terms)
        self._obs_linear = observation_is_linear_in_theta(model)
        self._obs_moments: Tensor | None = None

    def _recognition_inputs(self, x: Tensor) -> tuple[Tensor, int]:
        """h(x) of the closed-form recognition with its constant, and how many of its last columns are exact
        inputs left unpenalised (``free_stats``) with the constant."""
        feats = self.recognizer.features
        feats.fit_standardization(x, self._reduce)
        return with_intercept(feats(x)), 1 + (feats.n_exact if self.free_stats else 0)

    def _exact_stats(self, i: int, z: Tensor) -> Tensor | None:
        """S_l(z) of latent layer i (top first) if its encodings include them (``extra_stats: sufficient``)."""
        return self._layer_stats[i](z) if self.encoders[i].stats_standardize is not None else None

    def _encoding_bounds(self) -> list[tuple[Tensor, Tensor]]:
        """The range of each latent layer's encoding functions, bottom-up (the deep recognition's heads)."""
        return [e.output_bounds() for e in self.encoders][::-1]

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
            c = _observation_statistic(obs, x.to(dtype=self.model.dtype))
        weight, _ = obs.link.affine_weight_bias()
        return matmul(c, weight.detach())

    def mean_field_means(self, x: Tensor, steps: int = 8, damping: float = 0.6) -> Tensor:
        """Factorised posterior means of z_1 given x alone, ``[B, D_x] -> [B, D_1]`` (``recognition_input:
        mean_field``; Bernoulli latent layers).

        The prior of z_1 is replaced by the independent Bernoulli with logits eta_bar = eta_1(mu_2), mu_l the
        prior means passed down the hierarchy (mu_L = sigmoid(b_L), mu_l = sigmoid(eta_l(mu_{l+1}))), and
        q(z_1) = prod_j Bernoulli(mu_j) is iterated (``steps`` damped updates) with the second-order expansion of
        the change of log p(x | z_1) when z_1j flips from 0 to 1, the other units at mu:
        logit_j = eta_bar_j + W_j . (c(x) - c(u)) - (1 - 2 mu_j) / 2 W_j^2 . c'(u), with u = W mu + b,
        c(u) the observation's mean statistic (sigmoid(u) for Bernoulli pixels, u / v for a Gaussian of variance
        v) and c' its derivative (exact for a Gaussian observation layer). The read-out then only corrects a
        posterior that is already about as sharp as the exact one, which random ReLU features of x cannot
        express (docs/ddc_hm.md).
        """
        layers = list(self.model.layers.values())
        obs = layers[-1]
        with torch.no_grad():
            weight, bias = obs.link.affine_weight_bias()
            weight, bias = weight.detach(), None if bias is None else bias.detach()
            mu = None
            for layer in layers[:-1]:
                eta = layer.natural_params(None if mu is None else mu[None])[..., 0].reshape(-1)
                mu = torch.sigmoid(eta)  # the last one: the prior's logits of z_1 are eta
            prior_logit = eta
            c = _observation_statistic(obs, x.to(dtype=self.model.dtype))
            slope_eta = _natural_slope(obs, self.model.dtype, self.model.device)
            w2 = weight * weight
            mu = mu.expand(x.shape[0], -1)
            for _ in range(steps):
                u = linear(mu, weight, bias)
                with torch.enable_grad():
                    u = u.detach().requires_grad_(True)
                    eta_u = obs.family.natural_from_param(u, obs.extras())
                    cu = (obs.family.mean_parameters(eta_u) * slope_eta).sum(-1)  # E[c(x) | u] = dA(eta(u))/du
                    (curvature,) = torch.autograd.grad(cu.sum(), u)  # c'(u), elementwise
                logit = prior_logit + matmul(c - cu.detach(), weight) - 0.5 * (1 - 2 * mu) * matmul(curvature, w2)
                mu = (1 - damping) * mu + damping * torch.sigmoid(logit)
        return mu

    def set_reducer(self, reduce: Callable[[Tensor], Tensor] | None) -> None:
        """Data-parallel training: ``reduce`` sums a tensor over ranks (e.g. ``dist.all_reduce``).

        Each rank draws its own sleep samples and minibatch; the regression statistics (T^T T, h^T h, h^T T),
        the standardisation moments, the ridge-selection errors and the minibatch statistics of the wake
        phase are summed, so every rank solves the same systems, and :meth:`wake_gradient` returns on every
        rank the gradient for the union of all ranks' sleep samples and minibatches
        (``capabilities.data_parallel == "statistics"``).
        """
        if reduce is not None and self.readout_weights == "nonnegative":
            raise WakesleepError("algorithm.readout_weights: 'nonnegative' does not support data-parallel training")
        self._reduce = reduce
        self.recognizer.set_reducer(reduce)
        if self.feature_learner is not None:
            self.feature_learner.reduce = reduce

    # --- checkpoints: the submodules' buffers (nn.Module) and the recognition's running fit state ---------
    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for k, v in self.recognizer.fit_state().items():  # running statistics, chosen ridges: resumes exactly
            destination[prefix + _FIT_PREFIX + k] = v
        if self.feature_learner is not None:
            for k, v in adam_state_tensors(self.feature_learner.optimizer).items():
                destination[prefix + _FEATURE_PREFIX + k] = v
        if self.grad_ridge == "auto" and self._grad_ridges:  # nothing before the first choice, as the recognizer
            destination[prefix + _GRAD_RIDGE_PREFIX + "phase"] = torch.tensor(self._grad_ridge_phase)
            destination[prefix + _GRAD_RIDGE_PREFIX + "chosen"] = torch.tensor(self._grad_ridges, dtype=torch.float64)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        fit = prefix + _FIT_PREFIX
        feat = prefix + _FEATURE_PREFIX
        adam = {k[len(feat) :]: state_dict.pop(k) for k in list(state_dict) if k.startswith(feat)}
        ridge_keys = [k for k in list(state_dict) if k.startswith(prefix + _GRAD_RIDGE_PREFIX)]
        ridge_state = {k[len(prefix + _GRAD_RIDGE_PREFIX) :]: state_dict.pop(k) for k in ridge_keys}
        if ridge_state and self.grad_ridge != "auto":
            unexpected.extend(prefix + _GRAD_RIDGE_PREFIX + k for k in ridge_state)
        elif ridge_state:
            self._grad_ridge_phase = int(ridge_state["phase"])
            self._grad_ridges = [float(v) for v in ridge_state["chosen"].tolist()]
            if self.feature_learner is not None:  # the learning's ridge is the chosen one (sleep.py)
                self.feature_learner.ridge = list(self._grad_ridges)
        if adam and self.feature_learner is None:
            unexpected.extend(feat + k for k in adam)
        elif self.feature_learner is not None:  # over the encoders' W and b, which are loaded in place below
            params = self.feature_learner.parameters()
            self.feature_learner.optimizer = (
                adam_from_state_tensors(params, self.feature_learner.lr, adam) if adam else None
            )
        self.recognizer.load_fit_state(
            {k[len(fit) :]: state_dict.pop(k) for k in list(state_dict) if k.startswith(fit)}
        )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
