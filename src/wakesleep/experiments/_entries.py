"""Train, continue or reload the algorithm entries of a resumable experiment (``sbn``, ``patches``).

Each entry trains in its own run directory (``train_from_config``: config.yaml, metrics.jsonl,
model.safetensors, samples.npz, checkpoint/). :class:`EntryRunner` adds ``done.json`` there, written as soon as
training has finished (``{"train": {algorithm, seconds, iterations, epochs, final_metrics}}``) and again with
the entry's evaluation numbers (``"evaluation"``, :meth:`Entry.save_evaluation`) once the experiment has
computed them. When ``wakesleep experiment NAME --out DIR --resume`` continues ``DIR.partial``, an entry

- with ``done.json`` is not trained again: its model and algorithm state are loaded from its final
  checkpoint (so samples and the algorithm's own proposal are those right after training), and its saved
  evaluation, if any, is handed back so that the experiment need not recompute it;
- with ``checkpoint/`` but no ``done.json`` continues training from the checkpoint
  (``train_from_config(..., resume_from=...)``; a checkpoint already at the last iteration, from a run
  stopped between the end of training and ``done.json``, counts as finished);
- with neither trains from scratch (files of an interrupted start are removed first).

Under ``data.binarize: dynamic`` the entries of a data set share one random stream of binarisations; its state
after each entry (``data_rng.safetensors``) is restored when the entry is reloaded, so that the entries trained
after it see the same data as in an uninterrupted run.

Checkpoints during training are written every ``train.checkpoint_every`` iterations (0, the default: only at
the end, so an entry interrupted in training starts again from scratch).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wakesleep import io as wio
from wakesleep.errors import WakesleepError

__all__ = ["DONE_FILE", "Entry", "EntryRunner"]

#: marker (and saved numbers) of a finished entry, in its run directory
DONE_FILE = "done.json"
#: state of a dynamic binarisation's random stream after the entry (see the module docstring)
DATA_RNG_FILE = "data_rng.safetensors"


@dataclass
class Entry:
    """One trained (or reloaded) algorithm entry.

    Attributes
    ----------
    model, algorithm : the trained generative model and algorithm (recognition model / proposal included)
    run_dir : Path
        The entry's run directory.
    info : dict
        ``algorithm``, ``seconds`` (training, over all sessions), ``iterations``, ``epochs``, ``final_metrics``.
    evaluation : dict or None
        The evaluation numbers saved by an earlier session (None: compute them, then call
        :meth:`save_evaluation`).
    trained : bool
        Whether this session trained (or continued training) the entry.
    data : optional
        The training data (its dynamic binarisation's random stream is saved with the evaluation).
    """

    model: torch.nn.Module
    algorithm: Any
    run_dir: Path
    info: dict[str, Any]
    evaluation: dict[str, Any] | None
    trained: bool
    data: Any = None

    def save_evaluation(self, evaluation: dict[str, Any]) -> None:
        """Record the entry's evaluation numbers in ``done.json`` (a resumed run then reuses them)."""
        self.evaluation = evaluation
        _save_data_rng(self.run_dir, self.data)
        wio.save_json(self.run_dir / DONE_FILE, {"train": self.info, "evaluation": evaluation})


class EntryRunner:
    """Trains the entries of one experiment run, or on resuming continues or reloads them (module docstring).

    Parameters
    ----------
    resume : bool, default False
        Whether the run directory is a ``DIR.partial`` being continued.
    progress : bool or None
        Progress bars of training (None: when stderr is a terminal).
    on_start : callable, optional
        Called once, before the first entry starts (``wakesleep.io.Stage.mark_started``: from then on a
        failure keeps the run directory as ``DIR.partial``).
    """

    def __init__(
        self, resume: bool = False, progress: bool | None = None, on_start: Callable[[], None] | None = None
    ) -> None:
        self.resume = resume
        self.progress = progress
        self.on_start = on_start
        self.started = False

    def run(self, config: dict[str, Any], run_dir: str | Path, data: Any) -> Entry:
        """Train the entry of resolved run config ``config`` in ``run_dir`` on ``data`` (or reload it).

        Parameters
        ----------
        config : dict
            The entry's resolved run config (model, algorithm, train, data).
        run_dir : path
            Its run directory.
        data : torch.Tensor or wakesleep.data.DataSet
            The training data, as for :func:`wakesleep.train.train_from_config`.

        Returns
        -------
        Entry
        """
        from wakesleep import train as wtrain

        run_dir = Path(run_dir)
        if not self.started:
            self.started = True
            if self.on_start is not None:
                self.on_start()
        done, ckpt = run_dir / DONE_FILE, run_dir / "checkpoint"
        if self.resume and done.is_file():
            saved = wio.load_json(done)
            model, algo = _load_finished(config, ckpt)
            _restore_data_rng(run_dir, data)
            return Entry(model, algo, run_dir, saved["train"], saved.get("evaluation"), trained=False, data=data)
        resume_from, seconds_before = None, 0.0
        if self.resume and (ckpt / "state.json").is_file():
            state = wio.load_json(ckpt / "state.json")
            if int(state["step"]) >= _total_iterations(config, data):
                return self._finish_from_checkpoint(config, run_dir, state, data)
            resume_from, seconds_before = ckpt, float(state.get("seconds") or 0.0)
        elif self.resume and run_dir.exists():
            shutil.rmtree(run_dir)
        t0 = time.perf_counter()
        try:
            model, algo, trainer, _ = wtrain.train_from_config(
                config, run_dir, progress=self.progress, data=data, resume_from=resume_from
            )
        except wtrain.TrainingDiverged as exc:  # say which entry: the message alone names only a parameter
            raise wtrain.TrainingDiverged(f"{run_dir.parent.name}/{run_dir.name}: {exc}") from None
        info = {
            "algorithm": config["algorithm"]["name"],
            "seconds": seconds_before + time.perf_counter() - t0,
            "iterations": trainer.n_iter_,
            "epochs": trainer.epochs_,
            "final_metrics": trainer.history_[-1] if trainer.history_ else {},
        }
        info = wio.to_jsonable(info)  # the same values as a resumed run reads back from done.json
        _save_data_rng(run_dir, data)
        wio.save_json(done, {"train": info})
        return Entry(model, algo, run_dir, info, None, trained=True, data=data)

    def _finish_from_checkpoint(self, config: dict[str, Any], run_dir: Path, state: dict[str, Any], data: Any) -> Entry:
        """Training had finished but its run files and ``done.json`` were not written: write them now."""
        from wakesleep.config import dump_config
        from wakesleep.train import write_run

        model, algo = _load_finished(config, run_dir / "checkpoint")
        metrics = run_dir / "metrics.jsonl"
        records = wio.read_jsonl(metrics) if metrics.is_file() else []
        t = config["train"]
        write_run(run_dir, model, n_samples=t["samples"], seed=t["seed"])
        wio.write_text(run_dir / "config.yaml", dump_config(config))
        info = {
            "algorithm": config["algorithm"]["name"],
            "seconds": float(state.get("seconds") or 0.0),
            "iterations": int(state["step"]),
            "epochs": float(state.get("epoch") or 0.0),
            "final_metrics": records[-1] if records else {},
        }
        wio.save_json(run_dir / DONE_FILE, {"train": info})
        return Entry(model, algo, run_dir, info, None, trained=False, data=data)


def _save_data_rng(run_dir: Path, data: Any) -> None:
    from wakesleep.train import dynamic_binarizer_generator

    gen = dynamic_binarizer_generator(data)
    if gen is not None:
        wio.save_tensors(run_dir / DATA_RNG_FILE, {"state": gen.get_state()})


def _restore_data_rng(run_dir: Path, data: Any) -> None:
    from wakesleep.train import dynamic_binarizer_generator

    gen = dynamic_binarizer_generator(data)
    if gen is not None and (run_dir / DATA_RNG_FILE).is_file():
        gen.set_state(wio.load_tensors(run_dir / DATA_RNG_FILE)["state"])


def _load_finished(config: dict[str, Any], ckpt_dir: Path) -> tuple[torch.nn.Module, Any]:
    """Model and algorithm of ``config`` with the state of the (final) checkpoint ``ckpt_dir``."""
    from wakesleep.train import build_algorithm_from_config, build_model_from_config, read_checkpoint

    torch.manual_seed(config["train"]["seed"])  # as train_from_config does before building
    model = build_model_from_config(config)
    algo = build_algorithm_from_config(config, model)
    ckpt = read_checkpoint(ckpt_dir)
    try:
        model.load_state_dict(ckpt.model)
        if ckpt.algorithm:
            state = ckpt.algorithm
            algo.load_state_dict(
                {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
            )
    except (RuntimeError, KeyError, ValueError, IndexError) as exc:  # e.g. an option whose meaning changed
        detail = str(exc).strip().splitlines()
        raise WakesleepError(
            f"{ckpt_dir}: the finished entry does not fit the model and algorithm its config now builds "
            f"({detail[-1].strip() if detail else type(exc).__name__}); retrain it (remove its directory) or "
            "load it with the version and options that trained it"
        ) from None
    return model, algo


def _total_iterations(config: dict[str, Any], data: Any) -> int:
    """The number of iterations :meth:`wakesleep.train.Trainer.fit` runs for ``config`` on ``data``."""
    t = config["train"]
    n = int(data.n_train) if hasattr(data, "draw_train") else int(data.shape[0])
    batch = min(int(t["batch_size"]), n)
    total = int(t["epochs"]) * math.ceil(n / batch)
    return min(total, int(t["max_iters"])) if t.get("max_iters") is not None else total
