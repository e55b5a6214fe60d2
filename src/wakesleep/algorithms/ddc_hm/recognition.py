"""DDC recognition models: r_l(x) ~ E_{p(z_l | x)}[T(z_l)] (paper eqs. 2, 7, 8)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from wakesleep.algorithms.ddc_hm.features import RandomReLUFeatures, Standardizer
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

_R2_ROWS = 512  # sleep samples in the R^2 diagnostic of each read-out


def adam_state_tensors(optimizer: torch.optim.Adam | None) -> dict[str, Tensor]:
    """An Adam optimiser's moments and step counts as named tensors ``adam.<param>.<key>`` (empty if None)."""
    if optimizer is None:
        return {}
    out = {}
    for i, st in optimizer.state_dict()["state"].items():
        for k, v in st.items():
            out[f"adam.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def adam_from_state_tensors(params: Iterable[nn.Parameter], lr: float, state: dict[str, Tensor]) -> torch.optim.Adam:
    """A new Adam over ``params`` holding the state :func:`adam_state_tensors` saved."""
    optimizer = torch.optim.Adam(params, lr=lr)
    per_param: dict[int, dict[str, Tensor]] = {}
    for key, v in state.items():
        _, i, k = key.split(".", 2)
        per_param.setdefault(int(i), {})[k] = v.clone()
    optimizer.load_state_dict({"state": per_param, "param_groups": optimizer.state_dict()["param_groups"]})
    return optimizer


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
                info[f"recognition_r2_{i + 1}"] = _r2(h[:_R2_ROWS].to(acc) @ phi, t[:_R2_ROWS].to(acc))
            return info
        # hierarchical (eq. 8): the inputs of level l are [r_{l-1}, 1] = h A_l, so their moments follow from
        # the moments of h exactly, which keeps running statistics consistent when earlier maps change.
        a: Tensor | None = None  # None: the identity (level 1 reads h itself)
        # the inputs u of each level are needed at every sleep sample only to choose a ridge on held-out samples;
        # otherwise only the rows of the R^2 diagnostic are propagated
        # (products in the features' dtype, like the statistics; the solves of that choice in double precision)
        rows = h.shape[0] if select else min(h.shape[0], _R2_ROWS)
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
            info[f"recognition_r2_{i + 1}"] = _r2(pred, t_rows)
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


def _r2(pred: Tensor, target: Tensor, max_rows: int = _R2_ROWS) -> float:
    """Coefficient of determination (on the first ``max_rows`` rows: a diagnostic, not a fit criterion)."""
    pred, target = pred[:max_rows], target[:max_rows]
    var = target.var(0).sum()
    return float(1 - ((pred - target) ** 2).mean(0).sum() / var) if var > 0 else 1.0


class MLPDDCRecognition(nn.Module):
    """A multilayer perceptron x -> [r_1, ..., r_L], trained by Adam on the squared loss of eq. 7 each sleep phase."""

    def __init__(
        self,
        in_dim: int,
        out_dims: list[int],
        hidden: list[int],
        steps: int = 50,
        lr: float = 1e-3,
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        self.standardize = Standardizer(in_dim)
        layers: list[nn.Module] = []
        d = in_dim
        for hdim in hidden:
            layers += [nn.Linear(d, hdim), nn.Tanh()]
            d = hdim
        layers.append(nn.Linear(d, sum(out_dims)))
        self.net = nn.Sequential(*layers)
        self.out_dims, self.steps, self.lr, self.batch_size = list(out_dims), steps, lr, batch_size
        self.optimizer: torch.optim.Optimizer | None = None
        self.reduce = None

    def set_reducer(self, reduce: Callable[[Tensor], Tensor] | None) -> None:
        """Sum the standardisation moments across data-parallel ranks."""
        self.reduce = reduce

    def fit(self, x: Tensor, targets: list[Tensor]) -> dict[str, float]:
        if not self.standardize.fitted:
            self.standardize.fit(x, self.reduce)
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        y = torch.cat(targets, dim=-1)
        xh = self.standardize(x)
        loss = torch.tensor(0.0)
        with torch.enable_grad():
            for _ in range(self.steps):
                idx = torch.randint(0, x.shape[0], (min(self.batch_size, x.shape[0]),), device=x.device)
                loss = ((self.net(xh[idx]) - y[idx]) ** 2).sum(-1).mean()
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
        with torch.no_grad():
            pred = self.net(xh)
        return {"recognition_loss": float(loss.detach()), "recognition_r2": _r2(pred, y)}

    def fit_state(self) -> dict[str, Tensor]:
        """Adam's moments and step counts as named tensors (checkpoints; empty before the first fit)."""
        return adam_state_tensors(self.optimizer)

    def load_fit_state(self, state: dict[str, Tensor]) -> None:
        """Restore Adam's state saved by :meth:`fit_state`."""
        if state:
            self.optimizer = adam_from_state_tensors(self.net.parameters(), self.lr, state)

    def forward(self, x: Tensor) -> list[Tensor]:
        out = self.net(self.standardize(x))
        return list(torch.split(out, self.out_dims, dim=-1))


class DeepDDCRecognition(nn.Module):
    """One trained network per latent layer, r_l(x) ~ E[T(z_l) | x] (eq. 2), fitted by Adam to eq. 7.

    The paper's §8 remedy for the restrictive eq. 8: "a neural network between each latent variable layer".
    With ``chain=True`` the networks follow the model's hierarchy, x -> r_1 -> r_2 -> ... (eq. 8 with each linear
    map phi_l replaced by a network, every network trained on its own layer's targets with its input held fixed,
    layer by layer); with ``chain=False`` every r_l reads the standardised x. Each output head is constrained
    to the range of its encoding function (``bounds``): ``lo + (hi - lo) sigmoid(u)`` where both bounds are
    finite (sigmoid and tanh features, the standardised value of a Bernoulli latent), ``lo + softplus(u)``
    where only the lower one is (a second moment), ``u`` otherwise; so r_l is always a possible expectation of
    T(z_l).

    Each sleep phase runs ``steps`` Adam steps on minibatches of ``batch_size`` rows of that phase's sleep
    samples (and, with ``replay`` > 0, of the ``replay`` phases before it), minimising
    ``sum_l |r_l(x_s) - T(z_l^s)|^2`` (eq. 7); with ``fresh``, every step draws its own ``batch_size`` new
    samples instead (``draw`` of :meth:`fit`). Weights, Adam's moments and the replayed samples are carried
    across phases and are the algorithm's state (checkpoints resume bit for bit).

    With ``calibrate="features"``, after the Adam steps each r_l is replaced by a ridge regression (eq. 7 in
    closed form, intercept unpenalised, ridge chosen on the last 20 % of the phase's samples) of T(z_l) on
    ``[network l's last hidden layer, its head's output, 1]`` (and the standardised x for r_1) over the phase's
    sleep samples, clipped to the encoding functions' range; with ``"residual"`` the same regression fits the
    network's error T(z_l) - r_l and is added to r_l (the ridge then shrinks towards the network, not towards a
    constant); ``"mean"`` regresses that error on [x, 1] for r_1 and on the constant alone for the others, the
    fewest inputs that give the two properties below. Like the closed-form read-out with
    ``recognition_input: linear``, the regression makes the mean of r_l over the sleep samples equal that of
    T(z_l), and its error orthogonal to its inputs (x among them); without that a network's mean error over the
    model's own samples biases every wake gradient, also at the maximum-likelihood model (docs/ddc_hm.md).

    Parameters
    ----------
    in_dim : int
        Dimension of x.
    out_dims : list of int
        K_l for each latent layer, bottom-up (z_1 first).
    layers : int
        Hidden layers of each network (0: a linear map into the constrained head).
    width : int
        Units of each hidden layer.
    steps : int
        Adam steps per sleep phase.
    lr : float
        Adam's learning rate.
    batch_size : int
        Sleep samples per Adam step.
    replay : int
        Earlier sleep phases whose samples are kept and trained on with the newest.
    fresh : bool
        Train every step on a new batch from ``draw`` (given to :meth:`fit`) rather than on the phase's samples.
    calibrate : {"none", "features", "residual", "mean"}
        Read each r_l out of the network's features by a closed-form regression on the phase's samples
        (``features``), or add to the network's r_l such a regression of its error (``residual``), or one of its
        error on [x, 1] for r_1 and on the constant for the others (``mean``).
    chain : bool
        x -> r_1 -> r_2 (True) or x -> r_l for every l (False).
    bounds : callable, optional
        ``bounds() -> [(lo_l, hi_l), ...]`` bottom-up, each ``[K_l]``: the range of the encoding functions,
        read once at the first fit (the encoders' standardisation is fixed by then).
    generator : torch.Generator, optional
        Source of the initial weights (so that they do not depend on the global random state).
    """

    def __init__(
        self,
        in_dim: int,
        out_dims: list[int],
        layers: int = 2,
        width: int = 300,
        steps: int = 50,
        lr: float = 1e-3,
        batch_size: int = 100,
        replay: int = 0,
        fresh: bool = False,
        calibrate: str = "none",
        chain: bool = True,
        bounds: Callable[[], list[tuple[Tensor, Tensor]]] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.standardize = Standardizer(in_dim)
        self.out_dims, self.steps, self.lr, self.batch_size = list(out_dims), int(steps), float(lr), int(batch_size)
        self.replay, self.fresh, self.chain, self._bounds_fn = int(replay), bool(fresh), bool(chain), bounds
        if calibrate not in ("none", "features", "residual", "mean"):
            raise ValueError(
                f"DeepDDCRecognition: calibrate must be none, features, residual or mean, got {calibrate!r}"
            )
        self.calibrate = calibrate
        nets = []
        for i, k in enumerate(self.out_dims):
            d = in_dim if (i == 0 or not self.chain) else self.out_dims[i - 1]
            mods: list[nn.Module] = []
            for _ in range(layers):
                mods += [nn.Linear(d, width), nn.ReLU()]
                d = width
            mods.append(nn.Linear(d, k))
            nets.append(nn.Sequential(*mods))
        self.nets = nn.ModuleList(nets)
        with torch.no_grad():  # PyTorch's default initialisation, from our generator
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    bound = 1.0 / m.in_features**0.5
                    m.weight.copy_(torch.rand(m.weight.shape, generator=generator) * 2 * bound - bound)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=generator) * 2 * bound - bound)
        self.bounds = TensorList()  # lo_1, hi_1, lo_2, hi_2, ... (state: set at the first fit)
        self.memory = TensorList()  # replayed [x, T(z_1), T(z_2), ...] rows of earlier phases (state)
        self.calibration = TensorList()  # calibrate: each layer's read-out map (state: set at every fit)
        self.optimizer: torch.optim.Optimizer | None = None
        self.reduce = None

    def set_reducer(self, reduce: Callable[[Tensor], Tensor] | None) -> None:
        """Sum the standardisation moments and average the networks' gradients across data-parallel ranks."""
        self.reduce = reduce

    def _head(self, i: int, u: Tensor) -> Tensor:
        if len(self.bounds) == 0:
            return u
        lo, hi = self.bounds[2 * i], self.bounds[2 * i + 1]
        both, lower = torch.isfinite(lo) & torch.isfinite(hi), torch.isfinite(lo) & ~torch.isfinite(hi)
        lo0, span = torch.where(torch.isfinite(lo), lo, 0.0), torch.where(both, hi - lo, 1.0)
        return torch.where(both, lo0 + span * torch.sigmoid(u), torch.where(lower, lo0 + nn.functional.softplus(u), u))

    def _outputs(self, xh: Tensor, hidden: list[Tensor] | None = None) -> list[Tensor]:
        """The networks' (uncalibrated) r_l; each one's last hidden layer appended to ``hidden`` if given."""
        out: list[Tensor] = []
        for i, net in enumerate(self.nets):
            inp = xh if (i == 0 or not self.chain) else out[-1].detach()  # layer by layer: inputs held fixed
            h = net[:-1](inp)
            if hidden is not None:
                hidden.append(h)
            out.append(self._head(i, net[-1](h)))
        return out

    def _calibration_inputs(self, xh: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The inputs of the calibrating regressions, ``[last hidden layer, head output, 1]`` of each network (and
        for r_1 the standardised x: the observation layer's gradient is a product of x and E_q[e(z_1) | x], so
        its error must be orthogonal to x), and the networks' outputs."""
        hidden: list[Tensor] = []
        out = self._outputs(xh, hidden)
        if self.calibrate == "mean":  # r_1's error on [x, 1], every other r_l's on the constant
            inputs = [xh] + [h[:, :0] for h in hidden[1:]]
        else:
            inputs = [torch.cat([h, r], dim=-1) for h, r in zip(hidden, out, strict=True)]
            inputs[0] = torch.cat([inputs[0], xh], dim=-1)
        return [with_intercept(u) for u in inputs], out

    def _calibrated(self, xh: Tensor) -> list[Tensor]:
        calibrated = []
        inputs, out = self._calibration_inputs(xh)
        for i, (u, r) in enumerate(zip(inputs, out, strict=True)):
            fit = matmul(u, self.calibration[i].to(u.dtype))
            r = fit if self.calibrate == "features" else r + fit
            if len(self.bounds):
                r = torch.clamp(r, self.bounds[2 * i], self.bounds[2 * i + 1])
            calibrated.append(r)
        return calibrated

    def _fit_calibration(self, xh: Tensor, targets: list[Tensor]) -> dict[str, float]:
        """Ridge-regress T(z_l) (``residual``: T(z_l) - r_l) on each network's features over the phase's
        samples."""
        info = {}
        self.calibration.clear()
        inputs, out = self._calibration_inputs(xh)
        for i, (u, r, t) in enumerate(zip(inputs, out, targets, strict=True)):
            t = t.to(u.dtype) - (0.0 if self.calibrate == "features" else r)
            lam = select_ridge(u, t, n_free=1, reduce=self.reduce, solve_dtype=torch.float64)
            n = u.new_tensor([u.shape[0]], dtype=torch.float64)
            gram, cross = matmul(u.T, u).double(), matmul(u.T, t).double()
            if self.reduce is not None:
                gram, cross, n = self.reduce(gram), self.reduce(cross), self.reduce(n)
            self.calibration.append(ridge_solve(gram / n, cross / n, lam, 1).to(u.dtype))
            info[f"recognition_calibration_ridge_{i + 1}"] = lam
        return info

    def fit(
        self, x: Tensor, targets: list[Tensor], draw: Callable[[int], tuple[Tensor, list[Tensor]]] | None = None
    ) -> dict[str, float]:
        """``steps`` Adam steps of eq. 7 on the sleep samples ``x`` with targets T(z_l) (bottom-up).

        ``draw(n) -> (x, [T(z_1), T(z_2), ...])``: new samples from the model, used for every step when
        ``fresh`` (required then). Besides the loss, the info holds the R^2 of each r_l on the phase's samples
        after the steps (``recognition_r2_l``) and, from the second phase on, before them
        (``recognition_heldout_r2_l``: the networks have not seen these samples).
        """
        if self.fresh and draw is None:
            raise ValueError("DeepDDCRecognition.fit: fresh=True needs draw")
        if not self.standardize.fitted:
            self.standardize.fit(x, self.reduce)
        if len(self.bounds) == 0 and self._bounds_fn is not None:
            for lo, hi in self._bounds_fn():
                self.bounds.append(lo.to(device=x.device, dtype=x.dtype))
                self.bounds.append(hi.to(device=x.device, dtype=x.dtype))
        info: dict[str, float] = {}
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        else:
            with torch.no_grad():
                preds = self.forward(x[:_R2_ROWS])
                for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
                    info[f"recognition_heldout_r2_{i + 1}"] = _r2(p, t[:_R2_ROWS].to(p.dtype))
        phase_rows = torch.cat([self.standardize(x)] + [t.to(x.dtype) for t in targets], dim=-1).detach()
        pool = torch.cat([phase_rows, *self.memory], dim=0) if len(self.memory) else phase_rows
        if self.replay > 0:  # keep this phase for the next `replay` phases
            kept = [phase_rows, *self.memory][: self.replay]
            self.memory.clear()
            for t in kept:
                self.memory.append(t)
        d_in = x.shape[1]
        splits = [d_in, *self.out_dims]
        loss = torch.zeros((), dtype=x.dtype, device=x.device)
        ones = torch.ones((), dtype=x.dtype, device=x.device)
        ranks = self.reduce(ones.clone()) if self.reduce is not None else ones
        with torch.enable_grad():
            for _ in range(self.steps):
                if self.fresh:
                    with torch.no_grad():
                        xb, tb = draw(self.batch_size)
                        rows = [self.standardize(xb), *(t.to(x.dtype) for t in tb)]
                else:
                    idx = torch.randint(0, pool.shape[0], (min(self.batch_size, pool.shape[0]),), device=x.device)
                    rows = torch.split(pool[idx], splits, dim=-1)
                preds = self._outputs(rows[0])
                loss = sum(((p - t) ** 2).sum(-1).mean() for p, t in zip(preds, rows[1:], strict=True))
                self.optimizer.zero_grad()
                loss.backward()
                if self.reduce is not None:
                    for p in self.parameters():
                        if p.grad is not None:
                            p.grad = self.reduce(p.grad) / ranks
                self.optimizer.step()
        info["recognition_loss"] = float(loss.detach())
        with torch.no_grad():
            if self.calibrate != "none":
                info.update(self._fit_calibration(phase_rows[:, :d_in], targets))
            preds = (
                self._calibrated(phase_rows[:_R2_ROWS, :d_in])
                if self.calibrate != "none"
                else self._outputs(phase_rows[:_R2_ROWS, :d_in])
            )
            for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
                info[f"recognition_r2_{i + 1}"] = _r2(p, t[:_R2_ROWS].to(p.dtype))
        return info

    def fit_state(self) -> dict[str, Tensor]:
        """Adam's moments and step counts as named tensors (checkpoints; empty before the first fit)."""
        return adam_state_tensors(self.optimizer)

    def load_fit_state(self, state: dict[str, Tensor]) -> None:
        """Restore Adam's state saved by :meth:`fit_state`."""
        if state:
            self.optimizer = adam_from_state_tensors(self.parameters(), self.lr, state)

    def forward(self, x: Tensor) -> list[Tensor]:
        """r_l(x) bottom-up, each ``[B, K_l]``."""
        xh = self.standardize(x)
        return self._calibrated(xh) if self.calibrate != "none" and len(self.calibration) else self._outputs(xh)
