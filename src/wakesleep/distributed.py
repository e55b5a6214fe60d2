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
* DDC-HM (``algo.global_gradients``): :func:`allreduce_sum` is installed with ``algo.set_reducer``, so the
  sufficient statistics of its closed-form regressions (T^T T, H^T H, H^T T, standardisation moments, ridge
  validation errors, minibatch sums of r and r^T S(x)) are summed over ranks, every rank solves the same
  systems and ``wake_gradient`` is already the gradient of the union: it is not averaged again;
* every other algorithm: the wake gradients, and the recognition gradients after ``step_recognition``,
  are averaged over ranks (all-reduce sum / world size) before the Adam steps;
* rank 0 alone writes ``DIR`` (config.yaml, metrics.jsonl, checkpoint/, model.safetensors, samples.npz).

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
    """Wraps an algorithm so that the standard :class:`~wakesleep.train.Trainer` trains data-parallel.

    With ``algo.global_gradients`` (DDC-HM) the reducer is installed in the algorithm and its gradients pass
    through unchanged; otherwise wake gradients and recognition ``.grad`` are averaged over ranks.
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
        self.global_gradients = bool(getattr(algo, "global_gradients", False))
        if self.global_gradients:
            if not hasattr(algo, "set_reducer"):
                raise WakesleepError("distributed: an algorithm with global_gradients must provide set_reducer")
            algo.set_reducer(reduce)
        _broadcast_([p.data for p in self.model.parameters()])
        _broadcast_([b for b in self.model.buffers() if b.is_floating_point()])
        _broadcast_([p.data for p in algo.recognition_parameters()])

    def __getattr__(self, name: str) -> Any:  # proposal, recognise, ... of the wrapped algorithm
        return getattr(self.__dict__["algo"], name)

    def sleep(self, **options) -> dict[str, float]:
        return self.algo.sleep(**options)

    def wake_gradient(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        grads = self.algo.wake_gradient(x)
        if self.global_gradients or self.world_size == 1:
            return grads
        return {k: self.reduce(v) / self.world_size for k, v in grads.items()}

    def step_recognition(self, x: torch.Tensor) -> dict[str, float]:
        info = self.algo.step_recognition(x)
        if self.world_size > 1:
            for p in self.algo.recognition_parameters():
                if p.grad is not None:
                    p.grad.copy_(self.reduce(p.grad) / self.world_size)
        return info

    def recognition_parameters(self) -> list[torch.nn.Parameter]:
        return self.algo.recognition_parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.algo.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
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
    config: Mapping[str, Any],
    out_dir: str | os.PathLike | None,
    *,
    rank: int,
    world_size: int,
    progress: bool | None = False,
    data: Any = None,
    monitor_samples: int = 1000,
):
    """Train the run described by a resolved ``config`` as rank ``rank`` of ``world_size`` (group initialised).

    Returns ``(model, wrapped_algorithm, trainer)``. Only rank 0 writes ``out_dir``.
    """
    from wakesleep import io as wio
    from wakesleep.config import dump_config
    from wakesleep.train import (
        Trainer,
        apply_threads,
        build_algorithm_from_config,
        build_model_from_config,
        load_data,
        write_run,
    )

    t = config["train"]
    apply_threads(config)
    torch.manual_seed(t["seed"])
    model = build_model_from_config(config)
    x = load_data(config, model) if data is None else data
    algo = DataParallelAlgorithm(build_algorithm_from_config(config, model), world_size=world_size)
    shard = ShardedData(x, rank, world_size, model.dtype, model.device)
    writer = out_dir if rank == 0 else None
    if writer is not None:
        Path(writer).mkdir(parents=True, exist_ok=True)
        wio.write_text(Path(writer) / "config.yaml", dump_config(config))
    trainer = Trainer(
        algo,
        epochs=t["epochs"],
        batch_size=t["batch_size"],
        lr=t["lr"],
        recognition_lr=t["recognition_lr"],
        seed=t["seed"] + 1000 * rank,
        sleep_every=t["sleep_every"],
        precision=t["precision"],
        log_every=t["log_every"],
        checkpoint_every=t["checkpoint_every"],
        max_iters=t["max_iters"],
        out_dir=writer,
        progress=progress if rank == 0 else False,
        monitor_samples=monitor_samples if rank == 0 else 0,
    )
    trainer.fit(shard)
    if writer is not None:
        write_run(writer, model, n_samples=t["samples"], seed=t["seed"])
        wio.save_json(
            Path(writer) / "distributed.json",
            {
                "world_size": world_size,
                "backend": dist.get_backend() if dist.is_available() and dist.is_initialized() else None,
                "global_gradients": algo.global_gradients,
                "per_rank_batch_size": t["batch_size"],
                "global_batch_size": t["batch_size"] * world_size,
                "iterations": trainer.n_iter_,
                "seconds": trainer.seconds_,
            },
        )
    return model, algo, trainer


def main(argv: list[str] | None = None) -> int:
    """``python -m wakesleep.distributed`` (under torchrun): data-parallel ``wakesleep train``."""
    from wakesleep.cli import EXIT_USER_ERROR
    from wakesleep.config import load_config
    from wakesleep.io import check_output_dir

    ap = argparse.ArgumentParser(prog="torchrun ... -m wakesleep.distributed", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, metavar="FILE.yaml")
    ap.add_argument("--out", required=True, metavar="DIR")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: the config's train.device)")
    ap.add_argument("--backend", default=None, help="gloo or nccl (default: nccl on CUDA, gloo on the CPU)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        device = args.device or config["train"]["device"]
        check_output_dir(args.out, args.overwrite)  # on every rank, before any of them joins the group
        rank, world, device = init_process_group(device, args.backend)
        config["train"]["device"] = device
        t0 = time.perf_counter()
        _, _, trainer = train_distributed(config, args.out, rank=rank, world_size=world, progress=None)
        if rank == 0:
            print(
                f"wrote {args.out} ({world} rank(s), {trainer.n_iter_} iterations in {time.perf_counter() - t0:.1f} s)"
            )
    except WakesleepError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
