"""Build a :class:`HierarchicalModel` from the ``model:`` section of a config, validating every field."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep.errors import WakesleepError
from wakesleep.families import FAMILIES, MixtureOfGaussians
from wakesleep.models.hierarchical import ExpFamLayer, HierarchicalModel, MixturePriorLayer
from wakesleep.models.links import LINKS, ConstantLink, LinearLink, MLPLink

MODEL_KEYS = {"layers", "init", "seed", "dtype"}
COMMON_LAYER_KEYS = {"name", "family", "dim"}
CONDITIONAL_KEYS = {"link", "bias", "hidden", "activation", "init_std"}
FAMILY_KEYS = {
    "gaussian": {"variance", "learn_variance", "mean", "learn"},
    "laplace": {"scale", "learn"},
    "bernoulli": {"logit", "learn"},
    "poisson": {"rate", "learn"},
    "gamma": {"shape", "learn_shape", "mean", "learn"},
    "categorical": {"categories", "learn"},
    "mog": {"means", "std", "weights", "learn"},
}
TOP_ONLY = {"mean", "scale", "logit", "rate", "learn", "means", "std", "weights"}


def _fail(where: str, msg: str) -> None:
    raise WakesleepError(f"{where}: {msg}")


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        _fail(where, f"must be a positive integer, got {value!r}")
    return int(value)


def _number(value: Any, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not math.isfinite(float(value)):
        _fail(where, f"must be a finite number, got {value!r}")
    if positive and value <= 0:
        _fail(where, f"must be positive, got {value!r}")
    return float(value)


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _build_layer(spec: dict, index: int, parent: Any, is_top: bool) -> torch.nn.Module:
    where = f"model.layers[{index}]"
    if not isinstance(spec, dict):
        _fail(where, "must be a mapping like {name: z1, family: gaussian, dim: 2}")
    for key in ("name", "family", "dim"):
        if key not in spec:
            _fail(f"{where}.{key}", "is required")
    name = spec["name"]
    if not isinstance(name, str) or not name.isidentifier():
        _fail(f"{where}.name", f"must be an identifier-like string, got {name!r}")
    where = f"model.layers[{index}] ({name})"
    family_name = spec["family"]
    if family_name not in FAMILY_KEYS:
        _fail(f"{where}.family", f"unknown family {family_name!r} (known: {', '.join(sorted(FAMILY_KEYS))})")
    if family_name == "mog" and not is_top:
        _fail(f"{where}.family", "'mog' is only available as the top prior")
    allowed = COMMON_LAYER_KEYS | FAMILY_KEYS[family_name] | (set() if is_top else CONDITIONAL_KEYS)
    if not is_top:
        allowed -= TOP_ONLY
    for key in spec:
        if key not in allowed:
            _fail(f"{where}.{key}", f"unknown key for a {'top' if is_top else 'conditional'} {family_name} layer")
    dim = _positive_int(spec["dim"], f"{where}.dim")

    if family_name == "mog":
        means = np.asarray(spec.get("means", [[1.0] * dim, [-1.0] * dim]), dtype=float)
        if means.ndim != 2 or means.shape[1] != dim:
            _fail(f"{where}.means", f"must be a list of components, each of length dim={dim}")
        std = _number(spec.get("std", 1.0), f"{where}.std", positive=True)
        weights = spec.get("weights")
        if weights is not None:
            weights = np.asarray(weights, dtype=float)
            if weights.shape != (means.shape[0],) or (weights <= 0).any():
                _fail(f"{where}.weights", f"must be {means.shape[0]} positive numbers")
            weights = torch.as_tensor(weights)
        prior = MixtureOfGaussians(torch.as_tensor(means), std, weights, learn=bool(spec.get("learn", False)))
        return MixturePriorLayer(name, prior)

    family = FAMILIES[family_name](spec["categories"]) if family_name == "categorical" else FAMILIES[family_name]()
    if family_name == "categorical":
        _positive_int(spec.get("categories"), f"{where}.categories")
    out_dim = dim * family.param_size
    positive = family.param_kind == "positive"
    extra: dict[str, tuple[torch.Tensor, bool]] = {}
    if family_name == "gaussian":
        var = _number(spec.get("variance", 1.0), f"{where}.variance", positive=True)
        extra["log_var"] = (torch.full((dim,), math.log(var)), bool(spec.get("learn_variance", True)))
    if family_name == "gamma":
        shape = _number(spec.get("shape", 1.0), f"{where}.shape", positive=True)
        extra["log_shape"] = (torch.full((dim,), math.log(shape)), bool(spec.get("learn_shape", True)))

    if is_top:
        learn = bool(spec.get("learn", True))
        init_key = {
            "gaussian": "mean",
            "laplace": "scale",
            "bernoulli": "logit",
            "poisson": "rate",
            "gamma": "mean",
            "categorical": None,
        }[family_name]
        default = 1.0 if positive else 0.0
        v = default if init_key is None else _number(spec.get(init_key, default), f"{where}.{init_key}", positive)
        init = torch.full((out_dim,), _inv_softplus(v) if positive else v)
        link = ConstantLink(out_dim, init, softplus=positive, learn=learn)
        return ExpFamLayer(name, family, dim, link, extra)

    link_name = spec.get("link", "linear")
    if link_name not in LINKS:
        _fail(f"{where}.link", f"unknown link {link_name!r} (known: {', '.join(LINKS)})")
    if positive and link_name == "linear":
        _fail(f"{where}.link", f"family {family_name!r} needs a positive parameter: use softplus_linear or mlp")
    in_dim = parent.embed_dim
    if link_name == "mlp":
        hidden = spec.get("hidden", [64])
        if not isinstance(hidden, list) or not hidden:
            _fail(f"{where}.hidden", "must be a non-empty list of layer sizes")
        hidden = [_positive_int(h, f"{where}.hidden") for h in hidden]
        activation = spec.get("activation", "tanh")
        if activation not in ("tanh", "relu", "softplus", "sigmoid"):
            _fail(f"{where}.activation", f"unknown activation {activation!r}")
        link = MLPLink(in_dim, out_dim, hidden, activation, softplus=positive)
    else:
        init_std = spec.get("init_std")
        if init_std is not None:
            init_std = _number(init_std, f"{where}.init_std", positive=True)
        link = LinearLink(
            in_dim,
            out_dim,
            bias=bool(spec.get("bias", True)),
            softplus=(link_name == "softplus_linear"),
            init_std=init_std,
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
    for key in section:
        if key not in MODEL_KEYS:
            _fail(f"model.{key}", f"unknown key (known: {', '.join(sorted(MODEL_KEYS))})")
    layers_spec = section.get("layers")
    if not isinstance(layers_spec, list) or len(layers_spec) < 2:
        _fail("model.layers", "must list at least two layers (top latent first, observation last)")
    seed = section.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        _fail("model.seed", f"must be an integer, got {seed!r}")
    dtype_name = section.get("dtype", "float32")
    if dtype_name not in ("float32", "float64"):
        _fail("model.dtype", f"must be float32 or float64, got {dtype_name!r}")
    names: set[str] = set()
    layers: list[torch.nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, spec in enumerate(layers_spec):
            layer = _build_layer(spec, i, layers[-1] if layers else None, is_top=(i == 0))
            if layer.name in names:
                _fail(f"model.layers[{i}].name", f"duplicate layer name {layer.name!r}")
            names.add(layer.name)
            layers.append(layer)
    model = HierarchicalModel(layers)
    if dtype_name == "float64":
        model = model.double()
    if section.get("init") is not None:
        load_parameters(model, section["init"])
    return model


def load_parameters(model: torch.nn.Module, source: str | Path | dict) -> None:
    """Set parameters (and buffers) from an ``.npz`` file or a dict keyed by parameter name."""
    where = "model.init"
    if isinstance(source, dict):
        arrays = source
    else:
        path = Path(source)
        if not path.is_file():
            _fail(where, f"file not found: {path}")
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
            _fail(where, f"cannot read {path}: {exc}")
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for key, value in arrays.items():
            if key not in state:
                _fail(where, f"unknown parameter {key!r} (known: {', '.join(k for k in state if k != '_anchor')})")
            value = torch.as_tensor(np.asarray(value), dtype=state[key].dtype)
            if value.shape != state[key].shape:
                _fail(where, f"{key!r} has shape {tuple(value.shape)}, expected {tuple(state[key].shape)}")
            if not torch.isfinite(value).all():
                _fail(where, f"{key!r} has NaN or inf")
            state[key].copy_(value)
