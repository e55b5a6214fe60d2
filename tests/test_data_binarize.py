"""Binarisation schemes: names, dynamic vs fixed behaviour, mean preservation."""

from __future__ import annotations

import pytest
import torch

from wakesleep.data import Binarizer, binarize, check_unit_interval, parse_scheme
from wakesleep.errors import WakesleepError


def _grey(n=400, d=50, seed=0):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_parse_scheme():
    assert parse_scheme("dynamic") == ("dynamic", None)
    assert parse_scheme("fixed-seed0") == ("fixed", 0)
    assert parse_scheme("fixed-seed123") == ("fixed", 123)
    assert parse_scheme("threshold0.5") == ("threshold", 0.5)
    assert parse_scheme("threshold.25") == ("threshold", 0.25)
    assert parse_scheme(None) == ("none", None) == parse_scheme("none")
    for bad in ["fixed", "fixed-seed", "threshold", "threshold1.5", "stochastic", "fixed-seed-1", 3]:
        with pytest.raises(WakesleepError, match="binarize"):
            parse_scheme(bad)


def test_dynamic_changes_between_calls_and_is_seeded():
    x = _grey()
    b = Binarizer("dynamic", seed=3)
    first, second = b(x), b(x)
    assert set(first.unique().tolist()) <= {0.0, 1.0} and first.dtype == x.dtype
    assert not torch.equal(first, second)
    again = Binarizer("dynamic", seed=3)
    assert torch.equal(again(x), first)  # same seed, same sequence of draws
    assert b.is_dynamic and b.scheme == "dynamic"


def test_fixed_is_reproducible_and_streams_differ():
    x = _grey()
    a = binarize(x, "fixed-seed0")
    assert torch.equal(a, binarize(x, "fixed-seed0"))
    assert torch.equal(a, Binarizer("fixed-seed0")(x))
    assert not torch.equal(a, binarize(x, "fixed-seed1"))
    assert not torch.equal(a, binarize(x, "fixed-seed0", stream=1))
    assert not Binarizer("fixed-seed0").is_dynamic


@pytest.mark.parametrize("scheme", ["dynamic", "fixed-seed0"])
def test_bernoulli_schemes_preserve_mean(scheme):
    x = _grey(2000, 100) ** 2  # mean 1/3, not 1/2
    b = Binarizer(scheme, seed=1)
    xb = b(x)
    # 2e5 Bernoulli draws: standard error about 1e-3
    assert abs(xb.mean().item() - x.mean().item()) < 5e-3
    assert torch.allclose(xb.mean(0), x.mean(0), atol=0.06)


def test_threshold():
    x = torch.tensor([[0.1, 0.5, 0.51, 0.9]])
    assert binarize(x, "threshold0.5").tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert binarize(x, "threshold0.3").tolist() == [[0.0, 1.0, 1.0, 1.0]]
    assert binarize(x, "none") is x


def test_check_unit_interval():
    check_unit_interval(torch.rand(3, 3), "data")
    with pytest.raises(WakesleepError, match=r"mydata.*\[0, 1\]"):
        check_unit_interval(torch.tensor([0.0, 2.0]), "mydata")
