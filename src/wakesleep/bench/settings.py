"""The settings of a benchmark run: one frozen record, validated before anything runs or is written.

:class:`BenchSettings` is what :func:`wakesleep.bench.run_bench` and :func:`wakesleep.bench.run_one` take; the
command line (:mod:`wakesleep.commands.bench`) builds it from its flags. A bad value is a one-line
:class:`~wakesleep.errors.WakesleepError` naming the setting; it carries the setting's name (``exc.setting``)
and the problem (``exc.detail``), so that a caller can name the setting its own way (the command line names
the flag).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wakesleep.errors import WakesleepError, setting_error

__all__ = ["BENCHMARKS", "BenchSettings", "setting_error"]

#: the benchmarks there are (sbn: the paper's 784-200-200-200 sigmoid belief network on Fashion-MNIST)
BENCHMARKS = ("sbn",)


@dataclass(frozen=True)
class BenchSettings:
    """What to benchmark and how to measure it (the defaults are those of ``wakesleep bench sbn``).

    Attributes
    ----------
    benchmark : str
        One of :data:`BENCHMARKS`.
    epochs : int
        Training epochs per algorithm.
    config : str or None
        The experiment config (None: the shipped ``configs/sbn.yaml``).
    algorithms : tuple of str or None
        Labels of ``experiment.algorithms`` to run (None: all).
    n : int or None
        Training images (None: all).
    device, threads, dtype : optional
        Replace ``train.device``, ``train.threads``, ``train.dtype`` of every entry.
    mmd_samples, curve_samples, evals : int
        Test images and model samples of the final MMD^2; samples per point of the learning curve; its points.
    nll_k, nll_points, proposal_steps : int
        Importance samples and test images of the NLL; steps of ``fit_proposal`` (DDC-HM's NLL).
    ais_points, ais_chains, ais_temperatures : int
        Test images also scored by AIS (0: none), its chains per image and temperatures.
    overrides : tuple of str
        ``dotted.key=value`` overrides of the experiment config.
    timeout : float or None
        Seconds allowed per algorithm (None: no limit).
    """

    benchmark: str = "sbn"
    epochs: int = 1
    config: str | None = None
    algorithms: tuple[str, ...] | None = None
    n: int | None = None
    device: str | None = None
    threads: int | None = None
    dtype: str | None = None
    mmd_samples: int = 10000
    curve_samples: int = 2000
    evals: int = 10
    nll_k: int = 5000
    nll_points: int = 1000
    proposal_steps: int = 2000
    ais_points: int = 0
    ais_chains: int = 16
    ais_temperatures: int = 1000
    overrides: tuple[str, ...] = ()
    timeout: float | None = None

    def validate(self) -> BenchSettings:
        """Check every value; return ``self``.

        Raises
        ------
        WakesleepError
            One line naming the first bad setting (:func:`setting_error`).
        """
        if self.benchmark not in BENCHMARKS:
            raise setting_error("benchmark", f"unknown benchmark {self.benchmark!r} (known: {', '.join(BENCHMARKS)})")
        positive = ("epochs", "mmd_samples", "curve_samples", "evals", "nll_k", "nll_points", "ais_chains")
        for name in (*positive, "ais_temperatures"):
            _integer(self, name, 1)
        for name in ("proposal_steps", "ais_points"):
            _integer(self, name, 0)
        for name in ("n", "threads"):
            if getattr(self, name) is not None:
                _integer(self, name, 1)
        if self.dtype is not None and self.dtype not in ("float32", "float64"):
            raise setting_error("dtype", f"must be 'float32' or 'float64', got {self.dtype!r}")
        if self.device is not None:
            dev = self.device
            if not (dev in ("cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
                raise setting_error("device", f"must be 'cpu', 'cuda' or 'cuda:N', got {dev!r}")
        if self.timeout is not None and not (isinstance(self.timeout, int | float) and self.timeout > 0):
            raise setting_error("timeout", f"must be a positive number of seconds, got {self.timeout!r}")
        if self.algorithms is not None and not self.algorithms:
            raise setting_error("algorithms", "empty (give labels of experiment.algorithms, or leave it out)")
        for name in ("config", "device", "dtype"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise setting_error(name, f"must be a string, got {value!r}")
        return self

    def config_overrides(self) -> list[str]:
        """The ``--set``-style overrides of the experiment config: :attr:`overrides` then ``n``, ``device``,
        ``threads`` and ``dtype`` (when set)."""
        out = list(self.overrides)
        if self.n is not None:
            out.append(f"data.n={self.n}")
        if self.device is not None:
            out.append(f"train.device={self.device}")
        if self.threads is not None:
            out.append(f"train.threads={self.threads}")
        if self.dtype is not None:
            out.append(f"train.dtype={self.dtype}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values (tuples as lists); :meth:`from_dict` reads them back."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BenchSettings:
        """Settings from :meth:`to_dict`'s mapping (unknown keys are an error)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise WakesleepError(f"bench settings: unknown key(s) {', '.join(unknown)}")
        values = dict(values)
        for key in ("algorithms", "overrides"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)


def _integer(settings: BenchSettings, name: str, minimum: int) -> None:
    value = getattr(settings, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise setting_error(name, f"must be {what}, got {value!r}")
