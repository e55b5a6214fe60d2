"""The settings of a fit, declared once: the ``train:`` section of a run, also checking :class:`Trainer` arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wakesleep.errors import WakesleepError
from wakesleep.schema import SEED_MAX, option

__all__ = ["TrainOptions"]


@dataclass(frozen=True)
class TrainOptions:
    """The ``train:`` section: the optimiser and loop settings of :class:`wakesleep.training.Trainer`."""

    epochs: int = option(10, minimum=1, doc="passes over the data")
    batch_size: int = option(100, minimum=1, doc="minibatch size")
    lr: float = option(1.0e-3, minimum=0.0, exclusive_minimum=True, doc="Adam learning rate of the model")
    recognition_lr: float = option(
        1.0e-3, minimum=0.0, exclusive_minimum=True, doc="Adam learning rate of a trained recognition model"
    )
    seed: int = option(0, minimum=0, maximum=SEED_MAX, doc="seeds initialisation, minibatch order and sampling")
    device: str = option("cpu", doc="cpu | cuda | cuda:N")
    dtype: Literal["float32", "float64"] | None = option(None, doc="default: model.dtype (itself float32)")
    sleep_every: int = option(1, minimum=1, doc="run the sleep phase every this many iterations")
    log_every: int = option(100, minimum=1, doc="write a metrics.jsonl line every this many iterations")
    checkpoint_every: int = option(0, minimum=0, doc="write checkpoint/ every this many iterations (0: at the end)")
    max_iters: int | None = option(None, minimum=1, doc="optional cap on the number of iterations")
    samples: int = option(10000, minimum=1, doc="size of samples.npz written by `wakesleep train`")
    precision: Literal["float32", "bfloat16", "float16"] = option(
        "float32", doc="mixed precision of the models' matrix products (float16: CUDA only)"
    )
    threads: int | None = option(None, minimum=1, doc="torch CPU threads; None: torch's default")
    on_divergence: Literal["stop", "rollback"] = option(
        "stop", doc="on NaN/inf: stop naming the last good checkpoint, or go back to it with halved learning rates"
    )
    max_rollbacks: int = option(3, minimum=0, doc="the most rollbacks in one fit (on_divergence: rollback)")
    tensorboard: bool = option(
        False,
        doc="also write each record's numbers and, for image data, model sample grids as TensorBoard event files "
        "to <run dir>/tensorboard/ (needs the tensorboard extra: pip install 'wakesleep[tensorboard]')",
    )

    def validate(self, prefix: str = "train") -> None:
        """Cross-field checks (device spelling, precision against device and dtype)."""
        dev = self.device
        cuda_n = dev.startswith("cuda:") and dev[5:].isdigit()
        if not (dev in ("cpu", "cuda") or cuda_n):
            raise WakesleepError(f"{prefix}.device must be 'cpu', 'cuda' or 'cuda:N', got {dev!r}")
        if self.precision == "float16" and not dev.startswith("cuda"):
            raise WakesleepError(f"{prefix}.precision: float16 needs train.device cuda (use bfloat16 on a CPU)")
        if self.precision != "float32" and self.dtype == "float64":
            raise WakesleepError(f"{prefix}.precision: mixed precision needs train.dtype float32")
