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

Checkpoints: :meth:`Trainer.save_checkpoint` writes the whole training state (model, algorithm, optimisers,
counters, random streams) atomically as a directory, and ``Trainer.fit(data, resume_from=dir)`` continues
from it (bit for bit under the conditions in its docstring; ``wakesleep train --resume`` uses it).
"""

from __future__ import annotations

import contextlib
import copy
import io as io_
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep import io as wio
from wakesleep.config import dump_config, torch_device, torch_dtype
from wakesleep.errors import WakesleepError
from wakesleep.models._linear import PRECISIONS, autocast

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
# checkpoint files
# --------------------------------------------------------------------------------------------------------
#: Version of the checkpoint layout written by :meth:`Trainer.save_checkpoint` (``state.json`` key ``format``).
CHECKPOINT_FORMAT = 1


@dataclass
class _Checkpoint:
    """The contents of a checkpoint directory, read and checked for readability (not yet for fit)."""

    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    algorithm: dict[str, Any]
    algorithm_pickled: bool
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]


def _torch_bytes(obj: Any) -> bytes:
    buf = io_.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise WakesleepError(f"{path}: file not found")
    try:
        return torch.load(io_.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle and zip errors of every kind
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise WakesleepError(f"{path}: not a readable checkpoint file ({first})") from None


def read_checkpoint(path: str | os.PathLike) -> _Checkpoint:
    """Read every file of a checkpoint directory; a missing or unreadable one raises :class:`WakesleepError`."""
    path = Path(path)
    if not path.is_dir():
        hint = ""
        if path.parent.is_dir():
            left = sorted(
                q.name
                for q in path.parent.glob(f".{path.name}.*")
                if q.is_dir() and (q / "state.json").is_file()  # complete: state.json is written last
            )
            if left:
                hint = f"; a write was interrupted and left the complete checkpoint {path.parent / left[-1]}"
        raise WakesleepError(f"{path}: checkpoint directory not found{hint}")
    state = wio.load_json(path / "state.json")
    if not isinstance(state, dict):
        raise WakesleepError(f"{path / 'state.json'}: not a checkpoint state (expected a JSON object)")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise WakesleepError(f"{path / 'state.json'}: field 'step' must be a non-negative integer, got {step!r}")
    model = wio.load_tensors(path / "model.safetensors")
    pickled = False
    if (path / "algorithm.safetensors").is_file():
        algorithm = wio.load_tensors(path / "algorithm.safetensors")
    elif (path / "algorithm.pt").is_file():
        algorithm, pickled = _torch_load(path / "algorithm.pt"), True
        if not isinstance(algorithm, dict):
            raise WakesleepError(f"{path / 'algorithm.pt'}: not an algorithm state (expected a dict)")
    else:
        algorithm = {}
    optimizer = _torch_load(path / "optimizer.pt")
    if not isinstance(optimizer, dict) or not {"optimizer", "recognition_optimizer"} <= set(optimizer):
        raise WakesleepError(f"{path / 'optimizer.pt'}: not an optimiser state written by Trainer.save_checkpoint")
    rng = wio.load_tensors(path / "rng.safetensors")
    return _Checkpoint(path, state, model, algorithm, pickled, optimizer, rng)


def _check_tensors(where: Path, saved: Mapping[str, Any], own: Mapping[str, Any], what: str, exact: bool) -> None:
    """Every tensor of ``own`` must be in ``saved`` with the same shape (and, if ``exact``, nothing else)."""
    missing = [k for k in own if k not in saved]
    if missing:
        raise WakesleepError(f"{where}: no tensor {missing[0]!r}, which the {what} has (config and checkpoint differ)")
    if exact:
        unknown = [k for k in saved if k not in own]
        if unknown:
            raise WakesleepError(f"{where}: tensor {unknown[0]!r} is not in the {what} (config and checkpoint differ)")
    for k, v in own.items():
        s = saved[k]
        if isinstance(v, torch.Tensor) and isinstance(s, torch.Tensor) and tuple(s.shape) != tuple(v.shape):
            raise WakesleepError(
                f"{where}: tensor {k!r} has shape {tuple(s.shape)} in the checkpoint, the {what} has "
                f"{tuple(v.shape)} (config and checkpoint differ)"
            )


def adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with PyTorch's fused kernel where the parameters' device and dtype allow it (one kernel for all
    parameters instead of several passes per tensor), else the default.

    The fused kernel updates the parameters in place without bumping their version counters, so code that caches
    results per parameter version must also compare values (``DDCHelmholtzMachine`` does).
    """
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def _check_optimizer(where: Path, saved: Any, params: list[torch.Tensor], what: str) -> None:
    """``saved`` must be an Adam state for exactly ``params`` (count and shapes)."""
    if saved is None:
        if params:
            raise WakesleepError(f"{where}: no optimiser state for the {what}, which this run trains")
        return
    if not params:
        raise WakesleepError(f"{where}: optimiser state for a {what} that this run does not train")
    try:
        ids = [i for group in saved["param_groups"] for i in group["params"]]
        states = saved["state"]
    except (KeyError, TypeError):
        raise WakesleepError(f"{where}: not an optimiser state for the {what}") from None
    if len(ids) != len(params):
        raise WakesleepError(
            f"{where}: the {what}'s optimiser has {len(ids)} parameters in the checkpoint, {len(params)} in this run"
        )
    for i, p in zip(ids, params, strict=True):
        for key, v in (states.get(i) or {}).items():
            if key in ("exp_avg", "exp_avg_sq") and tuple(v.shape) != tuple(p.shape):
                raise WakesleepError(
                    f"{where}: optimiser state of the {what} has shape {tuple(v.shape)} for a parameter of shape "
                    f"{tuple(p.shape)} (config and checkpoint differ)"
                )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the records of ``metrics.jsonl`` after ``step`` (and a partial last line), atomically."""
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    try:
        records = wio.read_jsonl(path)
    except ValueError as exc:
        raise WakesleepError(f"{path}: not valid JSON lines ({str(exc).splitlines()[0]})") from None
    kept = [r for r in records if not (isinstance(r, dict) and isinstance(r.get("step"), int) and r["step"] > step)]
    if len(kept) != len(records) or (text and not text.endswith("\n")):
        wio.write_text(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept))


def _algorithm_name(algo: Any) -> str:
    return str(getattr(algo, "name", None) or type(algo).__name__)


def dynamic_binarizer_generator(dataset: Any) -> torch.Generator | None:
    """The generator of a ``DataSet``'s dynamic binariser (None for fixed data)."""
    binarizer = getattr(dataset, "binarizer", None)
    if binarizer is None or not getattr(binarizer, "is_dynamic", False) or not hasattr(dataset, "train"):
        return None
    return binarizer.generator(dataset.train.device)


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
        Write ``out_dir/checkpoint/`` every this many iterations (0: only at the end); ``fit(data,
        resume_from=out_dir / "checkpoint")`` continues from it.
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
    precision : {"float32", "bfloat16", "float16"}
        ``bfloat16`` / ``float16`` (CUDA only): mixed precision. The sleep and wake phases run under
        ``torch.autocast``, which does the matrix products of the generative links and of trained proposals
        (``wakesleep.models.linear``) with inputs rounded to that dtype and float32 accumulation; their results
        come back as float32, so log-densities, sums over units, the optimiser and the parameters stay float32.
        DDC-HM's recognition, regression statistics and solves are never lowered (their solves amplify rounding
        errors). The model must be float32.

    Attributes (after ``fit``)
    --------------------------
    n_iter_, epochs_ : iterations and (fractional) epochs done, counting those before a resumed checkpoint
    start_iter_ : iteration ``fit`` started from (0, or the step of the checkpoint it resumed)
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
        precision: str = "float32",
    ) -> None:
        if precision not in PRECISIONS:
            raise WakesleepError(f"train.precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
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
        named = list(self.model.named_parameters())
        norms = torch._foreach_norm([p.detach() for _, p in named]) if named else []
        if all(math.isfinite(float(v)) for v in norms):
            return
        for name, p in named:
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

    def fit(self, data: torch.Tensor | np.ndarray, *, resume_from: str | os.PathLike | None = None) -> Trainer:
        """Train on ``data``, from scratch or continuing a checkpoint.

        Parameters
        ----------
        data : array-like, torch.Tensor or wakesleep.data.DataSet
            The training set, ``[N, Dx]``. A ``DataSet`` with ``binarize: dynamic`` is redrawn every epoch.
        resume_from : path, optional
            A checkpoint directory written by :meth:`save_checkpoint` (``out_dir/checkpoint``). Training
            continues from the checkpoint's step up to ``epochs`` (or ``max_iters``) iterations *in total*, so
            a run of ``2E`` epochs equals a run of ``E`` epochs resumed with ``epochs=2E`` (see Notes).

        Returns
        -------
        Trainer
            ``self``, with the attributes listed in the class docstring.

        Raises
        ------
        WakesleepError
            If ``data`` is not a non-empty ``[N, D]`` array; on resuming, if a checkpoint file is missing or
            unreadable, if the checkpoint does not fit this model, algorithm, data size or batch size (the
            message names the file and the tensor or field), or if it already reaches the requested number
            of iterations. All of this is checked before anything is changed or written.
        TrainingDiverged
            If a gradient or a parameter becomes NaN or infinite.

        Notes
        -----
        Resuming restores the model's parameters and buffers, ``algorithm.load_state_dict``, both Adam
        optimisers' moments (their learning rates are this trainer's ``lr`` and ``recognition_lr``), the
        iteration count and the random streams: torch's global RNG (CPU and, on CUDA, the model's device),
        the minibatch-order generator (the permutation of the epoch in progress is drawn again from its
        state at the start of that epoch, so a checkpoint in the middle of an epoch continues that epoch),
        the dynamic binariser of a ``DataSet`` and the monitor generator. ``metrics.jsonl`` in ``out_dir``
        keeps the records up to the checkpoint's step (later ones, from a run that went on after its last
        checkpoint, are dropped) and is appended to; no step-0 record is written again.

        The sleep phase is not checkpointed (DDC-HM's sleep samples and the regressions on them are not in
        its ``state_dict``). If the checkpoint's step is a multiple of ``sleep_every`` (always so with
        ``sleep_every=1``) the next iteration runs ``algorithm.sleep()`` anyway and the continuation is the
        uninterrupted run, bit for bit, provided the algorithm's ``state_dict`` holds all of its state across
        sleep phases. Otherwise the resumed run calls ``algorithm.sleep()`` before its first iteration (at
        the restored parameters) and then every ``sleep_every``-th iteration as usual: a valid run of the
        algorithm, but one sleep phase (and so the random stream) differs from the uninterrupted run.
        """
        model, algo = self.model, self.algorithm
        ref = next(iter(model.buffers()), None)
        if ref is None:
            ref = next(iter(model.parameters()))
        dtype = getattr(model, "dtype", ref.dtype)
        device = torch.device(getattr(model, "device", ref.device))
        if self.precision != "float32" and dtype != torch.float32:
            raise WakesleepError(f"train.precision: {self.precision} needs a float32 model, got {dtype}")
        if self.precision == "float16" and device.type != "cuda":
            raise WakesleepError("train.precision: float16 needs a CUDA device (use bfloat16 on a CPU)")
        dataset = data if hasattr(data, "draw_train") else None  # a wakesleep.data.DataSet

        def draw() -> torch.Tensor:
            if dataset is not None:  # a fresh binarisation per epoch under `binarize: dynamic`
                return torch.as_tensor(dataset.draw_train()).to(dtype=dtype, device=device)
            return torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data).to(
                dtype=dtype, device=device
            )

        # the random streams: minibatch order, model samples for the progress metric, dynamic binarisation
        self._gens = {
            "order": torch.Generator(device="cpu").manual_seed(self.seed),
            "monitor": torch.Generator(device=device).manual_seed(self.seed + 3),
        }
        data_gen = dynamic_binarizer_generator(dataset)
        if data_gen is not None:
            self._gens["data"] = data_gen
        self._epoch_start = self._epoch_rng()  # the per-epoch streams' states at the start of the current epoch
        order_gen, monitor_gen = self._gens["order"], self._gens["monitor"]

        x_all = draw()
        if x_all.ndim != 2 or x_all.shape[0] == 0:
            raise WakesleepError(f"data must be a non-empty [N, D] array, got shape {tuple(x_all.shape)}")
        n = x_all.shape[0]
        batch = min(self.batch_size, n)
        per_epoch = math.ceil(n / batch)
        total = self.epochs * per_epoch
        if self.max_iters is not None:
            total = min(total, self.max_iters)
        self._layout = {"n_data": int(n), "batch_size": int(batch), "per_epoch": int(per_epoch)}

        params = self._params()
        rec_params = [p for p in algo.recognition_parameters() if p.requires_grad]
        ckpt = None
        if resume_from is not None:
            ckpt = read_checkpoint(resume_from)
            self._check_checkpoint(ckpt, params, rec_params, total)  # raises before anything is changed

        torch.manual_seed(self.seed)
        self.optimizer_ = adam([p for _, p in params], lr=self.lr) if params else None
        self.recognition_optimizer_ = adam(rec_params, lr=self.recognition_lr) if rec_params else None
        self.history_: list[dict[str, Any]] = []
        self.n_iter_ = 0
        self.epochs_ = 0.0
        self.start_iter_ = 0
        seconds_before = 0.0
        data_moments = _moments(x_all) if self.monitor_samples > 0 else None
        if ckpt is not None:
            self._restore(ckpt)
            self.start_iter_ = self.n_iter_
            self.epochs_ = self.n_iter_ / per_epoch
            seconds_before = float(ckpt.state.get("seconds") or 0.0)
            self._epoch_start = self._epoch_rng()
            if dataset is not None:
                x_all = draw()  # the data of the epoch in progress (a redraw under dynamic binarisation)
        if self.out_dir is not None:
            Path(self.out_dir).mkdir(parents=True, exist_ok=True)
            if ckpt is not None:
                _truncate_metrics(Path(self.out_dir) / "metrics.jsonl", self.n_iter_)

        progress = self.progress if self.progress is not None else _stream_is_tty(sys.stderr)
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            initial=self.n_iter_,
            disable=not progress,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            leave=False,
        )
        t0 = time.perf_counter()
        window: dict[str, list[float]] = {}
        last_sleep: dict[str, float] = {}

        def record(step: int) -> dict[str, Any]:
            rec: dict[str, Any] = {
                "step": step,
                "epoch": round(step / per_epoch, 6),
                "seconds": round(seconds_before + time.perf_counter() - t0, 4),
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

        self._t0, self._seconds_before = t0, seconds_before
        try:
            step = self.n_iter_
            if ckpt is None:
                self._log(record(0))
            done_in_epoch = step % per_epoch  # minibatches of the epoch in progress already trained on
            resleep = step % self.sleep_every != 0  # resumed between two sleep phases: sleep first (see Notes)
            first = True
            while step < total:
                if not first:
                    self._epoch_start = self._epoch_rng()
                    if dataset is not None:
                        x_all = draw()
                first = False
                perm = torch.randperm(n, generator=order_gen).to(device)
                for start in range(done_in_epoch * batch, n, batch):
                    if step >= total:
                        break
                    if step % self.sleep_every == 0 or resleep:
                        resleep = False
                        with autocast(device, self.precision):
                            info = algo.sleep() or {}
                        last_sleep = {k: float(v) for k, v in info.items() if isinstance(v, int | float)}
                    x = x_all[perm[start : start + batch]]
                    with autocast(device, self.precision):
                        grads = algo.wake_gradient(x)
                    self._apply(grads, step + 1)
                    if self.recognition_optimizer_ is not None:
                        self.recognition_optimizer_.zero_grad(set_to_none=True)
                        with autocast(device, self.precision):
                            rinfo = algo.step_recognition(x)
                        self.recognition_optimizer_.step()
                    else:
                        with autocast(device, self.precision):
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
                done_in_epoch = 0
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
        named = [(name, p, grads.get(name)) for name, p in params.items()]
        for _, p, g in named:
            if g is None:
                p.grad = None
        given = [(name, p, g.detach()) for name, p, g in named if g is not None]
        norms = torch._foreach_norm([g for _, _, g in given]) if given else []  # one pass per gradient
        sq = sum(float(v) ** 2 for v in norms)
        if not math.isfinite(sq):  # NaN or inf somewhere (or a norm overflowing float32: also a divergence)
            bad = next(
                (name for (name, _, _), v in zip(given, norms, strict=True) if not math.isfinite(float(v))), None
            )
            raise TrainingDiverged(
                f"training diverged at step {step}: the wake gradient of {bad!r} is NaN or inf "
                "(try a smaller train.lr or more algorithm.sleep_samples)"
            )
        for _, p, g in given:
            p.grad = g.neg().to(dtype=p.dtype, device=p.device).reshape(p.shape)  # neg() is a fresh tensor
        self._last_grad_norm = math.sqrt(sq)
        if self.optimizer_ is not None:
            self.optimizer_.step()
            self.optimizer_.zero_grad(set_to_none=True)
        self._check_finite(step)

    # ---------------------------------------------------------------------------------------------------
    # checkpoints
    # ---------------------------------------------------------------------------------------------------
    def _epoch_rng(self) -> dict[str, torch.Tensor]:
        """Current states of the per-epoch random streams (minibatch order, dynamic binarisation)."""
        return {k: g.get_state() for k, g in self._gens.items() if k in ("order", "data")}

    def _rng_state(self) -> dict[str, torch.Tensor]:
        """Every random stream the loop uses, as it must be restored to continue after iteration ``n_iter_``."""
        state = {"torch": torch.get_rng_state(), "monitor": self._gens["monitor"].get_state()}
        device = self._gens["monitor"].device
        if device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(device)
        # between two epochs the per-epoch streams are where the next epoch starts; within an epoch, where the
        # epoch in progress started (its permutation and binarisation are drawn again on resuming)
        boundary = self.n_iter_ % self._layout["per_epoch"] == 0
        state.update(self._epoch_rng() if boundary else self._epoch_start)
        return state

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write the training state to the directory ``path``, atomically as a whole.

        Files: ``model.safetensors`` (the model's ``state_dict``), ``algorithm.safetensors`` (or
        ``algorithm.pt`` when the algorithm's ``state_dict`` holds more than tensors; neither when it is
        empty), ``optimizer.pt`` (both Adam optimisers), ``rng.safetensors`` (the random streams) and
        ``state.json`` (``step``, ``epoch``, ``seconds``, ``algorithm``, ``n_data``, ``batch_size``).

        The files are written into a temporary directory next to ``path`` that then replaces ``path``
        (:func:`wakesleep.io.staged_dir`), so ``path`` never holds files of two different steps: a crash
        leaves the previous checkpoint (or, in the instant between the two renames, a complete
        ``.<name>.old-<pid>`` or ``.<name>.partial-*`` beside it). :meth:`fit` with ``resume_from=path``
        continues from it. Call it during or after :meth:`fit`.
        """
        if not hasattr(self, "n_iter_"):
            raise RuntimeError("Trainer.save_checkpoint: call fit() first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self.algorithm.state_dict() or {}
        optim = {
            "optimizer": self.optimizer_.state_dict() if self.optimizer_ is not None else None,
            "recognition_optimizer": (
                self.recognition_optimizer_.state_dict() if self.recognition_optimizer_ is not None else None
            ),
        }
        seconds = self._seconds_before + time.perf_counter() - self._t0
        info = {
            "format": CHECKPOINT_FORMAT,
            "step": self.n_iter_,
            "epoch": self.epochs_,
            "seconds": round(seconds, 4),
            "algorithm": _algorithm_name(self.algorithm),
            "n_data": self._layout["n_data"],
            "batch_size": self._layout["batch_size"],
        }
        with wio.staged_dir(path, overwrite=True) as tmp:
            wio.save_safetensors(self.model, tmp / "model.safetensors")
            if state and all(isinstance(v, torch.Tensor) for v in state.values()):
                wio.save_tensors(tmp / "algorithm.safetensors", state)
            elif state:
                wio.write_bytes(tmp / "algorithm.pt", _torch_bytes(state))
            wio.write_bytes(tmp / "optimizer.pt", _torch_bytes(optim))
            wio.save_tensors(tmp / "rng.safetensors", self._rng_state())
            wio.save_json(tmp / "state.json", info)  # last: a directory with state.json is complete

    def _check_checkpoint(self, ckpt: _Checkpoint, params, rec_params, total: int) -> None:
        """Raise :class:`WakesleepError` (naming the file and the tensor or field) if ``ckpt`` cannot continue here."""
        p = ckpt.path
        st = ckpt.state
        name = _algorithm_name(self.algorithm)
        if st.get("algorithm") not in (None, name):
            raise WakesleepError(
                f"{p / 'state.json'}: the checkpoint is of algorithm {st['algorithm']!r}, this run's is {name!r}"
            )
        for key, value in (("n_data", self._layout["n_data"]), ("batch_size", self._layout["batch_size"])):
            if key in st and st[key] != value:
                raise WakesleepError(
                    f"{p / 'state.json'}: {key} is {st[key]} in the checkpoint but {value} in this run "
                    "(resuming needs the same training data and batch size)"
                )
        step = st["step"]
        if step >= total:
            raise WakesleepError(
                f"{p / 'state.json'}: the checkpoint is at iteration {step}, this run stops at {total} "
                "(nothing to resume: raise epochs or max_iters)"
            )
        _check_tensors(p / "model.safetensors", ckpt.model, self.model.state_dict(), "model", exact=True)
        own = self.algorithm.state_dict() or {}
        if own or ckpt.algorithm:
            where = p / ("algorithm.pt" if ckpt.algorithm_pickled else "algorithm.safetensors")
            _check_tensors(where, ckpt.algorithm, own, f"algorithm {name!r}", exact=False)
        _check_optimizer(p / "optimizer.pt", ckpt.optimizer.get("optimizer"), [q for _, q in params], "model")
        _check_optimizer(
            p / "optimizer.pt", ckpt.optimizer.get("recognition_optimizer"), rec_params, "recognition model"
        )
        for key in ("torch", *self._gens):
            if key not in ckpt.rng:
                raise WakesleepError(f"{p / 'rng.safetensors'}: no state of the random stream {key!r}")

    def _restore(self, ckpt: _Checkpoint) -> None:
        """Load a checked checkpoint: model, algorithm, optimisers, counters and random streams."""
        device = self._gens["monitor"].device
        self.model.load_state_dict(ckpt.model)
        if ckpt.algorithm:
            self.algorithm.load_state_dict(
                {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in ckpt.algorithm.items()}
            )
        for opt, key, lr in (
            (self.optimizer_, "optimizer", self.lr),
            (self.recognition_optimizer_, "recognition_optimizer", self.recognition_lr),
        ):
            if opt is not None:
                opt.load_state_dict(ckpt.optimizer[key])
                for group in opt.param_groups:  # this trainer's learning rate wins over the checkpoint's
                    group["lr"] = lr
        self.n_iter_ = int(ckpt.state["step"])
        rng = ckpt.rng
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and "cuda" in rng:
            with contextlib.suppress(RuntimeError):  # a checkpoint from another device: keep the seeded stream
                torch.cuda.set_rng_state(rng["cuda"], device)
        self._gens["order"].set_state(rng["order"])
        for key in ("data", "monitor"):
            if key in self._gens:
                with contextlib.suppress(RuntimeError):  # a state from another device type: keep the seeded stream
                    self._gens[key].set_state(rng[key])


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
    resume_from: str | os.PathLike | None = None,
):
    """Build model, algorithm and data from a resolved config and train. Returns ``(model, algo, trainer, data)``.

    With ``out_dir`` the run files are written there (see :func:`write_run`). Pass ``data`` to skip
    ``config['data']``. With ``resume_from`` (a checkpoint directory, usually ``out_dir/checkpoint``) training
    continues from it (:meth:`Trainer.fit`); ``out_dir/config.yaml`` is then written only when training has
    finished, and ``metrics.jsonl`` is appended to.
    """
    with config_threads(config):
        return _train_from_config(config, out_dir, progress, data, callback, resume_from)


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
        "precision": t.get("precision", "float32"),
    }
    kwargs.update(overrides)
    return Trainer(algo, **kwargs)


def _train_from_config(config, out_dir, progress, data, callback, resume_from=None):
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
    if out_dir is not None and resume_from is None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        wio.write_text(Path(out_dir) / "config.yaml", dump_config(config))
    trainer = trainer_from_config(algo, config, out_dir=out_dir, progress=progress, callback=callback)
    trainer.fit(x, resume_from=resume_from)
    if out_dir is not None:
        if resume_from is not None:
            wio.write_text(Path(out_dir) / "config.yaml", dump_config(config))
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
