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
import inspect
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from wakesleep.errors import WakesleepError

__all__ = [
    "SECTIONS",
    "TRAIN_DEFAULTS",
    "ALGORITHM_DEFAULTS",
    "load_yaml",
    "parse_overrides",
    "apply_overrides",
    "resolve_config",
    "resolve_paths",
    "load_config",
    "dump_config",
    "torch_dtype",
    "torch_device",
]

SECTIONS = ("model", "algorithm", "train", "data", "experiment")
REQUIRED_SECTIONS = ("model",)

#: Defaults of the ``train:`` section (every allowed key is listed here).
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 10,  # passes over the data
    "batch_size": 100,
    "lr": 1.0e-3,  # Adam learning rate of the generative model
    "recognition_lr": 1.0e-3,  # Adam learning rate of a trained recognition model (if the algorithm has one)
    "seed": 0,  # seeds model initialisation, minibatch order and the algorithm's sampling
    "device": "cpu",  # cpu | cuda | cuda:N
    "dtype": None,  # float32 | float64 (default: model.dtype, itself float32 by default)
    "sleep_every": 1,  # run algo.sleep() every this many iterations
    "log_every": 100,  # write a metrics.jsonl line every this many iterations (and at the end)
    "checkpoint_every": 0,  # write checkpoint/ every this many iterations (0: only at the end)
    "max_iters": None,  # optional cap on the number of iterations
    "samples": 10000,  # size of samples.npz written by `wakesleep train`
    "precision": "float32",  # float32 | bfloat16 | float16 (CUDA): mixed precision of the models' matrix products
    "threads": None,  # torch CPU threads (torch.set_num_threads); None: torch's default. 1 is fastest for tiny models
}

ALGORITHM_DEFAULTS: dict[str, Any] = {"name": "ddc_hm"}

DATA_DEFAULTS_MODEL: dict[str, Any] = {"source": "model", "n": 10000, "seed": None, "true_params": None}
_PATH_KEYS = (("model", "init"), ("data", "path"), ("data", "test_path"), ("data", "root"), ("data", "true_params"))


# --------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------
def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; a missing file or bad YAML raises :class:`WakesleepError`."""
    path = Path(path)
    if not path.is_file():
        raise WakesleepError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
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
# validation helpers
# --------------------------------------------------------------------------------------------------------
def _err(msg: str, source: str | None) -> WakesleepError:
    return WakesleepError(f"config: {msg}" + (f" in {source}" if source else ""))


def _check_keys(section: Mapping[str, Any], allowed: Iterable[str], prefix: str, source: str | None) -> None:
    allowed = set(allowed)
    for key in section:
        if key not in allowed:
            raise _err(f"unknown key '{prefix}.{key}'", source)


def _int(value: Any, field: str, source: str | None, minimum: int | None = None, allow_none=False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(f"{field} must be an integer, got {value!r}", source)
    if minimum is not None and value < minimum:
        kind = "positive" if minimum == 1 else f">= {minimum}"
        raise _err(f"{field} must be {kind}, got {value}", source)
    return value


def _pos_float(value: Any, field: str, source: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _err(f"{field} must be a number, got {value!r}", source)
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise _err(f"{field} must be a positive number, got {value}", source)
    return value


def _path(value: Any, field: str, source: str | None, base: Path | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise _err(f"{field} must be a file path, got {value!r}", source)
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p)


def resolve_paths(config: dict[str, Any], base: Path | None) -> None:
    """Make the file paths of a raw config (``model.init``, ``data.path``, ...) absolute against ``base``."""
    for section, key in _PATH_KEYS:
        sec = config.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            p = Path(sec[key]).expanduser()
            if not p.is_absolute() and base is not None:
                sec[key] = str((base / p).resolve())


# --------------------------------------------------------------------------------------------------------
# the schema
# --------------------------------------------------------------------------------------------------------
def _resolve_train(raw: Any, source: str | None) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _err(f"'train' must be a mapping, got {type(raw).__name__}", source)
    _check_keys(raw, TRAIN_DEFAULTS, "train", source)
    t = {**TRAIN_DEFAULTS, **raw}
    for key in ("epochs", "batch_size", "sleep_every", "log_every", "samples"):
        t[key] = _int(t[key], f"train.{key}", source, minimum=1)
    t["checkpoint_every"] = _int(t["checkpoint_every"], "train.checkpoint_every", source, minimum=0)
    t["max_iters"] = _int(t["max_iters"], "train.max_iters", source, minimum=1, allow_none=True)
    t["threads"] = _int(t["threads"], "train.threads", source, minimum=1, allow_none=True)
    t["seed"] = _int(t["seed"], "train.seed", source, minimum=0)
    t["lr"] = _pos_float(t["lr"], "train.lr", source)
    t["recognition_lr"] = _pos_float(t["recognition_lr"], "train.recognition_lr", source)
    dev = t["device"]
    cuda_n = isinstance(dev, str) and dev.startswith("cuda:") and dev[5:].isdigit()
    if not isinstance(dev, str) or not (dev in ("cpu", "cuda") or cuda_n):
        raise _err(f"train.device must be 'cpu', 'cuda' or 'cuda:N', got {dev!r}", source)
    if t["dtype"] not in (None, "float32", "float64"):
        raise _err(f"train.dtype must be 'float32' or 'float64', got {t['dtype']!r}", source)
    if t["precision"] not in ("float32", "bfloat16", "float16"):
        raise _err(f"train.precision must be 'float32', 'bfloat16' or 'float16', got {t['precision']!r}", source)
    if t["precision"] == "float16" and not dev.startswith("cuda"):
        raise _err("train.precision: float16 needs train.device cuda (use bfloat16 on a CPU)", source)
    if t["precision"] != "float32" and t["dtype"] == "float64":
        raise _err("train.precision: mixed precision needs train.dtype float32", source)
    return t


def _resolve_algorithm(raw: Any, source: str | None) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise _err(f"'algorithm' must be a mapping, got {type(raw).__name__}", source)
    a = {**ALGORITHM_DEFAULTS, **raw}
    from wakesleep.algorithms import ALGORITHMS, algorithm_class

    if not isinstance(a["name"], str) or a["name"] not in ALGORITHMS:
        raise _err(f"algorithm.name: unknown algorithm {a['name']!r} (known: {', '.join(sorted(ALGORITHMS))})", source)
    # unknown options: checked against the algorithm's signature; defaults filled in so that the resolved
    # config written next to a run says every hyperparameter
    try:
        cls = algorithm_class(a["name"])
    except WakesleepError as exc:
        raise _err(str(exc), source) from None
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = [k for k in params if k not in ("self", "model")]
        for key in a:
            if key != "name" and key not in known:
                raise _err(f"unknown key 'algorithm.{key}' (options of {a['name']!r}: {', '.join(known)})", source)
        for key in known:
            p = params[key]
            if key not in a and p.default is not inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD:
                if p.default is None or isinstance(p.default, bool | int | float | str | list):
                    a[key] = copy.deepcopy(p.default)
    return a


def _resolve_data(raw: Any, source: str | None, base: Path | None) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        raw = {"source": "file", "path": raw}
    if not isinstance(raw, dict):
        raise _err(f"'data' must be a mapping, got {type(raw).__name__}", source)
    src = raw.get("source", "model")
    if not isinstance(src, str):
        raise _err(f"data.source must be a string, got {src!r}", source)
    if src == "model":
        _check_keys(raw, DATA_DEFAULTS_MODEL, "data", source)
        d = {**DATA_DEFAULTS_MODEL, **raw}
        d["n"] = _int(d["n"], "data.n", source, minimum=1)
        d["seed"] = _int(d["seed"], "data.seed", source, minimum=0, allow_none=True)
        d["true_params"] = _path(d["true_params"], "data.true_params", source, base)
    else:
        # file, mnist, fashion_mnist, patches, ...: keys validated by wakesleep.data.load_dataset when loaded
        d = dict(raw)
        d["source"] = src
        for key in ("path", "test_path", "root"):
            if key in d:
                d[key] = _path(d[key], f"data.{key}", source, base)
    return d


def resolve_config(
    raw: Mapping[str, Any],
    source: str | None = None,
    base_dir: str | os.PathLike | None = None,
    check_model: bool = True,
) -> dict[str, Any]:
    """Validate a raw config dict and fill in defaults; return the resolved config (a new dict).

    Parameters
    ----------
    raw : mapping
        The parsed YAML (after overrides).
    source : str, optional
        Where it came from (a file name), used in error messages.
    base_dir : path, optional
        Relative file paths (``model.init``, ``data.path``, ``data.true_params``) are resolved against it.
    check_model : bool
        Build the model once with :func:`wakesleep.build_model` to validate the ``model`` section.
    """
    if not isinstance(raw, Mapping):
        raise _err(f"the top level must be a mapping, got {type(raw).__name__}", source)
    base = Path(base_dir) if base_dir is not None else None
    for key in raw:
        if key not in SECTIONS:
            raise _err(f"unknown key '{key}' (sections: {', '.join(SECTIONS)})", source)
    for key in REQUIRED_SECTIONS:
        if raw.get(key) is None:
            raise _err(f"missing section '{key}'", source)
    model = copy.deepcopy(raw["model"])
    if not isinstance(model, dict):
        raise _err(f"'model' must be a mapping, got {type(model).__name__}", source)
    if "init" in model and not isinstance(model["init"], dict):  # a mapping: values inline (build_model checks them)
        model["init"] = _path(model["init"], "model.init", source, base)
    out: dict[str, Any] = {
        "model": model,
        "algorithm": _resolve_algorithm(copy.deepcopy(raw.get("algorithm")), source),
        "train": _resolve_train(copy.deepcopy(raw.get("train")), source),
        "data": _resolve_data(copy.deepcopy(raw.get("data")), source, base),
    }
    if raw.get("experiment") is not None:
        if not isinstance(raw["experiment"], dict):
            raise _err("'experiment' must be a mapping", source)
        out["experiment"] = copy.deepcopy(raw["experiment"])
    if out["train"]["dtype"] is None:
        out["train"]["dtype"] = model.get("dtype", "float32")
    if out["data"]["source"] == "model" and out["data"]["seed"] is None:
        out["data"]["seed"] = out["train"]["seed"] + 1
    if check_model:
        validate_model_section(out, source)
    return out


def validate_model_section(config: Mapping[str, Any], source: str | None = None):
    """Build the model once (on CPU) to validate ``config['model']``; return it."""
    from wakesleep.models import build_model

    try:
        return build_model(model_section(config))
    except WakesleepError as exc:
        msg = str(exc)
        raise WakesleepError(f"config: {msg}" + (f" in {source}" if source else "")) from None


def model_section(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model`` section as given to ``build_model`` (which also loads ``init`` and applies ``seed``)."""
    return copy.deepcopy(dict(config["model"]))


def load_config(
    path: str | os.PathLike,
    overrides: Iterable[str] | Iterable[tuple[str, Any]] | None = None,
    check_model: bool = True,
) -> dict[str, Any]:
    """Load ``path``, apply ``--set`` overrides (strings ``"a.b=v"`` or pairs), validate, fill defaults.

    Relative paths in the file are resolved against the file's directory; relative paths given in
    overrides against the current directory.
    """
    path = Path(path)
    raw = load_yaml(path)
    resolve_paths(raw, path.parent)
    overrides = list(overrides or ())
    pairs = [o for o in overrides if isinstance(o, tuple)]
    pairs += parse_overrides([o for o in overrides if not isinstance(o, tuple)])
    raw = apply_overrides(raw, pairs)
    return resolve_config(raw, source=str(path), base_dir=Path.cwd(), check_model=check_model)


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
