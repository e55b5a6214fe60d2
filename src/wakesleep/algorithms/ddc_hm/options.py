"""DDC-HM's hyperparameters (:class:`DDCOptions`) and the rules that resolve its ``auto`` settings.

The full documentation of every option is the ``Parameters`` section of
:class:`~wakesleep.algorithms.ddc_hm.DDCHelmholtzMachine`; each field here carries one line of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from wakesleep.algorithms.ddc_hm.ridge import MEMORY_GRID
from wakesleep.errors import WakesleepError
from wakesleep.schema import SEED_MAX, option

__all__ = [
    "DEFAULT_GRAD_RIDGE",
    "DDCOptions",
    "RECOGNITION_INPUTS",
    "auto_recognition_input",
    "recognition_memory",
    "readout_inputs",
]

RECOGNITION_INPUTS = ("none", "linear", "quadratic", "message", "message_only")
MEMORY_RULES = ("auto", "samples", "adaptive")  # the named settings of recognition_memory (else a decay)
DEFAULT_GRAD_RIDGE = 1e-3  # grad_ridge's default; also learn_features' ridge before grad_ridge auto's first choice


@dataclass(frozen=True)
class DDCOptions:
    """The options of ``ddc_hm`` (see :class:`~wakesleep.algorithms.ddc_hm.DDCHelmholtzMachine`)."""

    sleep_samples: int = option(1000, minimum=2, doc="N, samples drawn from the model in each sleep phase")
    features: int | list[int] = option(
        100, minimum=1, doc="K_l, encoding functions per latent layer (one int for all, or a list top-first)"
    )
    recognition_hidden: int = option(
        100, minimum=1, doc="M, random ReLU units of the recognition (eq. 8); the MLP's width for mlp"
    )
    encoding: Literal["sigmoid", "tanh", "linear"] = option("sigmoid", doc="encoding functions T (eq. 4)")
    feature_scale: float = option(
        1.0, minimum=0.0, exclusive_minimum=True, doc="spread of the random projections of the standardised latent"
    )
    extra_stats: Literal["none", "linear", "quadratic", "sufficient", "sufficient_child"] = option(
        "none",
        doc="also include z (and z z^T), or the layer's sufficient statistics S_l(z) (and what the layer below "
        "needs of z_l: sufficient_child), among the encodings",
    )
    recognition: Literal["ddc", "direct", "mlp", "deep"] = option(
        "ddc",
        doc="ddc: eq. 8 layer by layer; direct: each r_l from the ReLU layer; mlp: a trained perceptron; "
        "deep: a trained network per latent layer with range-constrained heads",
    )
    recognition_ridge: float | Literal["auto"] = option(
        "auto", minimum=0.0, doc="ridge of the closed-form recognition fit (auto: chosen on held-out samples)"
    )
    recognition_memory: float | str = option(
        "auto",
        minimum=0.0,
        doc="decay of the recognition statistics across sleep phases in [0, 1), auto, samples or adaptive",
    )
    recognition_ridge_every: int = option(
        10, minimum=1, doc="re-choose the auto recognition ridge (and adaptive memory) every this many phases"
    )
    recognition_input: Literal["auto", "none", "linear", "quadratic", "message", "message_only", "mean_field"] = option(
        "auto", doc="inputs appended to the ReLU layer (auto: linear when D_x <= 1024, else none)"
    )
    grad_ridge: float | Literal["auto"] = option(
        DEFAULT_GRAD_RIDGE,
        minimum=0.0,
        doc="relative ridge of the gradient regressions (eqs. 31-35); auto: chosen per layer on held-out sleep "
        "samples every recognition_ridge_every phases",
    )
    grad_ridge_samples: int = option(
        4000, minimum=10, doc="grad_ridge auto: sleep samples of the held-out choice (80 % fit, 20 % held out)"
    )
    free_stats: bool = option(True, doc="leave exact statistics (extra_stats, x of recognition_input) unpenalised")
    beta: Literal["analytic", "sample", "conditional"] = option(
        "conditional",
        doc="beta_l from mean parameters (eq. 32), samples (eq. 35), or the layer's own posterior (docs/ddc_hm.md)",
    )
    readout_weights: Literal["linear", "nonnegative"] = option(
        "linear", doc="regression weights of the sleep samples, or those clipped at 0 and renormalised"
    )
    wake_theta: Literal["current", "sleep"] = option(
        "current", doc="evaluate the links at the sleep samples with the current theta, or the sleep phase's"
    )
    mlp_layers: int = option(2, minimum=0, doc="hidden layers of the mlp recognition")
    mlp_steps: int = option(50, minimum=1, doc="Adam steps per sleep phase of the mlp recognition")
    mlp_lr: float = option(1e-3, minimum=0.0, exclusive_minimum=True, doc="learning rate of the mlp recognition")
    recognition_layers: int = option(2, minimum=0, doc="deep: hidden layers of each latent layer's network")
    recognition_width: int = option(300, minimum=1, doc="deep: units per hidden layer")
    recognition_steps: int = option(50, minimum=1, doc="deep: Adam steps per sleep phase")
    recognition_lr: float = option(
        1e-3, minimum=0.0, exclusive_minimum=True, doc="deep: Adam's learning rate (not train.recognition_lr)"
    )
    recognition_batch: int = option(100, minimum=1, doc="deep: sleep samples per Adam step")
    recognition_replay: int = option(0, minimum=0, doc="deep: earlier sleep phases whose samples are also trained on")
    recognition_fresh: bool = option(
        False, doc="deep: draw new samples from the model for every Adam step instead of reusing the phase's N"
    )
    recognition_calibrate: Literal["none", "features", "residual", "mean"] = option(
        "none",
        doc="deep: read r_l out of the networks' features by a closed-form regression on each phase's samples "
        "(features), or add such a regression of the networks' error (residual; mean: on [x, 1] for r_1, else 1)",
    )
    recognition_chain: bool = option(
        True, doc="deep: networks follow the hierarchy x -> r_1 -> r_2 ... (false: every r_l reads x)"
    )
    learn_features: bool = option(
        False, doc="train T's projections and offsets on the held-out error of the gradient regressions"
    )
    feature_steps: int = option(10, minimum=1, doc="learn_features: Adam steps per sleep phase")
    feature_lr: float = option(1e-3, minimum=0.0, exclusive_minimum=True, doc="learn_features: Adam's learning rate")
    feature_directions: int = option(8, minimum=1, doc="learn_features: random directions sketching the targets")
    feature_samples: int = option(2000, minimum=10, doc="learn_features: sleep samples used (80 % fit, 20 % held out)")
    feature_objective: Literal["regression", "amortised"] = option(
        "regression", doc="learn_features: error of the regressions on T(z), or of alpha . r(x) read out from x"
    )
    feature_phases: int = option(
        0, minimum=0, doc="learn_features: learn in the first this many sleep phases, then keep T fixed (0: always)"
    )
    seed: int = option(0, minimum=0, maximum=SEED_MAX, doc="seed of the random encoding functions and ReLU layer")

    def validate(self, prefix: str) -> None:
        if self.recognition_fresh and self.recognition != "deep":
            raise WakesleepError(f"{prefix}.recognition_fresh needs recognition: deep, got {self.recognition!r}")
        if self.recognition_calibrate != "none" and self.recognition != "deep":
            raise WakesleepError(f"{prefix}.recognition_calibrate needs recognition: deep, got {self.recognition!r}")
        if self.recognition_fresh and self.recognition_replay:
            raise WakesleepError(
                f"{prefix}.recognition_replay has no use with recognition_fresh (every Adam step draws new samples)"
            )
        memory = self.recognition_memory
        if isinstance(memory, str) and memory not in MEMORY_RULES:
            try:  # a number written as a string (e.g. "0.5") is a decay
                memory = float(memory)
            except ValueError:
                memory = -1.0
        if not isinstance(memory, str) and not 0.0 <= memory < 1.0:
            raise WakesleepError(
                f"{prefix}.recognition_memory must be 'auto', 'adaptive', 'samples' or a number in [0, 1), "
                f"got {self.recognition_memory!r}"
            )


def auto_recognition_input(model: torch.nn.Module) -> str:
    """``linear`` up to D_x = 1024, else ``none``. Not ``message``: its inputs move with theta, and on the full
    SBN (60000 images, 30000 iterations) the running statistics mixing stale messages broke the read-out
    (R^2 of r_1 fell to -5.8) and DDC-HM learnt little more than the pixel marginals (docs/RESULTS.md)."""
    return "linear" if model.obs_dim <= 1024 else "none"


def readout_inputs(recognition_input: str, hidden: int, obs_dim: int, message_dim: int) -> int:
    """M', the number of inputs of a closed-form read-out: the ReLU units, the constant and ``recognition_input``."""
    extra = {
        "none": 0,
        "linear": obs_dim,
        "quadratic": obs_dim * (obs_dim + 3) // 2,
        "message": message_dim,
        "message_only": message_dim,
        "mean_field": obs_dim + message_dim,
    }[recognition_input]
    return hidden + 1 + extra


def recognition_memory(
    setting: str | float, sleep_samples: int, n_inputs: int
) -> tuple[float, float | tuple[float, ...]]:
    """``(rule, memory)`` for ``LinearDDCRecognition``: the ``samples`` rule ``1 - N / max(N, 200 M')`` (about 200
    sleep samples per read-out weight) and the decay, or the candidate decays of ``adaptive``."""
    rule = 1.0 - sleep_samples / max(sleep_samples, 200 * n_inputs)  # ~200 samples per weight
    if setting == "adaptive":
        return rule, tuple(sorted(set(MEMORY_GRID) | {rule}))
    if setting in ("auto", "samples"):
        return rule, rule
    return rule, float(setting)  # a decay (also one written as a string, "0.5")
