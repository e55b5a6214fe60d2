"""Typed run specs: a run (model, algorithm, train, data, experiment) parsed and validated once.

A :class:`RunSpec` is built from a YAML mapping (plus ``--set`` overrides) by :meth:`RunSpec.load` or
:meth:`RunSpec.from_mapping`; every section is checked there, each mistake raising
:class:`~wakesleep.errors.WakesleepError` with one line naming the field and the file, e.g.
``config: unknown key 'train.lrr' in run.yaml``. Everything a run needs is then built once from the spec by
:mod:`wakesleep.runs`.

The sections::

    model:      layers (top latent first, observation last), optional init, seed, dtype   -> ModelSpec
    algorithm:  name plus the algorithm's own options (its ``Options`` record)           -> AlgorithmSpec
    train:      optimiser and loop settings                                             -> TrainSpec
    data:       where the training data come from                                       -> DataSpec
    experiment: read only by ``wakesleep experiment NAME`` (keys defined by the experiment)

The ``model`` section is checked by :func:`wakesleep.models.build_model` (each family declares its own keys)
when the model is built, before anything is written; ``RunSpec.from_mapping(..., check_model=True)`` builds
it once on the CPU to check it early.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from wakesleep.config import apply_overrides, load_yaml, parse_overrides, resolve_paths
from wakesleep.errors import WakesleepError
from wakesleep.schema import SEED_MAX, option, parse, to_dict, with_source
from wakesleep.training.options import TrainOptions as TrainSpec

__all__ = [
    "TrainSpec",
    "AlgorithmSpec",
    "DataSpec",
    "ModelSpec",
    "RunSpec",
    "SECTIONS",
    "TRAIN_DEFAULTS",
    "resolve_config",
    "load_config",
    "first_difference",
]

SECTIONS = ("model", "algorithm", "train", "data", "experiment")


def _config_error(exc: WakesleepError, source: str | None) -> WakesleepError:
    return with_source(exc, source, prefix="config: ")


@dataclass(frozen=True)
class AlgorithmSpec:
    """The ``algorithm:`` section: a registered name and that algorithm's validated ``Options`` record."""

    name: str
    options: Any

    @classmethod
    def parse(cls, raw: Any) -> AlgorithmSpec:
        """Validate ``raw`` (a mapping with ``name``, or just the name) against the algorithm's options."""
        from wakesleep.algorithms import ALGORITHMS

        if raw is None:
            raw = {}
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, Mapping):
            raise WakesleepError(f"'algorithm' must be a mapping, got {type(raw).__name__}")
        raw = dict(raw)
        name = raw.pop("name", "ddc_hm")
        if not isinstance(name, str) or name not in ALGORITHMS:
            raise WakesleepError(f"algorithm.name: unknown algorithm {name!r} (known: {', '.join(sorted(ALGORITHMS))})")
        return cls(name=name, options=_parse_algorithm_options(name, raw))

    def kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of the algorithm's constructor."""
        return to_dict(self.options) if dataclasses.is_dataclass(self.options) else dict(self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.kwargs()}


def _parse_algorithm_options(name: str, raw: Mapping[str, Any]) -> Any:
    """The algorithm's validated ``Options`` record (its declared types, ranges and defaults)."""
    from wakesleep.algorithms import parse_options

    return parse_options(name, raw)


@dataclass(frozen=True)
class ModelSource:
    """``data: {source: model}``: data drawn from the model itself."""

    source: Literal["model"] = option("model")
    n: int = option(10000, minimum=1, doc="number of points drawn")
    seed: int | None = option(None, minimum=0, maximum=SEED_MAX, doc="default: train.seed + 1")
    true_params: str | None = option(None, doc="an .npz of parameters to draw the data at (default: the initial)")


@dataclass(frozen=True)
class DataSpec:
    """The ``data:`` section: ``source`` and that source's settings.

    ``source: model`` is checked here (:class:`ModelSource`); the file and image sources (``file``,
    ``mnist``, ``fashion_mnist``, ``patches``, ...) are checked by :func:`wakesleep.data.load_dataset`
    when loaded, which happens before anything is written.
    """

    source: str
    settings: Mapping[str, Any]

    @classmethod
    def parse(cls, raw: Any, base: Path | None) -> DataSpec:
        if raw is None:
            raw = {}
        if isinstance(raw, str):
            raw = {"source": "file", "path": raw}
        if not isinstance(raw, Mapping):
            raise WakesleepError(f"'data' must be a mapping, got {type(raw).__name__}")
        src = raw.get("source", "model")
        if not isinstance(src, str):
            raise WakesleepError(f"data.source must be a string, got {src!r}")
        settings = dict(raw)
        settings["source"] = src
        if src == "model":
            settings = to_dict(parse(ModelSource, settings, "data"))
        for key in ("path", "test_path", "root", "true_params"):
            if settings.get(key) is not None:
                settings[key] = _path(settings[key], f"data.{key}", base)
        return cls(source=src, settings=settings)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.settings))


@dataclass(frozen=True)
class ModelSpec:
    """The ``model:`` section, as given to :func:`wakesleep.models.build_model` (which validates it)."""

    settings: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.settings))


def _path(value: Any, field: str, base: Path | None) -> str:
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise WakesleepError(f"{field} must be a file path, got {value!r}")
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p)


@dataclass(frozen=True)
class RunSpec:
    """A whole run, validated: ``model``, ``algorithm``, ``train``, ``data`` and an optional ``experiment``.

    Build it with :meth:`load` (a YAML file plus ``--set`` overrides) or :meth:`from_mapping`; turn it back
    into the resolved mapping written to ``config.yaml`` with :meth:`to_dict` (every default spelled out,
    paths absolute), which :meth:`from_mapping` reads back to an equal spec.
    """

    model: ModelSpec
    algorithm: AlgorithmSpec
    train: TrainSpec
    data: DataSpec
    experiment: Mapping[str, Any] | None = None
    source: str | None = dataclasses.field(default=None, compare=False)

    # ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_mapping(
        cls,
        raw: Mapping[str, Any],
        source: str | None = None,
        base_dir: str | os.PathLike | None = None,
        check_model: bool = False,
    ) -> RunSpec:
        """Validate a raw config mapping (after overrides) and fill in the defaults.

        Parameters
        ----------
        raw : mapping
            The parsed YAML.
        source : str, optional
            Where it came from (a file name), used in error messages.
        base_dir : path, optional
            Relative file paths (``model.init``, ``data.path``, ...) are resolved against it.
        check_model : bool
            Build the model once on the CPU to check the ``model`` section now.
        """
        try:
            spec = cls._from_mapping(raw, source, Path(base_dir) if base_dir is not None else None)
        except WakesleepError as exc:
            raise _config_error(exc, source) from None
        if check_model:
            spec.check_model()
        return spec

    @classmethod
    def _from_mapping(cls, raw: Mapping[str, Any], source: str | None, base: Path | None) -> RunSpec:
        if not isinstance(raw, Mapping):
            raise WakesleepError(f"the top level must be a mapping, got {type(raw).__name__}")
        for key in raw:
            if key not in SECTIONS:
                raise WakesleepError(f"unknown key '{key}' (sections: {', '.join(SECTIONS)})")
        if raw.get("model") is None:
            raise WakesleepError("missing section 'model'")
        model = copy.deepcopy(raw["model"])
        if not isinstance(model, dict):
            raise WakesleepError(f"'model' must be a mapping, got {type(model).__name__}")
        if "init" in model and not isinstance(model["init"], dict):  # a mapping: values inline
            model["init"] = _path(model["init"], "model.init", base) if model["init"] is not None else None
        algorithm = AlgorithmSpec.parse(copy.deepcopy(raw.get("algorithm")))
        train = parse(TrainSpec, copy.deepcopy(raw.get("train")), "train")
        if train.dtype is None:
            dtype = model.get("dtype", "float32")
            train = dataclasses.replace(train, dtype=dtype if dtype in ("float32", "float64") else "float32")
            train.validate()
        data = DataSpec.parse(copy.deepcopy(raw.get("data")), base)
        if data.source == "model" and data.settings.get("seed") is None:
            data = DataSpec(data.source, {**data.settings, "seed": train.seed + 1})
        experiment = raw.get("experiment")
        if experiment is not None and not isinstance(experiment, Mapping):
            raise WakesleepError("'experiment' must be a mapping")
        return cls(
            model=ModelSpec(model),
            algorithm=algorithm,
            train=train,
            data=data,
            experiment=copy.deepcopy(dict(experiment)) if experiment is not None else None,
            source=source,
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        overrides: Iterable[str] | Iterable[tuple[str, Any]] | None = None,
        check_model: bool = False,
    ) -> RunSpec:
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
        return cls.from_mapping(raw, source=str(path), base_dir=Path.cwd(), check_model=check_model)

    # ---------------------------------------------------------------------------------------------------
    def check_model(self) -> None:
        """Build the model once on the CPU to check the ``model`` section (errors name the field and file)."""
        from wakesleep.models import build_model

        try:
            build_model(self.model.to_dict())
        except WakesleepError as exc:
            raise _config_error(exc, self.source) from None

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as a plain mapping (the content of a run's ``config.yaml``)."""
        out: dict[str, Any] = {
            "model": self.model.to_dict(),
            "algorithm": self.algorithm.to_dict(),
            "train": to_dict(self.train),
            "data": self.data.to_dict(),
        }
        if self.experiment is not None:
            out["experiment"] = copy.deepcopy(dict(self.experiment))
        return out

    def first_difference(self, other: RunSpec, ignore: Iterable[str] = ()) -> str | None:
        """The first dotted key where this spec and ``other`` differ (keys in ``ignore`` skipped), or None."""
        return first_difference(self.to_dict(), other.to_dict(), ignore)

    def with_overrides(self, overrides: Iterable[tuple[str, Any]]) -> RunSpec:
        """A new spec with dotted-key overrides applied to :meth:`to_dict` and validated again."""
        return RunSpec.from_mapping(apply_overrides(self.to_dict(), list(overrides)), source=self.source)

    def replace(self, **sections: Any) -> RunSpec:
        """A new spec with whole sections replaced (``train=...`` a :class:`TrainSpec` or a mapping of changes)."""
        changes = {}
        for name, value in sections.items():
            current = getattr(self, name)
            if name == "train" and isinstance(value, Mapping):
                value = parse(TrainSpec, {**to_dict(current), **value}, "train")
            changes[name] = value
        return dataclasses.replace(self, **changes)


def first_difference(a: Any, b: Any, ignore: Iterable[str] = ()) -> str | None:
    """The first dotted key where the mappings ``a`` and ``b`` differ (keys in ``ignore`` skipped), or None.

    ``"the whole config"`` when ``a`` and ``b`` themselves differ and are not both mappings.
    """
    return _difference(a, b, "", set(ignore))


def _difference(a: Any, b: Any, prefix: str, ignore: set[str]) -> str | None:
    if prefix in ignore:
        return None
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in list(a) + [k for k in b if k not in a]:
            key = f"{prefix}.{k}" if prefix else str(k)
            if key in ignore:
                continue
            if k not in a or k not in b:
                return key
            diff = _difference(a[k], b[k], key, ignore)
            if diff is not None:
                return diff
        return None
    return None if a == b else prefix or "the whole config"


#: the ``train:`` section's defaults (from the one declaration, :class:`~wakesleep.training.options.TrainOptions`)
TRAIN_DEFAULTS: dict[str, Any] = to_dict(TrainSpec())


def resolve_config(
    raw: Mapping[str, Any],
    source: str | None = None,
    base_dir: str | os.PathLike | None = None,
    check_model: bool = True,
) -> dict[str, Any]:
    """Validate a raw config mapping and fill in defaults; return the resolved config as a new mapping.

    The mapping form of :meth:`RunSpec.from_mapping` (same parameters), for code that edits configs as mappings.
    """
    return RunSpec.from_mapping(raw, source=source, base_dir=base_dir, check_model=check_model).to_dict()


def load_config(
    path: str | os.PathLike,
    overrides: Iterable[str] | Iterable[tuple[str, Any]] | None = None,
    check_model: bool = True,
) -> dict[str, Any]:
    """The mapping form of :meth:`RunSpec.load` (same parameters)."""
    return RunSpec.load(path, overrides, check_model=check_model).to_dict()
