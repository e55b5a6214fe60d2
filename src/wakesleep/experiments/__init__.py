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
"""

from __future__ import annotations

import copy
import importlib
import os
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

__all__ = ["EXPERIMENTS", "get_experiment", "available_experiments", "experiment_config", "run_experiment"]


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
) -> dict[str, Any]:
    """Run experiment ``name`` writing into ``out`` (created only when the run succeeds). Returns results."""
    from wakesleep.io import check_output_dir, staged_dir

    check_output_dir(out, overwrite)
    module = get_experiment(name)
    config = experiment_config(name, config_path, quick, overrides)
    with staged_dir(out, overwrite) as tmp:
        results = module.run(config, Path(tmp), progress=progress)
    return results
