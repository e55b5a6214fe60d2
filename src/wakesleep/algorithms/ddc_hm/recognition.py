"""DDC recognition models: r_l(x) ~ E_{p(z_l | x)}[T(z_l)] (paper eqs. 2, 7, 8)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from wakesleep.algorithms.ddc_hm.features import RandomReLUFeatures
from wakesleep.algorithms.ddc_hm.ridge import (
    RIDGE_GRID,
    PhaseSums,
    RunningMoments,
    prediction_error,
    ridge_solve,
    ridge_solve_with_product,
    select_ridge,
    unexplained,
    with_intercept,
)
from wakesleep.ops import matmul

R2_ROWS = 512  # sleep samples in the R^2 diagnostic of each read-out


class TensorList(nn.Module):
    """A list of tensors held as buffers named ``0``, ``1``, ... (``state_dict`` keys ``<prefix>.<i>``), so that
    ``.to()`` moves them and checkpoints hold them; loading replaces the whole list with the state's tensors
    (and keeps it when the state has none, e.g. one saved before the first fit)."""

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self):
        return iter(self._buffers.values())

    def __getitem__(self, i: int) -> Tensor:
        return list(self._buffers.values())[i]

    def append(self, t: Tensor) -> None:
        self.register_buffer(str(len(self._buffers)), t)

    def clear(self) -> None:
        self._buffers.clear()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        found = {}
        for key in [k for k in state_dict if k.startswith(prefix)]:
            name = key[len(prefix) :]
            if not name.isdigit():
                unexpected.append(key)
                continue
            found[int(name)] = state_dict.pop(key)
        if found:
            if sorted(found) != list(range(len(found))):
                errors.append(f"{prefix}: the tensors of a list must be numbered 0, 1, ..., got {sorted(found)}")
                return
            self.clear()
            for i in range(len(found)):
                self.append(found[i])


class LinearDDCRecognition(nn.Module):
    """Random ReLU layer then linear read-outs, fitted in closed form (paper eqs. 7-8).

    ``structure="hierarchical"`` is eq. 8: r_1 = phi_1 h(x), r_2 = phi_2 r_1, ... (layer by layer, bottom up);
    ``structure="direct"`` regresses every r_l on h(x).

    Parameters
    ----------
    in_dim : int
        Dimension of x.
    out_dims : list of int
        K_l for each latent layer, bottom-up (z_1 first).
    hidden : int
        M, size of the fixed random ReLU layer.
    ridge : float or "auto"
        Relative ridge strength; ``"auto"`` picks it on held-out sleep samples at each sleep phase.
    memory : float or sequence of float
        Decay of the running regression statistics across sleep phases (0: only the latest sleep samples).
        A sequence gives candidate decays chosen *prequentially* (adaptive memory): one set of decayed
        statistics is kept per candidate, and before a phase's statistics are added, each candidate's fit
        predicts the phase's (still unseen) sleep targets; the candidate with the smallest prediction error,
        smoothed over evaluations by ``memory_smoothing``, is used. Evaluated at the third fit and then every
        ``ridge_every`` fits; until then ``memory_start`` is used.
    memory_start : float or None
        With candidate decays: start from the candidate nearest to it until the first evaluation (default:
        the largest).
    memory_smoothing : float
        Weight of the previous smoothed prediction errors at each evaluation (0: the latest errors only).
    prequential_ridge : bool
        With candidate decays and ``ridge="auto"``: at each evaluation also choose each read-out's ridge
        prequentially for the chosen decay (the fit from past statistics that best predicts the new phase),
        instead of on a held-out fifth of the current phase. Off by default: it made DDC-HM worse on the
        natural-image patches (docs/RESULTS.md).
    """

    def __init__(
        self,
        in_dim: int,
        out_dims: list[int],
        hidden: int,
        structure: str = "hierarchical",
        ridge: float | str = "auto",
        memory: float | Sequence[float] = 0.0,
        ridge_every: int = 10,
        free_inputs: bool = True,
        include_input: bool | str = True,
        generator: torch.Generator | None = None,
        memory_start: float | None = None,
        memory_smoothing: float = 0.5,
        prequential_ridge: bool = False,
        message: Callable[[Tensor], Tensor] | None = None,
        message_dim: int = 0,
    ) -> None:
        super().__init__()
        if structure not in ("hierarchical", "direct"):
            raise ValueError(f"structure must be 'hierarchical' or 'direct', got {structure!r}")
        self.features = RandomReLUFeatures(
            in_dim, hidden, include_input=include_input, generator=generator, message=message, message_dim=message_dim
        )
        self.out_dims, self.structure, self.ridge = list(out_dims), structure, ridge
        self.adaptive = not isinstance(memory, (int, float))
        decays = sorted({float(m) for m in memory}) if self.adaptive else [float(memory)]
        if not decays or not all(0.0 <= d < 1.0 for d in decays):
            raise ValueError(f"memory: decays must lie in [0, 1), got {memory!r}")
        start = len(decays) - 1
        if memory_start is not None:  # the candidate nearest to it
            start = min(range(len(decays)), key=lambda j: abs(decays[j] - float(memory_start)))
        self.stats = RunningMoments(decays, index=start)
        self.memory_smoothing = float(memory_smoothing)
        self.prequential_ridge = bool(prequential_ridge)
        self.memory_score: Tensor | None = None  # smoothed prequential errors, one per candidate decay
        self.ridge_every = max(int(ridge_every), 1)
        self.free_inputs = bool(free_inputs)
        self.n_fits = 0
        self.reduce = None  # set by set_reducer (DDCHelmholtzMachine.set_reducer) for data-parallel training
        self.maps = TensorList()  # the read-out maps phi_l (state_dict keys maps.<l>)
        self.chosen_ridge: list[float] = []

    def set_reducer(self, reduce: Callable[[Tensor], Tensor] | None) -> None:
        """Sum the regression statistics and the standardisation moments across data-parallel ranks."""
        self.reduce = reduce
        self.stats.reduce = reduce

    def fit(self, x: Tensor, targets: list[Tensor]) -> dict[str, float]:
        """Fit the read-outs to T(z_l) of sleep samples (eq. 7); ``targets`` bottom-up."""
        self.features.fit_standardization(x, self.reduce)
        h = with_intercept(self.features(x))
        sums = self.stats.phase_sums(h, targets)
        info = {}
        k = self.n_fits
        if self.adaptive and self.chosen_ridge and k >= 2 and (k - 2) % self.ridge_every == 0:
            # prequential choice of the memory: every candidate's fit from the past phases predicts this phase
            errs = torch.tensor([self._candidate_error(j, sums) for j in range(len(self.stats.decays))])
            errs = torch.where(torch.isfinite(errs), errs, torch.full_like(errs, float("inf")))
            if self.memory_score is None:
                self.memory_score = errs
            else:
                self.memory_score = self.memory_smoothing * self.memory_score + (1 - self.memory_smoothing) * errs
            self.stats.index = int(torch.argmin(self.memory_score))
            info["recognition_memory_error"] = float(errs[self.stats.index])
            if self.ridge == "auto" and self.prequential_ridge:  # and the ridge for that memory, the same way
                self.chosen_ridge = self._prequential_ridges(self.stats.index, sums)
        self.stats.add(sums)
        info["recognition_memory"] = self.stats.decay
        gram, crosses = self.stats.moments()
        # "auto": choose the ridge on held-out sleep samples at the first fit and every `ridge_every` fits after
        # (with prequential_ridge only at the first fit: later it is chosen with the memory)
        held_out = not (self.adaptive and self.prequential_ridge)
        select = self.ridge == "auto" and (not self.chosen_ridge or (held_out and k % self.ridge_every == 0))
        previous = list(self.chosen_ridge)
        self.n_fits += 1
        self.maps.clear()
        self.chosen_ridge = []

        def choose(level: int, inputs: Tensor, target: Tensor, n_free: int) -> float:
            if self.ridge != "auto":
                return float(self.ridge)
            if select:  # the whole grid the first time; later the previous choice and its two neighbours
                grid = RIDGE_GRID if level >= len(previous) else neighbours(RIDGE_GRID, previous[level])
                return select_ridge(inputs, target, grid=grid, n_free=n_free, reduce=self.reduce, solve_dtype=acc)
            return previous[level]

        # the exact input statistics x (and x x^T) are not shrunk unless free_inputs is False
        free = 1 + (self.features.n_exact if self.free_inputs else 0)
        # the statistics, the solves and the maps between levels are in double precision (RunningMoments); the
        # maps applied to features are stored in the features' dtype
        acc = gram.dtype
        if self.structure == "direct":
            for i, (c, t) in enumerate(zip(crosses, targets, strict=True)):
                lam = choose(i, h, t, free)
                phi = ridge_solve(gram, c, lam, free)
                self.maps.append(phi.to(h.dtype))
                self.chosen_ridge.append(lam)
                info[f"recognition_r2_{i + 1}"] = r_squared(h[:R2_ROWS].to(acc) @ phi, t[:R2_ROWS].to(acc))
            return info
        # hierarchical (eq. 8): the inputs of level l are [r_{l-1}, 1] = h A_l, so their moments follow from
        # the moments of h exactly, which keeps running statistics consistent when earlier maps change.
        a: Tensor | None = None  # None: the identity (level 1 reads h itself)
        # the inputs u of each level are needed at every sleep sample only to choose a ridge on held-out samples;
        # otherwise only the rows of the R^2 diagnostic are propagated
        # (products in the features' dtype, like the statistics; the solves of that choice in double precision)
        rows = h.shape[0] if select else min(h.shape[0], R2_ROWS)
        u = h[:rows]
        g_u = gram
        for i, (c, t) in enumerate(zip(crosses, targets, strict=True)):
            c_u = c if a is None else matmul(a.T, c)
            t_rows = t[:rows].to(u.dtype)
            lam = choose(i, u, t_rows, free)
            phi, g_phi = ridge_solve_with_product(g_u, c_u, lam, free)
            self.maps.append(phi.to(h.dtype))
            self.chosen_ridge.append(lam)
            pred = matmul(u, phi.to(u.dtype))
            info[f"recognition_r2_{i + 1}"] = r_squared(pred, t_rows)
            # u_{l+1} = u_l b with b = [phi, e_last], so A_{l+1} = A_l b (= [A_l phi, e_last]) and the next Gram
            # A_{l+1}^T G A_{l+1} = b^T (A_l^T G A_l) b, with (A_l^T G A_l) b = [G_u phi, G_u e_last] read off the
            # solve (ridge_solve_with_product): K^2 M' work per level instead of K M'^2 + K^2 M'
            b = with_intercept_map(phi, g_u.shape[0])
            a = b if a is None else matmul(a, b)
            if i + 1 < len(crosses):
                g_u = matmul(b.T, torch.cat([g_phi, g_u[:, -1:]], dim=1))
                g_u = (g_u + g_u.T) / 2  # symmetric up to the solve's rounding
            u = with_intercept(pred)
            free = 1
        return info

    def _coefficients(self, gram: Tensor, crosses: list[Tensor], ridges: list[float]) -> list[Tensor]:
        """B_l with r_l = h B_l for read-outs fitted from the moments of h (``gram``, ``crosses``) with fixed
        ridges: the whole chain of eq. 8 as a linear map of h."""
        free = 1 + (self.features.n_exact if self.free_inputs else 0)
        if self.structure == "direct":
            return [ridge_solve(gram, c, lam, free) for c, lam in zip(crosses, ridges, strict=True)]
        coefs: list[Tensor] = []
        a: Tensor | None = None
        for c, lam in zip(crosses, ridges, strict=True):
            g_u, c_u = (gram, c) if a is None else (a.T @ gram @ a, a.T @ c)
            phi = ridge_solve(g_u, c_u, lam, free)
            coefs.append(phi if a is None else a @ phi)
            a = with_intercept_map(coefs[-1], gram.shape[0])
            free = 1
        return coefs

    def _prequential_ridges(self, j: int, sums: PhaseSums) -> list[float]:
        """Per read-out (bottom-up, each given the ones below), the ridge from ``RIDGE_GRID`` whose fit from the
        statistics of candidate decay ``j`` best predicts the new phase (``sums``, not yet added)."""
        gram, crosses = self.stats.moments(j)
        free = 1 + (self.features.n_exact if self.free_inputs else 0)
        ridges: list[float] = []
        a: Tensor | None = None
        for level, c in enumerate(crosses):
            g_u, c_u = (gram, c) if a is None else (a.T @ gram @ a, a.T @ c)
            best: tuple[float, float, Tensor | None] = (float("inf"), self.chosen_ridge[level], None)
            for lam in RIDGE_GRID:
                try:
                    phi = ridge_solve(g_u, c_u, lam, free)
                except (RuntimeError, FloatingPointError):
                    continue
                coef = phi if a is None else a @ phi
                err = unexplained(sums, level, coef)
                if err < best[0]:
                    best = (err, lam, coef)
            ridges.append(best[1])
            if self.structure == "hierarchical":
                if best[2] is None:
                    return ridges + self.chosen_ridge[level + 1 :]
                a = with_intercept_map(best[2], gram.shape[0])
                free = 1
        return ridges

    def _candidate_error(self, j: int, sums: PhaseSums) -> float:
        """Prediction error on a new phase (``sums``, not yet added) of the fit from candidate decay ``j``."""
        gram, crosses = self.stats.moments(j)
        try:
            coefs = self._coefficients(gram, crosses, self.chosen_ridge)
        except (RuntimeError, FloatingPointError):
            return float("inf")
        return prediction_error(sums, coefs)

    def fit_state(self) -> dict[str, Tensor]:
        """What the fit carries from phase to phase besides the maps (checkpoints): the running statistics, the
        number of fits, the chosen ridges and the adaptive memory's scores, as tensors (empty before a fit)."""
        if self.n_fits == 0:
            return {}
        out = {f"stats.{k}": v for k, v in self.stats.state_tensors().items()}
        out["n_fits"] = torch.tensor(self.n_fits)
        out["chosen_ridge"] = torch.tensor(self.chosen_ridge, dtype=torch.float64)
        if self.memory_score is not None:
            out["memory_score"] = self.memory_score.clone()
        return out

    def load_fit_state(self, state: dict[str, Tensor]) -> None:
        if "n_fits" not in state:
            return
        self.stats.load_state_tensors({k[len("stats.") :]: v for k, v in state.items() if k.startswith("stats.")})
        self.n_fits = int(state["n_fits"])
        self.chosen_ridge = [float(v) for v in state["chosen_ridge"].tolist()]
        self.memory_score = state["memory_score"].clone() if "memory_score" in state else None

    def forward(self, x: Tensor) -> list[Tensor]:
        """r_l(x) bottom-up, each ``[B, K_l]``."""
        h = with_intercept(self.features(x))
        out, u = [], h
        for phi in self.maps:
            r = matmul(h if self.structure == "direct" else u, phi)  # oneDNN for large float32 products (_linear)
            out.append(r)
            u = with_intercept(r)
        return out


def neighbours(grid: tuple[float, ...], value: float) -> tuple[float, ...]:
    """``value``'s grid point and the points on either side of it (a re-selection costs 3 factorisations, not 10)."""
    i = min(range(len(grid)), key=lambda j: abs(grid[j] - value))
    return grid[max(i - 1, 0) : i + 2]


def with_intercept_map(phi: Tensor, n_in: int) -> Tensor:
    """``[phi, e_last]``: maps [features, 1] to [features @ phi, 1] (the last input column is the constant)."""
    e = torch.zeros(phi.shape[0], 1, dtype=phi.dtype, device=phi.device)
    e[-1, 0] = 1.0
    return torch.cat([phi, e], dim=1)


def r_squared(pred: Tensor, target: Tensor, max_rows: int = R2_ROWS) -> float:
    """Coefficient of determination (on the first ``max_rows`` rows: a diagnostic, not a fit criterion)."""
    pred, target = pred[:max_rows], target[:max_rows]
    var = target.var(0).sum()
    return float(1 - ((pred - target) ** 2).mean(0).sum() / var) if var > 0 else 1.0
