"""Experiments, one module each, run by ``wakesleep experiment NAME --out DIR [--quick] [--set key=value]``.

The registry :data:`EXPERIMENTS` maps a name to the module that defines it (imported only when used), whose
``EXPERIMENT`` is an :class:`~wakesleep.experiments.base.Experiment`: its ``Options`` (the ``experiment:``
section's keys, types and ranges), ``run(ctx)`` and ``report(results)``. Its defaults are one YAML file,
``wakesleep/experiments/configs/NAME.yaml`` (package data; ``configs/NAME.yaml`` at the repository root links
to it): the usual sections ``model``, ``algorithm``, ``train``, ``data`` plus the ``experiment`` section, whose
``quick`` mapping holds the dotted overrides ``--quick`` applies. :mod:`wakesleep.experiments.base` says how to
add one.

:func:`run_experiment` resolves the config (defaults <- ``--config`` file <- ``--quick`` <- ``--set``), checks
it, and runs the experiment in a temporary directory next to ``--out`` that is renamed to ``--out`` only on
success. Resumable experiments (``sbn``, ``patches``: ``Experiment.resumable``) run in ``<out>.partial``
instead and train their entries through an :class:`~wakesleep.experiments.entries.EntryRunner`: a run that
fails after its first algorithm entry started training is kept there, and ``--resume`` continues it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from wakesleep.errors import WakesleepError, import_registered
from wakesleep.experiments.base import LEGACY_KEYS, QUICK_KEY, Experiment, ExperimentContext

#: name -> module defining ``EXPERIMENT`` (or an :class:`Experiment` given to :func:`register`)
EXPERIMENTS: dict[str, str | Experiment] = {
    "synthetic": "wakesleep.experiments.synthetic",
    "patches": "wakesleep.experiments.patches",
    "sbn": "wakesleep.experiments.sbn",
    "gradient": "wakesleep.experiments.gradient",
    "circle": "wakesleep.experiments.circle",
    "dynamics": "wakesleep.experiments.dynamics",
    "images": "wakesleep.experiments.images",
    "ica": "wakesleep.experiments.ica",
}

__all__ = [
    "EXPERIMENTS",
    "Experiment",
    "ExperimentContext",
    "register",
    "get_experiment",
    "available_experiments",
    "resumable_experiments",
    "experiment_config",
    "run_experiment",
]


def register(experiment: Experiment) -> None:
    """Add (or replace) an experiment defined outside this package under ``experiment.name``."""
    if not isinstance(experiment, Experiment) or not experiment.name:
        raise TypeError("register: expected an Experiment instance with a name")
    EXPERIMENTS[experiment.name] = experiment


def get_experiment(name: str) -> Experiment:
    """The experiment registered under ``name`` (its module is imported now)."""
    if name not in EXPERIMENTS:
        raise WakesleepError(f"experiment: unknown experiment {name!r} (known: {', '.join(EXPERIMENTS)})")
    target = EXPERIMENTS[name]
    if isinstance(target, Experiment):
        return target
    return import_registered(target, "experiment", name).EXPERIMENT


def available_experiments() -> list[str]:
    """Names whose module can be found (without importing it)."""
    import importlib.util

    out = []
    for name, target in EXPERIMENTS.items():
        try:
            if isinstance(target, Experiment) or importlib.util.find_spec(target) is not None:
                out.append(name)
        except ModuleNotFoundError:
            pass
    return out


def resumable_experiments() -> list[str]:
    """Names of the experiments whose interrupted runs ``--resume`` continues."""
    return [name for name in available_experiments() if get_experiment(name).resumable]


def experiment_config(
    name: str,
    config_path: str | os.PathLike | None = None,
    quick: bool = False,
    overrides: Iterable[str] = (),
) -> dict[str, Any]:
    """Resolved config of experiment ``name`` (defaults <- file <- ``quick`` overrides <- ``overrides``).

    Parameters
    ----------
    name : str
        A key of :data:`EXPERIMENTS`.
    config_path : path, optional
        A YAML file replacing the shipped one; keys missing from its ``experiment`` section take the shipped
        values.
    quick : bool
        Apply the ``experiment.quick`` overrides.
    overrides : iterable of str
        ``--set`` overrides ``dotted.key=value``.

    Returns
    -------
    dict
        The resolved config: ``model``, ``algorithm``, ``train``, ``data`` as in a run's config.yaml, and
        ``experiment`` (every option, validated, and ``quick``).

    Raises
    ------
    WakesleepError
        One line naming the key and where it came from.
    """
    return _resolve(name, config_path, quick, overrides)[0]


def _resolve(
    name: str, config_path: str | os.PathLike | None, quick: bool, overrides: Iterable[str]
) -> tuple[dict[str, Any], Any]:
    """``(resolved config, Options record)`` (see :func:`experiment_config`)."""
    from wakesleep.config import apply_overrides, load_yaml, parse_overrides, resolve_paths
    from wakesleep.schema import fields_of, to_dict, with_source
    from wakesleep.spec import resolve_config

    experiment = get_experiment(name)
    source = f"experiment {name!r} defaults"
    raw = experiment.defaults()
    shipped = raw.get("experiment") or {}
    if config_path is not None:
        raw = load_yaml(config_path)
        resolve_paths(raw, Path(config_path).parent)
        source = str(config_path)
    section = raw.get("experiment") or {}
    if not isinstance(section, dict):
        raise WakesleepError(f"config: 'experiment' must be a mapping in {source}")
    known = set(fields_of(experiment.Options)) | {QUICK_KEY}
    user = parse_overrides(overrides)
    for key, _ in user:  # experiment.* keys of --set are checked here, the rest by resolve_config
        parts = key.split(".")
        if parts[0] == "experiment" and len(parts) > 1 and parts[1] not in known:
            raise WakesleepError(f"config: unknown key '{'.'.join(parts[:2])}' in --set {key}")
    raw["experiment"] = {**shipped, **{k: v for k, v in section.items() if k not in LEGACY_KEYS}}
    quick_overrides = raw["experiment"].get(QUICK_KEY) or {}
    if not isinstance(quick_overrides, dict):
        raise WakesleepError(f"config: experiment.quick must be a mapping of dotted keys in {source}")
    if quick:
        raw = apply_overrides(raw, list(quick_overrides.items()))
    raw = apply_overrides(raw, user)
    try:
        options = experiment.parse_options(raw["experiment"])
    except WakesleepError as exc:  # name where the bad value came from: the file (or defaults), or --set
        given = [k for k, _ in user if k.startswith("experiment.") and ".".join(k.split(".")[:2]) in str(exc)]
        raise with_source(exc, f"--set {given[-1]}" if given else source, prefix="config: ") from None
    config = resolve_config(raw, source=source, base_dir=Path.cwd())
    config["experiment"] = {**to_dict(options), QUICK_KEY: raw["experiment"].get(QUICK_KEY) or {}}
    experiment.check(config, options)
    return config, options


def run_experiment(
    name: str,
    out: str | os.PathLike,
    quick: bool = False,
    overrides: Iterable[str] = (),
    config_path: str | os.PathLike | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Run experiment ``name`` writing into ``out`` (created only when the run succeeds). Returns results.

    Parameters
    ----------
    name : str
        A key of :data:`EXPERIMENTS`.
    out : path
        The output directory; it appears only when the run succeeds.
    quick, overrides, config_path
        The config (:func:`experiment_config`).
    progress : bool or None
        Progress bars of training (None: when stderr is a terminal).
    overwrite : bool, default False
        Replace an existing non-empty ``out``.
    resume : bool, default False
        Continue the interrupted run kept in ``<out>.partial`` (resumable experiments only): the requested
        config must equal the one saved there; finished entries are reloaded, not retrained.

    Returns
    -------
    dict
        The results, as saved in ``results.json``.

    Notes
    -----
    Resumable experiments work in ``<out>.partial`` (``config.yaml`` first): a failure or interrupt after
    the first algorithm entry started training keeps it (one line on stderr says so), a failure before that
    (a bad config, missing data) removes it.
    """
    from wakesleep.outdirs import check_output_dir, partial_dir, resumable_dir, staged_dir

    check_output_dir(out, overwrite, kind="experiment")
    experiment = get_experiment(name)
    if resume and not experiment.resumable:
        raise WakesleepError(
            f"--resume: supported for experiments {' and '.join(resumable_experiments())} only, not {name!r}"
        )
    config, options = _resolve(name, config_path, quick, overrides)
    if config["train"].get("tensorboard"):
        from wakesleep.training.tensorboard import require_tensorboard

        require_tensorboard("train.tensorboard")
    if not experiment.resumable:
        with staged_dir(out, overwrite, kind="experiment") as tmp:
            return _run(ExperimentContext(experiment, config, options, Path(tmp), quick, progress))

    from wakesleep.config import dump_config
    from wakesleep.experiments.entries import EntryRunner
    from wakesleep.io import write_text

    if resume:
        _check_same_config(partial_dir(out) / "config.yaml", config)
    stage = None
    try:
        with resumable_dir(out, overwrite, resume, kind="experiment") as stage:
            if not resume:  # saved first, so that --resume can check it
                write_text(stage.path / "config.yaml", dump_config(config))
            runner = EntryRunner(resume=resume, progress=progress, on_start=stage.mark_started)
            return _run(ExperimentContext(experiment, config, options, stage.path, quick, progress, runner))
    except BaseException:
        if stage is not None and stage.kept is not None:
            print(
                f"kept the unfinished run in {stage.kept}: 'wakesleep experiment {name} --out {out} --resume' "
                "(with the same options) continues it",
                file=sys.stderr,
            )
        raise


def _run(ctx: ExperimentContext) -> dict[str, Any]:
    """Run ``ctx.experiment`` (``train.threads`` torch threads) and write its results, report and config."""
    from wakesleep.runs import threads

    with threads(ctx.spec.train):
        results = ctx.experiment.run(ctx)
        return ctx.finish(results)


def _check_same_config(saved_path: Path, config: dict[str, Any]) -> None:
    """Raise :class:`WakesleepError` naming the first dotted key where ``config`` differs from the saved one."""
    from wakesleep.config import dump_config

    partial = saved_path.parent
    if not partial.is_dir():
        raise WakesleepError(f"--resume: {partial} not found (no interrupted run to continue)")
    if not saved_path.is_file():
        raise WakesleepError(f"--resume: {saved_path} not found (not a directory kept by an interrupted experiment)")
    try:
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise WakesleepError(f"--resume: {saved_path} is not valid YAML") from None
    from wakesleep.spec import first_difference

    key = first_difference(saved, yaml.safe_load(dump_config(config)))
    if key is not None:
        raise WakesleepError(
            f"--resume: the config differs from the interrupted run's ({saved_path}) in {key} "
            "(pass the same --quick, --config and --set options)"
        )
