"""DDC recognition models trained by Adam: r_l(x) ~ E_{p(z_l | x)}[T(z_l)] (paper eqs. 2 and 7; §8's
"neural network between each latent variable layer"). The closed-form read-outs (eqs. 7-8) are in
:mod:`wakesleep.algorithms.ddc_hm.recognition`."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from wakesleep.algorithms.ddc_hm.features import Standardizer
from wakesleep.algorithms.ddc_hm.recognition import R2_ROWS, TensorList, r_squared
from wakesleep.algorithms.ddc_hm.ridge import ridge_solve, select_ridge, with_intercept
from wakesleep.ops import matmul


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
        return {"recognition_loss": float(loss.detach()), "recognition_r2": r_squared(pred, y)}

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
                preds = self.forward(x[:R2_ROWS])
                for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
                    info[f"recognition_heldout_r2_{i + 1}"] = r_squared(p, t[:R2_ROWS].to(p.dtype))
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
                self._calibrated(phase_rows[:R2_ROWS, :d_in])
                if self.calibrate != "none"
                else self._outputs(phase_rows[:R2_ROWS, :d_in])
            )
            for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
                info[f"recognition_r2_{i + 1}"] = r_squared(p, t[:R2_ROWS].to(p.dtype))
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
