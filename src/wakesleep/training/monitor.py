"""What a :class:`~wakesleep.training.Trainer` reports while it trains: the logged records and where they go.

At each log step the Trainer builds one record (:class:`LogRecord`): the counters, the diagnostics gathered since
the previous log step (:class:`DiagnosticsWindow`) and the moment gap between the data and fresh model samples
(:class:`MomentGapMonitor`, the cheap progress metric :func:`moment_gap`). It appends the record to its
``history_`` and hands it to its log callbacks, each called as ``callback(trainer, record)`` like the user's
``callback``: :class:`MetricsWriter` (``metrics.jsonl``) and :class:`ProgressBar` (a tqdm bar on stderr).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Required, TypedDict

import numpy as np
import torch

from wakesleep import io as wio

__all__ = [
    "DiagnosticsWindow",
    "LogRecord",
    "MetricsWriter",
    "MomentGapMonitor",
    "ProgressBar",
    "moment_gap",
    "sample_observations",
]


class LogRecord(TypedDict, total=False):
    """One logged record (a line of ``metrics.jsonl``, an item of ``Trainer.history_``).

    Besides these keys a record has ``sleep/<name>`` (the numbers the last ``algorithm.sleep()`` returned) and
    ``recognition/<name>`` (the means of those ``algorithm.step_recognition`` returned since the previous record).
    """

    step: Required[int]  #: iterations done
    epoch: Required[float]  #: (fractional) epochs done
    seconds: Required[float]  #: training time, counting the time before a resumed checkpoint
    grad_norm: float  #: mean norm of the wake gradient since the previous record
    mean_gap: float  #: see :func:`moment_gap`
    cov_gap: float  #: see :func:`moment_gap`


# --------------------------------------------------------------------------------------------------------
# progress metric
# --------------------------------------------------------------------------------------------------------
def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.reshape(x.shape[0], -1).double()
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / max(x.shape[0] - 1, 1)
    return mean, cov


def moment_gap(data_moments: tuple[torch.Tensor, torch.Tensor], samples: torch.Tensor) -> dict[str, float]:
    """Cheap progress metric: relative gaps in mean and covariance between the data and model samples.

    ``mean_gap = |m_d - m_s| / sqrt(tr C_d)`` and ``cov_gap = |C_d - C_s|_F / |C_d|_F``; both are 0 for a
    perfect fit (up to sampling noise of order 1/sqrt(n)).

    Parameters
    ----------
    data_moments : (torch.Tensor, torch.Tensor)
        Mean ``m_d`` and covariance ``C_d`` of the data (float64).
    samples : torch.Tensor
        Model samples, ``[n, ...]`` (flattened per sample).

    Returns
    -------
    dict
        ``mean_gap`` and ``cov_gap``.
    """
    md, cd = data_moments
    ms, cs = _moments(samples.to(md.device))
    scale = torch.sqrt(torch.clamp(torch.trace(cd), min=1e-300))
    return {
        "mean_gap": float(torch.linalg.vector_norm(md - ms) / scale),
        "cov_gap": float(torch.linalg.matrix_norm(cd - cs) / torch.clamp(torch.linalg.matrix_norm(cd), min=1e-300)),
    }


def sample_observations(model: Any, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` observations from ``model`` (with ``generator`` if the model's ``sample`` accepts one).

    Parameters
    ----------
    model : torch.nn.Module
        A generative model whose ``sample(n)`` returns the layers' samples, observations last.
    n : int
        The number of samples.
    generator : torch.Generator, optional
        The random stream (on the model's device).

    Returns
    -------
    torch.Tensor
        ``[n, Dx]``, without autograd history.
    """
    with torch.no_grad():
        try:
            return model.sample(n, generator=generator)[-1]
        except TypeError:
            return model.sample(n)[-1]


class MomentGapMonitor:
    """Log-step monitor: the :func:`moment_gap` between the training data and fresh model samples.

    Parameters
    ----------
    data : torch.Tensor
        The training data, ``[N, D]`` (its moments are computed once, here).
    n_samples : int
        Model samples drawn per call.
    generator : torch.Generator, optional
        The random stream of the samples (the Trainer's ``monitor`` stream, checkpointed with it).
    """

    def __init__(self, data: torch.Tensor, n_samples: int, generator: torch.Generator | None = None) -> None:
        self.data_moments = _moments(data)
        self.n_samples = n_samples
        self.generator = generator

    def __call__(self, model: Any) -> dict[str, float]:
        """``mean_gap`` and ``cov_gap`` of ``model`` now."""
        with torch.no_grad():
            return moment_gap(self.data_moments, sample_observations(model, self.n_samples, self.generator))


# --------------------------------------------------------------------------------------------------------
# diagnostics between two log steps
# --------------------------------------------------------------------------------------------------------
class DiagnosticsWindow:
    """The diagnostics gathered between two log steps.

    Keeps the numbers of the last sleep phase (:meth:`set_sleep`) and the per-iteration values (:meth:`add`,
    :meth:`append`); :meth:`flush` gives the record's fields (per-iteration values averaged) and starts a new
    window.
    """

    def __init__(self) -> None:
        self.sleep: dict[str, float] = {}
        self._values: dict[str, list[float]] = {}

    def set_sleep(self, info: Mapping[str, Any]) -> None:
        """Keep the numbers of a sleep phase's diagnostics (until the next sleep phase)."""
        self.sleep = {k: float(v) for k, v in info.items() if isinstance(v, int | float)}

    def add(self, prefix: str, info: Mapping[str, Any] | None) -> None:
        """Append every value of ``info`` that converts to float, keyed ``prefix + name``."""
        for k, v in (info or {}).items():
            try:
                self._values.setdefault(f"{prefix}{k}", []).append(float(v))
            except (TypeError, ValueError):
                pass

    def append(self, key: str, value: float) -> None:
        """Append one value of ``key``."""
        self._values.setdefault(key, []).append(value)

    def flush(self) -> dict[str, float]:
        """``sleep/<name>`` of the last sleep phase and the means of the values since the last flush."""
        out = {f"sleep/{k}": v for k, v in self.sleep.items()}
        for k, vs in self._values.items():
            if vs:
                out[k] = float(np.mean(vs))
        self._values.clear()
        return out


# --------------------------------------------------------------------------------------------------------
# log callbacks: callback(trainer, record)
# --------------------------------------------------------------------------------------------------------
class MetricsWriter:
    """Log callback: appends each record to a JSON-lines file (``out_dir/metrics.jsonl``).

    Parameters
    ----------
    path : path
        The file; its directory must exist.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __call__(self, trainer: Any, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line."""
        wio.append_jsonl(self.path, record)


def _stream_is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """A tqdm bar on stderr over the iterations; as a log callback it shows ``grad_norm`` and ``cov_gap``.

    A context manager (closes the bar on exit).

    Parameters
    ----------
    total : int
        The iteration training stops at.
    initial : int
        The iteration it starts from.
    enabled : bool, optional
        Show the bar; default: only when stderr is a terminal.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool | None = None) -> None:
        from tqdm.auto import tqdm

        self.enabled = enabled if enabled is not None else _stream_is_tty(sys.stderr)
        self._bar = tqdm(
            total=total,
            initial=initial,
            disable=not self.enabled,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            leave=False,
        )

    def reset_to(self, step: int) -> None:
        """Show ``step`` iterations done (after a rollback to an earlier checkpoint)."""
        self._bar.n = step
        self._bar.refresh()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more iterations."""
        self._bar.update(n)

    def __call__(self, trainer: Any, record: Mapping[str, Any]) -> None:
        """Show the record's ``grad_norm`` and ``cov_gap`` beside the bar."""
        if self.enabled:
            self._bar.set_postfix({k: f"{record[k]:.3g}" for k in ("grad_norm", "cov_gap") if k in record})

    def close(self) -> None:
        """Remove the bar."""
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
