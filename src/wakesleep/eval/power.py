r"""The relative MMD test with a kernel chosen for power on held-out data, and kernels that see correlations.

The relative similarity test of Bounliphone et al. (2015) (:func:`wakesleep.eval.relative_mmd_test`) compares
``MMD^2_u(X, Y)`` with ``MMD^2_u(X, Z)`` through the statistic

.. math::

    T = \frac{\mathrm{MMD}^2_u(X, Y) - \mathrm{MMD}^2_u(X, Z)}{\sqrt{\hat\sigma^2_{XY} + \hat\sigma^2_{XZ}
        - 2 \hat\sigma_{XY, XZ}}}

(the joint asymptotic normality of their Theorem 2; the variances are the first-order U-statistic terms of
their appendix, see :mod:`wakesleep.eval.relative`), and rejects ``H0: MMD(X, Y) <= MMD(X, Z)`` when
``T > z_{1-alpha}``. Under an alternative with ``delta = MMD^2(P_x, P_y) - MMD^2(P_x, P_z) > 0`` and ``sigma`` the
standard deviation of the estimated difference (``O(n^{-1/2})``), the rejection probability is
``Phi(delta / sigma - z_{1-alpha})`` to first order, increasing in ``delta / sigma``: the kernel that maximises
the asymptotic power is the one that maximises that ratio (Sutherland et al. 2017, "Generative models and model
criticism via optimized maximum mean discrepancy", section 3, for the two-sample statistic; the same argument
holds for the relative statistic, whose variance Bounliphone et al. give). Its estimate on one half of the
samples is the selection criterion here; the test runs on the other half with the chosen kernel only, so the
p-value keeps its level (the kernel is a function of data independent of the test half).

Kernels (:class:`SampleKernel`; :func:`kernel_grid` builds the candidate set):

* ``gaussian``: ``exp(-||a - b||^2 / (2 w^2))`` with ``w = median * 2^k``, ``k = -4, -3.5, ..., 4`` (median
  heuristic on the pooled selection part). On binary vectors it is a function of the Hamming distance only.
* ``quadratic``: ``((a - mu).(b - mu) / d + c)^2``, ``c`` in ``0, 0.1, 1``, ``mu`` the mean of the reference's
  selection part (fixed before the test part is seen). With the feature map
  ``phi(a) = (vec((a - mu)(a - mu)^T) / d, sqrt(2 c / d) (a - mu), c)`` its population MMD^2 is exactly

  .. math::

      \mathrm{MMD}^2 = \frac{\|E[(x - \mu)(x - \mu)^T] - E[(y - \mu)(y - \mu)^T]\|_F^2}{d^2}
                     + \frac{2c}{d} \|E[x] - E[y]\|^2,

  the squared distance of the second moments about ``mu`` (pixel-pair covariances when ``mu = E[x]``: then
  the first term is ``||Cov x - Cov y - delta delta^T||_F^2 / d^2`` with ``delta = E[y] - E[x]``) and of the
  means. Centring matters: about 0, ``E[x_i x_j]`` moves with the means, so a mean error would count through
  every one of the ``d^2`` pairs and swamp the correlations; about ``mu`` it enters only as ``delta delta^T``.
  ``c = 0`` weighs the ``d^2`` pair covariances against ``d`` variances: the correlation-sensitive choice.
  Computed exactly through ``d x d`` moment matrices (``O(n d^2)``, float64, no kernel matrix).
* ``patch``: the mean over ``n_patches`` random ``p x p`` image patches of Gaussian kernels on the patch's
  pixels, each with ``w = (patch median) * s``, ``s`` in ``0.5, 1, 2``: a sum of kernels, so a kernel, which
  compares the joint distributions of local pixel groups (needs ``image_shape``).

:func:`compare_samples` compares several candidates with one reference (every kernel sum computed once per
part) and, given a ``baseline`` candidate that every other must beat (e.g. independent pixels), lets pairs of
the others choose only among kernels that, on the selection part, rank the baseline last: a kernel with power
for two learned models but blind to what separates them from the baseline cannot then judge them.

Every kernel sum is accumulated in float64 (Gaussian ones block-wise through
:func:`wakesleep.eval._mmd_kernels.kernel_sums`, never holding a kernel matrix).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from scipy import stats as sps
from torch import Tensor

from wakesleep.errors import WakesleepError
from wakesleep.eval._checks import as_samples, check_positive_int, common_dtype, same_columns
from wakesleep.eval._mmd_kernels import DEFAULT_CHUNK, bandwidth_candidates, kernel_sums, median_bandwidth
from wakesleep.eval._mmd_stats import MIN_VAR_EST
from wakesleep.eval.relative import RelativeMMDResult, relative_moments, result_from_moments

__all__ = [
    "KERNEL_FAMILIES",
    "SampleKernel",
    "PowerRelativeMMDResult",
    "PairComparison",
    "SampleComparison",
    "split_samples",
    "kernel_grid",
    "kernel_mmd",
    "kernel_relative_mmd_test",
    "relative_mmd_power_test",
    "compare_samples",
]

KERNEL_FAMILIES = ("gaussian", "quadratic", "patch")
QUADRATIC_OFFSETS = (0.0, 0.1, 1.0)
PATCH_SCALES = (0.5, 1.0, 2.0)


# --- kernels -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleKernel:
    """One kernel of the candidate set.

    Attributes
    ----------
    name : str
        Readable and unique within a grid, e.g. ``"gaussian w=16.4 (median x 2^+0.0)"``, ``"quadratic c=1"``.
    family : str
        ``"gaussian"``, ``"quadratic"`` or ``"patch"``.
    scale : float
        Gaussian and patch: the multiple of the median-heuristic width; quadratic: the offset ``c``.
    bandwidth : float
        Gaussian width ``w`` (NaN for the other families).
    patches : tuple of tuple of int
        Patch family: the flat pixel indices of each patch.
    widths : tuple of float
        Patch family: the Gaussian width of each patch (its median heuristic times ``scale``).
    center : tuple of float
        Quadratic family: the fixed centre ``mu`` subtracted from both arguments (empty: none).
    """

    name: str
    family: str
    scale: float
    bandwidth: float = math.nan
    patches: tuple[tuple[int, ...], ...] = field(default=(), repr=False)
    widths: tuple[float, ...] = field(default=(), repr=False)
    center: tuple[float, ...] = field(default=(), repr=False)

    @classmethod
    def gaussian(cls, bandwidth: float, scale: float = math.nan) -> SampleKernel:
        """``exp(-||a - b||^2 / (2 bandwidth^2))``; ``scale``: its multiple of the median width, if known."""
        bw = float(bandwidth)
        if not (math.isfinite(bw) and bw > 0):
            raise WakesleepError(
                f"SampleKernel.gaussian: bandwidth must be a positive finite number, not {bandwidth!r}"
            )
        rel = "" if math.isnan(scale) else f" (median x 2^{math.log2(scale):+.1f})"
        return cls(f"gaussian w={bw:.4g}{rel}", "gaussian", float(scale), bw)

    @classmethod
    def quadratic(cls, c: float = 0.0, center: Any = None) -> SampleKernel:
        """``((a - mu).(b - mu) / d + c)^2`` (``c >= 0``; ``mu = center``, zero if None).

        Its MMD^2 compares the second moments about ``mu`` and (for ``c > 0``) the means, exactly.
        """
        cf = float(c)
        if not (math.isfinite(cf) and cf >= 0):
            raise WakesleepError(f"SampleKernel.quadratic: c must be a finite number >= 0, got {c!r}")
        if center is None:
            return cls(f"quadratic c={cf:g}", "quadratic", cf)
        mu = torch.as_tensor(center, dtype=torch.float64).reshape(-1)
        if not bool(torch.isfinite(mu).all()):
            raise WakesleepError("SampleKernel.quadratic: center contains NaN or inf values")
        return cls(f"quadratic c={cf:g} centred", "quadratic", cf, center=tuple(mu.tolist()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (patch indices summarised by their count and size)."""
        d = asdict(self)
        d["patches"] = [len(self.patches), len(self.patches[0]) if self.patches else 0]
        d["widths"] = list(self.widths)
        d["center"] = len(self.center)
        return d


def _family_names(fn: str, kernels: Sequence[str | SampleKernel]) -> None:
    if isinstance(kernels, str | SampleKernel):
        kernels = [kernels]
    for k in kernels:
        if isinstance(k, SampleKernel):
            if k.family not in KERNEL_FAMILIES:
                raise WakesleepError(f"{fn}: kernels: unknown kernel family {k.family!r}")
        elif not isinstance(k, str) or k not in KERNEL_FAMILIES:
            known = ", ".join(KERNEL_FAMILIES)
            raise WakesleepError(f"{fn}: kernels: unknown kernel {k!r}; use {known} or a SampleKernel")


def _check_image_shape(fn: str, image_shape: Any, d: int) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in image_shape)
    except (TypeError, ValueError):
        raise WakesleepError(f"{fn}: image_shape must be (height, width), got {image_shape!r}") from None
    if h < 1 or w < 1 or h * w != d:
        raise WakesleepError(f"{fn}: image_shape {image_shape!r} does not match the {d} columns of the samples")
    return h, w


def kernel_grid(
    *samples: Any,
    kernels: Sequence[str | SampleKernel] = ("gaussian", "quadratic"),
    image_shape: tuple[int, int] | None = None,
    patch_size: int = 6,
    n_patches: int = 16,
    seed: int = 0,
) -> list[SampleKernel]:
    """The candidate kernels for the samples' pooled median distance.

    Parameters
    ----------
    *samples : array-like
        ``[n_i, d]`` sample sets (pooled for the median heuristics; pass only the selection part).
    kernels : sequence of str or SampleKernel
        Families to expand (``"gaussian"``: widths ``median * 2^k``, ``k = -4, -3.5, ..., 4``;
        ``"quadratic"``: ``c`` in ``0.1, 1, 10``; ``"patch"``: ``n_patches`` random ``patch_size^2`` patches,
        widths ``patch median * (0.5, 1, 2)``) or explicit kernels, kept as they are.
    image_shape : (int, int), optional
        ``(height, width)`` of the images, required by ``"patch"``.
    patch_size, n_patches : int
        Patch side and number of patches.
    seed : int
        Seed of the patch positions and the median subsamples.

    Returns
    -------
    list of SampleKernel
    """
    fn = "kernel_grid"
    _family_names(fn, kernels)
    if isinstance(kernels, str | SampleKernel):
        kernels = [kernels]
    ts = [as_samples(s, f"sample set {i}", fn, min_n=1) for i, s in enumerate(samples)]
    if not ts:
        raise WakesleepError(f"{fn}: needs at least one sample set")
    same_columns(fn, "sample set 0", ts[0], **{f"sample set {i}": t for i, t in enumerate(ts[1:], 1)})
    d = ts[0].shape[1]
    out: list[SampleKernel] = []
    for k in kernels:
        if isinstance(k, SampleKernel):
            out.append(k)
        elif k == "gaussian":
            med = median_bandwidth(*ts, seed=seed)
            out += [SampleKernel.gaussian(bw, bw / med) for bw in bandwidth_candidates(med)]
        elif k == "quadratic":
            center = ts[0].to(torch.float64).mean(0)
            out += [SampleKernel.quadratic(c, center) for c in QUADRATIC_OFFSETS]
        else:
            if image_shape is None:
                raise WakesleepError(f"{fn}: image_shape is required for the 'patch' kernel")
            h, w = _check_image_shape(fn, image_shape, d)
            p = check_positive_int(fn, "patch_size", patch_size)
            check_positive_int(fn, "n_patches", n_patches)
            if p > min(h, w):
                raise WakesleepError(f"{fn}: patch_size {p} exceeds the image_shape {image_shape!r}")
            g = torch.Generator().manual_seed(seed + 7)
            rows = torch.randint(0, h - p + 1, (n_patches,), generator=g).tolist()
            cols = torch.randint(0, w - p + 1, (n_patches,), generator=g).tolist()
            patches = tuple(
                tuple((r + i) * w + c + j for i in range(p) for j in range(p)) for r, c in zip(rows, cols, strict=True)
            )
            meds = []
            for idx in patches:
                try:
                    meds.append(median_bandwidth(*(t[:, list(idx)] for t in ts), seed=seed))
                except WakesleepError:  # a constant patch (e.g. a blank corner): any width gives a constant kernel
                    meds.append(1.0)
            for s in PATCH_SCALES:
                name = f"patch {p}x{p} x{n_patches} w=patch median x {s:g}"
                out.append(SampleKernel(name, "patch", s, math.nan, patches, tuple(m * s for m in meds)))
    names = [k.name for k in out]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise WakesleepError(f"{fn}: kernels: duplicate kernel names {dup}")
    return out


def _sums(a: Tensor, b: Tensor | None, kernels: Sequence[SampleKernel], chunk_size: int) -> tuple[Tensor, Tensor]:
    """Row and column sums ``[K, n_a]``, ``[K, n_b]`` (float64) of every kernel's matrix between ``a`` and ``b``.

    ``b is None`` means ``b = a`` without the diagonal (as :func:`wakesleep.eval._mmd_kernels.kernel_sums`).
    """
    same = b is None
    bb = a if same else b
    rows = torch.zeros(len(kernels), a.shape[0], dtype=torch.float64)
    cols = torch.zeros(len(kernels), bb.shape[0], dtype=torch.float64)
    gauss = [i for i, k in enumerate(kernels) if k.family == "gaussian"]
    if gauss:
        r, c = kernel_sums(a, b, [kernels[i].bandwidth for i in gauss], chunk_size)
        rows[gauss], cols[gauss] = r.cpu(), c.cpu()
    quad_groups: dict[tuple, list[int]] = {}
    for i, k in enumerate(kernels):
        if k.family == "quadratic":
            quad_groups.setdefault(k.center, []).append(i)
    for center, idx in quad_groups.items():
        # sum_j (a_i.b_j / d + c)^2 = a_i' M a_i / d^2 + 2 c a_i.s / d + n c^2, with M = sum_j b_j b_j', s = sum_j b_j
        d = a.shape[1]
        a64, b64 = a.to(torch.float64).cpu(), bb.to(torch.float64).cpu()
        if center:
            if len(center) != d:
                raise WakesleepError(f"quadratic kernel: center has {len(center)} entries, the samples {d} columns")
            mu = torch.tensor(center, dtype=torch.float64)
            a64, b64 = a64 - mu, b64 - mu
        ma, mb = b64.T @ b64, a64.T @ a64
        sa, sb = b64.sum(0), a64.sum(0)
        qa, qb = ((a64 @ ma) * a64).sum(1) / d**2, ((b64 @ mb) * b64).sum(1) / d**2
        la, lb = a64 @ sa / d, b64 @ sb / d
        diag = (a64 * a64).sum(1) / d
        for i in idx:
            c = kernels[i].scale
            rows[i] = qa + 2 * c * la + bb.shape[0] * c * c
            cols[i] = qb + 2 * c * lb + a.shape[0] * c * c
            if same:
                rows[i] -= (diag + c) ** 2
                cols[i] = rows[i]
    patch_groups: dict[tuple, list[int]] = {}
    for i, k in enumerate(kernels):
        if k.family == "patch":
            patch_groups.setdefault(k.patches, []).append(i)
    for patches, idx in patch_groups.items():
        for p, cols_p in enumerate(patches):
            ap = a[:, list(cols_p)]
            bp = None if same else bb[:, list(cols_p)]
            r, c = kernel_sums(ap, bp, [kernels[i].widths[p] for i in idx], chunk_size)
            rows[idx] += r.cpu() / len(patches)
            cols[idx] += c.cpu() / len(patches)
    return rows, cols


# --- statistics from kernel sums ------------------------------------------------------------------------
@dataclass
class _Sums:
    """Kernel sums of one reference ``x`` against candidates, for every kernel of a grid ([K, n] float64)."""

    xx: Tensor
    own: dict[str, Tensor]
    cross_rows: dict[str, Tensor]
    cross_cols: dict[str, Tensor]

    @classmethod
    def compute(cls, x: Tensor, cands: Mapping[str, Tensor], kernels: Sequence[SampleKernel], chunk: int) -> _Sums:
        xx, _ = _sums(x, None, kernels, chunk)
        own, cr, cc = {}, {}, {}
        for name, t in cands.items():
            own[name], _ = _sums(t, None, kernels, chunk)
            cr[name], cc[name] = _sums(x, t, kernels, chunk)
        return cls(xx, own, cr, cc)

    def mmd2(self, name: str) -> Tensor:
        """Unbiased MMD^2 between ``x`` and candidate ``name``, per kernel ``[K]``."""
        m, n = self.xx.shape[1], self.own[name].shape[1]
        return (
            self.xx.sum(1) / (m * (m - 1))
            + self.own[name].sum(1) / (n * (n - 1))
            - 2.0 * self.cross_rows[name].sum(1) / (m * n)
        )

    def relative(self, y: str, z: str) -> dict[str, Tensor]:
        """The relative test's moments for ``(y, z)`` per kernel (:func:`wakesleep.eval.relative.relative_moments`)."""
        return relative_moments(
            self.xx,
            self.own[y],
            self.own[z],
            self.cross_rows[y],
            self.cross_cols[y],
            self.cross_rows[z],
            self.cross_cols[z],
        )


def _criteria(mom: dict[str, Tensor]) -> Tensor:
    """Power criterion per kernel: ``(MMD^2_xy - MMD^2_xz) / sqrt(max(Var, MIN_VAR_EST))`` (Sutherland et al. 2017)."""
    return (mom["mmd_xy"] - mom["mmd_xz"]) / mom["var_diff"].clamp_min(MIN_VAR_EST).sqrt()


def _result(mom: dict[str, Tensor], i: int, kernel: SampleKernel) -> RelativeMMDResult:
    """The relative test of kernel ``i`` (NaN statistic if its variance is 0)."""
    return result_from_moments(mom, i, kernel.bandwidth)


# --- inputs and the split -------------------------------------------------------------------------------
def _prepare(fn: str, min_n: int, **samples: Any) -> dict[str, Tensor]:
    ts = {k: as_samples(v, k, fn, min_n=min_n, what=f"{fn}") for k, v in samples.items()}
    first = next(iter(ts))
    same_columns(fn, first, ts[first], **{k: v for k, v in ts.items() if k != first})
    dt = common_dtype(*ts.values())
    return {k: v.to(dtype=dt, device=ts[first].device) for k, v in ts.items()}


def split_samples(n: int, select_fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Disjoint random index sets ``(select, test)`` covering ``range(n)``; ``round(select_fraction * n)`` select.

    Parameters
    ----------
    n : int
        Number of samples.
    select_fraction : float
        In ``(0, 1)``.
    generator : torch.Generator
        Source of the permutation (seeded by the caller).

    Returns
    -------
    select, test : Tensor
        int64 indices, each sorted.
    """
    if not (isinstance(select_fraction, float | int) and 0.0 < select_fraction < 1.0):
        raise WakesleepError(f"split_samples: select_fraction must be in (0, 1), got {select_fraction!r}")
    perm = torch.randperm(int(n), generator=generator)
    k = int(round(select_fraction * n))
    return perm[:k].sort().values, perm[k:].sort().values


def _split_all(
    fn: str, ts: Mapping[str, Tensor], select_fraction: float, seed: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    if isinstance(select_fraction, bool) or not (isinstance(select_fraction, float | int) and 0 < select_fraction < 1):
        raise WakesleepError(f"{fn}: select_fraction must be in (0, 1), got {select_fraction!r}")
    g = torch.Generator().manual_seed(int(seed))
    sel, test = {}, {}
    for name, t in ts.items():
        i_sel, i_test = split_samples(t.shape[0], float(select_fraction), g)
        if len(i_sel) < 3 or len(i_test) < 3:
            raise WakesleepError(
                f"{fn}: {name} has {t.shape[0]} samples, too few to split with select_fraction={select_fraction} "
                "(needs at least 3 to select and 3 to test)"
            )
        sel[name], test[name] = t[i_sel.to(t.device)], t[i_test.to(t.device)]
    return sel, test


# --- public API -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PowerRelativeMMDResult:
    """Result of :func:`relative_mmd_power_test`.

    Attributes
    ----------
    kernel : SampleKernel
        The kernel chosen on the selection part (maximal criterion).
    candidates : tuple of SampleKernel
        The kernels considered.
    criteria : tuple of float
        Per candidate, ``(MMD^2_u(X,Y) - MMD^2_u(X,Z)) / sd`` on the selection part.
    test : RelativeMMDResult
        The relative test on the test part with ``kernel``, in the orientation of the call (its ``p_value`` is
        for "z is closer").
    closer : str
        The alternative tested: ``"z"`` (H1: z is closer; always for ``direction="z"``) or ``"y"`` (chosen on the
        selection part by ``direction="either"``).
    p_value, log10_p_value : float
        One-sided p-value of the test part for the alternative ``closer``.
    n_select, n_test : tuple of int
        Sizes ``(m, n, r)`` of the selection and test parts of ``x, y, z``.
    """

    kernel: SampleKernel
    candidates: tuple[SampleKernel, ...]
    criteria: tuple[float, ...]
    test: RelativeMMDResult
    closer: str
    p_value: float
    log10_p_value: float
    n_select: tuple[int, int, int]
    n_test: tuple[int, int, int]

    @property
    def criterion(self) -> float:
        """The chosen kernel's selection criterion."""
        return self.criteria[self.candidates.index(self.kernel)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "kernel": self.kernel.to_dict(),
            "criteria": {k.name: c for k, c in zip(self.candidates, self.criteria, strict=True)},
            "test": asdict(self.test),
            "closer": self.closer,
            "p_value": self.p_value,
            "log10_p_value": self.log10_p_value,
            "n_select": list(self.n_select),
            "n_test": list(self.n_test),
        }


def _choose(crit: Tensor, direction: str) -> tuple[int, str]:
    score = crit.abs() if direction == "either" else crit
    score = torch.where(torch.isfinite(score), score, torch.full_like(score, -math.inf))
    i = int(score.argmax())
    return i, ("y" if direction == "either" and float(crit[i]) < 0 else "z")


def _oriented(test: RelativeMMDResult, closer: str) -> tuple[float, float]:
    if closer == "z":
        return test.p_value, test.log10_p_value
    log_p = float(sps.norm.logsf(-test.statistic)) if math.isfinite(test.statistic) else math.nan
    return (math.exp(log_p) if math.isfinite(log_p) else math.nan), log_p / math.log(10.0)


def _check_direction(fn: str, direction: str) -> None:
    if direction not in ("z", "either"):
        raise WakesleepError(f"{fn}: direction must be 'z' or 'either', got {direction!r}")


def relative_mmd_power_test(
    x: Any,
    y: Any,
    z: Any,
    kernels: Sequence[str | SampleKernel] = ("gaussian", "quadratic"),
    *,
    direction: str = "z",
    select_fraction: float = 0.5,
    image_shape: tuple[int, int] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    seed: int = 0,
) -> PowerRelativeMMDResult:
    r"""Relative MMD test (Bounliphone et al. 2015) with the kernel chosen for power on a held-out part.

    Each of ``x, y, z`` is split at random (seeded) into a selection part (``select_fraction``) and a disjoint
    test part. On the selection part every candidate kernel gets the power criterion

    .. math::

        J(k) = \frac{\mathrm{MMD}^2_u(X, Y) - \mathrm{MMD}^2_u(X, Z)}{\sqrt{\max(\hat\sigma^2_{diff}, 10^{-8})}},

    the ratio whose maximum maximises the asymptotic power of the test (Sutherland et al. 2017, section 3;
    Bounliphone et al. 2015, Theorem 2, for the statistic and its variance). The kernel with the largest ``J``
    (``direction="z"``) or ``|J|`` (``direction="either"``, the alternative then pointing the way the
    selection part does) is used for the relative test on the test part only, so the p-value is valid.

    Parameters
    ----------
    x : array-like
        ``[m, d]`` reference sample (held-out data).
    y, z : array-like
        ``[n, d]`` and ``[r, d]`` candidate samples.
    kernels : sequence of str or SampleKernel
        Candidate families (``"gaussian"``, ``"quadratic"``, ``"patch"``; see :func:`kernel_grid`) or explicit
        kernels.
    direction : {"z", "either"}
        ``"z"``: H1 is "z is closer to x than y" (one-sided, as :func:`relative_mmd_test`). ``"either"``: the
        selection part also chooses which candidate is claimed closer.
    select_fraction : float
        Fraction of each sample used to choose the kernel.
    image_shape : (int, int), optional
        Needed by ``"patch"``.
    chunk_size : int
        Block size of the Gaussian kernel sums.
    seed : int
        Seed of the split, the median subsamples and the patch positions.

    Returns
    -------
    PowerRelativeMMDResult

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(600, 2, generator=g, dtype=torch.float64)
    >>> y = torch.randn(600, 2, generator=g, dtype=torch.float64) + 1.0
    >>> z = torch.randn(600, 2, generator=g, dtype=torch.float64) + 0.2
    >>> relative_mmd_power_test(x, y, z).p_value < 1e-3
    True
    """
    fn = "relative_mmd_power_test"
    _check_direction(fn, direction)
    _family_names(fn, kernels)
    check_positive_int(fn, "chunk_size", chunk_size)
    ts = _prepare(fn, 2, x=x, y=y, z=z)
    sel, test = _split_all(fn, ts, select_fraction, seed)
    grid = kernel_grid(*sel.values(), kernels=kernels, image_shape=image_shape, seed=seed)
    s_sel = _Sums.compute(sel["x"], {"y": sel["y"], "z": sel["z"]}, grid, chunk_size)
    crit = _criteria(s_sel.relative("y", "z"))
    i, closer = _choose(crit, direction)
    s_test = _Sums.compute(test["x"], {"y": test["y"], "z": test["z"]}, [grid[i]], chunk_size)
    res = _result(s_test.relative("y", "z"), 0, grid[i])
    p, lp = _oriented(res, closer)
    return PowerRelativeMMDResult(
        kernel=grid[i],
        candidates=tuple(grid),
        criteria=tuple(float(c) for c in crit),
        test=res,
        closer=closer,
        p_value=p,
        log10_p_value=lp,
        n_select=tuple(sel[k].shape[0] for k in "xyz"),
        n_test=tuple(test[k].shape[0] for k in "xyz"),
    )


def kernel_relative_mmd_test(
    x: Any, y: Any, z: Any, kernel: SampleKernel, *, chunk_size: int = DEFAULT_CHUNK
) -> RelativeMMDResult:
    """The relative MMD test of :func:`relative_mmd_test` with any :class:`SampleKernel`, on all the samples.

    Parameters
    ----------
    x, y, z : array-like
        Reference and candidate samples (``[m, d]``, ``[n, d]``, ``[r, d]``).
    kernel : SampleKernel
        A fixed kernel (chosen without looking at these samples).
    chunk_size : int
        Block size of the Gaussian kernel sums.

    Returns
    -------
    RelativeMMDResult
        ``bandwidth`` is NaN for non-Gaussian kernels; ``statistic`` and ``p_value`` are NaN when the variance
        estimate is 0.
    """
    fn = "kernel_relative_mmd_test"
    if not isinstance(kernel, SampleKernel):
        raise WakesleepError(f"{fn}: kernel must be a SampleKernel, got {type(kernel).__name__}")
    _family_names(fn, [kernel])
    check_positive_int(fn, "chunk_size", chunk_size)
    ts = _prepare(fn, 3, x=x, y=y, z=z)
    s = _Sums.compute(ts["x"], {"y": ts["y"], "z": ts["z"]}, [kernel], chunk_size)
    return _result(s.relative("y", "z"), 0, kernel)


def kernel_mmd(x: Any, y: Any, kernel: SampleKernel, *, chunk_size: int = DEFAULT_CHUNK) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) between ``x`` and ``y`` with any :class:`SampleKernel`.

    Parameters
    ----------
    x, y : array-like
        ``[m, d]`` and ``[n, d]`` samples.
    kernel : SampleKernel
        The kernel.
    chunk_size : int
        Block size of the Gaussian kernel sums.

    Returns
    -------
    float
    """
    fn = "kernel_mmd"
    if not isinstance(kernel, SampleKernel):
        raise WakesleepError(f"{fn}: kernel must be a SampleKernel, got {type(kernel).__name__}")
    _family_names(fn, [kernel])
    ts = _prepare(fn, 2, x=x, y=y)
    return float(_Sums.compute(ts["x"], {"y": ts["y"]}, [kernel], chunk_size).mmd2("y")[0])


@dataclass(frozen=True)
class PairComparison:
    """Two candidates compared with the reference by :func:`compare_samples`.

    Attributes
    ----------
    y, z : str
        The candidates' names (``y`` first in the input order).
    power : PowerRelativeMMDResult
        The test with the kernel chosen for this pair on the selection part (``direction="either"``:
        ``power.closer`` names which of ``y`` (``"y"``) or ``z`` (``"z"``) the test claims closer). With a
        ``baseline``, pairs without it choose among the qualified kernels only.
    power_unconstrained : PowerRelativeMMDResult
        The same choice among all kernels (``power`` itself when there is no baseline or it is in the pair).
    by_kernel : dict
        Kernel name -> :class:`RelativeMMDResult` on the test part, H1 "z is closer": each is a valid test
        on its own (the kernels do not depend on the test part), not after picking the best of them.
    """

    y: str
    z: str
    power: PowerRelativeMMDResult
    power_unconstrained: PowerRelativeMMDResult
    by_kernel: dict[str, RelativeMMDResult]

    @property
    def closer(self) -> str:
        """The candidate the power-selected test claims closer to the reference."""
        return self.z if self.power.closer == "z" else self.y

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "y": self.y,
            "z": self.z,
            "closer": self.closer,
            "power": self.power.to_dict(),
            "power_unconstrained": self.power_unconstrained.to_dict(),
            "by_kernel": {k: asdict(v) for k, v in self.by_kernel.items()},
        }


@dataclass(frozen=True)
class SampleComparison:
    """Result of :func:`compare_samples`.

    Attributes
    ----------
    names : tuple of str
        The candidates, in input order.
    kernels : tuple of SampleKernel
        The candidate kernels (built on the selection part).
    common_kernel : SampleKernel
        The kernel maximising the smallest ``|criterion|`` over all pairs on the selection part (among the
        qualified kernels when there is a baseline): one kernel under which every pair is as separable as
        possible (used to rank all candidates by one MMD^2).
    baseline : str or None
        The candidate every other one must beat (e.g. independent pixels), if given.
    qualified : tuple of str
        Names of the kernels under which, on the selection part, every other candidate is closer to the
        reference than the baseline with ``criterion > baseline_z`` (all kernels when there is no baseline).
    mmd2 : dict
        Kernel name -> candidate -> unbiased MMD^2 to the reference on the test part.
    pairs : tuple of PairComparison
        Every pair ``(names[i], names[j])``, ``i < j``.
    n_select, n_test : dict
        Name (``"reference"`` and each candidate) -> size of the selection and test parts.
    """

    names: tuple[str, ...]
    kernels: tuple[SampleKernel, ...]
    common_kernel: SampleKernel
    mmd2: dict[str, dict[str, float]]
    pairs: tuple[PairComparison, ...]
    n_select: dict[str, int]
    n_test: dict[str, int]
    baseline: str | None = None
    qualified: tuple[str, ...] = ()

    def pair(self, a: str, b: str) -> PairComparison:
        """The comparison of candidates ``a`` and ``b`` (either order)."""
        for p in self.pairs:
            if {p.y, p.z} == {a, b}:
                return p
        raise WakesleepError(f"SampleComparison.pair: no pair ({a!r}, {b!r}); candidates are {list(self.names)}")

    def kernel(self, family: str, scale: float) -> SampleKernel:
        """The grid kernel of ``family`` with ``scale`` (e.g. ``("gaussian", 1.0)``: the median width)."""
        for k in self.kernels:
            if k.family == family and math.isclose(k.scale, scale, rel_tol=1e-9):
                return k
        raise WakesleepError(f"SampleComparison.kernel: no {family!r} kernel with scale {scale!r} in the grid")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "names": list(self.names),
            "kernels": [k.to_dict() for k in self.kernels],
            "common_kernel": self.common_kernel.to_dict(),
            "baseline": self.baseline,
            "qualified": list(self.qualified),
            "mmd2": self.mmd2,
            "pairs": [p.to_dict() for p in self.pairs],
            "n_select": self.n_select,
            "n_test": self.n_test,
        }


def compare_samples(
    reference: Any,
    samples: Mapping[str, Any],
    kernels: Sequence[str | SampleKernel] = ("gaussian", "quadratic"),
    *,
    baseline: str | None = None,
    baseline_z: float = 2.326,
    select_fraction: float = 0.5,
    image_shape: tuple[int, int] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    seed: int = 0,
) -> SampleComparison:
    """Compare several candidate samples with one reference: MMD^2 per kernel and every pairwise relative test.

    The reference and every candidate are split once (seeded) into selection and test parts, and every kernel
    sum is computed once per part (``1 + 2 C`` blocks for ``C`` candidates, against ``5`` per pair for
    repeated :func:`relative_mmd_power_test` calls). Each pair gets :func:`relative_mmd_power_test` with
    ``direction="either"`` (kernel chosen by ``|J|`` on the selection part), plus the test-part relative test
    of every grid kernel.

    Parameters
    ----------
    reference : array-like
        ``[m, d]`` held-out data.
    samples : mapping of str to array-like
        At least two candidates ``[n_i, d]`` (e.g. model samples), by name.
    baseline : str, optional
        A candidate every other one must beat (e.g. the independent-pixel model). A kernel qualifies when, on
        the selection part, every other candidate's criterion against the baseline exceeds ``baseline_z`` in
        its favour; pairs without the baseline then choose among qualified kernels only, so that no learned
        pair is judged by a kernel that cannot tell the baseline from the learned candidates. Decided on the
        selection part, so the test part's p-values stay valid. If no kernel qualifies, every kernel is allowed
        and ``qualified`` is empty.
    baseline_z : float
        The criterion a kernel needs against the baseline (default: the one-sided 1 % normal quantile).
    kernels, select_fraction, image_shape, chunk_size, seed
        As in :func:`relative_mmd_power_test`.

    Returns
    -------
    SampleComparison
    """
    fn = "compare_samples"
    if not isinstance(samples, Mapping) or len(samples) < 2:
        raise WakesleepError(f"{fn}: samples must map at least two names to sample arrays")
    names = tuple(str(k) for k in samples)
    if "reference" in names:
        raise WakesleepError(f"{fn}: samples: 'reference' is reserved for the reference sample")
    _family_names(fn, kernels)
    check_positive_int(fn, "chunk_size", chunk_size)
    ts = _prepare(fn, 2, reference=reference, **{n: samples[n] for n in names})
    sel, test = _split_all(fn, ts, select_fraction, seed)
    grid = kernel_grid(*sel.values(), kernels=kernels, image_shape=image_shape, seed=seed)
    s_sel = _Sums.compute(sel["reference"], {n: sel[n] for n in names}, grid, chunk_size)
    s_test = _Sums.compute(test["reference"], {n: test[n] for n in names}, grid, chunk_size)
    crits = {(a, b): _criteria(s_sel.relative(a, b)) for i, a in enumerate(names) for b in names[i + 1 :]}
    ok = torch.ones(len(grid), dtype=torch.bool)
    if baseline is not None:
        if baseline not in names:
            raise WakesleepError(f"{fn}: baseline {baseline!r} is not one of the samples {list(names)}")
        for (a, b), crit in crits.items():  # crit > 0: b closer than a
            if baseline in (a, b):
                ok &= (crit if a == baseline else -crit) > baseline_z
    qualified = ok if bool(ok.any()) else torch.ones_like(ok)

    def power_test(a: str, b: str, allowed: Tensor, mom: dict[str, Tensor]) -> PowerRelativeMMDResult:
        crit = crits[(a, b)]
        k, closer = _choose(torch.where(allowed, crit, torch.full_like(crit, math.nan)), "either")
        res = _result(mom, k, grid[k])
        p, lp = _oriented(res, closer)
        return PowerRelativeMMDResult(
            kernel=grid[k],
            candidates=tuple(grid),
            criteria=tuple(float(c) for c in crit),
            test=res,
            closer=closer,
            p_value=p,
            log10_p_value=lp,
            n_select=(sel["reference"].shape[0], sel[a].shape[0], sel[b].shape[0]),
            n_test=(test["reference"].shape[0], test[a].shape[0], test[b].shape[0]),
        )

    pairs = []
    everything = torch.ones_like(ok)
    for a, b in crits:
        mom = s_test.relative(a, b)
        free = power_test(a, b, everything, mom)
        constrained = baseline is not None and baseline not in (a, b)
        chosen = power_test(a, b, qualified, mom) if constrained else free
        by_kernel = {g.name: _result(mom, j, g) for j, g in enumerate(grid)}
        pairs.append(PairComparison(a, b, chosen, free, by_kernel))
    worst = torch.stack([c.abs() for c in crits.values()]).nan_to_num(nan=-math.inf).min(0).values
    common = grid[int(torch.where(qualified, worst, torch.full_like(worst, -math.inf)).argmax())]
    mmd2 = {g.name: {n: float(s_test.mmd2(n)[j]) for n in names} for j, g in enumerate(grid)}
    return SampleComparison(
        names=names,
        kernels=tuple(grid),
        common_kernel=common,
        mmd2=mmd2,
        pairs=tuple(pairs),
        n_select={k: v.shape[0] for k, v in sel.items()},
        n_test={k: v.shape[0] for k, v in test.items()},
        baseline=baseline,
        qualified=tuple(g.name for g, q in zip(grid, ok.tolist(), strict=True) if q),
    )
