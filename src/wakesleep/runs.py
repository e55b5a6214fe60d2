"""Build a run once from its :class:`~wakesleep.spec.RunSpec`: model, data, algorithm, trainer; write and load runs.

This is the one place where a spec becomes objects. The command line, ``bench``, ``distributed`` and every
experiment go through it::

    spec = RunSpec.load("run.yaml", ["train.lr=1e-3"])
    run = prepare(spec)              # seeds torch, builds the model, loads the data, builds the algorithm
    trainer = run.fit(out_dir)       # trains; writes config.yaml, metrics.jsonl, model.safetensors, samples.npz

Everything that can fail on the user's input happens in :func:`prepare`, before anything is written. Errors
name fields and files, never command-line flags.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep import io as wio
from wakesleep.config import dump_config, torch_device, torch_dtype
from wakesleep.errors import WakesleepError
from wakesleep.spec import RunSpec, TrainSpec
from wakesleep.training import Trainer, sample_observations

__all__ = [
    "Run",
    "prepare",
    "train",
    "as_spec",
    "build_model",
    "build_algorithm",
    "load_data",
    "check_data",
    "make_trainer",
    "threads",
    "check_memory",
    "memory_estimate",
    "write_run",
    "load_run",
    "load_trained",
    "train_from_config",
]


def as_spec(config: RunSpec | Mapping[str, Any]) -> RunSpec:
    """``config`` as a :class:`RunSpec` (a resolved mapping, e.g. a run's ``config.yaml``, is parsed)."""
    if isinstance(config, RunSpec):
        return config
    return RunSpec.from_mapping(config)


# --------------------------------------------------------------------------------------------------------
# the pieces
# --------------------------------------------------------------------------------------------------------
def build_model(spec: RunSpec | Mapping[str, Any]) -> torch.nn.Module:
    """The generative model of ``spec`` (a spec or a resolved config), on ``train.device`` in ``train.dtype``."""
    from wakesleep.models import build_model as build_from_section

    spec = as_spec(spec)
    device = torch_device(spec.train.device)
    model = build_from_section(spec.model.to_dict())
    if spec.train.dtype is not None:
        model = model.to(dtype=torch_dtype(spec.train.dtype))
    return model.to(device)


def build_algorithm(spec: RunSpec | Mapping[str, Any], model: torch.nn.Module) -> Any:
    """The algorithm of ``spec`` for ``model`` (its options were validated when ``spec`` was parsed)."""
    from wakesleep.algorithms import build_algorithm as build_by_name

    spec = as_spec(spec)
    return build_by_name(spec.algorithm.name, model, **spec.algorithm.kwargs())


def check_data(x: Any, model: torch.nn.Module, where: str) -> np.ndarray:
    """Check a data array against the model: numeric, ``[N, obs_dim]``, finite, inside the observation support.

    Errors name ``where`` (a file or field), the row and the column.
    """
    from wakesleep.data import check_observations
    from wakesleep.models.build import observation_family

    return check_observations(x, observation_family(model), where, dim=int(model.obs_dim))


def load_data(spec: RunSpec | Mapping[str, Any], model: torch.nn.Module) -> Any:
    """The training data of ``spec``: a tensor (model's dtype and device) or a ``DataSet``.

    ``source: model`` draws ``n`` points from the model at its initial parameters, or at ``true_params``
    (an ``.npz`` keyed by parameter name) if given, with ``data.seed``; the global RNG is left as it was.
    Every other source goes to :func:`wakesleep.data.load_dataset`.
    """
    spec = as_spec(spec)
    settings = spec.data.to_dict()
    if spec.data.source == "model":
        gen_model = model
        if settings.get("true_params"):
            gen_model = copy.deepcopy(model)
            wio.load_params_npz(gen_model, settings["true_params"])
        gen = torch.Generator(device=model.device).manual_seed(int(settings["seed"]))
        x = sample_observations(gen_model, int(settings["n"]), gen).detach()
        x = check_data(x, model, "data (source: model)")
        return torch.as_tensor(x).to(dtype=model.dtype, device=model.device)
    from wakesleep.data import load_dataset
    from wakesleep.models.build import observation_family

    dataset = load_dataset(settings, int(model.obs_dim), dtype=model.dtype, family=observation_family(model))
    return dataset.to(device=model.device, dtype=model.dtype)


def make_trainer(algorithm: Any, train_spec: TrainSpec, **overrides: Any) -> Trainer:
    """A :class:`~wakesleep.training.Trainer` for ``algorithm`` with the settings of ``train_spec``.

    Keyword arguments (``progress``, ``callback``, ``out_dir``, ``monitor_samples``, or any ``train`` setting)
    override the spec.
    """
    t = train_spec
    kwargs: dict[str, Any] = {
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "lr": t.lr,
        "recognition_lr": t.recognition_lr,
        "seed": t.seed,
        "sleep_every": t.sleep_every,
        "log_every": t.log_every,
        "checkpoint_every": t.checkpoint_every,
        "max_iters": t.max_iters,
        "precision": t.precision,
        "on_divergence": t.on_divergence,
        "max_rollbacks": t.max_rollbacks,
    }
    kwargs.update(overrides)
    return Trainer(algorithm, **kwargs)


@contextlib.contextmanager
def threads(train_spec: TrainSpec) -> Iterator[None]:
    """Within the block, ``torch.set_num_threads(train.threads)`` when the spec sets it (restored after)."""
    before = torch.get_num_threads()
    if train_spec.threads:
        torch.set_num_threads(int(train_spec.threads))
    try:
        yield
    finally:
        if train_spec.threads:
            torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------------
# a whole run
# --------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """A run built from its spec: the model, the training data, the algorithm; ``trainer`` after :meth:`fit`."""

    spec: RunSpec
    model: torch.nn.Module
    algorithm: Any
    data: Any
    trainer: Trainer | None = None

    def fit(
        self,
        out_dir: str | os.PathLike | None = None,
        *,
        progress: bool | None = None,
        callback: Callable[[Trainer, dict], None] | None = None,
        resume_from: str | os.PathLike | None = None,
        **trainer_overrides: Any,
    ) -> Trainer:
        """Train; with ``out_dir`` write the run's files there (:func:`write_run`).

        ``config.yaml`` is written first on a fresh run and after training on a resumed one (``resume_from``,
        a checkpoint directory, usually ``out_dir/checkpoint``; see :meth:`Trainer.fit`). With
        ``train.tensorboard`` the records also go to ``out_dir/tensorboard/``
        (:class:`~wakesleep.training.tensorboard.TensorBoardWriter`).
        """
        spec = self.spec
        board = None
        if out_dir is not None and spec.train.tensorboard:
            from wakesleep.training.tensorboard import (
                TENSORBOARD_DIR,
                TensorBoardWriter,
                chain_callbacks,
                image_shape_of,
            )

            shape = image_shape_of(self.data, int(getattr(self.model, "obs_dim", 0)))
            board = TensorBoardWriter(Path(out_dir) / TENSORBOARD_DIR, image_shape=shape, seed=spec.train.seed)
            callback = chain_callbacks(callback, board)
        if out_dir is not None and resume_from is None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            wio.write_text(Path(out_dir) / "config.yaml", dump_config(spec.to_dict()))
        trainer = make_trainer(
            self.algorithm, spec.train, out_dir=out_dir, progress=progress, callback=callback, **trainer_overrides
        )
        with threads(spec.train), board if board is not None else contextlib.nullcontext():
            trainer.fit(self.data, resume_from=resume_from)
            if out_dir is not None:
                if resume_from is not None:
                    wio.write_text(Path(out_dir) / "config.yaml", dump_config(spec.to_dict()))
                write_run(out_dir, self.model, n_samples=spec.train.samples, seed=spec.train.seed)
        self.trainer = trainer
        return trainer

    def total_iterations(self) -> int:
        """The iterations a fit of this run does in all: ``epochs`` passes (or ``max_iters``, if fewer)."""
        n = int(self.data.n_train) if hasattr(self.data, "n_train") else int(self.data.shape[0])
        batch = min(self.spec.train.batch_size, n)
        total = self.spec.train.epochs * -(-n // batch)
        return min(total, self.spec.train.max_iters) if self.spec.train.max_iters else total

    def finish_from_checkpoint(self, out_dir: str | os.PathLike, checkpoint: str | os.PathLike) -> None:
        """Write the run's files from a checkpoint at the last iteration (a run stopped while writing them)."""
        from wakesleep.training import read_checkpoint

        self.model.load_state_dict(read_checkpoint(checkpoint).model)
        wio.write_text(Path(out_dir) / "config.yaml", dump_config(self.spec.to_dict()))
        write_run(out_dir, self.model, n_samples=self.spec.train.samples, seed=self.spec.train.seed)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_estimate(spec: RunSpec) -> list[tuple[str, int]]:
    """A rough upper estimate of the bytes each size of ``spec`` makes a run hold at once, by config field.

    Meant to catch sizes that cannot fit (a typo such as ``data.n: 1e10``) before anything is allocated,
    not to predict the peak: parameters with their gradients and Adam moments, data drawn from the model,
    the samples written at the end, the sleep samples and the particles of a minibatch.
    """
    item = 8 if spec.train.dtype == "float64" else 4
    layers = spec.model.settings.get("layers")
    dims = []
    for layer in layers if isinstance(layers, list) else []:
        dim = layer.get("dim") if isinstance(layer, Mapping) else None
        dims.append(int(dim) if isinstance(dim, int | float) and not isinstance(dim, bool) and dim > 0 else 0)
    width = sum(dims)
    params = sum((a + 1) * b for a, b in zip(dims, dims[1:], strict=False))
    out = [("model.layers", 4 * params * item)]
    if spec.data.source == "model":
        out.append(("data.n", 2 * int(spec.data.settings["n"]) * width * item))
    out.append(("train.samples", 2 * spec.train.samples * width * item))
    options = spec.algorithm.kwargs()
    features = options.get("features") if isinstance(options.get("features"), int) else 0
    if isinstance(options.get("sleep_samples"), int):
        per_sample = width + len(dims) * (features or 0) + int(options.get("recognition_hidden") or 0)
        out.append(("algorithm.sleep_samples", 4 * options["sleep_samples"] * per_sample * item))
    if isinstance(options.get("k"), int):
        out.append(("algorithm.k", 8 * options["k"] * spec.train.batch_size * width * item))
    return out


def check_memory(spec: RunSpec) -> None:
    """Raise :class:`WakesleepError` naming the field when :func:`memory_estimate` exceeds the available memory."""
    free = available_memory()
    if free is None:
        return
    parts = memory_estimate(spec)
    total = sum(b for _, b in parts)
    if total > free:
        field, biggest = max(parts, key=lambda p: p[1])
        gib = 1024**3
        raise WakesleepError(
            f"{field}: this run needs about {total / gib:.3g} GiB of memory ({biggest / gib:.3g} GiB for {field}), "
            f"more than the {free / gib:.3g} GiB available"
        )


def prepare(spec: RunSpec, data: Any = None) -> Run:
    """Build everything ``spec`` describes, once: seed torch, build the model, load the data, build the algorithm.

    Parameters
    ----------
    spec : RunSpec
        The validated run.
    data : array, tensor or DataSet, optional
        Training data to use instead of ``spec.data`` (checked against the model).
    """
    check_memory(spec)
    if spec.train.tensorboard:
        from wakesleep.training.tensorboard import require_tensorboard

        require_tensorboard("train.tensorboard")
    with threads(spec.train):
        torch.manual_seed(spec.train.seed)
        model = build_model(spec)
        if data is None:
            x = load_data(spec, model)
        elif hasattr(data, "draw_train") or (isinstance(data, torch.Tensor) and data.dtype == model.dtype):
            x = data
        else:
            x = torch.as_tensor(check_data(data, model, "data")).to(dtype=model.dtype, device=model.device)
        algorithm = build_algorithm(spec, model)
    return Run(spec=spec, model=model, algorithm=algorithm, data=x)


def train(
    spec: RunSpec,
    out_dir: str | os.PathLike | None = None,
    *,
    progress: bool | None = None,
    data: Any = None,
    callback: Callable[[Trainer, dict], None] | None = None,
    resume_from: str | os.PathLike | None = None,
) -> Run:
    """:func:`prepare` then :meth:`Run.fit`; returns the fitted :class:`Run`."""
    run = prepare(spec, data=data)
    run.fit(out_dir, progress=progress, callback=callback, resume_from=resume_from)
    return run


def train_from_config(
    config: RunSpec | Mapping[str, Any],
    out_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    data: Any = None,
    callback: Callable[[Trainer, dict], None] | None = None,
    resume_from: str | os.PathLike | None = None,
) -> tuple[torch.nn.Module, Any, Trainer, Any]:
    """:func:`train` returning ``(model, algorithm, trainer, data)`` (for code written against that shape)."""
    run = train(as_spec(config), out_dir, progress=progress, data=data, callback=callback, resume_from=resume_from)
    return run.model, run.algorithm, run.trainer, run.data


# --------------------------------------------------------------------------------------------------------
# run directories
# --------------------------------------------------------------------------------------------------------
def write_run(out_dir: str | os.PathLike, model: torch.nn.Module, n_samples: int = 10000, seed: int = 0) -> None:
    """Write ``model.safetensors`` and ``samples.npz`` (array ``x``, ``n_samples`` model samples)."""
    out_dir = Path(out_dir)
    wio.save_safetensors(model, out_dir / "model.safetensors")
    gen = torch.Generator(device=model.device).manual_seed(seed + 2)
    x = sample_observations(model, n_samples, gen)
    wio.save_npz(out_dir / "samples.npz", x=x)


def load_run(run_dir: str | os.PathLike, device: str | None = None) -> tuple[RunSpec, torch.nn.Module]:
    """Load ``(spec, model)`` from a directory written by ``wakesleep train``.

    The model's weights come from ``model.safetensors`` (the original run's ``model.init`` file is not
    needed); ``device`` replaces the run's ``train.device``. A parameter that is NaN or infinite is an error
    naming the tensor.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WakesleepError(f"{run_dir}: run directory not found")
    for name in ("config.yaml", "model.safetensors"):
        if not (run_dir / name).is_file():
            raise WakesleepError(f"{run_dir / name}: file not found (not a run directory written by 'wakesleep train')")
    spec = RunSpec.load(run_dir / "config.yaml")
    changes: dict[str, Any] = {}
    if device is not None:
        changes["device"] = device
    model_settings = spec.model.to_dict()
    model_settings.pop("init", None)
    from wakesleep.spec import ModelSpec

    spec = spec.replace(model=ModelSpec(model_settings), train=changes)
    model = build_model(spec)
    wio.load_safetensors(model, run_dir / "model.safetensors")
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise WakesleepError(f"{run_dir / 'model.safetensors'}: tensor {name!r} holds NaN or inf values")
    return spec, model


def load_trained(run_dir: str | os.PathLike, device: str | None = None) -> tuple[RunSpec, torch.nn.Module, Any]:
    """Load ``(spec, model, algorithm)`` from a directory written by ``wakesleep train``: :func:`load_run`, and the
    algorithm its config builds with the state of the run's last checkpoint (``checkpoint/``: e.g. DDC-HM's
    recognition statistics and chosen ridges), when there is one. The global torch seed is set to the run's
    ``train.seed`` before the algorithm is built. A state that does not fit the algorithm is an error naming
    the checkpoint.
    """
    spec, model = load_run(run_dir, device=device)
    torch.manual_seed(spec.train.seed)
    algo = build_algorithm(spec, model)
    ckpt_dir = Path(run_dir) / "checkpoint"
    if ckpt_dir.is_dir():
        from wakesleep.training import read_checkpoint

        state = read_checkpoint(ckpt_dir).algorithm
        if state:
            try:
                algo.load_state_dict(
                    {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
                )
            except (RuntimeError, KeyError, ValueError, IndexError) as exc:
                detail = str(exc).strip().splitlines()
                raise WakesleepError(
                    f"{ckpt_dir}: the algorithm state does not fit the algorithm the run's config builds "
                    f"({detail[-1].strip() if detail else type(exc).__name__})"
                ) from None
    return spec, model, algo
