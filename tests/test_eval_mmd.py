"""MMD^2_u, its variance, bandwidth selection and the permutation test (wakesleep.eval.mmd)."""

import math

import numpy as np
import pytest
import torch

from wakesleep.errors import WakesleepError
from wakesleep.eval import (
    gaussian_kernel,
    median_bandwidth,
    mmd,
    mmd_statistics,
    mmd_test,
    select_bandwidth,
)
from wakesleep.eval.mmd import kernel_sums

pytestmark = pytest.mark.usefixtures("one_thread")


def _numpy_mmd2_u(x, y, bw):
    """Direct O(n^2) unbiased MMD^2 with the Gaussian kernel (independent of the library)."""

    def k(a, b):
        d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d / (2 * bw * bw))

    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.sum() / (m * n)
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_mmd_matches_numpy_and_hyppo_kernel():
    from hyppo.tools import compute_kern

    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 3))
    y = rng.normal(size=(55, 3)) + [0.4, 0.0, -0.2]
    bw = 1.3
    ours = mmd(x, y, bandwidth=bw)
    assert ours == pytest.approx(_numpy_mmd2_u(x, y, bw), rel=1e-12, abs=1e-14)
    # the same statistic from hyppo's Gaussian kernel matrix of the pooled sample
    pooled = np.concatenate([x, y])
    K, _ = compute_kern(pooled, pooled, metric="gaussian", gamma=1.0 / (2 * bw * bw))
    m, n = len(x), len(y)
    kxx, kyy, kxy = K[:m, :m], K[m:, m:], K[:m, m:]
    hyppo_u = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    assert ours == pytest.approx(hyppo_u, rel=1e-10)
    assert torch.allclose(gaussian_kernel(x, y, bw), torch.as_tensor(K[:m, m:]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_chunked_equals_unchunked(chunk):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(90, 5, generator=g, dtype=torch.float64)
    y = torch.randn(61, 5, generator=g, dtype=torch.float64) * 1.2
    full = mmd_statistics(x, y, bandwidth=2.0, chunk_size=10_000)
    part = mmd_statistics(x, y, bandwidth=2.0, chunk_size=chunk)
    assert part.mmd2 == pytest.approx(full.mmd2, rel=1e-12, abs=1e-15)
    assert part.variance == pytest.approx(full.variance, rel=1e-10)
    t_full = mmd_test(x, y, bandwidth=2.0, n_permutations=50, chunk_size=10_000, seed=3)
    t_part = mmd_test(x, y, bandwidth=2.0, n_permutations=50, chunk_size=chunk, seed=3)
    assert t_part.mmd2 == pytest.approx(full.mmd2, rel=1e-12, abs=1e-15)
    assert t_part.p_value == t_full.p_value
    assert t_part.variance == pytest.approx(full.variance, rel=1e-10)


def test_kernel_sums_symmetric_blocks():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(33, 4, generator=g, dtype=torch.float64)
    K = gaussian_kernel(a, a, 1.5)
    K.fill_diagonal_(0.0)
    rows, cols = kernel_sums(a, None, [1.5], chunk_size=5)
    assert torch.allclose(rows[0], K.sum(1), rtol=1e-13)
    assert torch.allclose(cols[0], K.sum(0), rtol=1e-13)


def test_float32_input_accumulates_in_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 20, generator=g)
    y = torch.randn(300, 20, generator=g)
    v32 = mmd(x, y, bandwidth=4.0, chunk_size=64)
    v64 = mmd(x.double(), y.double(), bandwidth=4.0)
    assert abs(v32 - v64) < 1e-6


def test_median_bandwidth_matches_numpy():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(40, 2)), rng.normal(size=(30, 2)) + 1
    p = np.concatenate([x, y])
    d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
    expected = np.median(d[np.triu_indices(len(p), 1)])
    assert median_bandwidth(x, y) == pytest.approx(expected, rel=1e-12)
    # subsampled: close to the full-sample median
    big = rng.normal(size=(3000, 2))
    assert median_bandwidth(big, max_samples=500) == pytest.approx(math.sqrt(2) * 1.1774, rel=0.1)


def test_variance_estimate_matches_monte_carlo():
    """Under H1 the estimated Var[MMD^2_u] agrees with the spread over repeated draws (within 25%)."""
    rng = np.random.default_rng(5)
    vals, vars_ = [], []
    for _ in range(200):
        x = rng.normal(size=(150, 2))
        y = rng.normal(size=(120, 2)) + [0.8, 0.0]
        s = mmd_statistics(x, y, bandwidth=1.0)
        vals.append(s.mmd2)
        vars_.append(s.variance)
    ratio = np.mean(vars_) / np.var(vals, ddof=1)
    assert 0.75 < ratio < 1.33, ratio


def test_permutation_test_null_rejection_rate():
    """H0 true: rejection rate at alpha=0.05 within 3 binomial standard errors of 0.05 (200 repetitions)."""
    rng = np.random.default_rng(6)
    reps, alpha = 200, 0.05
    ps = []
    for i in range(reps):
        x, y = rng.normal(size=(25, 2)), rng.normal(size=(30, 2))
        ps.append(mmd_test(x, y, n_permutations=99, seed=i).p_value)
    rate = np.mean(np.array(ps) <= alpha)
    se = math.sqrt(alpha * (1 - alpha) / reps)
    assert abs(rate - alpha) < 3 * se, rate
    assert min(ps) >= 1 / 100


def test_permutation_test_power_rises_with_shift():
    rng = np.random.default_rng(7)
    rates = []
    for shift in (0.0, 0.4, 0.8, 1.2):
        rej = 0
        for i in range(40):
            x = rng.normal(size=(40, 2))
            y = rng.normal(size=(40, 2)) + [shift, 0.0]
            rej += mmd_test(x, y, n_permutations=99, seed=i).p_value <= 0.05
        rates.append(rej / 40)
    assert rates[0] <= 0.15
    assert rates == sorted(rates), rates
    assert rates[-1] >= 0.9, rates


def test_power_bandwidth_selection():
    """Power-based selection prefers a small bandwidth for a fine-scale difference; the split test works."""
    rng = np.random.default_rng(8)
    n = 400
    x = rng.normal(size=(n, 1))
    # y differs from x only at a fine scale: x plus a tiny ripple (a mixture of narrow bumps)
    y = np.round(rng.normal(size=(n, 1)) * 4) / 4 + rng.normal(size=(n, 1)) * 0.03
    med = median_bandwidth(x, y)
    bw = select_bandwidth(x, y)
    assert bw < med / 2
    res = mmd_test(x, y, bandwidth="power", n_permutations=200)
    assert res.m == n // 2 and res.n == n // 2
    assert res.p_value < 0.01
    assert res.bandwidth == pytest.approx(select_bandwidth(*_halves(x, y)), rel=1e-12)


def _halves(x, y):
    g = torch.Generator().manual_seed(0)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    px = torch.randperm(len(x), generator=g)
    py = torch.randperm(len(y), generator=g)
    return xt[px[: len(x) // 2]], yt[py[: len(y) // 2]]


def test_images_are_flattened():
    g = torch.Generator().manual_seed(9)
    x = torch.rand(20, 4, 4, generator=g, dtype=torch.float64)
    y = torch.rand(20, 16, generator=g, dtype=torch.float64)
    assert mmd(x, y, 1.0) == pytest.approx(mmd(x.reshape(20, 16), y, 1.0))


@pytest.mark.parametrize(
    "x, y, kwargs, message",
    [
        (np.zeros((5, 2)), np.zeros((5, 3)), {}, "mmd: y has 3 columns, x has 2"),
        (
            np.zeros((1, 2)),
            np.ones((5, 2)),
            {},
            "mmd: x has 1 sample; the unbiased MMD estimator needs at least 2",
        ),
        (np.array([[0.0, np.nan], [1, 1]]), np.ones((5, 2)), {}, "mmd: x contains NaN or inf values"),
        (np.ones((5, 2)), np.array([[np.inf, 0.0]] * 3), {}, "mmd: y contains NaN or inf values"),
        (
            np.zeros((5, 2)),
            np.ones((5, 2)),
            {"bandwidth": -1.0},
            "bandwidth must be a positive finite number",
        ),
        (np.zeros((5, 2)), np.ones((5, 2)), {"bandwidth": "silverman"}, "'median' or 'power'"),
        (np.zeros((4, 2)), np.ones((4, 2)), {"bandwidth": "power"}, "too few to split"),
    ],
)
def test_bad_input(x, y, kwargs, message):
    with pytest.raises(WakesleepError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mmd(x, y, **kwargs)


def test_bad_input_test_and_median():
    with pytest.raises(WakesleepError, match="n_permutations must be an integer >= 1"):
        mmd_test(np.zeros((5, 2)), np.ones((5, 2)), n_permutations=0)
    with pytest.raises(WakesleepError, match="all points are identical"):
        median_bandwidth(np.zeros((5, 2)), np.zeros((3, 2)))
