"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``.

Usage (see ``docs/distributed.md``)::

    torchrun --nproc_per_node 2 -m wakesleep.distributed --config FILE.yaml --out DIR [--set key=value ...]
    torchrun --nproc_per_node 4 -m wakesleep.distributed --config FILE.yaml --out DIR --device cuda

What each rank does:

* the process group is initialised from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
  ``MASTER_PORT``, ``LOCAL_RANK``), backend ``gloo`` on the CPU and ``nccl`` on CUDA (rank r uses
  ``cuda:LOCAL_RANK``);
* the model is built with the config's ``train.seed`` on every rank and then rank 0's parameters are
  broadcast, so all ranks start identical; so are the recognition parameters of algorithms that train one by
  gradient descent. DDC-HM's random encoding functions and ReLU layer come from ``algorithm.seed``, identical
  on all ranks by construction;
* each rank trains on its shard of the training set (rows ``rank::world_size``) with its own seed
  ``train.seed + 1000 * rank`` for the minibatch order and for the algorithm's sampling (sleep samples,
  particles): ``train.batch_size`` and ``algorithm.sleep_samples`` are **per rank**, the global minibatch is
  ``world_size * batch_size`` points and DDC-HM's regressions see ``world_size * sleep_samples`` samples;
* DDC-HM (``capabilities.data_parallel == "statistics"``): :func:`allreduce_sum` is installed with
  ``algo.set_reducer``, so the
  sufficient statistics of its closed-form regressions (T^T T, H^T H, H^T T, standardisation moments, ridge
  validation errors, minibatch sums of r and r^T S(x)) are summed over ranks, every rank solves the same
  systems and ``wake_gradient`` is already the gradient of the union: it is not averaged again;
* every other algorithm (``capabilities.data_parallel == "gradients"``): the wake gradients, and the
  recognition gradients after ``step_recognition`` (``capabilities.trained_recognition``), are averaged over
  ranks (all-reduce sum / world size) before the Adam steps;
* rank 0 alone writes ``DIR`` (config.yaml, metrics.jsonl, checkpoint/, model.safetensors, samples.npz,
  distributed.json), in a hidden staging directory beside it that is swapped in, with the ``.wakesleep``
  marker, only when training has finished (:func:`wakesleep.outdirs.staged_dir`): ``--overwrite`` replaces the old
  run as a whole, never mixing its files with the new ones.

The run is built once from its :class:`~wakesleep.spec.RunSpec` by :func:`wakesleep.runs.prepare` and trained
by :meth:`wakesleep.runs.Run.fit`, exactly as ``wakesleep train`` does, with the algorithm and data wrapped.

Without torchrun's environment the module trains in a single process (world size 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from wakesleep.errors import WakesleepError
from wakesleep.spec import RunSpec

#: exit status of a mistake in the user's input (as the ``wakesleep`` command's)
EXIT_USER_ERROR = 2

__all__ = [
    "allreduce_sum",
    "DataParallelAlgorithm",
    "ShardedData",
    "init_process_group",
    "train_distributed",
    "main",
]


# --------------------------------------------------------------------------------------------------------
# process group
# --------------------------------------------------------------------------------------------------------
def init_process_group(device: str = "cpu", backend: str | None = None) -> tuple[int, int, str]:
    """Initialise ``torch.distributed`` from the environment; returns ``(rank, world_size, device)``.

    Without ``WORLD_SIZE`` in the environment (not launched by torchrun) nothing is initialised and
    ``(0, 1, device)`` is returned. On CUDA the device becomes ``cuda:LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_available():
            raise WakesleepError("distributed: torch.distributed is not available in this PyTorch build")
        if backend is None:
            backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        return 0, 1, device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise WakesleepError("--device cuda: CUDA is not available on this machine")
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return rank, world, device


def allreduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all ranks (a new tensor; ``t`` is left unchanged). Identity outside a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    out = t.detach().clone().contiguous()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def _broadcast_(tensors: list[torch.Tensor], src: int = 0) -> None:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for t in tensors:
            buf = t.detach().contiguous().clone()
            dist.broadcast(buf, src=src)
            t.copy_(buf)


# --------------------------------------------------------------------------------------------------------
# algorithm and data wrappers for the (unchanged) single-process Trainer
# --------------------------------------------------------------------------------------------------------
class DataParallelAlgorithm:
    """Wraps an algorithm so that the standard :class:`~wakesleep.training.Trainer` trains data-parallel.

    What it does is read from ``algo.capabilities`` (:class:`~wakesleep.algorithms.base.Capabilities`): with
    ``data_parallel == "statistics"`` (DDC-HM) the reducer is installed in the algorithm (``set_reducer``) and
    its gradients pass through unchanged; with ``"gradients"`` the wake gradients, and the recognition
    ``.grad`` of algorithms with ``trained_recognition``, are averaged over ranks.

    Parameters
    ----------
    algo : Algorithm
        The algorithm (its ``model`` the generative model).
    reduce : callable
        Sum of a tensor over ranks (:func:`allreduce_sum`).
    world_size : int, optional
        Default: the process group's (1 outside one).
    """

    def __init__(
        self, algo: Any, reduce: Callable[[torch.Tensor], torch.Tensor] = allreduce_sum, world_size: int | None = None
    ) -> None:
        self.algo = algo
        self.model = algo.model
        self.reduce = reduce
        self.world_size = (
            world_size
            if world_size is not None
            else (dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1)
        )
        caps = algo.capabilities
        self.global_gradients = caps.data_parallel == "statistics"
        self.averages_recognition = caps.trained_recognition
        if self.global_gradients:
            algo.set_reducer(reduce)
        _broadcast_([p.data for p in self.model.parameters()])
        _broadcast_([b for b in self.model.buffers() if b.is_floating_point()])
        _broadcast_([p.data for p in algo.recognition_parameters()])

    def __getattr__(self, name: str) -> Any:  # proposal, recognise, capabilities, ... of the wrapped algorithm
        return getattr(self.__dict__["algo"], name)

    def sleep(self, **options: Any) -> dict[str, float]:
        """The wrapped algorithm's sleep phase (DDC-HM sums its statistics over ranks itself)."""
        return self.algo.sleep(**options)

    def wake_gradient(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The wake gradient on this rank's minibatch, averaged over ranks unless it is already global."""
        grads = self.algo.wake_gradient(x)
        if self.global_gradients or self.world_size == 1:
            return grads
        return {k: self.reduce(v) / self.world_size for k, v in grads.items()}

    def step_recognition(self, x: torch.Tensor) -> dict[str, float]:
        """The recognition step; a trained recognition model's ``.grad`` is then averaged over ranks."""
        info = self.algo.step_recognition(x)
        if self.world_size > 1 and self.averages_recognition:
            for p in self.algo.recognition_parameters():
                if p.grad is not None:
                    p.grad.copy_(self.reduce(p.grad) / self.world_size)
        return info

    def recognition_parameters(self) -> list[torch.nn.Parameter]:
        """The wrapped algorithm's recognition parameters."""
        return self.algo.recognition_parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped algorithm's state (checkpoints are those of a single-process run)."""
        return self.algo.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the wrapped algorithm's state."""
        self.algo.load_state_dict(state)


class ShardedData:
    """Rows ``rank::world_size`` of a tensor or of a ``DataSet``'s training set (fresh binarisation per epoch)."""

    def __init__(self, data: Any, rank: int, world_size: int, dtype: torch.dtype, device: torch.device | str):
        self.data, self.rank, self.world_size, self.dtype, self.device = data, rank, world_size, dtype, device

    def draw_train(self) -> torch.Tensor:
        full = self.data.draw_train() if hasattr(self.data, "draw_train") else torch.as_tensor(self.data)
        return full[self.rank :: self.world_size].to(dtype=self.dtype, device=self.device)


# --------------------------------------------------------------------------------------------------------
# a whole run
# --------------------------------------------------------------------------------------------------------
def train_distributed(
    spec: RunSpec | Mapping[str, Any],
    out_dir: str | os.PathLike | None,
    *,
    rank: int,
    world_size: int,
    progress: bool | None = False,
    data: Any = None,
    monitor_samples: int = 1000,
    overwrite: bool = False,
) -> tuple[torch.nn.Module, DataParallelAlgorithm, Any]:
    """Train the run ``spec`` as rank ``rank`` of ``world_size`` (the process group already initialised).

    Parameters
    ----------
    spec : RunSpec or mapping
        The run (a resolved config mapping is parsed). ``train.batch_size`` and the algorithm's sample sizes
        are per rank.
    out_dir : path or None
        Where rank 0 writes the run (ignored on the other ranks; None: nothing is written). It appears, with
        the ``.wakesleep`` marker, only when training has finished (:func:`wakesleep.outdirs.staged_dir`).
    rank, world_size : int
        This process's rank and the number of ranks.
    progress : bool or None
        Rank 0's progress bar (None: when stderr is a terminal).
    data : tensor or DataSet, optional
        Training data instead of the spec's (the whole set: each rank takes its shard).
    monitor_samples : int
        Rank 0's samples for the progress metric (0: none).
    overwrite : bool, default False
        Replace an existing non-empty ``out_dir`` written by wakesleep.

    Returns
    -------
    (torch.nn.Module, DataParallelAlgorithm, Trainer)
    """
    from wakesleep import io as wio
    from wakesleep import outdirs, runs

    spec = runs.as_spec(spec)
    prepared = runs.prepare(spec, data=data)
    model = prepared.model
    algo = DataParallelAlgorithm(prepared.algorithm, world_size=world_size)
    shard = ShardedData(prepared.data, rank, world_size, model.dtype, model.device)
    run = runs.Run(spec=spec, model=model, algorithm=algo, data=shard)
    seed = spec.train.seed + 1000 * rank
    if rank != 0 or out_dir is None:
        trainer = run.fit(
            None, progress=False if rank != 0 else progress, seed=seed, monitor_samples=0 if rank else monitor_samples
        )
        return model, algo, trainer
    with outdirs.staged_dir(out_dir, overwrite) as tmp:
        trainer = run.fit(tmp, progress=progress, seed=seed, monitor_samples=monitor_samples)
        wio.save_json(
            Path(tmp) / "distributed.json",
            {
                "world_size": world_size,
                "backend": dist.get_backend() if dist.is_available() and dist.is_initialized() else None,
                "global_gradients": algo.global_gradients,
                "per_rank_batch_size": spec.train.batch_size,
                "global_batch_size": spec.train.batch_size * world_size,
                "iterations": trainer.n_iter_,
                "seconds": trainer.seconds_,
            },
        )
    return model, algo, trainer


def main(argv: list[str] | None = None) -> int:
    """``python -m wakesleep.distributed`` (under torchrun): data-parallel ``wakesleep train``."""
    from wakesleep.outdirs import check_output_dir

    ap = argparse.ArgumentParser(prog="torchrun ... -m wakesleep.distributed", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, metavar="FILE.yaml")
    ap.add_argument("--out", required=True, metavar="DIR")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: the config's train.device)")
    ap.add_argument("--backend", default=None, help="gloo or nccl (default: nccl on CUDA, gloo on the CPU)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    try:
        spec = RunSpec.load(args.config, args.overrides, check_model=True)
        device = args.device or spec.train.device
        check_output_dir(args.out, args.overwrite)  # on every rank, before any of them joins the group
        rank, world, device = init_process_group(device, args.backend)
        spec = spec.replace(train={"device": device})
        t0 = time.perf_counter()
        _, _, trainer = train_distributed(
            spec, args.out, rank=rank, world_size=world, progress=None, overwrite=args.overwrite
        )
        if rank == 0:
            print(
                f"wrote {args.out} ({world} rank(s), {trainer.n_iter_} iterations in {time.perf_counter() - t0:.1f} s)"
            )
    except (WakesleepError, FileNotFoundError) as exc:
        message = f"{exc.filename}: file not found" if isinstance(exc, FileNotFoundError) and exc.filename else exc
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
