"""The algorithm entries of an experiment: declared (``experiment.algorithms``), trained, continued or reloaded.

:func:`algorithm_entries` turns ``experiment.algorithms`` into one resolved run config per label. Each entry
trains in its own run directory through :mod:`wakesleep.runs` (config.yaml, metrics.jsonl, model.safetensors,
samples.npz, checkpoint/). In a resumable experiment (``sbn``, ``patches``) :class:`EntryRunner` adds
``done.json`` there, written as soon as training has finished (``{"train": {algorithm, seconds, iterations,
epochs, final_metrics}}``) and again with the entry's evaluation numbers (``"evaluation"``,
:meth:`Entry.save_evaluation`) once the experiment has computed them. When ``wakesleep experiment NAME --out DIR
--resume`` continues ``DIR.partial``, an entry

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

import copy
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wakesleep import io as wio
from wakesleep.errors import WakesleepError

__all__ = [
    "DONE_FILE",
    "Entry",
    "EntryRunner",
    "algorithm_entries",
    "algorithm_labels",
    "check_buildable",
    "load_finished",
    "train_info",
    "ais_nll_cached",
]

#: marker (and saved numbers) of a finished entry, in its run directory
DONE_FILE = "done.json"
#: state of a dynamic binarisation's random stream after the entry (see the module docstring)
DATA_RNG_FILE = "data_rng.safetensors"


# --------------------------------------------------------------------------------------------------------
# declared: experiment.algorithms
# --------------------------------------------------------------------------------------------------------
def algorithm_labels(algorithms: Any) -> dict[str, dict[str, Any] | str]:
    """``{label: entry}`` of an ``experiment.algorithms`` value, checked (names known, labels distinct).

    An entry is an algorithm name or a mapping ``{name: iwae, label: iwae_k50, k: 50}`` (label: default the
    name). A single name stands for a list of one.

    Raises
    ------
    WakesleepError
        Naming ``experiment.algorithms``.
    """
    from wakesleep.algorithms import ALGORITHMS

    if isinstance(algorithms, str):
        algorithms = [algorithms]
    if not isinstance(algorithms, list | tuple) or not algorithms:
        raise WakesleepError("experiment.algorithms must be a non-empty list of algorithm names")
    out: dict[str, dict[str, Any] | str] = {}
    for entry in algorithms:
        if isinstance(entry, Mapping):
            if "name" not in entry:
                raise WakesleepError(f"experiment.algorithms: entry {dict(entry)!r} has no 'name'")
            name, label = entry["name"], entry.get("label", entry["name"])
        else:
            name = label = entry
        if name not in ALGORITHMS:
            raise WakesleepError(f"experiment.algorithms: unknown algorithm {name!r}")
        if not isinstance(label, str) or label in out:
            raise WakesleepError(f"experiment.algorithms: labels must be distinct strings, got {label!r}")
        out[label] = dict(entry) if isinstance(entry, Mapping) else entry
    return out


def algorithm_entries(config: Mapping[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """``{label: resolved run config}`` for each entry of ``experiment.algorithms``.

    An entry is a name (the config's own ``algorithm`` section when it names the same algorithm, else
    ``experiment.algorithm_options[name]``) or a mapping ``{name: iwae, label: iwae_k50, k: 50}``.
    ``experiment.train_options[label]``, when the experiment has it, overrides the ``train`` section for one
    entry (e.g. DDC-HM's ``sleep_every``); a label there that is not an entry's is ignored with a warning.

    Parameters
    ----------
    config : mapping
        The experiment's resolved config.
    where : str
        Names the caller in error messages (``experiment patches``, ``bench sbn``).

    Returns
    -------
    dict
        Resolved run configs (mappings, as in a run's config.yaml), in the order of ``experiment.algorithms``.
    """
    from wakesleep.spec import resolve_config

    exp = config["experiment"]
    try:
        labels = algorithm_labels(exp["algorithms"])
    except WakesleepError as exc:
        raise WakesleepError(f"config: {exc}") from None
    opts = exp.get("algorithm_options") or {}
    if not isinstance(opts, Mapping):
        raise WakesleepError("config: experiment.algorithm_options must be a mapping name -> options")
    train_opts = exp.get("train_options") or {}
    if not isinstance(train_opts, Mapping) or not all(isinstance(v, Mapping) for v in train_opts.values()):
        raise WakesleepError("config: experiment.train_options must be a mapping label -> train settings")
    out: dict[str, dict[str, Any]] = {}
    for label, entry in labels.items():
        if isinstance(entry, dict):
            algo = {k: v for k, v in entry.items() if k != "label"}
        elif entry == config["algorithm"]["name"]:
            algo = dict(config["algorithm"])
        else:
            algo = {"name": entry, **(opts.get(entry) or {})}
        raw = {k: copy.deepcopy(config[k]) for k in ("model", "train", "data")}
        raw["algorithm"] = algo
        raw["train"].update(copy.deepcopy(train_opts.get(label) or {}))
        out[label] = resolve_config(raw, source=where, check_model=False)
    unknown = set(train_opts) - set(out)
    if unknown:  # not an error: the shipped configs name entries that a shorter experiment.algorithms may drop
        warnings.warn(
            f"config: experiment.train_options: {sorted(unknown)} are not labels of experiment.algorithms (ignored)",
            stacklevel=2,
        )
    return out


def check_buildable(configs: Iterable[Any]) -> None:
    """Build each run's model and algorithm once: a bad option fails now, before any training.

    Parameters
    ----------
    configs : iterable of RunSpec or mapping
    """
    from wakesleep.runs import as_spec, build_algorithm, build_model

    for config in configs:
        spec = as_spec(config)
        build_algorithm(spec, build_model(spec))


# --------------------------------------------------------------------------------------------------------
# trained or reloaded
# --------------------------------------------------------------------------------------------------------
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


def train_info(spec: Any, trainer: Any, seconds: float) -> dict[str, Any]:
    """The ``info`` of an entry trained by ``trainer`` (JSON-ready: what a resumed run reads back)."""
    info = {
        "algorithm": spec.algorithm.name,
        "seconds": seconds,
        "iterations": trainer.n_iter_,
        "epochs": trainer.epochs_,
        "final_metrics": trainer.history_[-1] if trainer.history_ else {},
    }
    return wio.to_jsonable(info)


class EntryRunner:
    """Trains the entries of one experiment run, or on resuming continues or reloads them (module docstring).

    Parameters
    ----------
    resume : bool, default False
        Whether the run directory is a ``DIR.partial`` being continued.
    progress : bool or None
        Progress bars of training (None: when stderr is a terminal).
    on_start : callable, optional
        Called once, before the first entry starts (``wakesleep.outdirs.Stage.mark_started``: from then on a
        failure keeps the run directory as ``DIR.partial``).
    """

    def __init__(
        self, resume: bool = False, progress: bool | None = None, on_start: Callable[[], None] | None = None
    ) -> None:
        self.resume = resume
        self.progress = progress
        self.on_start = on_start
        self.started = False

    def run(self, config: Any, run_dir: str | Path, data: Any) -> Entry:
        """Train the entry ``config`` in ``run_dir`` on ``data`` (or continue or reload it).

        Parameters
        ----------
        config : RunSpec or mapping
            The entry's run (a resolved config mapping is parsed).
        run_dir : path
            Its run directory.
        data : torch.Tensor or wakesleep.data.DataSet
            The training data, as for :func:`wakesleep.runs.train`.

        Returns
        -------
        Entry
        """
        from wakesleep import runs
        from wakesleep.training import TrainingDiverged

        spec = runs.as_spec(config)
        run_dir = Path(run_dir)
        if not self.started:
            self.started = True
            if self.on_start is not None:
                self.on_start()
        done, ckpt = run_dir / DONE_FILE, run_dir / "checkpoint"
        if self.resume and done.is_file():
            saved = wio.load_json(done)
            model, algo = load_finished(spec, ckpt)
            _restore_data_rng(run_dir, data)
            return Entry(model, algo, run_dir, saved["train"], saved.get("evaluation"), trained=False, data=data)
        resume_from, seconds_before = None, 0.0
        if self.resume and (ckpt / "state.json").is_file():
            state = wio.load_json(ckpt / "state.json")
            if int(state["step"]) >= total_iterations(spec, data):
                return self._finish_from_checkpoint(spec, run_dir, state, data)
            resume_from, seconds_before = ckpt, float(state.get("seconds") or 0.0)
        elif self.resume and run_dir.exists():
            shutil.rmtree(run_dir)
        t0 = time.perf_counter()
        try:  # through the module attribute: tests count the calls
            model, algo, trainer, _ = runs.train_from_config(
                spec, run_dir, progress=self.progress, data=data, resume_from=resume_from
            )
        except TrainingDiverged as exc:  # say which entry: the message alone names only a parameter
            raise TrainingDiverged(f"{run_dir.parent.name}/{run_dir.name}: {exc}") from None
        info = train_info(spec, trainer, seconds_before + time.perf_counter() - t0)
        _save_data_rng(run_dir, data)
        wio.save_json(done, {"train": info})
        return Entry(model, algo, run_dir, info, None, trained=True, data=data)

    def _finish_from_checkpoint(self, spec: Any, run_dir: Path, state: dict[str, Any], data: Any) -> Entry:
        """Training had finished but its run files and ``done.json`` were not written: write them now."""
        from wakesleep.config import dump_config
        from wakesleep.runs import write_run

        model, algo = load_finished(spec, run_dir / "checkpoint")
        metrics = run_dir / "metrics.jsonl"
        records = wio.read_jsonl(metrics) if metrics.is_file() else []
        write_run(run_dir, model, n_samples=spec.train.samples, seed=spec.train.seed)
        wio.write_text(run_dir / "config.yaml", dump_config(spec.to_dict()))
        info = {
            "algorithm": spec.algorithm.name,
            "seconds": float(state.get("seconds") or 0.0),
            "iterations": int(state["step"]),
            "epochs": float(state.get("epoch") or 0.0),
            "final_metrics": records[-1] if records else {},
        }
        wio.save_json(run_dir / DONE_FILE, {"train": info})
        return Entry(model, algo, run_dir, info, None, trained=False, data=data)


def _save_data_rng(run_dir: Path, data: Any) -> None:
    from wakesleep.training import dynamic_binarizer_generator

    gen = dynamic_binarizer_generator(data)
    if gen is not None:
        wio.save_tensors(run_dir / DATA_RNG_FILE, {"state": gen.get_state()})


def _restore_data_rng(run_dir: Path, data: Any) -> None:
    from wakesleep.training import dynamic_binarizer_generator

    gen = dynamic_binarizer_generator(data)
    if gen is not None and (run_dir / DATA_RNG_FILE).is_file():
        gen.set_state(wio.load_tensors(run_dir / DATA_RNG_FILE)["state"])


def load_finished(config: Any, ckpt_dir: str | Path) -> tuple[torch.nn.Module, Any]:
    """Model and algorithm of a run with the state of its (final) checkpoint.

    Parameters
    ----------
    config : RunSpec or mapping
        The run (e.g. its ``config.yaml``).
    ckpt_dir : path
        The checkpoint directory (``RUN/checkpoint``).

    Returns
    -------
    (torch.nn.Module, algorithm)

    Raises
    ------
    WakesleepError
        When the saved state does not fit what the config now builds (names the checkpoint).
    """
    from wakesleep import runs
    from wakesleep.training import read_checkpoint

    spec = runs.as_spec(config)
    ckpt_dir = Path(ckpt_dir)
    torch.manual_seed(spec.train.seed)  # as training does before building
    model = runs.build_model(spec)
    algo = runs.build_algorithm(spec, model)
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


def total_iterations(spec: Any, data: Any) -> int:
    """The number of iterations training ``spec`` on ``data`` runs (epochs of full batches, ``max_iters``)."""
    t = spec.train
    n = int(data.n_train) if hasattr(data, "draw_train") else int(data.shape[0])
    batch = min(int(t.batch_size), n)
    total = int(t.epochs) * math.ceil(n / batch)
    return min(total, int(t.max_iters)) if t.max_iters is not None else total


def ais_nll_cached(e: Entry, x: torch.Tensor, settings: dict[str, int], seed: int, finite: bool) -> dict | None:
    """AIS NLL of an entry (:func:`wakesleep.eval.compare.model_ais_nll`), reused from its saved evaluation.

    AIS takes minutes per model (the other numbers are recomputed in seconds), so a resumed run that asks for
    the same estimate (points, settings, seed) gets the saved one; a new estimate is saved with the entry.

    Returns
    -------
    dict or None
        None when ``x`` is empty or the model not ``finite``.
    """
    from wakesleep.eval import compare

    if not x.shape[0] or not finite:
        return None
    key = {"points": x.shape[0], **settings, "seed": seed}
    saved = (e.evaluation or {}).get("ais_nll")
    if saved and "log_px" in saved and all(saved.get(k) == v for k, v in key.items()):
        return saved
    result = {**compare.model_ais_nll(e.model, x, settings, seed), "seed": seed}  # the attribute: tests patch it
    e.save_evaluation({**(e.evaluation or {}), "ais_nll": result})
    return result
