"""The training loop: Adam on the generative model, the algorithm's sleep/wake phases, logging, checkpoints.

:class:`Trainer` follows scikit-learn habits: hyperparameters in ``__init__``, ``fit(data)`` sets the learnt
state (attributes ending in ``_``). Per iteration (see ``docs/DESIGN.md``)::

    if step % sleep_every == 0:  algo.sleep()
    x = next minibatch
    grads = algo.wake_gradient(x)                  # estimate of grad (1/B) sum_b log p(x_b)
    p.grad = -grads[name] for each model parameter; Adam step    (so Adam *maximises* the likelihood)
    zero recognition grads; algo.step_recognition(x); Adam step on algo.recognition_parameters()

The Trainer owns both optimisers; an algorithm with a gradient-trained recognition model only fills the
``.grad`` of ``recognition_parameters()`` in ``step_recognition(x, wake=grads)``. Checkpoints, resuming,
signals and divergence: ``docs/DESIGN.md`` and :mod:`wakesleep.training.checkpoint`, :mod:`.safety`.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep import schema
from wakesleep.errors import WakesleepError
from wakesleep.ops import autocast
from wakesleep.training._streams import Layout, RandomStreams, TrainingData, dynamic_binarizer_generator, minibatches
from wakesleep.training.checkpoint import (
    Checkpoint,
    _truncate_metrics,
    adam,
    algorithm_name,
    check_checkpoint,
    checkpoint_step,
    read_checkpoint,
    restore_checkpoint,
    write_checkpoint,
)
from wakesleep.training.monitor import DiagnosticsWindow, MetricsWriter, MomentGapMonitor, ProgressBar
from wakesleep.training.options import TrainOptions
from wakesleep.training.safety import (
    StopRequest,
    TrainingDiverged,
    TrainingInterrupted,
    apply_wake_gradient,
    diverges_at,
    first_non_finite,
)

__all__ = ["Trainer", "TrainingDiverged", "TrainingInterrupted", "dynamic_binarizer_generator"]


def _accepts_wake(method: Callable[..., Any]) -> bool:
    """Whether ``method`` has a parameter ``wake`` that can be passed by keyword."""
    try:
        param = inspect.signature(method).parameters.get("wake")
    except (TypeError, ValueError):  # no signature to inspect
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


class Trainer:
    """Fit a model with a wake-sleep-style algorithm (the algorithm supplies gradients, the Trainer steps).

    Parameters
    ----------
    algorithm
        An object with the algorithm contract (``sleep``, ``wake_gradient``, ``step_recognition``,
        ``recognition_parameters``, ``state_dict``, ``load_state_dict``); its ``model`` attribute is the
        generative model.
    epochs, batch_size, lr, recognition_lr, seed, sleep_every, log_every, checkpoint_every, max_iters
        The loop and optimiser settings, documented and checked as the fields of
        :class:`~wakesleep.training.options.TrainOptions` (the ``train:`` section of a run): Adam learning
        rates of the model and of a trained recognition model, ``algorithm.sleep()`` before every
        ``sleep_every``-th iteration, a record every ``log_every`` and ``out_dir/checkpoint/`` every
        ``checkpoint_every`` iterations (0: at the end).
    out_dir : path, optional
        Where ``metrics.jsonl`` and ``checkpoint/`` go; nothing is written when None.
    progress : bool, optional
        Show a tqdm bar on stderr; default: only when stderr is a terminal.
    monitor_samples : int
        Model samples drawn at each log step for the moment-gap progress metric (0 disables it).
    callback : callable, optional
        ``callback(trainer, record)`` after each logged record.
    precision : {"float32", "bfloat16", "float16"}
        Mixed precision of the links' matrix products (``wakesleep.ops``: lowered inputs, float32 results);
        DDC-HM's recognition, statistics and solves are never lowered. The model must be float32.
    on_divergence : {"stop", "rollback"}
        What a divergence (:class:`TrainingDiverged`) does: stop, naming the last good checkpoint; or go back
        to that checkpoint (``out_dir/checkpoint``, written every ``checkpoint_every`` iterations) with both
        learning rates halved and go on, at most ``max_rollbacks`` times.
    max_rollbacks : int
        The most rollbacks in one fit.
    handle_signals : bool, optional
        Catch SIGINT and SIGTERM during the fit: at the next multiple of ``sleep_every`` write the checkpoint
        (with ``out_dir``) and raise :class:`TrainingInterrupted` (a ``KeyboardInterrupt``); a second signal
        stops after the iteration in progress. Default: when ``out_dir`` is given.

    Attributes
    ----------
    n_iter_, epochs_ : int, float
        Iterations and (fractional) epochs done, counting those before a resumed checkpoint.
    start_iter_ : int
        Iteration ``fit`` started from (0, or the step of the checkpoint it resumed).
    history_ : list of dict
        The logged records (:class:`wakesleep.training.monitor.LogRecord`).
    optimizer_, recognition_optimizer_ : torch.optim.Adam or None
        The Adam optimisers (the second is None when the algorithm has no gradient-trained recognition parameters).
    seconds_ : float
        Wall time of ``fit``.
    rollbacks_ : int
        Rollbacks after a divergence (``on_divergence="rollback"``).
    """

    def __init__(
        self,
        algorithm: Any,
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
        on_divergence: str = "stop",
        max_rollbacks: int = 3,
        handle_signals: bool | None = None,
    ) -> None:
        settings = {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "recognition_lr": recognition_lr,
            "seed": seed,
            "sleep_every": sleep_every,
            "log_every": log_every,
            "checkpoint_every": checkpoint_every,
            "max_iters": max_iters,
            "precision": precision,
            "on_divergence": on_divergence,
            "max_rollbacks": max_rollbacks,
            "device": "cuda" if precision == "float16" else "cpu",  # the model's own device is checked by fit
        }
        schema.parse(TrainOptions, settings, "train")  # one-line WakesleepErrors naming train.<field>
        if isinstance(monitor_samples, bool) or not isinstance(monitor_samples, int) or monitor_samples < 0:
            raise WakesleepError(f"monitor_samples must be a non-negative integer, got {monitor_samples!r}")
        self.on_divergence = on_divergence
        self.max_rollbacks = max_rollbacks
        self.handle_signals = handle_signals
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
        """The generative model (``algorithm.model``)."""
        return self.algorithm.model

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
        Resuming restores the model, ``algorithm.load_state_dict``, both Adam optimisers' moments (with this
        trainer's learning rates), the iteration count and every random stream, and keeps ``metrics.jsonl`` up to
        the checkpoint's step. The continuation is the uninterrupted run, bit for bit, when the checkpoint's step
        is a multiple of ``sleep_every`` and the algorithm's ``state_dict`` holds all its state across sleep
        phases; otherwise ``sleep()`` runs first (``docs/DESIGN.md``, "Checkpoints and resuming").
        """
        training_data = self._setup(data)
        params = [p for _, p in self._params()]
        rec_params = [p for p in self.algorithm.recognition_parameters() if p.requires_grad]
        ckpt = None
        if resume_from is not None:
            ckpt = read_checkpoint(resume_from)
            self._check_checkpoint(ckpt, params, rec_params)  # raises before anything is changed
        self._start(training_data, ckpt, params, rec_params)
        handle = self.handle_signals if self.handle_signals is not None else self.out_dir is not None
        with (
            ProgressBar(self._layout.total, initial=self.n_iter_, enabled=self.progress) as bar,
            StopRequest(handle) as stop,
        ):
            self._callbacks.append(bar)
            self._t0 = time.perf_counter()
            if ckpt is None:
                self._log_step()  # the initial state, step 0
            resleep = self.n_iter_ % self.sleep_every != 0  # resumed between two sleep phases: sleep first
            while True:
                try:
                    self._iterate(training_data, bar, stop, resleep)
                    break
                except TrainingDiverged as exc:
                    self._roll_back(exc, training_data)  # or raise, naming the last good checkpoint
                    bar.reset_to(self.n_iter_)
                    resleep = True
        self.seconds_ = time.perf_counter() - self._t0
        if self.out_dir is not None:
            self.save_checkpoint(Path(self.out_dir) / "checkpoint")
        return self

    def _iterate(self, training_data: TrainingData, bar: ProgressBar, stop: StopRequest, resleep: bool) -> None:
        """The iterations from ``n_iter_`` to the end (a stop request ends them early, checkpointed)."""
        for x in minibatches(training_data, self._layout, self._streams, self.n_iter_):
            if self.n_iter_ % self.sleep_every == 0 or resleep:
                resleep = False
                self._sleep()
            self._wake(x)
            bar.update(1)
            self._end_iteration()
            if stop.requested and (self.n_iter_ % self.sleep_every == 0 or stop.count > 1):
                self._stop(stop.signum or 2)

    def _stop(self, signum: int) -> None:
        """Write the checkpoint (with ``out_dir``) and raise :class:`TrainingInterrupted`."""
        path = None
        if self.out_dir is not None:
            path = Path(self.out_dir) / "checkpoint"
            self.save_checkpoint(path)
        raise TrainingInterrupted(signum, self.n_iter_, str(path) if path is not None else None)

    def _last_checkpoint(self) -> tuple[Path | None, int | None]:
        """The checkpoint a divergence can go back to, and its step (None, None when there is none)."""
        path = Path(self.out_dir) / "checkpoint" if self.out_dir is not None else None
        step = checkpoint_step(path) if path is not None else None
        return (path, step) if step is not None else (None, None)

    def _roll_back(self, exc: TrainingDiverged, training_data: TrainingData) -> None:
        """After a divergence: go back to the last checkpoint with halved learning rates, or raise."""
        path, step = self._last_checkpoint()
        where = (
            f"; the last good checkpoint is {path} (step {step})"
            if path is not None
            else "; no checkpoint was written before it (set train.checkpoint_every)"
        )
        if self.on_divergence != "rollback" or path is None or self.rollbacks_ >= self.max_rollbacks:
            tried = f" after {self.rollbacks_} rollback(s)" if self.rollbacks_ else ""
            raise TrainingDiverged(f"{exc}{tried}{where}") from None
        self.rollbacks_ += 1
        self.lr, self.recognition_lr = self.lr / 2, self.recognition_lr / 2
        ckpt = read_checkpoint(path)
        optimizers = {
            "optimizer": (self.optimizer_, self.lr),
            "recognition_optimizer": (self.recognition_optimizer_, self.recognition_lr),
        }
        gens = self._streams.generators
        self.n_iter_ = restore_checkpoint(ckpt, self.model, self.algorithm, optimizers, gens, self._device)
        # new random draws after a rollback (sleep samples, minibatch order): a divergence in the first step after
        # the checkpoint would otherwise recur whatever the learning rate, since that step's gradient is
        # computed before the learning rate acts; seeded by the checkpoint's state, so the fit stays reproducible
        offset = int(torch.randint(0, 2**62, (1,)).item()) + self.rollbacks_
        torch.manual_seed(offset)
        for i, g in enumerate(gens.values()):
            g.manual_seed(offset + 1 + i)
        self.epochs_ = self.n_iter_ / self._layout.per_epoch
        self._streams.start_epoch()
        if training_data.dataset is not None:
            training_data.draw()
        self.history_ = [r for r in self.history_ if r["step"] <= self.n_iter_]
        if self.out_dir is not None:
            _truncate_metrics(Path(self.out_dir) / "metrics.jsonl", self.n_iter_)
        self._diagnostics.flush()
        self._diagnostics.set_sleep({"rollback": self.rollbacks_, "rollback_lr": self.lr})

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write the training state to the directory ``path``, atomically as a whole.

        Files: ``model.safetensors`` (the model's ``state_dict``), ``algorithm.safetensors`` (or
        ``algorithm.pt`` when the algorithm's ``state_dict`` holds more than tensors; neither when it is
        empty), ``optimizer.pt`` (both Adam optimisers), ``rng.safetensors`` (the random streams) and
        ``state.json`` (``step``, ``epoch``, ``seconds``, ``algorithm``, ``n_data``, ``batch_size``).

        The files are written into a temporary directory next to ``path`` that then replaces ``path``
        (:func:`wakesleep.outdirs.staged_dir`), so ``path`` never holds files of two different steps: a crash
        leaves the previous checkpoint (or, in the instant between the two renames, a complete
        ``.<name>.old-<pid>`` or ``.<name>.partial-*`` beside it). :meth:`fit` with ``resume_from=path``
        continues from it. Call it during or after :meth:`fit`.

        Parameters
        ----------
        path : path
            The checkpoint directory (replaced if it exists; its parent is created).
        """
        if not hasattr(self, "n_iter_"):
            raise RuntimeError("Trainer.save_checkpoint: call fit() first")
        info = {
            "step": self.n_iter_,
            "epoch": self.epochs_,
            "seconds": round(self._elapsed(), 4),
            "algorithm": algorithm_name(self.algorithm),
            "n_data": self._layout.n_data,
            "batch_size": self._layout.batch_size,
        }
        optimizers = {"optimizer": self.optimizer_, "recognition_optimizer": self.recognition_optimizer_}
        rng = self._streams.state(at_epoch_boundary=self.n_iter_ % self._layout.per_epoch == 0)
        write_checkpoint(path, self.model, self.algorithm.state_dict() or {}, optimizers, rng, info)

    # ---------------------------------------------------------------------------------------------------
    # setting up
    # ---------------------------------------------------------------------------------------------------
    def _setup(self, data: Any) -> TrainingData:
        """Check the precision; set up the random streams, the first epoch's data and the minibatch layout."""
        model = self.model
        ref = next(iter(model.buffers()), None)
        if ref is None:
            ref = next(iter(model.parameters()))
        dtype = getattr(model, "dtype", ref.dtype)
        device = torch.device(getattr(model, "device", ref.device))
        if self.precision != "float32" and dtype != torch.float32:
            raise WakesleepError(f"train.precision: {self.precision} needs a float32 model, got {dtype}")
        if self.precision == "float16" and device.type != "cuda":
            raise WakesleepError("train.precision: float16 needs a CUDA device (use bfloat16 on a CPU)")
        self._device = device
        training_data = TrainingData(data, dtype, device)
        self._streams = RandomStreams(self.seed, device, training_data.dataset)
        x = training_data.draw()
        if x.ndim != 2 or x.shape[0] == 0:
            raise WakesleepError(f"data must be a non-empty [N, D] array, got shape {tuple(x.shape)}")
        n = int(x.shape[0])
        batch = min(self.batch_size, n)
        per_epoch = math.ceil(n / batch)
        total = self.epochs * per_epoch
        if self.max_iters is not None:
            total = min(total, self.max_iters)
        self._layout = Layout(n_data=n, batch_size=int(batch), per_epoch=int(per_epoch), total=total)
        self._recognition_takes_wake = _accepts_wake(self.algorithm.step_recognition)
        return training_data

    def _check_checkpoint(self, ckpt: Checkpoint, params: list[torch.Tensor], rec_params: list[torch.Tensor]) -> None:
        """Raise :class:`WakesleepError` (naming the file and the tensor or field) if ``ckpt`` cannot continue here."""
        lay = self._layout
        streams = list(self._streams.generators)
        check_checkpoint(
            ckpt, self.model, self.algorithm, params, rec_params, lay.n_data, lay.batch_size, lay.total, streams
        )

    def _start(
        self,
        training_data: TrainingData,
        ckpt: Checkpoint | None,
        params: list[torch.Tensor],
        rec_params: list[torch.Tensor],
    ) -> None:
        """Fresh optimisers and counters, the monitor and the log callbacks; then load ``ckpt`` if given."""
        torch.manual_seed(self.seed)
        self.optimizer_ = adam(params, lr=self.lr) if params else None
        self.recognition_optimizer_ = adam(rec_params, lr=self.recognition_lr) if rec_params else None
        self.history_: list[dict[str, Any]] = []
        self.n_iter_ = 0
        self.epochs_ = 0.0
        self.start_iter_ = 0
        self.rollbacks_ = 0
        self._seconds_before = 0.0
        names = {id(p): n for n, p in getattr(self.algorithm, "named_parameters", lambda: [])()}
        self._recognition_named = [(repr(names.get(id(p), f"#{i}")), p) for i, p in enumerate(rec_params)]
        self._diagnostics = DiagnosticsWindow()
        self._monitor = None
        if self.monitor_samples > 0:  # the moments of the first epoch's data, also on resuming
            self._monitor = MomentGapMonitor(training_data.x, self.monitor_samples, self._streams.monitor)
        if ckpt is not None:
            optimizers = {
                "optimizer": (self.optimizer_, self.lr),
                "recognition_optimizer": (self.recognition_optimizer_, self.recognition_lr),
            }
            gens = self._streams.generators
            self.n_iter_ = restore_checkpoint(ckpt, self.model, self.algorithm, optimizers, gens, self._device)
            self.start_iter_ = self.n_iter_
            self.epochs_ = self.n_iter_ / self._layout.per_epoch
            self._seconds_before = float(ckpt.state.get("seconds") or 0.0)
            self._streams.start_epoch()
            if training_data.dataset is not None:
                training_data.draw()  # the data of the epoch in progress (a redraw under dynamic binarisation)
        self._callbacks: list[Callable[[Trainer, dict], None]] = []
        if self.out_dir is not None:
            Path(self.out_dir).mkdir(parents=True, exist_ok=True)
            metrics = Path(self.out_dir) / "metrics.jsonl"
            if ckpt is not None:
                _truncate_metrics(metrics, self.n_iter_)
            self._callbacks.append(MetricsWriter(metrics))
        if self.callback is not None:
            self._callbacks.append(self.callback)

    # ---------------------------------------------------------------------------------------------------
    # one iteration
    # ---------------------------------------------------------------------------------------------------
    def _sleep(self) -> None:
        """One sleep phase; its numeric diagnostics go into the next records."""
        with autocast(self._device, self.precision), diverges_at(self.n_iter_, "the sleep phase"):
            info = self.algorithm.sleep() or {}
        self._diagnostics.set_sleep(info)

    def _wake(self, x: torch.Tensor) -> None:
        """One wake step on the minibatch ``x``: Adam on the model's wake gradient, then on the recognition model."""
        algo, step = self.algorithm, self.n_iter_
        with autocast(self._device, self.precision), diverges_at(step + 1, "the wake phase"):
            grads = algo.wake_gradient(x)
        self._apply(grads, step + 1)
        optimizer = self.recognition_optimizer_
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        with autocast(self._device, self.precision), diverges_at(step + 1, "the recognition step"):
            info = algo.step_recognition(x, wake=grads) if self._recognition_takes_wake else algo.step_recognition(x)
        if optimizer is not None:
            optimizer.step()
            bad = first_non_finite(self._recognition_named)
            if bad is not None:
                raise TrainingDiverged(
                    f"training diverged at step {step + 1}: recognition parameter {bad} became NaN or inf "
                    "(try a smaller train.recognition_lr)"
                )
        self._diagnostics.add("recognition/", info)
        self._diagnostics.append("grad_norm", self._last_grad_norm)
        self.n_iter_ = step + 1
        self.epochs_ = self.n_iter_ / self._layout.per_epoch

    def _end_iteration(self) -> None:
        """Log and checkpoint when the iteration just done calls for it."""
        step = self.n_iter_
        if step % self.log_every == 0 or step == self._layout.total:
            self._log_step()
        if self.out_dir is not None and self.checkpoint_every and step % self.checkpoint_every == 0:
            self.save_checkpoint(Path(self.out_dir) / "checkpoint")

    def _log_step(self) -> None:
        """Log the record of iteration ``n_iter_`` (to ``history_`` and the log callbacks)."""
        step = self.n_iter_
        record: dict[str, Any] = {
            "step": step,
            "epoch": round(step / self._layout.per_epoch, 6),
            "seconds": round(self._elapsed(), 4),
        }
        record.update(self._diagnostics.flush())
        if self._monitor is not None:
            record.update(self._monitor(self.model))
        self.history_.append(record)
        for callback in self._callbacks:
            callback(self, record)

    def _elapsed(self) -> float:
        """Training time so far, counting the time before a resumed checkpoint."""
        return self._seconds_before + time.perf_counter() - self._t0

    def _params(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def _apply(self, grads: Mapping[str, torch.Tensor], step: int) -> None:
        """Set ``p.grad = -grads[name]`` (ascent on the log-likelihood) and take an Adam step."""
        self._last_grad_norm = apply_wake_gradient(self.model, self.optimizer_, grads, step)
