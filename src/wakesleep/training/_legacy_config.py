"""Building a training run from a resolved config dict (``wakesleep train`` and the experiments).

Moved unchanged from ``wakesleep.train``; typed run specs (``wakesleep.runs``) are to replace this module.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep import io as wio
from wakesleep.config import dump_config, torch_device, torch_dtype
from wakesleep.errors import WakesleepError
from wakesleep.training.loop import Trainer
from wakesleep.training.monitor import sample_observations

__all__ = [
    "build_model_from_config",
    "build_algorithm_from_config",
    "load_data",
    "validate_data",
    "train_from_config",
    "trainer_from_config",
    "write_run",
    "load_run",
    "config_threads",
    "apply_threads",
]


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
        x = sample_observations(gen_model, int(spec["n"]), gen).detach()
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
    x = sample_observations(model, n_samples, gen)
    wio.save_npz(out_dir / "samples.npz", x=x)


def load_run(run_dir: str | os.PathLike, device: str | None = None):
    """Load ``(config, model)`` from a directory written by ``wakesleep train``."""
    from wakesleep.config import load_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WakesleepError(f"{run_dir}: run directory not found")
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
