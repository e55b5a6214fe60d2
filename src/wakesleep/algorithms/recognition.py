"""DDC recognition models: r_l(x) ~ E_{p(z_l | x)}[T(z_l)] (paper eqs. 2, 7, 8)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wakesleep.algorithms.features import RandomReLUFeatures, Standardizer
from wakesleep.algorithms.ridge import RunningMoments, ridge_solve, select_ridge, with_intercept


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
    memory : float
        Decay of the running regression statistics across sleep phases (0: only the latest sleep samples).
    """

    def __init__(
        self,
        in_dim: int,
        out_dims: list[int],
        hidden: int,
        structure: str = "hierarchical",
        ridge: float | str = "auto",
        memory: float = 0.0,
        ridge_every: int = 10,
        free_inputs: bool = True,
        include_input: bool | str = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if structure not in ("hierarchical", "direct"):
            raise ValueError(f"structure must be 'hierarchical' or 'direct', got {structure!r}")
        self.features = RandomReLUFeatures(in_dim, hidden, include_input=include_input, generator=generator)
        self.out_dims, self.structure, self.ridge = list(out_dims), structure, ridge
        self.stats = RunningMoments(memory)
        self.ridge_every = max(int(ridge_every), 1)
        self.free_inputs = bool(free_inputs)
        self.n_fits = 0
        self.reduce = None  # set by DDCHelmholtzMachine.set_reducer for data-parallel training
        self.maps: list[Tensor] = []
        self.chosen_ridge: list[float] = []

    def fit(self, x: Tensor, targets: list[Tensor]) -> dict[str, float]:
        """Fit the read-outs to T(z_l) of sleep samples (eq. 7); ``targets`` bottom-up."""
        if not self.features.standardize.fitted:
            self.features.standardize.fit(x, self.reduce)
        h = with_intercept(self.features(x))
        self.stats.update(h, targets)
        gram, crosses = self.stats.moments()
        # "auto": choose the ridge on held-out sleep samples at the first fit and every `ridge_every` fits after
        select = self.ridge == "auto" and (self.n_fits % self.ridge_every == 0 or not self.chosen_ridge)
        previous = list(self.chosen_ridge)
        self.n_fits += 1
        self.maps, self.chosen_ridge = [], []
        info = {}

        def choose(level: int, inputs: Tensor, target: Tensor, n_free: int) -> float:
            if self.ridge != "auto":
                return float(self.ridge)
            if select:
                return select_ridge(inputs, target, n_free=n_free, reduce=self.reduce)
            return previous[level]

        # the exact input statistics x (and x x^T) are not shrunk unless free_inputs is False
        free = 1 + (self.features.n_exact if self.free_inputs else 0)
        if self.structure == "direct":
            for i, (c, t) in enumerate(zip(crosses, targets, strict=True)):
                lam = choose(i, h, t, free)
                self.maps.append(ridge_solve(gram, c, lam, free))
                self.chosen_ridge.append(lam)
                info[f"recognition_r2_{i + 1}"] = _r2(h[:512] @ self.maps[-1], t[:512])
            return info
        # hierarchical (eq. 8): the inputs of level l are [r_{l-1}, 1] = h A_l, so their moments follow from
        # the moments of h exactly, which keeps running statistics consistent when earlier maps change.
        a = torch.eye(h.shape[1], dtype=h.dtype, device=h.device)
        u = h
        for i, (c, t) in enumerate(zip(crosses, targets, strict=True)):
            g_u, c_u = a.T @ gram @ a, a.T @ c
            lam = choose(i, u, t, free)
            phi = ridge_solve(g_u, c_u, lam, free)
            self.maps.append(phi)
            self.chosen_ridge.append(lam)
            pred = u @ phi
            info[f"recognition_r2_{i + 1}"] = _r2(pred, t)
            a = a @ with_intercept_map(phi, h.shape[1])
            u = with_intercept(pred)
            free = 1
        return info

    def forward(self, x: Tensor) -> list[Tensor]:
        """r_l(x) bottom-up, each ``[B, K_l]``."""
        h = with_intercept(self.features(x))
        out, u = [], h
        for phi in self.maps:
            r = (h if self.structure == "direct" else u) @ phi
            out.append(r)
            u = with_intercept(r)
        return out


def with_intercept_map(phi: Tensor, n_in: int) -> Tensor:
    """``[phi, e_last]``: maps [features, 1] to [features @ phi, 1] (the last input column is the constant)."""
    e = torch.zeros(phi.shape[0], 1, dtype=phi.dtype, device=phi.device)
    e[-1, 0] = 1.0
    return torch.cat([phi, e], dim=1)


def _r2(pred: Tensor, target: Tensor, max_rows: int = 512) -> float:
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

    def forward(self, x: Tensor) -> list[Tensor]:
        out = self.net(self.standardize(x))
        return list(torch.split(out, self.out_dims, dim=-1))
