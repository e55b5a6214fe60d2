"""The training loop: Adam on the generative model, the algorithm's sleep/wake phases, logging, checkpoints.

:class:`Trainer` follows scikit-learn habits: hyperparameters in ``__init__``, ``fit(data)`` sets the learnt
state (attributes ending in ``_``). Per iteration (see ``docs/DESIGN.md``)::

    if step % sleep_every == 0:  algo.sleep()
    x = next minibatch
    grads = algo.wake_gradient(x)                  # estimate of grad (1/B) sum_b log p(x_b)
    p.grad = -grads[name] for each model parameter; Adam step    (so Adam *maximises* the likelihood)
    zero recognition grads; algo.step_recognition(x); Adam step on algo.recognition_parameters()

Ownership of the recognition optimiser: the **Trainer** owns both optimisers. An algorithm that trains its
recognition model by gradient descent returns those parameters from ``recognition_parameters()``; its
``step_recognition(x)`` computes its own loss and calls ``backward()`` (it only *fills* ``.grad``, the
Trainer has zeroed them before and takes the Adam step after, with ``train.recognition_lr``). This keeps
learning rates, optimiser state and checkpoints in one place, symmetric with the wake gradient. Algorithms
whose recognition is fitted in closed form during ``sleep()`` (DDC-HM's ridge regressions) return an empty
list and their ``step_recognition`` is a no-op; no recognition optimiser is created for them.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep import io as wio
from wakesleep.config import dump_config, torch_device, torch_dtype
from wakesleep.errors import WakesleepError

__all__ = [
    "Trainer",
    "TrainingDiverged",
    "build_model_from_config",
    "build_algorithm_from_config",
    "load_data",
    "validate_data",
    "moment_gap",
    "train_from_config",
    "write_run",
    "load_run",
    "config_threads",
    "apply_threads",
]


class TrainingDiverged(WakesleepError):
    """Raised when a gradient or a parameter becomes NaN or infinite."""


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
    """
    md, cd = data_moments
    ms, cs = _moments(samples.to(md.device))
    scale = torch.sqrt(torch.clamp(torch.trace(cd), min=1e-300))
    return {
        "mean_gap": float(torch.linalg.vector_norm(md - ms) / scale),
        "cov_gap": float(torch.linalg.matrix_norm(cd - cs) / torch.clamp(torch.linalg.matrix_norm(cd), min=1e-300)),
    }


def _sample_x(model, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` observations from ``model`` (with ``generator`` if the model's ``sample`` accepts one)."""
    with torch.no_grad():
        try:
            return model.sample(n, generator=generator)[-1]
        except TypeError:
            return model.sample(n)[-1]


def _stream_is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------------------
class Trainer:
    """Fit a model with a wake-sleep-style algorithm (the algorithm supplies gradients, the Trainer steps).

    Parameters
    ----------
    algorithm
        An object with the algorithm contract (``sleep``, ``wake_gradient``, ``step_recognition``,
        ``recognition_parameters``, ``state_dict``); its ``model`` attribute is the generative model.
    epochs, batch_size : int
        Passes over the data and minibatch size (the last minibatch of an epoch may be smaller).
    lr, recognition_lr : float
        Adam learning rates of the generative model and of a trained recognition model.
    seed : int
        Seeds the global torch RNG (the algorithm's sampling) and the minibatch order.
    sleep_every : int
        Run ``algorithm.sleep()`` before every ``sleep_every``-th iteration (always before the first).
    log_every : int
        Append a record to ``metrics.jsonl`` (and ``history_``) every this many iterations, at step 0 and at the end.
    checkpoint_every : int
        Write ``out_dir/checkpoint/`` every this many iterations (0: only at the end).
    max_iters : int, optional
        Stop after this many iterations even if the epochs are not done.
    out_dir : path, optional
        Where ``metrics.jsonl`` and ``checkpoint/`` go; nothing is written when None.
    progress : bool, optional
        Show a tqdm bar on stderr; default: only when stderr is a terminal.
    monitor_samples : int
        Model samples drawn at each log step for the moment-gap progress metric (0 disables it).
    callback : callable, optional
        ``callback(trainer, record)`` after each logged record.

    Attributes (after ``fit``)
    --------------------------
    n_iter_, epochs_ : iterations and (fractional) epochs done
    history_ : list of dict, the logged records
    optimizer_, recognition_optimizer_ : the Adam optimisers (the second is None when the algorithm has
        no gradient-trained recognition parameters)
    seconds_ : wall time of ``fit``
    """

    def __init__(
        self,
        algorithm,
        *,
        epochs: int = 10,
        batch_size: int = 100,
        lr: float = 1e-3,
        recognition_lr: float = 1e-3,
        seed: int = 0,
        sleep_every: int = 1,
        log_every: int = 100,
        checkpoint_every: int = 0,
        max_iters: int | None = None,
        out_dir: str | os.PathLike | None = None,
        progress: bool | None = None,
        monitor_samples: int = 1000,
        callback: Callable[[Trainer, dict], None] | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.recognition_lr = recognition_lr
        self.seed = seed
        self.sleep_every = sleep_every
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self.max_iters = max_iters
        self.out_dir = out_dir
        self.progress = progress
        self.monitor_samples = monitor_samples
        self.callback = callback

    @property
    def model(self) -> torch.nn.Module:
        return self.algorithm.model

    # ---------------------------------------------------------------------------------------------------
    def _params(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def _check_finite(self, step: int) -> None:
        for name, p in self.model.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingDiverged(
                    f"training diverged at step {step}: parameter {name!r} became NaN or inf (try a smaller train.lr)"
                )

    def _log(self, record: dict[str, Any]) -> None:
        self.history_.append(record)
        if self.out_dir is not None:
            wio.append_jsonl(Path(self.out_dir) / "metrics.jsonl", record)
        if self.callback is not None:
            self.callback(self, record)

    def fit(self, data: torch.Tensor | np.ndarray) -> Trainer:
        """Train on ``data``: ``[N, Dx]`` array/tensor or a ``wakesleep.data.DataSet``. Returns ``self``."""
        model, algo = self.model, self.algorithm
        ref = next(iter(model.buffers()), None)
        if ref is None:
            ref = next(iter(model.parameters()))
        dtype = getattr(model, "dtype", ref.dtype)
        device = getattr(model, "device", ref.device)
        dataset = data if hasattr(data, "draw_train") else None  # a wakesleep.data.DataSet

        def draw() -> torch.Tensor:
            if dataset is not None:  # a fresh binarisation per epoch under `binarize: dynamic`
                return torch.as_tensor(dataset.draw_train()).to(dtype=dtype, device=device)
            return torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data).to(
                dtype=dtype, device=device
            )

        x_all = draw()
        if x_all.ndim != 2 or x_all.shape[0] == 0:
            raise WakesleepError(f"data must be a non-empty [N, D] array, got shape {tuple(x_all.shape)}")
        n = x_all.shape[0]
        batch = min(self.batch_size, n)
        per_epoch = math.ceil(n / batch)
        total = self.epochs * per_epoch
        if self.max_iters is not None:
            total = min(total, self.max_iters)

        torch.manual_seed(self.seed)
        order_gen = torch.Generator(device="cpu").manual_seed(self.seed)
        monitor_gen = torch.Generator(device=device).manual_seed(self.seed + 3)
        params = self._params()
        self.optimizer_ = torch.optim.Adam([p for _, p in params], lr=self.lr) if params else None
        rec_params = [p for p in algo.recognition_parameters() if p.requires_grad]
        self.recognition_optimizer_ = torch.optim.Adam(rec_params, lr=self.recognition_lr) if rec_params else None
        self.history_: list[dict[str, Any]] = []
        self.n_iter_ = 0
        self.epochs_ = 0.0
        if self.out_dir is not None:
            Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        data_moments = _moments(x_all) if self.monitor_samples > 0 else None

        progress = self.progress if self.progress is not None else _stream_is_tty(sys.stderr)
        from tqdm.auto import tqdm

        bar = tqdm(total=total, disable=not progress, desc="train", unit="it", dynamic_ncols=True, leave=False)
        t0 = time.perf_counter()
        window: dict[str, list[float]] = {}
        last_sleep: dict[str, float] = {}

        def record(step: int) -> dict[str, Any]:
            rec: dict[str, Any] = {
                "step": step,
                "epoch": round(step / per_epoch, 6),
                "seconds": round(time.perf_counter() - t0, 4),
            }
            for k, v in last_sleep.items():
                rec[f"sleep/{k}"] = v
            for k, vs in window.items():
                if vs:
                    rec[k] = float(np.mean(vs))
            window.clear()
            if data_moments is not None:
                with torch.no_grad():
                    rec.update(moment_gap(data_moments, _sample_x(model, self.monitor_samples, monitor_gen)))
            return rec

        def add(prefix: str, info: Mapping[str, Any] | None) -> None:
            for k, v in (info or {}).items():
                try:
                    window.setdefault(f"{prefix}{k}", []).append(float(v))
                except (TypeError, ValueError):
                    pass

        try:
            self._log(record(0))
            step = 0
            first = True
            while step < total:
                if dataset is not None and not first:
                    x_all = draw()
                first = False
                perm = torch.randperm(n, generator=order_gen).to(device)
                for start in range(0, n, batch):
                    if step >= total:
                        break
                    if step % self.sleep_every == 0:
                        info = algo.sleep() or {}
                        last_sleep = {k: float(v) for k, v in info.items() if isinstance(v, int | float)}
                    x = x_all[perm[start : start + batch]]
                    grads = algo.wake_gradient(x)
                    self._apply(grads, step + 1)
                    if self.recognition_optimizer_ is not None:
                        self.recognition_optimizer_.zero_grad(set_to_none=True)
                        rinfo = algo.step_recognition(x)
                        self.recognition_optimizer_.step()
                    else:
                        rinfo = algo.step_recognition(x)
                    add("recognition/", rinfo)
                    window.setdefault("grad_norm", []).append(self._last_grad_norm)
                    step += 1
                    self.n_iter_ = step
                    self.epochs_ = step / per_epoch
                    bar.update(1)
                    if step % self.log_every == 0 or step == total:
                        rec = record(step)
                        self._log(rec)
                        if progress:
                            bar.set_postfix({k: f"{rec[k]:.3g}" for k in ("grad_norm", "cov_gap") if k in rec})
                    if self.out_dir is not None and self.checkpoint_every and step % self.checkpoint_every == 0:
                        self.save_checkpoint(Path(self.out_dir) / "checkpoint")
        finally:
            bar.close()
        self.seconds_ = time.perf_counter() - t0
        if self.out_dir is not None:
            self.save_checkpoint(Path(self.out_dir) / "checkpoint")
        return self

    def _apply(self, grads: Mapping[str, torch.Tensor], step: int) -> None:
        """Set ``p.grad = -grads[name]`` (ascent on the log-likelihood) and take an Adam step."""
        params = dict(self._params())
        unknown = set(grads) - set(dict(self.model.named_parameters()))
        if unknown:
            raise RuntimeError(f"wake_gradient returned unknown parameter names: {sorted(unknown)}")
        sq = 0.0
        for name, p in params.items():
            g = grads.get(name)
            if g is None:
                p.grad = None
                continue
            if not torch.isfinite(g).all():
                raise TrainingDiverged(
                    f"training diverged at step {step}: the wake gradient of {name!r} is NaN or inf "
                    "(try a smaller train.lr or more algorithm.sleep_samples)"
                )
            p.grad = (-g).to(dtype=p.dtype, device=p.device).reshape(p.shape).clone()
            sq += float((g.detach().double() ** 2).sum())
        self._last_grad_norm = math.sqrt(sq)
        if self.optimizer_ is not None:
            self.optimizer_.step()
            self.optimizer_.zero_grad(set_to_none=True)
        self._check_finite(step)

    # ---------------------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write ``model.safetensors``, ``algorithm.safetensors`` (or ``.pt``), ``optimizer.pt``, ``state.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        wio.save_safetensors(self.model, path / "model.safetensors")
        state = self.algorithm.state_dict() or {}
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            wio.save_tensors(path / "algorithm.safetensors", state)
        elif state:
            import io as _io

            buf = _io.BytesIO()
            torch.save(state, buf)
            wio.write_bytes(path / "algorithm.pt", buf.getvalue())
        import io as _io

        buf = _io.BytesIO()
        torch.save(
            {
                "optimizer": self.optimizer_.state_dict() if self.optimizer_ is not None else None,
                "recognition_optimizer": (
                    self.recognition_optimizer_.state_dict() if self.recognition_optimizer_ is not None else None
                ),
            },
            buf,
        )
        wio.write_bytes(path / "optimizer.pt", buf.getvalue())
        wio.save_json(path / "state.json", {"step": self.n_iter_, "epoch": self.epochs_})


# --------------------------------------------------------------------------------------------------------
# building from a resolved config
# --------------------------------------------------------------------------------------------------------
def build_model_from_config(config: Mapping[str, Any]) -> torch.nn.Module:
    """The generative model of a resolved config, on ``train.device`` in ``train.dtype``."""
    from wakesleep.config import model_section
    from wakesleep.models import build_model

    device = torch_device(config["train"]["device"])
    model = build_model(model_section(config))
    dtype = config["train"].get("dtype")
    if dtype is not None:
        model = model.to(dtype=torch_dtype(dtype))
    return model.to(device)


def apply_threads(config: Mapping[str, Any]) -> None:
    """``torch.set_num_threads(train.threads)`` when the config sets it (process-wide; see :func:`config_threads`)."""
    threads = config["train"].get("threads")
    if threads:
        torch.set_num_threads(int(threads))


@contextlib.contextmanager
def config_threads(config: Mapping[str, Any]):
    """Within the block, ``torch.set_num_threads(train.threads)`` when the config sets it (restored after)."""
    threads = config["train"].get("threads")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(before)


def build_algorithm_from_config(config: Mapping[str, Any], model: torch.nn.Module):
    from wakesleep.algorithms import build_algorithm

    options = {k: v for k, v in config["algorithm"].items() if k != "name"}
    return build_algorithm(config["algorithm"]["name"], model, **options)


def validate_data(x: Any, dim: int, where: str) -> np.ndarray:
    """Check a data array: numeric, 2-D ``[N, dim]``, N > 0, finite. Errors name ``where`` (file/field)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise WakesleepError(f"{where}: data must be numeric, got dtype {x.dtype}")
    if x.ndim == 1 and dim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise WakesleepError(f"{where}: data must be a 2-D array [N, {dim}], got shape {x.shape}")
    if x.shape[0] == 0:
        raise WakesleepError(f"{where}: data has no rows")
    if x.shape[1] != dim:
        raise WakesleepError(f"{where}: data has {x.shape[1]} columns but the model's observation layer has dim {dim}")
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise WakesleepError(f"{where}: data contains NaN or inf (first in row {row})")
    return x


def load_data(config: Mapping[str, Any], model: torch.nn.Module):
    """The training data of a resolved config: a tensor (model's dtype and device) or a ``DataSet``.

    ``source: model`` draws ``n`` points from the model at its initial parameters, or at ``true_params``
    (an ``.npz`` keyed by parameter name) if given, with ``data.seed`` (default ``train.seed + 1``);
    the global RNG state is left as it was. Every other source (``file``, ``mnist``, ``patches``, ...)
    goes to :func:`wakesleep.data.load_dataset`, which checks keys, NaN/inf and the number of columns.
    """
    spec = config["data"]
    dim = int(model.obs_dim)
    if spec["source"] == "model":
        gen_model = model
        if spec.get("true_params"):
            gen_model = copy.deepcopy(model)
            wio.load_params_npz(gen_model, spec["true_params"])
        seed = spec.get("seed")
        seed = config["train"]["seed"] + 1 if seed is None else seed
        gen = torch.Generator(device=model.device).manual_seed(seed)
        x = _sample_x(gen_model, int(spec["n"]), gen).detach()
        x = validate_data(x, dim, "data (source: model)")
        return torch.as_tensor(x).to(dtype=model.dtype, device=model.device)
    from wakesleep.data import load_dataset

    spec = {k: v for k, v in spec.items()}
    return load_dataset(spec, dim, dtype=model.dtype).to(device=model.device, dtype=model.dtype)


# --------------------------------------------------------------------------------------------------------
# a whole run (used by `wakesleep train` and the experiments)
# --------------------------------------------------------------------------------------------------------
def train_from_config(
    config: Mapping[str, Any],
    out_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    data: torch.Tensor | np.ndarray | None = None,
    callback: Callable[[Trainer, dict], None] | None = None,
):
    """Build model, algorithm and data from a resolved config and train. Returns ``(model, algo, trainer, data)``.

    With ``out_dir`` the run files are written there (see :func:`write_run`). Pass ``data`` to skip
    ``config['data']``.
    """
    with config_threads(config):
        return _train_from_config(config, out_dir, progress, data, callback)


def trainer_from_config(algo: Any, config: Mapping[str, Any], **overrides: Any) -> Trainer:
    """A :class:`Trainer` for ``algo`` with the hyperparameters of the resolved config's ``train`` section.

    Keyword arguments (``progress``, ``callback``, ``out_dir``, ``monitor_samples``, or any ``train`` key)
    override the config.
    """
    t = config["train"]
    kwargs: dict[str, Any] = {
        "epochs": t["epochs"],
        "batch_size": t["batch_size"],
        "lr": t["lr"],
        "recognition_lr": t["recognition_lr"],
        "seed": t["seed"],
        "sleep_every": t["sleep_every"],
        "log_every": t["log_every"],
        "checkpoint_every": t["checkpoint_every"],
        "max_iters": t["max_iters"],
    }
    kwargs.update(overrides)
    return Trainer(algo, **kwargs)


def _train_from_config(config, out_dir, progress, data, callback):
    t = config["train"]
    torch.manual_seed(t["seed"])
    model = build_model_from_config(config)
    if data is None:
        x = load_data(config, model)
    elif hasattr(data, "draw_train") or (isinstance(data, torch.Tensor) and data.dtype == model.dtype):
        x = data
    else:
        x = torch.as_tensor(validate_data(data, int(model.obs_dim), "data")).to(dtype=model.dtype, device=model.device)
    algo = build_algorithm_from_config(config, model)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        wio.write_text(Path(out_dir) / "config.yaml", dump_config(config))
    trainer = trainer_from_config(algo, config, out_dir=out_dir, progress=progress, callback=callback)
    trainer.fit(x)
    if out_dir is not None:
        write_run(out_dir, model, n_samples=t["samples"], seed=t["seed"])
    return model, algo, trainer, x


def write_run(out_dir: str | os.PathLike, model: torch.nn.Module, n_samples: int = 10000, seed: int = 0) -> None:
    """Write ``model.safetensors`` and ``samples.npz`` (array ``x``, ``n_samples`` model samples)."""
    out_dir = Path(out_dir)
    wio.save_safetensors(model, out_dir / "model.safetensors")
    gen = torch.Generator(device=model.device).manual_seed(seed + 2)
    x = _sample_x(model, n_samples, gen)
    wio.save_npz(out_dir / "samples.npz", x=x)


def load_run(run_dir: str | os.PathLike, device: str | None = None):
    """Load ``(config, model)`` from a directory written by ``wakesleep train``."""
    from wakesleep.config import load_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WakesleepError(f"--run: directory not found: {run_dir}")
    for name in ("config.yaml", "model.safetensors"):
        if not (run_dir / name).is_file():
            raise WakesleepError(f"{run_dir / name}: file not found (not a run directory written by 'wakesleep train')")
    config = load_config(run_dir / "config.yaml", check_model=False)
    if device is not None:
        config["train"]["device"] = device
    # the init file of the original run is not needed: the weights come from model.safetensors
    config["model"].pop("init", None)
    model = build_model_from_config(config)
    wio.load_safetensors(model, run_dir / "model.safetensors")
    return config, model
