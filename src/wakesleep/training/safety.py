"""What stops a fit early: a divergence (non-finite numbers) and a request to stop (SIGINT, SIGTERM).

:class:`StopRequest` turns the first SIGINT or SIGTERM during a fit into a request that the Trainer honours at
the next point where a checkpoint continues the run bit for bit (the next multiple of ``sleep_every``): it
writes the checkpoint and raises :class:`TrainingInterrupted`. A second signal stops at the end of the
iteration in progress. Signals are caught only in the main thread and only while the fit runs; the previous
handlers come back afterwards.

:class:`TrainingDiverged` is raised for a non-finite wake gradient, parameter (of the model or of a trained
recognition model) or for a numerical failure inside the algorithm (a ``FloatingPointError`` or a failed
linear solve), in one line naming the step and, where there is one, the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from types import FrameType

import torch

from wakesleep.errors import WakesleepError

__all__ = [
    "TrainingDiverged",
    "TrainingInterrupted",
    "StopRequest",
    "apply_wake_gradient",
    "first_non_finite",
    "numerical_failures",
]


class TrainingDiverged(WakesleepError):
    """Raised when a gradient, a parameter or a solve becomes NaN or infinite (a one-line message)."""


class TrainingInterrupted(KeyboardInterrupt):
    """A fit stopped by SIGINT or SIGTERM after writing its checkpoint.

    Attributes
    ----------
    signum : int
        The signal that asked to stop.
    step : int
        The iteration the fit stopped after.
    checkpoint : str or None
        The checkpoint written (None when the fit writes nothing).
    """

    def __init__(self, signum: int, step: int, checkpoint: str | None) -> None:
        name = signal.Signals(signum).name
        where = f"; checkpoint at step {step} in {checkpoint}" if checkpoint else ""
        super().__init__(f"training stopped by {name} after step {step}{where}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


#: what an algorithm raises when its numbers fail (a failed Cholesky or solve, numpy's error state)
numerical_failures: tuple[type[BaseException], ...] = (FloatingPointError, torch.linalg.LinAlgError)


class StopRequest:
    """Record SIGINT and SIGTERM while a fit runs (a context manager; a no-op outside the main thread).

    Parameters
    ----------
    enabled : bool
        Install the handlers (False: never request a stop).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.signum: int | None = None
        self.count = 0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal asked the fit to stop."""
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum
        self.count += 1

    def __enter__(self) -> StopRequest:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                with contextlib.suppress(ValueError, OSError):
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()


def first_non_finite(named: Sequence[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first tensor of ``named`` holding NaN or inf (one fused norm pass when all are finite)."""
    if not named:
        return None
    norms = torch._foreach_norm([t.detach() for _, t in named])
    if bool(torch.isfinite(torch.stack([v.float() for v in norms])).all()):  # one device sync, not one per tensor
        return None
    for name, t in named:
        if not torch.isfinite(t.detach()).all():
            return name
    # every element finite but a norm overflowed (float32): as unusable as a NaN
    return next(name for (name, _), v in zip(named, norms, strict=True) if not math.isfinite(float(v)))


@contextlib.contextmanager
def diverges_at(step: int, where: str) -> Iterator[None]:
    """Turn a numerical failure inside the block into :class:`TrainingDiverged` naming ``step`` and ``where``."""
    try:
        yield
    except numerical_failures as exc:
        detail = " ".join(str(exc).split())[:200]
        raise TrainingDiverged(f"training diverged at step {step}: {where} failed ({detail})") from None


def apply_wake_gradient(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, grads: Mapping[str, torch.Tensor], step: int
) -> float:
    """Set ``p.grad = -grads[name]`` (ascent on the log-likelihood), take an optimiser step; return the norm.

    Raises
    ------
    TrainingDiverged
        If a gradient or, after the step, a parameter is NaN or infinite (naming it and ``step``).
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    unknown = set(grads) - set(dict(model.named_parameters()))
    if unknown:
        raise RuntimeError(f"wake_gradient returned unknown parameter names: {sorted(unknown)}")
    named = [(name, p, grads.get(name)) for name, p in params.items()]
    for _, p, g in named:
        if g is None:
            p.grad = None
    given = [(name, p, g.detach()) for name, p, g in named if g is not None]
    norms = torch._foreach_norm([g for _, _, g in given]) if given else []  # one pass per gradient
    sq = sum(float(v) ** 2 for v in norms)
    if not math.isfinite(sq):  # NaN or inf somewhere (or a norm overflowing float32: also a divergence)
        bad = next((name for (name, _, _), v in zip(given, norms, strict=True) if not math.isfinite(float(v))), None)
        raise TrainingDiverged(
            f"training diverged at step {step}: the wake gradient of {bad!r} is NaN or inf "
            "(try a smaller train.lr or more algorithm.sleep_samples)"
        )
    for _, p, g in given:
        p.grad = g.neg().to(dtype=p.dtype, device=p.device).reshape(p.shape)  # neg() is a fresh tensor
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    bad = first_non_finite(list(model.named_parameters()))
    if bad is not None:
        raise TrainingDiverged(
            f"training diverged at step {step}: parameter {bad!r} became NaN or inf (try a smaller train.lr)"
        )
    return math.sqrt(sq)
