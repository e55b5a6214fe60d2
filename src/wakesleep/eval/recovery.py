"""Parameter recovery error up to the symmetries of latent units (permutation and sign).

A hierarchical model is unchanged when the units of a latent layer are permuted (together with the
columns of the child layer's weight and the rows of the layer's own parameters), and, for symmetric
real-valued latents, when a unit's sign is flipped. Recovery is therefore measured after the best
matching: columns of the learned loading matrix are assigned to the true ones by the Hungarian algorithm
(:func:`scipy.optimize.linear_sum_assignment`) on the absolute cosine similarity, flipped to agree in sign,
and compared by relative Frobenius error ``||W_hat P S - W||_F / ||W||_F``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from wakesleep.errors import WakesleepError

__all__ = ["Matching", "match_columns", "recovery_error", "model_recovery_error"]


@dataclass(frozen=True)
class Matching:
    """A column matching of an estimated matrix to a true one.

    Attributes
    ----------
    permutation : numpy.ndarray
        ``permutation[j]`` is the estimated column matched to true column ``j``.
    signs : numpy.ndarray
        ``+1``/``-1`` per true column (all ``+1`` when signs are not free).
    scales : numpy.ndarray
        Per true column positive scale applied (all 1 unless ``allow_scale``).
    aligned : numpy.ndarray
        The estimated matrix after matching: ``est[:, permutation] * signs * scales``.
    error : float
        Relative Frobenius error ``||aligned - true||_F / ||true||_F``.
    similarity : numpy.ndarray
        Absolute cosine similarity of each matched pair.
    """

    permutation: np.ndarray
    signs: np.ndarray
    scales: np.ndarray
    aligned: np.ndarray
    error: float
    similarity: np.ndarray


def _as_matrix(a: Any, name: str, fn: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise WakesleepError(f"{fn}: {name} must be a matrix, got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise WakesleepError(f"{fn}: {name} contains NaN or inf values")
    return arr


def match_columns(estimated: Any, true: Any, *, signs: bool = True, allow_scale: bool = False) -> Matching:
    """Match the columns (latent units) of ``estimated`` to those of ``true``.

    Parameters
    ----------
    estimated, true : array-like
        ``[D_out, K]`` matrices whose columns are indexed by latent units (e.g. a child layer's link
        weight ``[D_child, D_latent]``). ``estimated`` may have more columns than ``true`` (extra units are
        left unmatched).
    signs : bool
        Whether a unit's sign is a symmetry (real-valued symmetric latents); if False only permutations.
    allow_scale : bool
        Also rescale each matched column by the least-squares positive factor (for models whose latent
        scale is not identified).

    Returns
    -------
    Matching
    """
    fn = "match_columns"
    est = _as_matrix(estimated, "estimated", fn)
    tru = _as_matrix(true, "true", fn)
    if est.shape[0] != tru.shape[0]:
        raise WakesleepError(f"{fn}: estimated has {est.shape[0]} rows, true has {tru.shape[0]}")
    if est.shape[1] < tru.shape[1]:
        raise WakesleepError(f"{fn}: estimated has {est.shape[1]} columns, fewer than true's {tru.shape[1]}")
    tnorm = np.linalg.norm(tru)
    if tnorm == 0:
        raise WakesleepError(f"{fn}: true is all zeros; the relative error is undefined")
    en = est / np.maximum(np.linalg.norm(est, axis=0, keepdims=True), 1e-300)
    tn = tru / np.maximum(np.linalg.norm(tru, axis=0, keepdims=True), 1e-300)
    cos = tn.T @ en  # [K_true, K_est]
    score = np.abs(cos) if signs else cos
    rows, cols = linear_sum_assignment(-score)
    perm = np.empty(tru.shape[1], dtype=int)
    perm[rows] = cols
    sgn = np.sign(cos[np.arange(tru.shape[1]), perm]) if signs else np.ones(tru.shape[1])
    sgn[sgn == 0] = 1.0
    aligned = est[:, perm] * sgn
    scales = np.ones(tru.shape[1])
    if allow_scale:
        num = (aligned * tru).sum(0)
        den = (aligned * aligned).sum(0)
        scales = np.where(den > 0, np.maximum(num, 0.0) / np.maximum(den, 1e-300), 1.0)
        aligned = aligned * scales
    err = float(np.linalg.norm(aligned - tru) / tnorm)
    return Matching(perm, sgn, scales, aligned, err, np.abs(cos[np.arange(tru.shape[1]), perm]))


def recovery_error(estimated: Any, true: Any, *, signs: bool = True, allow_scale: bool = False) -> float:
    """Relative Frobenius error of ``estimated`` against ``true`` after the best column permutation and signs.

    See :func:`match_columns`.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.array([[1.0, 0.0], [0.5, 2.0], [0.0, 1.0]])
    >>> recovery_error(-w[:, ::-1], w)
    0.0
    """
    return match_columns(estimated, true, signs=signs, allow_scale=allow_scale).error


def _layer_weights(model: Any) -> tuple[list[str], dict[str, torch.Tensor]]:
    names = list(getattr(model, "layer_names", []))
    if not names:
        raise WakesleepError("model_recovery_error: the model has no layer_names (not a HierarchicalModel)")
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    return names, params


def model_recovery_error(learned: Any, true: Any, *, allow_scale: bool = False) -> dict[str, float]:
    """Recovery error of every link weight of a learned hierarchical model against the true model.

    Matching proceeds bottom-up: the units of ``z_1`` are matched on the columns of the observation layer's
    weight ``layers.x.link.weight``; that permutation and sign is applied to the rows of ``z_1``'s own
    weight, whose columns then match ``z_2``, and so on. Signs are free only for real-valued latents
    (Gaussian, Laplace); binary and other latents are matched by permutation only.

    Parameters
    ----------
    learned, true : HierarchicalModel
        Models with the same architecture and ``layers.<name>.link.weight`` parameters.
    allow_scale : bool
        Also allow a positive rescaling per latent unit.

    Returns
    -------
    dict
        ``{"layers.<name>.link.weight": relative error, ..., "mean": mean over layers}``.
    """
    fn = "model_recovery_error"
    names, lp = _layer_weights(learned)
    tnames, tp = _layer_weights(true)
    if names != tnames:
        raise WakesleepError(f"{fn}: learned layers {names} differ from true layers {tnames}")
    out: dict[str, float] = {}
    row_perm: np.ndarray | None = None
    row_sign: np.ndarray | None = None
    # layers bottom-up: x, z_1, ..., z_{L-1}; the top layer has no link weight
    for child_i in range(len(names) - 1, 0, -1):
        child, parent = names[child_i], names[child_i - 1]
        key = f"layers.{child}.link.weight"
        if key not in lp or key not in tp:
            raise WakesleepError(f"{fn}: no parameter {key} (only linear/nonlinear links with a weight are supported)")
        w_est = lp[key].detach().cpu().double().numpy()
        w_true = tp[key].detach().cpu().double().numpy()
        if w_est.shape != w_true.shape:
            raise WakesleepError(f"{fn}: {key} has shape {w_est.shape} in learned, {w_true.shape} in true")
        if row_perm is not None:
            w_est = w_est[row_perm] * row_sign[:, None]
        layer = learned.layers[parent]
        fam = getattr(layer, "family", None)
        real = getattr(fam, "support", None) == "real" or type(layer).__name__.lower().startswith("mixture")
        symmetric = real and getattr(fam, "name", "gaussian") in ("gaussian", "laplace")
        match = match_columns(w_est, w_true, signs=symmetric, allow_scale=allow_scale)
        out[key] = match.error
        row_perm, row_sign = match.permutation, match.signs
    out["mean"] = float(np.mean([v for k, v in out.items() if k != "mean"])) if out else float("nan")
    return out
