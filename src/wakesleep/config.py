"""Run configuration: YAML loading, schema validation with field-naming errors, defaults, ``--set`` overrides.

A configuration has four sections (see README, "Config format")::

    model:      layers (top latent first, observation last) and optional init: params.npz
    algorithm:  name plus the algorithm's own hyperparameters
    train:      optimiser and loop settings (TRAIN_DEFAULTS)
    data:       where the training data come from

and an optional fifth, ``experiment:``, read only by ``wakesleep experiment NAME`` (its keys are defined by
that experiment). The ``model`` section is validated by :func:`wakesleep.build_model`, the algorithm options by
:func:`wakesleep.build_algorithm`; everything else here.

Every mistake raises :class:`~wakesleep.errors.WakesleepError` with one line naming the field and the file,
e.g. ``config: unknown key 'train.lrr' in run.yaml``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from wakesleep.errors import WakesleepError

__all__ = [
    "SECTIONS",
    "load_yaml",
    "parse_overrides",
    "apply_overrides",
    "resolve_paths",
    "dump_config",
    "torch_dtype",
    "torch_device",
]

SECTIONS = ("model", "algorithm", "train", "data", "experiment")
_PATH_KEYS = (("model", "init"), ("data", "path"), ("data", "test_path"), ("data", "root"), ("data", "true_params"))


# --------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base constructor reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; a missing file or bad YAML raises :class:`WakesleepError`."""
    path = Path(path)
    if not path.is_file():
        raise WakesleepError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except PermissionError:
        raise WakesleepError(f"{path}: permission denied (cannot read the config)") from None
    except OSError as exc:
        raise WakesleepError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise WakesleepError(f"{path}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise WakesleepError(f"{path}: not a text file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WakesleepError(f"{path}: the top level of a config must be a mapping, got {type(data).__name__}")
    return data


def _parse_scalar(text: str) -> Any:
    """Parse a ``--set`` value as a YAML scalar (also accepts ``1e-4``, which YAML 1.1 reads as a string)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            return value
    return value


def parse_overrides(items: Iterable[str] | None) -> list[tuple[str, Any]]:
    """Parse ``["train.lr=1e-3", ...]`` into ``[("train.lr", 0.001), ...]``."""
    out = []
    for item in items or ():
        if "=" not in item:
            raise WakesleepError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=1e-3")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise WakesleepError(f"--set {item!r}: empty key")
        out.append((key, _parse_scalar(value)))
    return out


def apply_overrides(config: dict[str, Any], overrides: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Return a copy of ``config`` with dotted-key overrides applied (list items by integer index)."""
    config = copy.deepcopy(config)
    for key, value in overrides:
        parts = key.split(".")
        node: Any = config
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                try:
                    idx = int(part)
                    node[idx]  # noqa: B018  (bounds check)
                except (ValueError, IndexError):
                    raise WakesleepError(f"--set {key}: {where!r} is not an index of a list of {len(node)}") from None
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise WakesleepError(f"--set {key}: {'.'.join(parts[:i])!r} is not a mapping or a list")
    return config


# --------------------------------------------------------------------------------------------------------
# resolved configs as mappings (the typed form is wakesleep.spec.RunSpec)
# --------------------------------------------------------------------------------------------------------
def resolve_paths(config: dict[str, Any], base: Path | None) -> None:
    """Make the file paths of a raw config (``model.init``, ``data.path``, ...) absolute against ``base``."""
    for section, key in _PATH_KEYS:
        sec = config.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            p = Path(sec[key]).expanduser()
            if not p.is_absolute() and base is not None:
                sec[key] = str((base / p).resolve())


def model_section(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model`` section as given to ``build_model`` (which also loads ``init`` and applies ``seed``)."""
    return copy.deepcopy(dict(config["model"]))


def dump_config(config: Mapping[str, Any]) -> str:
    """The resolved config as YAML text (sections in a fixed order)."""
    ordered = {k: config[k] for k in SECTIONS if k in config}
    return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=None, width=110)


# --------------------------------------------------------------------------------------------------------
# torch helpers for the train section
# --------------------------------------------------------------------------------------------------------
def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


def torch_device(name: str):
    """``torch.device`` for ``train.device``; CUDA requested without CUDA raises :class:`WakesleepError`."""
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise WakesleepError(f"train.device: {name!r} requested but CUDA is not available on this machine")
        if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
            raise WakesleepError(
                f"train.device: {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return torch.device(name)
