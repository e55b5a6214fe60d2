"""Mixed precision (``train.precision``): what is lowered, what is not, and that training still learns.

bfloat16 autocast runs on any CPU (emulated where the CPU lacks bfloat16 instructions), so these tests need no
GPU. Tolerances: bfloat16 keeps 8 significant bits (relative rounding <= 2^-8 = 0.4 %); a product of a
float32 input with a weight matrix then errs by about that, and a gradient averaged over many samples by less.
"""

from __future__ import annotations

import pytest
import torch

import wakesleep
from wakesleep.errors import WakesleepError
from wakesleep.ops import autocast, linear
from wakesleep.spec import resolve_config
from wakesleep.training import Trainer

from oracles import build, enumerate_loglik, sbn_config

DIMS = (3, 6, 12)


def _sbn32(seed: int, dims: tuple[int, ...] = DIMS) -> torch.nn.Module:
    return build({**sbn_config(dims, seed), "dtype": "float32"})


def _loglik(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Exact mean log p(x) of a float32 SBN, by enumeration in float64."""
    m64 = build(sbn_config(DIMS, 0))
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    with torch.no_grad():
        return float(enumerate_loglik(m64, x.double()).mean())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_linear_under_autocast_rounds_the_product_but_returns_float32():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(64, 300, generator=g), torch.randn(50, 300, generator=g), torch.randn(50, generator=g)
    exact = x.double() @ w.double().T + b.double()
    full = linear(x, w, b)
    with autocast("cpu", "bfloat16"):
        low = linear(x, w, b)
    assert low.dtype == torch.float32
    assert _rel(full.double(), exact) < 1e-6
    assert 1e-4 < _rel(low.double(), exact) < 1e-2  # really lowered, and only by bfloat16's rounding
    with autocast("cpu", "float32"):  # float32: a no-op context
        assert torch.equal(linear(x, w, b), full)


def test_ddc_hm_keeps_its_regressions_in_full_precision_and_its_gradient_within_rounding():
    """Under bfloat16 the recognition and the gradient systems fitted on the same sleep samples are identical
    to float32's, and the wake gradient (only the links at the sleep samples lowered) is within 2 % of it;
    lowering the sleep-sample weights too made it wrong by a factor of 10-100 (the weighted sums cancel)."""
    model = _sbn32(1)
    x = _sbn32(0).sample(64)[-1]
    samples = model.sample(2000)
    opts = {"sleep_samples": 2000, "features": 30, "recognition_hidden": 40, "recognition_input": "linear"}
    full = wakesleep.build_algorithm("ddc_hm", model, **opts)
    full.sleep(samples=samples)
    low = wakesleep.build_algorithm("ddc_hm", model, **opts)
    with autocast("cpu", "bfloat16"):
        low.sleep(samples=samples)
        g_low = low.wake_gradient(x)
        r_low = low.recognise(x)
    for a, b in zip(low.recognizer.maps, full.recognizer.maps, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(r_low, full.recognise(x), strict=True):
        assert torch.equal(a, b)
    g_full = full.wake_gradient(x)
    for k in g_full:
        assert _rel(g_low[k], g_full[k]) < 2e-2, k
    assert any(_rel(g_low[k], g_full[k]) > 1e-5 for k in g_full)  # the links were lowered


def test_vimco_gradient_under_bfloat16_is_within_rounding_of_float32_with_the_same_draws():
    model = _sbn32(1)
    x = _sbn32(0).sample(64)[-1]
    algo = wakesleep.build_algorithm("vimco", model, k=10)
    torch.manual_seed(5)
    g_full = algo.wake_gradient(x)
    torch.manual_seed(5)
    with autocast("cpu", "bfloat16"):
        g_low = algo.wake_gradient(x)
    for k in g_full:
        assert g_low[k].dtype == torch.float32
        assert _rel(g_low[k], g_full[k]) < 0.1, k


@pytest.mark.parametrize("name", ["ddc_hm", "vimco"])
def test_training_in_bfloat16_learns_like_float32(name):
    """200 iterations on data from a small SBN: the average log-likelihood (exact, by enumeration) rises by
    about as much with bfloat16 products as with float32 ones (within 10 % of float32's gain)."""
    truth = _sbn32(0)
    torch.manual_seed(0)
    data = truth.sample(2000)[-1]
    opts = (
        {"sleep_samples": 1000, "features": 30, "recognition_hidden": 40, "recognition_input": "linear"}
        if name == "ddc_hm"
        else {"k": 10}
    )
    gains = {}
    for precision in ("float32", "bfloat16"):
        model = _sbn32(1)
        start = _loglik(model, data)
        algo = wakesleep.build_algorithm(name, model, **opts)
        torch.manual_seed(1)
        Trainer(algo, epochs=10, batch_size=100, lr=1e-2, sleep_every=1, progress=False, precision=precision).fit(data)
        end = _loglik(model, data)
        gains[precision] = end - start
    assert gains["float32"] > 0.5
    assert abs(gains["bfloat16"] - gains["float32"]) < 0.1 * gains["float32"]


def test_precision_errors_are_clear():
    model = _sbn32(1, (2, 3, 5))
    algo = wakesleep.build_algorithm("vimco", model, k=5)
    with pytest.raises(WakesleepError, match="train.precision"):
        Trainer(algo, precision="half")
    with pytest.raises(WakesleepError, match="float16 needs a CUDA"):
        Trainer(algo, epochs=1, progress=False, precision="float16").fit(model.sample(10)[-1])
    with pytest.raises(WakesleepError, match="needs a float32 model"):
        model64 = build(sbn_config((2, 3, 5), 1))
        Trainer(wakesleep.build_algorithm("vimco", model64, k=5), epochs=1, progress=False, precision="bfloat16").fit(
            model64.sample(10)[-1]
        )
    base = {"model": {**sbn_config((2, 3, 5), 1), "dtype": "float32"}, "algorithm": "vimco"}
    for train, match in (
        ({"precision": "fp8"}, "train.precision must be"),
        ({"precision": "float16"}, "float16 needs train.device cuda"),
        ({"precision": "bfloat16", "dtype": "float64"}, "needs train.dtype float32"),
    ):
        with pytest.raises(WakesleepError, match=match):
            resolve_config({**base, "train": train})
    assert resolve_config({**base, "train": {"precision": "bfloat16"}})["train"]["precision"] == "bfloat16"
