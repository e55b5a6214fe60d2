"""Checkpoint directories: the whole training state of a :class:`~wakesleep.training.Trainer`, on disk.

A checkpoint is a directory of five files, written atomically as a whole (:func:`write_checkpoint`):

``model.safetensors``
    The model's ``state_dict``.
``algorithm.safetensors`` or ``algorithm.pt``
    The algorithm's ``state_dict`` (the pickled form when it holds more than tensors; neither when it is empty).
``optimizer.pt``
    Both Adam optimisers' states (``optimizer`` and ``recognition_optimizer``, None when absent).
``rng.safetensors``
    The random streams (``torch``, ``cuda`` on a CUDA device, ``order``, ``monitor`` and, for a dynamically
    binarised data set, ``data``).
``state.json``
    ``format``, ``step``, ``epoch``, ``seconds``, ``algorithm``, ``n_data`` and ``batch_size``; written last, so
    a directory that has it is complete.

:func:`read_checkpoint` reads and checks one for readability, :func:`check_checkpoint` checks that it fits a
model, an algorithm and a minibatch layout (naming the file and the tensor or field when it does not) and
:func:`restore_checkpoint` loads it. The optimiser is :func:`adam`.
"""

from __future__ import annotations

import contextlib
import io as io_
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wakesleep import io as wio
from wakesleep import outdirs
from wakesleep.errors import WakesleepError

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "adam",
    "algorithm_name",
    "check_checkpoint",
    "read_checkpoint",
    "restore_checkpoint",
    "write_checkpoint",
]

#: Version of the checkpoint layout written by :func:`write_checkpoint` (``state.json`` key ``format``).
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    """The contents of a checkpoint directory, read and checked for readability (not yet for fit).

    Attributes
    ----------
    path : Path
        The checkpoint directory.
    state : dict
        ``state.json`` (its ``step`` is a non-negative integer).
    model : dict of str to torch.Tensor
        The model's ``state_dict`` (on the CPU).
    algorithm : dict
        The algorithm's ``state_dict`` (empty when the algorithm has none).
    algorithm_pickled : bool
        Whether ``algorithm`` came from ``algorithm.pt`` rather than ``algorithm.safetensors``.
    optimizer : dict
        The optimisers' states, keys ``optimizer`` and ``recognition_optimizer`` (either may be None).
    rng : dict of str to torch.Tensor
        The states of the random streams.
    """

    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    algorithm: dict[str, Any]
    algorithm_pickled: bool
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]


def adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with PyTorch's fused kernel where the parameters' device and dtype allow it, else the default.

    The fused kernel does one kernel for all parameters instead of several passes per tensor. It updates the
    parameters in place without bumping their version counters, so code that caches results per parameter version
    must also compare values (``DDCHelmholtzMachine`` does).

    Parameters
    ----------
    params : list of torch.Tensor
        The parameters to optimise.
    lr : float
        The learning rate.

    Returns
    -------
    torch.optim.Adam
    """
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def algorithm_name(algo: Any) -> str:
    """The name an algorithm is recorded under in ``state.json``: its ``name`` attribute, else its class name."""
    return str(getattr(algo, "name", None) or type(algo).__name__)


# --------------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------------
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


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read every file of a checkpoint directory.

    Parameters
    ----------
    path : path
        The checkpoint directory (``out_dir/checkpoint`` of a run).

    Returns
    -------
    Checkpoint

    Raises
    ------
    WakesleepError
        If the directory or one of its files is missing or unreadable (the message names the file; for a missing
        directory it points to the complete checkpoint an interrupted write left beside it, if any).
    """
    path = Path(path)
    outdirs.recover_interrupted_swap(path, kind="checkpoint")  # a kill between the renames of a checkpoint swap
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
    return Checkpoint(path, state, model, algorithm, pickled, optimizer, rng)


# --------------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------------
def write_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    algorithm_state: Mapping[str, Any],
    optimizers: Mapping[str, torch.optim.Optimizer | None],
    rng: Mapping[str, torch.Tensor],
    info: Mapping[str, Any],
) -> None:
    """Write a checkpoint directory atomically as a whole.

    The files are written into a temporary directory next to ``path`` that then replaces ``path``
    (:func:`wakesleep.outdirs.staged_dir`), so ``path`` never holds files of two different steps.

    Parameters
    ----------
    path : path
        The checkpoint directory (its parent is created).
    model : torch.nn.Module
        The generative model (``model.safetensors``).
    algorithm_state : mapping
        The algorithm's ``state_dict``: ``algorithm.safetensors`` when it holds only tensors, ``algorithm.pt``
        otherwise, nothing when empty.
    optimizers : mapping of str to torch.optim.Optimizer or None
        ``optimizer`` and ``recognition_optimizer`` (``optimizer.pt``).
    rng : mapping of str to torch.Tensor
        The random streams' states (``rng.safetensors``).
    info : mapping
        The fields of ``state.json`` besides ``format``, which this function sets.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = algorithm_state or {}
    optim = {key: (opt.state_dict() if opt is not None else None) for key, opt in optimizers.items()}
    info = {"format": CHECKPOINT_FORMAT, **info}
    with outdirs.staged_dir(path, overwrite=True, kind="checkpoint") as tmp:
        wio.save_safetensors(model, tmp / "model.safetensors")
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            wio.save_tensors(tmp / "algorithm.safetensors", state)
        elif state:
            wio.write_bytes(tmp / "algorithm.pt", _torch_bytes(state))
        wio.write_bytes(tmp / "optimizer.pt", _torch_bytes(optim))
        wio.save_tensors(tmp / "rng.safetensors", dict(rng))
        wio.save_json(tmp / "state.json", info)  # last: a directory with state.json is complete


# --------------------------------------------------------------------------------------------------------
# checking
# --------------------------------------------------------------------------------------------------------
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


def check_checkpoint(
    ckpt: Checkpoint,
    model: torch.nn.Module,
    algorithm: Any,
    params: list[torch.Tensor],
    recognition_params: list[torch.Tensor],
    n_data: int,
    batch_size: int,
    total: int,
    streams: Iterable[str],
) -> None:
    """Check that ``ckpt`` can continue a run of ``algorithm`` on ``model``.

    Parameters
    ----------
    ckpt : Checkpoint
        As read by :func:`read_checkpoint`.
    model : torch.nn.Module
        The generative model of the run.
    algorithm : object
        Its algorithm (``name``, ``state_dict``).
    params, recognition_params : list of torch.Tensor
        The parameters of the model's and of the recognition model's optimiser (either may be empty).
    n_data, batch_size : int
        The number of training points and the minibatch size of the run; the checkpoint's must be the same.
    total : int
        The iteration the run stops at; the checkpoint's step must be below it.
    streams : iterable of str
        The names of the random streams besides ``torch`` that the checkpoint must hold.

    Raises
    ------
    WakesleepError
        If it does not fit; the message names the file and the tensor or field.
    """
    p = ckpt.path
    st = ckpt.state
    name = algorithm_name(algorithm)
    if st.get("algorithm") not in (None, name):
        raise WakesleepError(
            f"{p / 'state.json'}: the checkpoint is of algorithm {st['algorithm']!r}, this run's is {name!r}"
        )
    for key, value in (("n_data", n_data), ("batch_size", batch_size)):
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
    _check_tensors(p / "model.safetensors", ckpt.model, model.state_dict(), "model", exact=True)
    own = algorithm.state_dict() or {}
    if own or ckpt.algorithm:
        where = p / ("algorithm.pt" if ckpt.algorithm_pickled else "algorithm.safetensors")
        _check_tensors(where, ckpt.algorithm, own, f"algorithm {name!r}", exact=False)
    _check_optimizer(p / "optimizer.pt", ckpt.optimizer.get("optimizer"), params, "model")
    _check_optimizer(
        p / "optimizer.pt", ckpt.optimizer.get("recognition_optimizer"), recognition_params, "recognition model"
    )
    for key in ("torch", *streams):
        if key not in ckpt.rng:
            raise WakesleepError(f"{p / 'rng.safetensors'}: no state of the random stream {key!r}")


# --------------------------------------------------------------------------------------------------------
# restoring
# --------------------------------------------------------------------------------------------------------
def restore_checkpoint(
    ckpt: Checkpoint,
    model: torch.nn.Module,
    algorithm: Any,
    optimizers: Mapping[str, tuple[torch.optim.Optimizer | None, float]],
    generators: Mapping[str, torch.Generator],
    device: torch.device,
) -> int:
    """Load a checked checkpoint into a run: model, algorithm, optimisers and random streams.

    Parameters
    ----------
    ckpt : Checkpoint
        Checked by :func:`check_checkpoint`.
    model : torch.nn.Module
        Gets the checkpoint's parameters and buffers.
    algorithm : object
        Gets the checkpoint's algorithm state (its tensors moved to ``device``), if it has one.
    optimizers : mapping of str to (optimizer or None, float)
        ``optimizer`` and ``recognition_optimizer`` with the run's learning rates, which win over the checkpoint's.
    generators : mapping of str to torch.Generator
        The run's random streams ``order``, ``monitor`` and, if present, ``data``. A ``data`` or ``monitor``
        state from another device type (and a CUDA state from another device) leaves that stream as seeded.
    device : torch.device
        The model's device.

    Returns
    -------
    int
        The checkpoint's step.
    """
    model.load_state_dict(ckpt.model)
    if ckpt.algorithm:
        algorithm.load_state_dict(
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in ckpt.algorithm.items()}
        )
    for key, (opt, lr) in optimizers.items():
        if opt is not None:
            opt.load_state_dict(ckpt.optimizer[key])
            for group in opt.param_groups:  # this trainer's learning rate wins over the checkpoint's
                group["lr"] = lr
    rng = ckpt.rng
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        with contextlib.suppress(RuntimeError):  # a checkpoint from another device: keep the seeded stream
            torch.cuda.set_rng_state(rng["cuda"], device)
    generators["order"].set_state(rng["order"])
    for key in ("data", "monitor"):
        if key in generators:
            with contextlib.suppress(RuntimeError):  # a state from another device type: keep the seeded stream
                generators[key].set_state(rng[key])
    return int(ckpt.state["step"])


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


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of the complete checkpoint in ``path`` (from its ``state.json``), or None if there is none."""
    try:
        return int(json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
