"""Experiments, one module each, run by ``wakesleep experiment NAME --out DIR [--quick] [--set key=value]``.

The registry :data:`EXPERIMENTS` maps a name to a module, imported only when used. An experiment module
provides

- ``DEFAULT_CONFIG: str`` - its configuration as YAML text (the same as ``configs/NAME.yaml``); the usual
  sections ``model``, ``algorithm``, ``train``, ``data`` plus an ``experiment`` section of its own keys,
  including ``quick``: a mapping of dotted overrides applied by ``--quick``;
- ``EXPERIMENT_DEFAULTS: dict`` - the allowed keys of its ``experiment`` section and their defaults;
- ``run(config: dict, out_dir: pathlib.Path, progress: bool | None) -> dict`` - does the work, writes
  ``results.json``, ``report.md`` and PNG plots into ``out_dir`` and returns the results.

:func:`run_experiment` resolves the config (defaults <- ``--config`` file <- ``--quick`` <- ``--set``) and
runs the experiment in a temporary directory next to ``--out`` that is renamed to ``--out`` only on success.
The experiments of :data:`RESUMABLE` (``sbn``, ``patches``) run in ``<out>.partial`` instead and also take
``runner`` (an :class:`~wakesleep.experiments._entries.EntryRunner`) in ``run``: a run that fails after its
first algorithm entry started training is kept there, and ``--resume`` continues it.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from wakesleep.errors import WakesleepError

#: name -> module; later issues add their module here (a missing module reads "not available").
EXPERIMENTS: dict[str, str] = {
    "synthetic": "wakesleep.experiments.synthetic",
    "patches": "wakesleep.experiments.patches",
    "sbn": "wakesleep.experiments.sbn",
    "gradient": "wakesleep.experiments.gradient",
    "circle": "wakesleep.experiments.circle",
    "dynamics": "wakesleep.experiments.dynamics",
    "images": "wakesleep.experiments.images",
    "ica": "wakesleep.experiments.ica",
}

#: experiments whose interrupted runs ``--resume`` continues (``run`` takes ``runner``, an ``EntryRunner``)
RESUMABLE: tuple[str, ...] = ("sbn", "patches")

__all__ = ["EXPERIMENTS", "RESUMABLE", "get_experiment", "available_experiments", "experiment_config", "run_experiment"]


def get_experiment(name: str) -> ModuleType:
    """Import and return the experiment module registered under ``name``."""
    if name not in EXPERIMENTS:
        raise WakesleepError(f"experiment: unknown experiment {name!r} (known: {', '.join(EXPERIMENTS)})")
    module_name = EXPERIMENTS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise WakesleepError(f"experiment: {name!r} is not available in this version") from None
        raise


def available_experiments() -> list[str]:
    """Names whose module can be found (without importing it)."""
    import importlib.util

    out = []
    for name, module in EXPERIMENTS.items():
        try:
            if importlib.util.find_spec(module) is not None:
                out.append(name)
        except ModuleNotFoundError:
            pass
    return out


def experiment_config(
    name: str,
    config_path: str | os.PathLike | None = None,
    quick: bool = False,
    overrides: Iterable[str] = (),
) -> dict[str, Any]:
    """Resolved config of experiment ``name`` (defaults <- file <- ``quick`` overrides <- ``overrides``)."""
    from wakesleep.config import (
        apply_overrides,
        load_yaml,
        parse_overrides,
        resolve_config,
        resolve_paths,
    )

    module = get_experiment(name)
    source = f"experiment {name!r} defaults"
    raw = yaml.safe_load(module.DEFAULT_CONFIG)
    base = Path.cwd()
    if config_path is not None:
        raw = load_yaml(config_path)
        resolve_paths(raw, Path(config_path).parent)
        source = str(config_path)
    exp = raw.get("experiment") or {}
    if not isinstance(exp, dict):
        raise WakesleepError(f"config: 'experiment' must be a mapping in {source}")
    defaults = copy.deepcopy(module.EXPERIMENT_DEFAULTS)
    exp = {k: v for k, v in exp.items() if k not in ("name", "quick_run")}  # written by a previous run
    for key in exp:
        if key not in defaults:
            raise WakesleepError(f"config: unknown key 'experiment.{key}' in {source}")
    user = parse_overrides(overrides)
    for key, _ in user:  # experiment.* keys are checked here, the rest by resolve_config
        parts = key.split(".")
        if parts[0] == "experiment" and len(parts) > 1 and parts[1] not in defaults:
            raise WakesleepError(f"config: unknown key '{'.'.join(parts[:2])}' in --set {key}")
    raw["experiment"] = {**defaults, **exp}
    if quick:
        q = raw["experiment"].get("quick") or {}
        if not isinstance(q, dict):
            raise WakesleepError(f"config: experiment.quick must be a mapping of dotted keys in {source}")
        raw = apply_overrides(raw, list(q.items()))
    raw = apply_overrides(raw, user)
    config = resolve_config(raw, source=source, base_dir=base)
    config["experiment"]["quick_run"] = bool(quick)
    config["experiment"]["name"] = name
    return config


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
        Continue the interrupted run kept in ``<out>.partial`` (experiments of :data:`RESUMABLE` only): the
        requested config must equal the one saved there; finished entries are reloaded, not retrained.

    Notes
    -----
    The experiments of :data:`RESUMABLE` work in ``<out>.partial`` (``config.yaml`` first): a failure or
    interrupt after the first algorithm entry started training keeps it (one line on stderr says so), a
    failure before that (a bad config, missing data) removes it.
    """
    from wakesleep.io import check_output_dir, partial_dir, resumable_dir, staged_dir

    check_output_dir(out, overwrite)
    if resume and name in EXPERIMENTS and name not in RESUMABLE:
        raise WakesleepError(f"--resume: supported for experiments {' and '.join(RESUMABLE)} only, not {name!r}")
    module = get_experiment(name)
    config = experiment_config(name, config_path, quick, overrides)
    if name not in RESUMABLE:
        with staged_dir(out, overwrite) as tmp:
            return module.run(config, Path(tmp), progress=progress)

    from wakesleep.config import dump_config
    from wakesleep.experiments._entries import EntryRunner
    from wakesleep.io import write_text

    if resume:
        _check_same_config(partial_dir(out) / "config.yaml", config)
    stage = None
    try:
        with resumable_dir(out, overwrite, resume) as stage:
            if not resume:  # saved first, so that --resume can check it
                write_text(stage.path / "config.yaml", dump_config(config))
            runner = EntryRunner(resume=resume, progress=progress, on_start=stage.mark_started)
            return module.run(config, stage.path, progress=progress, runner=runner)
    except BaseException:
        if stage is not None and stage.kept is not None:
            print(
                f"kept the unfinished run in {stage.kept}: 'wakesleep experiment {name} --out {out} --resume' "
                "(with the same options) continues it",
                file=sys.stderr,
            )
        raise


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
    key = _first_difference(saved, yaml.safe_load(dump_config(config)))
    if key is not None:
        raise WakesleepError(
            f"--resume: the config differs from the interrupted run's ({saved_path}) in {key or 'the whole config'} "
            "(pass the same --quick, --config and --set options)"
        )


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The first dotted key where ``a`` and ``b`` differ ("" for the values themselves), or None if equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                return key
            diff = _first_difference(a[k], b[k], key)
            if diff is not None:
                return diff
        return None
    return None if a == b else prefix
