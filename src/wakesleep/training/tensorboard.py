"""Live training curves: a log callback that writes TensorBoard event files (``train.tensorboard: true``).

:class:`TensorBoardWriter` is called like the other log callbacks (``callback(trainer, record)``, see
:mod:`wakesleep.training.monitor`). At each log step it writes every number of the record as a scalar (tags as in
``metrics.jsonl``: ``grad_norm``, ``cov_gap``, ``sleep/<name>``, ...) and, when the observations are images of a
known shape, a grid of model samples (tag ``samples``). :func:`wakesleep.runs.Run.fit` writes them to
``<run dir>/tensorboard/``, next to ``metrics.jsonl``; watch them with ``tensorboard --logdir <run dir>``.

The event files are written with ``tensorboardX`` (the ``tensorboard`` extra: ``pip install
'wakesleep[tensorboard]'``), or with ``torch.utils.tensorboard`` where only the ``tensorboard`` package is
installed. Writing them changes nothing in the training: the sample images are drawn with their own generator
(seeded by the seed and the step) and the global random state is restored afterwards.

A resumed fit appends a new event file to the same directory, marked so that TensorBoard hides the events the
interrupted fit logged after its checkpoint (``purge_step``); a rollback after a divergence does the same.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep.errors import WakesleepError

__all__ = [
    "TENSORBOARD_DIR",
    "TensorBoardWriter",
    "chain_callbacks",
    "image_grid",
    "image_shape_of",
    "require_tensorboard",
    "summary_writer_class",
]

#: the directory of the event files inside a run directory
TENSORBOARD_DIR = "tensorboard"

#: tells a distinct file name to each writer opened by this process (event files are named by the second)
_FILE_COUNTER = itertools.count()


def summary_writer_class() -> type | None:
    """The ``SummaryWriter`` class of ``tensorboardX``, else of ``torch.utils.tensorboard``; None if neither imports.

    Returns
    -------
    type or None
        A class taking the log directory as its first argument and ``purge_step`` and ``filename_suffix``.
    """
    try:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    except ImportError:
        pass
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's writer needs the tensorboard package
        return None
    return SummaryWriter


def require_tensorboard(field: str = "train.tensorboard") -> None:
    """Raise a one-line :class:`WakesleepError` naming ``field`` when no TensorBoard writer can be imported.

    Parameters
    ----------
    field : str
        The config field that asked for TensorBoard.

    Raises
    ------
    WakesleepError
        When neither ``tensorboardX`` nor ``tensorboard`` is installed.
    """
    if summary_writer_class() is None:
        raise WakesleepError(
            f"{field}: true needs the tensorboardX package, which is not installed "
            f"(pip install 'wakesleep[tensorboard]', or set {field}: false)"
        )


def image_shape_of(data: Any, dim: int) -> tuple[int, ...] | None:
    """The image shape of one observation of ``dim`` numbers, if the data say it (else 28 x 28 for 784 numbers).

    Parameters
    ----------
    data : object
        The training data; a :class:`~wakesleep.data.DataSet` carries ``image_shape`` (MNIST, patches, image
        files).
    dim : int
        The number of observed values per point.

    Returns
    -------
    tuple of int or None
        ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` with ``prod == dim``; None when the observations are not known to
        be images.
    """
    shape = getattr(data, "image_shape", None)
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if math.prod(shape) == dim and _drawable(shape):
            return shape
        return None
    return (28, 28) if dim == 784 else None


def _drawable(shape: Sequence[int]) -> bool:
    return len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3))


def image_grid(images: np.ndarray | torch.Tensor, image_shape: Sequence[int], *, pad: int = 1) -> np.ndarray:
    """Tile flattened images into one ``[H, W, C]`` grid with values in [0, 1] (others scaled by the grid's range).

    Parameters
    ----------
    images : array or tensor
        ``[n, prod(image_shape)]``.
    image_shape : sequence of int
        ``(H, W)`` (grey) or ``(H, W, C)`` with ``C`` 1 or 3.
    pad : int
        Pixels between the images (drawn at the lowest value).

    Returns
    -------
    numpy.ndarray
        ``float32 [rows * (H + pad) - pad, cols * (W + pad) - pad, C]`` with ``cols = ceil(sqrt(n))``.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().to("cpu", torch.float64).numpy()
    shape = tuple(int(s) for s in image_shape)
    if not _drawable(shape):
        raise WakesleepError(f"image_grid: image_shape must be (H, W) or (H, W, 1 or 3), got {shape}")
    h, w = shape[:2]
    c = shape[2] if len(shape) == 3 else 1
    arr = np.asarray(images, dtype=np.float64).reshape(-1, h, w, c)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
    if lo < 0.0 or hi > 1.0:  # values in [0, 1] (binary pixels, intensities) are drawn as they are
        arr = (arr - lo) / (hi - lo) if hi > lo else np.full_like(arr, 0.5)
    n = arr.shape[0]
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    grid = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad, c), dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = arr[i]
    return grid


def chain_callbacks(*callbacks: Callable[[Any, dict], None] | None) -> Callable[[Any, dict], None] | None:
    """One log callback calling each of ``callbacks`` (Nones skipped) in order; None when there is none.

    Parameters
    ----------
    *callbacks : callable or None
        Each called as ``callback(trainer, record)``.

    Returns
    -------
    callable or None
    """
    given = [c for c in callbacks if c is not None]
    if not given:
        return None
    if len(given) == 1:
        return given[0]

    def call_each(trainer: Any, record: dict) -> None:
        for callback in given:
            callback(trainer, record)

    return call_each


class TensorBoardWriter:
    """Log callback: each record's numbers as TensorBoard scalars and, for images, a grid of model samples.

    The event files go to ``log_dir`` (created on the first record). Close the writer after the fit
    (:meth:`close`, or use it as a context manager); every record is flushed to disk as it is written.

    Parameters
    ----------
    log_dir : path
        The directory of the event files (a run's ``tensorboard/``).
    image_shape : sequence of int, optional
        The shape of one observation as an image, ``(H, W)`` or ``(H, W, 1 or 3)``
        (:func:`image_shape_of`); None: no images.
    n_images : int
        Model samples in the grid.
    seed : int
        The samples at step ``s`` are drawn with a generator seeded ``seed + s`` (the same images for the same
        model, whether the fit was interrupted or not).

    Raises
    ------
    WakesleepError
        When no TensorBoard writer is installed (:func:`require_tensorboard`).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        *,
        image_shape: Sequence[int] | None = None,
        n_images: int = 16,
        seed: int = 0,
    ) -> None:
        require_tensorboard()
        if image_shape is not None and not _drawable(tuple(image_shape)):
            raise WakesleepError(f"TensorBoardWriter: image_shape must be (H, W) or (H, W, 1 or 3), got {image_shape}")
        self.log_dir = Path(log_dir)
        self.image_shape = tuple(int(s) for s in image_shape) if image_shape is not None else None
        self.n_images = int(n_images)
        self.seed = int(seed)
        self._writer: Any = None
        self._last_step: int | None = None

    def _open(self, trainer: Any, step: int) -> None:
        """A new event file whose ``purge_step`` hides what an earlier (interrupted or rolled back) fit logged later."""
        history = getattr(trainer, "history_", None) or []
        if len(history) >= 2:  # a rollback: keep what the trainer kept
            purge = int(history[-2]["step"]) + 1
        else:  # the first record of a fit: a resumed fit keeps what its checkpoint's step had logged
            start = int(getattr(trainer, "start_iter_", 0) or 0)
            purge = start + 1 if start > 0 else 0
        purge = min(purge, step)
        self.close()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        writer_class = summary_writer_class()
        # TensorBoard reads a directory's files in the order of their names, which start with the second they
        # were opened: within one second the purge step (larger for each later file of a run) orders them
        suffix = f".{purge:012d}.{os.getpid()}.{next(_FILE_COUNTER)}"
        self._writer = writer_class(str(self.log_dir), purge_step=purge, filename_suffix=suffix)

    def __call__(self, trainer: Any, record: Mapping[str, Any]) -> None:
        """Write ``record``'s numbers (all but ``step``) and, with an image shape, a sample grid at its step."""
        step = int(record["step"])
        if self._writer is None or (self._last_step is not None and step <= self._last_step):
            self._open(trainer, step)
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            self._writer.add_scalar(key, float(value), step)
        if self.image_shape is not None and self.n_images > 0:
            model = getattr(trainer, "model", None)
            if model is not None and hasattr(model, "sample"):
                grid = image_grid(self._samples(model, step), self.image_shape)
                self._writer.add_image("samples", grid, step, dataformats="HWC")
        self._writer.flush()
        self._last_step = step

    def _samples(self, model: torch.nn.Module, step: int) -> torch.Tensor:
        """``n_images`` observations from ``model``, leaving every global random state as it was."""
        from wakesleep.training.monitor import sample_observations

        ref = next(iter(model.parameters()), None)
        device = torch.device(getattr(model, "device", ref.device if ref is not None else "cpu"))
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            gen = torch.Generator(device=device).manual_seed(self.seed + step)
            return sample_observations(model, self.n_images, gen)

    def close(self) -> None:
        """Flush and close the current event file (a later record opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
