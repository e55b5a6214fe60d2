"""Binarisation of grey-level data in [0, 1], with a name for each scheme so results can state it.

Schemes (the string is what goes into configs and result files):

``"dynamic"``
    A fresh Bernoulli draw, ``x_bin ~ Bernoulli(x)``, every time a minibatch is used (Salakhutdinov & Murray
    2008 style "stochastic binarisation" redone each epoch). Draws come from a ``torch.Generator``.
``"fixed-seed<S>"`` (e.g. ``"fixed-seed0"``)
    One Bernoulli draw made once, with seed ``S``; the same data set every time it is loaded.
    Draws use ``numpy.random.default_rng([S, stream])``, where ``stream`` separates the training set
    (0) from the test set (1), so the two sets do not share their uniform noise.
``"threshold<T>"`` (e.g. ``"threshold0.5"``)
    Deterministic: ``x_bin = 1[x > T]``.
``"none"``
    No binarisation (grey levels are kept).

Bernoulli schemes preserve the mean pixel value in expectation; thresholding does not.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from wakesleep.errors import WakesleepError

__all__ = ["Binarizer", "binarize", "check_unit_interval", "parse_scheme", "SCHEME_FORMS"]

#: The accepted forms of a scheme name, for error messages and docs.
SCHEME_FORMS = ("dynamic", "fixed-seed<int>", "threshold<float in (0, 1)>", "none")

_FIXED = re.compile(r"^fixed-seed(\d+)$")
_THRESH = re.compile(r"^threshold([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)$")


def parse_scheme(scheme: str | None) -> tuple[str, float | int | None]:
    """Split a scheme name into its kind and parameter.

    Parameters
    ----------
    scheme : str or None
        ``"dynamic"``, ``"fixed-seed<S>"``, ``"threshold<T>"``, ``"none"`` or None (same as ``"none"``).

    Returns
    -------
    tuple
        ``("dynamic", None)``, ``("fixed", S)``, ``("threshold", T)`` or ``("none", None)``.

    Raises
    ------
    WakesleepError
        For any other string, listing the accepted forms.
    """
    if scheme is None or scheme == "none":
        return "none", None
    if not isinstance(scheme, str):
        raise WakesleepError(f"binarize: expected a string such as 'dynamic', got {scheme!r}")
    s = scheme.strip()
    if s == "dynamic":
        return "dynamic", None
    m = _FIXED.match(s)
    if m:
        return "fixed", int(m.group(1))
    m = _THRESH.match(s)
    if m:
        t = float(m.group(1))
        if not 0.0 < t < 1.0:
            raise WakesleepError(f"binarize: threshold must lie in (0, 1), got {scheme!r}")
        return "threshold", t
    raise WakesleepError(f"binarize: unknown scheme {scheme!r}; use one of {', '.join(SCHEME_FORMS)}")


def check_unit_interval(x: np.ndarray | torch.Tensor, what: str) -> None:
    """Raise a :class:`WakesleepError` naming ``what`` unless every value of ``x`` lies in [0, 1]."""
    size = x.numel() if isinstance(x, torch.Tensor) else np.size(x)
    if size == 0:
        return
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise WakesleepError(
            f"{what}: binarisation needs values in [0, 1] (probabilities), but they range over [{lo:g}, {hi:g}]"
        )


def binarize(
    x: torch.Tensor, scheme: str, *, generator: torch.Generator | None = None, stream: int = 0
) -> torch.Tensor:
    """Binarise ``x`` (values in [0, 1]) with the named scheme.

    Parameters
    ----------
    x : torch.Tensor
        Grey levels in [0, 1], any shape.
    scheme : str
        See the module docstring.
    generator : torch.Generator, optional
        Random source for ``"dynamic"`` (must live on ``x``'s device). Default: torch's global generator.
    stream : int, default 0
        For ``"fixed-seed<S>"``: which independent stream of seed ``S`` to use (0: training set, 1: test set).

    Returns
    -------
    torch.Tensor
        Zeros and ones with ``x``'s shape, dtype and device (``x`` itself for ``"none"``).
    """
    kind, param = parse_scheme(scheme)
    if kind == "none":
        return x
    if kind == "dynamic":
        return torch.bernoulli(x, generator=generator)
    if kind == "threshold":
        return (x > param).to(x.dtype)
    rng = np.random.default_rng([int(param), int(stream)])
    u = torch.from_numpy(rng.random(tuple(x.shape), dtype=np.float32))
    return (u.to(x.device) < x).to(x.dtype)


class Binarizer:
    """Apply a named binarisation scheme; for ``"dynamic"`` a new draw on every call.

    Parameters
    ----------
    scheme : str
        ``"dynamic"``, ``"fixed-seed<S>"``, ``"threshold<T>"`` or ``"none"``.
    seed : int, default 0
        Seed of the ``torch.Generator`` used by ``"dynamic"`` (one generator per device, created on first
        use). Ignored by the other schemes.

    Examples
    --------
    >>> b = Binarizer("dynamic", seed=0)
    >>> x = torch.full((2, 3), 0.5)
    >>> b(x).shape
    torch.Size([2, 3])
    """

    def __init__(self, scheme: str | None = "dynamic", seed: int = 0) -> None:
        self.kind, self.param = parse_scheme(scheme)
        self.scheme = "none" if scheme is None else str(scheme).strip()
        self.seed = int(seed)
        self._generators: dict[torch.device, torch.Generator] = {}

    @property
    def is_dynamic(self) -> bool:
        """True when every call draws anew (scheme ``"dynamic"``)."""
        return self.kind == "dynamic"

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """The ``torch.Generator`` used for dynamic draws on ``device``."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def __call__(self, x: torch.Tensor, stream: int = 0) -> torch.Tensor:
        """Binarise ``x`` (see :func:`binarize`); ``stream`` matters only for fixed seeded schemes."""
        gen = self.generator(x.device) if self.kind == "dynamic" else None
        return binarize(x, self.scheme, generator=gen, stream=stream)

    def __repr__(self) -> str:
        return f"Binarizer({self.scheme!r}, seed={self.seed})"
