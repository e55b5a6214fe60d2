"""Build a :class:`HierarchicalModel` from the ``model:`` section of a config, validating every field.

The builder is generic: each family declares its keys and how a layer of it is built (see
:mod:`wakesleep.families.base`); this module knows only the keys every layer has (``name``, ``family``,
``dim``), the link keys of conditional layers (:class:`LinkOptions`) and the model's own keys
(:class:`ModelOptions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep.errors import WakesleepError
from wakesleep.families import FAMILIES, PRIORS, ExponentialFamily
from wakesleep.models.hierarchical import ExpFamLayer, HierarchicalModel, MixturePriorLayer
from wakesleep.models.links import LINKS, ConstantLink, LinearLink, MLPLink
from wakesleep.schema import SEED_MAX, option, parse

__all__ = ["build_model", "load_parameters", "observation_family", "LinkOptions", "ModelOptions"]

COMMON_LAYER_KEYS = ("name", "family", "dim")
ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid")
#: the most numbers one layer may hold (a guard against a typo such as ``dim: 1e9`` exhausting memory)
MAX_LAYER_SIZE = 2**31


@dataclass(frozen=True)
class ModelOptions:
    """The keys of the ``model:`` section."""

    layers: Any = option(None, doc="the layers, top latent first, observation last (at least two)")
    init: Any = option(
        None, doc="initial parameter values: an .npz or .safetensors file or a mapping keyed by parameter name"
    )
    seed: int = option(0, minimum=0, maximum=SEED_MAX, doc="seed of the random initialisation")
    dtype: str = option("float32", choices=("float32", "float64"), doc="floating dtype of the parameters")


@dataclass(frozen=True)
class LinkOptions:
    """The link keys of a conditional layer (a top layer has no link)."""

    link: str = option("linear", choices=LINKS, doc="parent value -> the family's parameter")
    bias: bool = option(True, doc="linear links: add a bias")
    hidden: list[int] = option([64], minimum=1, doc="mlp: sizes of the hidden layers")
    activation: str = option("tanh", choices=ACTIVATIONS, doc="mlp: activation of the hidden layers")
    init_std: float | None = option(
        None, minimum=0.0, exclusive_minimum=True, doc="linear links: std of the initial weights (1/sqrt(in))"
    )

    def validate(self, prefix: str) -> None:
        """Cross-field checks, run by :func:`wakesleep.schema.parse`."""
        if not self.hidden:
            raise WakesleepError(f"{prefix}.hidden: must be a non-empty list of layer sizes")


@dataclass(frozen=True)
class _Dim:
    dim: int = option(minimum=1, doc="number of units")


_LINK_KEYS = tuple(f.name for f in fields(LinkOptions))


def _fail(where: str, msg: str) -> None:
    raise WakesleepError(f"{where}: {msg}")


def _plain(value: Any) -> Any:
    """NumPy/torch scalars and arrays (from Python callers) as plain Python values, as YAML gives them."""
    if isinstance(value, np.ndarray | torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _known(names: Any) -> str:
    return ", ".join(sorted(names))


def _layer_head(spec: Any, index: int, is_top: bool) -> tuple[str, str, type, str]:
    """Check name and family of a layer spec; return ``(name, family name, family class, where)``."""
    where = f"model.layers[{index}]"
    if not isinstance(spec, dict):
        _fail(where, "must be a mapping like {name: z1, family: gaussian, dim: 2}")
    for key in COMMON_LAYER_KEYS:
        if key not in spec:
            _fail(f"{where}.{key}", "is required")
    name = spec["name"]
    if not isinstance(name, str) or not name.isidentifier():
        _fail(f"{where}.name", f"must be an identifier-like string, got {name!r}")
    if hasattr(torch.nn.ModuleDict, name):
        _fail(f"{where}.name", f"{name!r} is reserved (an attribute of torch.nn.ModuleDict): choose another name")
    where = f"model.layers[{index}] ({name})"
    family_name = spec["family"]
    known = {**FAMILIES, **PRIORS}
    if not isinstance(family_name, str) or family_name not in known:
        _fail(f"{where}.family", f"unknown family {family_name!r} (known: {_known(known)})")
    if family_name in PRIORS and not is_top:
        _fail(f"{where}.family", f"{family_name!r} is only available as the top prior")
    return name, family_name, known[family_name], where


def _check_keys(spec: dict, family_name: str, cls: type, is_top: bool, where: str) -> None:
    """Every key of the layer spec must be a common, link (conditional layers) or family key."""
    family_keys = {f.name for f in fields(cls.Options)}
    top_only = set(cls.top_only)
    allowed = set(COMMON_LAYER_KEYS) | (family_keys if is_top else (family_keys - top_only) | set(_LINK_KEYS))
    kind = "top" if is_top else "conditional"
    for key in spec:
        if key in allowed:
            continue
        why = ""
        if key in top_only:
            why = ": only a top layer takes it (a conditional layer's parameter comes from its link)"
        elif key in _LINK_KEYS:
            why = ": a top layer has no link"
        _fail(f"{where}.{key}", f"unknown key for a {kind} {family_name} layer{why} (known: {_known(allowed)})")


def _check_size(n: int, where: str) -> None:
    if n > MAX_LAYER_SIZE:
        _fail(where, f"the layer would hold {n:,} numbers (more than {MAX_LAYER_SIZE:,}): is a dim mistyped?")


def _build_layer(spec: Any, index: int, parent: Any, is_top: bool) -> torch.nn.Module:
    name, family_name, cls, where = _layer_head(spec, index, is_top)
    _check_keys(spec, family_name, cls, is_top, where)
    spec = {k: _plain(v) for k, v in spec.items()}
    dim = parse(_Dim, {"dim": spec["dim"]}, where).dim
    names = {f.name for f in fields(cls.Options)}
    options = parse(cls.Options, {k: v for k, v in spec.items() if k in names}, where)

    if family_name in PRIORS:
        _check_size(3 * dim, where)
        return MixturePriorLayer(name, cls.from_options(options, dim, where))

    family: ExponentialFamily = cls.from_options(options)
    out_dim = dim * family.param_size
    positive = family.param_kind == "positive"
    if is_top:
        _check_size(out_dim + dim, where)
        extra = family.layer_parameters(options, dim)
        v = family.top_parameter(options)
        v = _inv_softplus(v) if positive else v
        if not abs(v) <= torch.finfo(torch.get_default_dtype()).max:
            keys = [k for k in cls.top_only if k != "learn"]
            dtype = str(torch.get_default_dtype()).removeprefix("torch.")
            _fail(where + (f".{keys[0]}" if len(keys) == 1 else ""), f"out of the range of {dtype} (parameter {v:g})")
        init = torch.full((out_dim,), v)
        link = ConstantLink(out_dim, init, softplus=positive, learn=options.learn)
        return ExpFamLayer(name, family, dim, link, extra)

    link_opts = parse(LinkOptions, {k: v for k, v in spec.items() if k in _LINK_KEYS}, where)
    if positive and link_opts.link == "linear":
        _fail(f"{where}.link", f"family {family_name!r} needs a positive parameter: use softplus_linear or mlp")
    in_dim = parent.embed_dim
    sizes = [in_dim, *link_opts.hidden, out_dim] if link_opts.link == "mlp" else [in_dim, out_dim]
    _check_size(sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)) + dim, where)
    extra = family.layer_parameters(options, dim)
    if link_opts.link == "mlp":
        link = MLPLink(in_dim, out_dim, link_opts.hidden, link_opts.activation, softplus=positive)
    else:
        link = LinearLink(
            in_dim,
            out_dim,
            bias=link_opts.bias,
            softplus=(link_opts.link == "softplus_linear"),
            init_std=link_opts.init_std,
        )
    return ExpFamLayer(name, family, dim, link, extra)


def build_model(config: dict) -> HierarchicalModel:
    """Build the generative model described by a config.

    Parameters
    ----------
    config : dict
        Either a full config (with a ``model`` key) or its ``model`` section::

            layers:                # top latent first, observation last
              - {name: z2, family: mog, dim: 1, means: [[3.0], [-3.0]], std: 0.1, learn: false}
              - {name: z1, family: laplace, dim: 2, link: softplus_linear}
              - {name: x,  family: gaussian, dim: 2, link: linear}
            init: params.npz       # optional: initial values keyed by parameter name
            seed: 0                # optional: seed of the random initialisation
            dtype: float32         # optional: float32 or float64

    Returns
    -------
    HierarchicalModel

    Raises
    ------
    WakesleepError
        On any invalid field, naming it (e.g. ``model.layers[1] (z1).family: unknown family 'gauss'``).
    """
    if not isinstance(config, dict):
        raise WakesleepError("model: must be a mapping")
    section = config["model"] if "model" in config and isinstance(config.get("model"), dict) else config
    opts = parse(ModelOptions, {k: _plain(v) if k in ("seed", "dtype") else v for k, v in section.items()}, "model")
    layers_spec = opts.layers
    if not isinstance(layers_spec, list) or len(layers_spec) < 2:
        _fail("model.layers", "must list at least two layers (top latent first, observation last)")
    names: set[str] = set()
    layers: list[torch.nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        for i, spec in enumerate(layers_spec):
            layer = _build_layer(spec, i, layers[-1] if layers else None, is_top=(i == 0))
            if layer.name in names:
                _fail(f"model.layers[{i}].name", f"duplicate layer name {layer.name!r}")
            names.add(layer.name)
            layers.append(layer)
    model = HierarchicalModel(layers)
    if opts.dtype == "float64":
        model = model.double()
    for key, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            _fail("model", f"{key} is not finite in {opts.dtype} (a value of the model section is out of range)")
    if opts.init is not None:
        load_parameters(model, opts.init)
    return model


def observation_family(model: torch.nn.Module) -> ExponentialFamily | None:
    """The exponential family of a model's observations, for checking data against its support.

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`HierarchicalModel` (its last layer's family) or a model with an ``obs_family`` attribute.

    Returns
    -------
    ExponentialFamily or None
        None when the model does not tell.
    """
    family = getattr(model, "obs_family", None)
    if isinstance(family, ExponentialFamily):
        return family
    layers = getattr(model, "layers", None)
    if isinstance(layers, torch.nn.ModuleDict) and len(layers):
        family = getattr(list(layers.values())[-1], "family", None)
        return family if isinstance(family, ExponentialFamily) else None
    return None


def load_parameters(model: torch.nn.Module, source: str | Path | dict) -> None:
    """Set parameters (and buffers) from an ``.npz`` or ``.safetensors`` file or a dict keyed by parameter name.

    Parameters
    ----------
    model : torch.nn.Module
        The model whose parameters and buffers are set (in place).
    source : str, Path or dict
        An ``.npz`` file, a ``.safetensors`` file (a run's ``model.safetensors``) or a mapping
        ``parameter name -> array``.

    Raises
    ------
    WakesleepError
        On a missing or unreadable file, an unknown name, a wrong shape, a non-numeric or non-finite value.
    """
    where = "model.init"
    if isinstance(source, dict):
        arrays = source
    elif isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            _fail(where, f"file not found: {path}")
        try:
            if path.suffix == ".safetensors":  # e.g. a run directory's model.safetensors
                from safetensors.numpy import load_file

                arrays = load_file(str(path))
            else:
                with np.load(path) as f:
                    arrays = {k: f[k] for k in f.files}
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
            _fail(where, f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    else:
        _fail(where, f"must be a path to an .npz or .safetensors file or a mapping of parameter values, got {source!r}")
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for key, value in arrays.items():
            if key not in state:
                _fail(where, f"unknown parameter {key!r} (known: {', '.join(k for k in state if k != '_anchor')})")
            try:
                array = np.asarray(value)
            except (ValueError, TypeError):
                array = np.asarray(None)
            if array.dtype.kind not in "fiub":
                _fail(where, f"{key!r} must be numbers, got {value!r}"[:300])
            value = torch.as_tensor(array, dtype=state[key].dtype)
            if value.shape != state[key].shape:
                _fail(where, f"{key!r} has shape {tuple(value.shape)}, expected {tuple(state[key].shape)}")
            if not torch.isfinite(value).all():
                _fail(where, f"{key!r} has NaN or inf")
            state[key].copy_(value)
