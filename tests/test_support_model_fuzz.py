"""Model sections: a fuzz of build_model (a model or one WakesleepError line, nothing else), the family contract."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import wakesleep
from wakesleep.errors import WakesleepError
from wakesleep.families import FAMILIES, PRIORS, ExponentialFamily
from wakesleep.models import HierarchicalModel
from wakesleep.models.build import LinkOptions
from wakesleep.schema import option

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FAMILY_NAMES = sorted(FAMILIES) + sorted(PRIORS)
# every key any layer may take, and some that none takes
LAYER_KEYS = sorted(
    {f for cls in [*FAMILIES.values(), *PRIORS.values()] for f in cls.Options.__dataclass_fields__}
    | set(LinkOptions.__dataclass_fields__)
    | {"colour", "Dim", ""}
)
# valid and invalid values (small sizes only: a valid dim is at most 3, anything large must be refused)
VALUES = [
    0, 1, 2, 3, -1, 10**20, 2**70, 0.5, 2.0, -2.5, 1e-320, 1e300, -1e300, math.nan, math.inf, -math.inf,
    True, False, None, "", "a", "1.0", "linear", "softplus_linear", "mlp", "tanh", "relu", *FAMILY_NAMES,
    [], [2], [0], [2, 3], [10**20], ["a"], [[1.0]], [[1.0, 2.0], [-1.0, 0.5]], [[1.0], [2.0, 3.0]], [0.3, 0.7],
    [-1.0, 2.0], {"a": 1}, {},
]  # fmt: skip
NAMES = ["z2", "z1", "x", "z", "", "1a", "a.b", "train", "keys", 3, None]
DIMS = [1, 2, 3, 0, -2, 2.0, 2.5, "3", True, None, 10**20]


@st.composite
def layer_specs(draw: Any) -> Any:
    if draw(st.integers(0, 19)) == 0:  # sometimes not a mapping at all
        return draw(st.sampled_from([None, 3, "gaussian", ["name", "x"]]))
    spec: dict[Any, Any] = {}
    if draw(st.integers(0, 14)):
        spec["name"] = draw(st.sampled_from(NAMES))
    if draw(st.integers(0, 14)):
        spec["family"] = draw(st.sampled_from([*FAMILY_NAMES, "gauss", 3, None, ["gaussian"]]))
    if draw(st.integers(0, 14)):
        spec["dim"] = draw(st.sampled_from(DIMS))
    for key in draw(st.lists(st.sampled_from(LAYER_KEYS), max_size=4, unique=True)):
        spec[key] = draw(st.sampled_from(VALUES))
    return spec


@st.composite
def model_sections(draw: Any) -> Any:
    section: dict[Any, Any] = {}
    layers = draw(st.lists(layer_specs(), min_size=0, max_size=4))
    section["layers"] = layers if draw(st.integers(0, 14)) else draw(st.sampled_from([None, {"a": 1}, "x", 2]))
    if draw(st.booleans()):
        section["seed"] = draw(st.sampled_from([0, 1, 2**62, 2**62 + 1, -1, 2**70, 1.5, 1.0, "a", True, None]))
    if draw(st.booleans()):
        section["dtype"] = draw(st.sampled_from(["float32", "float64", "float16", 1, None]))
    if draw(st.integers(0, 5)) == 0:
        section["init"] = draw(st.sampled_from([5, {}, {"layers.x.link.weight": "abc"}, {"nope": 1}, "/no/such.npz"]))
    if draw(st.integers(0, 9)) == 0:
        section[draw(st.sampled_from(["depth", "model", 3]))] = 1
    return section if draw(st.integers(0, 9)) else {"model": section}


def _valid_layer(draw: Any, family: str, index: int, top: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": f"l{index}", "family": family, "dim": draw(st.integers(1, 3))}
    if family == "categorical":
        spec["categories"] = draw(st.integers(1, 3))
    if not top:
        positive = FAMILIES[family].param_kind == "positive"
        spec["link"] = draw(
            st.sampled_from(
                ["softplus_linear", "mlp"]
                if positive
                else list(LinkOptions.__dataclass_fields__["link"].metadata["choices"])
            )
        )
        if spec["link"] == "mlp":
            spec["hidden"] = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
    return spec


@st.composite
def mutated_valid_sections(draw: Any) -> Any:
    """A valid model (top from any family or prior) with zero to two keys set to random values."""
    depth = draw(st.integers(2, 3))
    layers = [_valid_layer(draw, draw(st.sampled_from(FAMILY_NAMES[:-1])), 0, True)]
    if draw(st.booleans()):
        layers[0] = {"name": "l0", "family": "mog", "dim": draw(st.integers(1, 3))}
    for i in range(1, depth):
        layers.append(_valid_layer(draw, draw(st.sampled_from(sorted(FAMILIES))), i, False))
    for _ in range(draw(st.integers(0, 2))):
        layer = draw(st.sampled_from(layers))
        family = layer.get("family")
        cls = {**FAMILIES, **PRIORS}.get(family) if isinstance(family, str) else None
        own = sorted({*layer, *(cls.Options.__dataclass_fields__ if cls else ())})
        key = draw(st.sampled_from(own) if draw(st.booleans()) else st.sampled_from(LAYER_KEYS))
        if draw(st.integers(0, 3)) == 0:
            layer.pop(key, None)
        else:
            layer[key] = draw(st.sampled_from(VALUES))
    return {"layers": layers, "seed": draw(st.integers(0, 2**62))}


def _build_or_one_line_error(section: Any) -> HierarchicalModel | None:
    try:
        model = wakesleep.build_model(section)
    except WakesleepError as exc:
        assert "\n" not in str(exc) and "model" in str(exc), str(exc)
        return None
    assert isinstance(model, HierarchicalModel)
    return model


FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(model_sections())
def test_fuzz_random_sections_build_or_raise_one_line(section):
    _build_or_one_line_error(section)


@FUZZ
@given(mutated_valid_sections())
def test_fuzz_mutated_valid_sections_build_or_raise_one_line(section):
    model = _build_or_one_line_error(section)
    if model is not None:  # what builds also samples and scores finitely
        zs = model.sample(2)
        assert all(torch.isfinite(z).all() for z in zs)
        assert model.log_joint(zs[-1], zs[:-1]).shape == (2,)


# ------------------------------------------------------------------------------------------------ contract
class Exponential(ExponentialFamily):
    """A family written for this test only: exponential with rate r (S(x) = x, eta = -r, A = -log(-eta))."""

    name = "exponential"
    param_kind = "positive"
    support = "positive"
    support_text = "positive real numbers"

    @dataclass(frozen=True, kw_only=True)
    class Options(ExponentialFamily.Options):
        rate: float = option(2.0, minimum=0.0, exclusive_minimum=True, doc="top layer only: initial rate")

    top_only = ("learn", "rate")

    def top_parameter(self, options: Any) -> float:
        return options.rate

    def sufficient_statistics(self, x):
        return x.unsqueeze(-1)

    def log_normalizer(self, eta):
        return -torch.log(-eta[..., 0])

    def to_distribution(self, eta):
        return torch.distributions.Exponential(-eta[..., 0])

    def natural_from_param(self, param, extra):
        return (-param).unsqueeze(-1)

    def in_support(self, x):
        return x > 0


def test_a_new_family_needs_only_its_class_and_registration(monkeypatch):
    monkeypatch.setitem(FAMILIES, "exponential", Exponential)
    model = wakesleep.build_model(
        {
            "layers": [
                {"name": "z", "family": "exponential", "dim": 2, "rate": 3.0, "learn": False},
                {"name": "x", "family": "exponential", "dim": 3, "link": "softplus_linear"},
            ]
        }
    )
    top = model.layers["z"].link
    torch.testing.assert_close(top(), torch.full((2,), 3.0))  # softplus(inverse softplus(rate))
    assert "layers.z.link.value" not in dict(model.named_parameters())
    zs = model.sample(4)
    assert (zs[-1] > 0).all() and torch.isfinite(model.log_joint(zs[-1], zs[:-1])).all()
    for layer, needle in [
        ({"name": "x", "family": "exponential", "dim": 3, "link": "linear"}, "needs a positive parameter"),
        ({"name": "x", "family": "exponential", "dim": 3, "link": "mlp", "rate": 1.0}, "(x).rate: unknown key"),
    ]:
        with pytest.raises(WakesleepError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            wakesleep.build_model({"layers": [{"name": "z", "family": "exponential", "dim": 2}, layer]})
    with pytest.raises(WakesleepError, match=r"model.layers\[0\] \(z\).rate"):
        wakesleep.build_model(
            {
                "layers": [
                    {"name": "z", "family": "exponential", "dim": 2, "rate": -1},
                    {"name": "x", "family": "gaussian", "dim": 1},
                ]
            }
        )
