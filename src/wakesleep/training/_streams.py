"""What the training loop draws from: the data of each epoch, its minibatches and the random streams behind them.

A fit's random streams besides torch's global RNG (:class:`RandomStreams`) are the minibatch order (``order``, on
the CPU), the model samples of the progress metric (``monitor``, on the model's device) and, for a
:class:`wakesleep.data.DataSet` with ``binarize: dynamic``, its binariser (``data``). All are checkpointed, so a
resumed fit continues them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Layout", "RandomStreams", "TrainingData", "dynamic_binarizer_generator", "minibatches"]


def dynamic_binarizer_generator(dataset: Any) -> torch.Generator | None:
    """The generator of a ``DataSet``'s dynamic binariser (None for fixed data).

    Parameters
    ----------
    dataset : object
        A :class:`wakesleep.data.DataSet`, or anything else (a tensor, an array, None).

    Returns
    -------
    torch.Generator or None
    """
    binarizer = getattr(dataset, "binarizer", None)
    if binarizer is None or not getattr(binarizer, "is_dynamic", False) or not hasattr(dataset, "train"):
        return None
    return binarizer.generator(dataset.train.device)


class RandomStreams:
    """The random streams of a fit: ``order`` (CPU), ``monitor`` (``device``) and, if dynamic, ``data``.

    Parameters
    ----------
    seed : int
        Seeds ``order`` (with ``seed``) and ``monitor`` (with ``seed + 3``); ``data`` is the binariser's own.
    device : torch.device
        The model's device.
    dataset : object
        The training data (a ``DataSet`` with ``binarize: dynamic`` adds the ``data`` stream).
    """

    def __init__(self, seed: int, device: torch.device, dataset: Any) -> None:
        self.generators: dict[str, torch.Generator] = {
            "order": torch.Generator(device="cpu").manual_seed(seed),
            "monitor": torch.Generator(device=device).manual_seed(seed + 3),
        }
        data_gen = dynamic_binarizer_generator(dataset)
        if data_gen is not None:
            self.generators["data"] = data_gen
        self.start_epoch()

    @property
    def order(self) -> torch.Generator:
        """The minibatch-order stream."""
        return self.generators["order"]

    @property
    def monitor(self) -> torch.Generator:
        """The stream of the progress metric's model samples."""
        return self.generators["monitor"]

    def epoch_states(self) -> dict[str, torch.Tensor]:
        """Current states of the per-epoch streams (minibatch order, dynamic binarisation)."""
        return {k: g.get_state() for k, g in self.generators.items() if k in ("order", "data")}

    def start_epoch(self) -> None:
        """Remember the per-epoch streams' states as those at the start of the epoch in progress."""
        self.epoch_start = self.epoch_states()

    def state(self, at_epoch_boundary: bool) -> dict[str, torch.Tensor]:
        """Every stream (and torch's global RNG) as it must be restored to continue from here.

        Between two epochs (``at_epoch_boundary``) the per-epoch streams are where the next epoch starts; within
        an epoch, where the epoch in progress started (its permutation and binarisation are drawn again on
        resuming).
        """
        state = {"torch": torch.get_rng_state(), "monitor": self.monitor.get_state()}
        device = self.monitor.device
        if device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(device)
        state.update(self.epoch_states() if at_epoch_boundary else self.epoch_start)
        return state


@dataclass
class TrainingData:
    """The training data of one fit, and the array of the epoch in progress (``x``, set by :meth:`draw`)."""

    source: Any
    dtype: torch.dtype
    device: torch.device
    x: torch.Tensor | None = None

    @property
    def dataset(self) -> Any:
        """The ``wakesleep.data.DataSet`` (None for an array)."""
        return self.source if hasattr(self.source, "draw_train") else None

    def draw(self) -> torch.Tensor:
        """Set ``x`` to the data of a new epoch (a fresh binarisation under ``binarize: dynamic``)."""
        if self.dataset is not None:
            x = torch.as_tensor(self.dataset.draw_train())
        else:
            x = torch.as_tensor(np.asarray(self.source) if not isinstance(self.source, torch.Tensor) else self.source)
        self.x = x.to(dtype=self.dtype, device=self.device)
        return self.x


@dataclass(frozen=True)
class Layout:
    """The minibatches of a run: ``per_epoch`` minibatches of ``batch_size`` of ``n_data`` points, ``total`` in all."""

    n_data: int
    batch_size: int
    per_epoch: int
    total: int


def minibatches(data: TrainingData, layout: Layout, streams: RandomStreams, step: int) -> Iterator[torch.Tensor]:
    """The minibatches of iterations ``step`` to ``layout.total``, epoch by epoch (one per iteration).

    Each epoch draws a permutation from the ``order`` stream (and, after the first, new data into ``data``); a
    resumed epoch draws its permutation again from the state at its start and skips the minibatches already
    trained on. The first epoch's data must have been drawn.
    """
    skip = step % layout.per_epoch
    first = True
    while step < layout.total:
        if not first:
            streams.start_epoch()
            if data.dataset is not None:
                data.draw()
        first = False
        perm = torch.randperm(layout.n_data, generator=streams.order).to(data.device)
        for start in range(skip * layout.batch_size, layout.n_data, layout.batch_size):
            if step >= layout.total:
                return
            yield data.x[perm[start : start + layout.batch_size]]
            step += 1
        skip = 0
