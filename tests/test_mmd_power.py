"""The relative MMD test with a kernel chosen for power (wakesleep.eval.power), against truth and oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import polynomial_kernel, rbf_kernel

from wakesleep import WakesleepError
from wakesleep.eval import (
    SampleKernel,
    compare_samples,
    kernel_grid,
    kernel_mmd,
    relative_mmd_power_test,
    relative_mmd_test,
)
from wakesleep.eval.power import kernel_relative_mmd_test, split_samples

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: OpenMP spin-waiting is slow on a busy machine


def _normal(n: int, d: int, shift: float, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:, 0] += shift
    return x


def _factor(n: int, d: int, q: float, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Binary vectors sharing one fair coin u: pixel i is u with probability q, else Bernoulli(p)."""
    u = torch.bernoulli(torch.full((n, 1), 0.5, dtype=torch.float64), generator=g)
    b = torch.bernoulli(torch.full((n, d), p, dtype=torch.float64), generator=g)
    keep = torch.bernoulli(torch.full((n, d), q, dtype=torch.float64), generator=g)
    return keep * u + (1 - keep) * b


def _u_mmd(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = kxx.shape[0], kyy.shape[0]
    return (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()


# --- the split ------------------------------------------------------------------------------------------
def test_split_is_disjoint_and_the_test_uses_only_the_test_part() -> None:
    sel, test = split_samples(101, 0.5, torch.Generator().manual_seed(3))
    assert len(sel) == 50 and len(test) == 51
    assert set(sel.tolist()).isdisjoint(test.tolist())
    assert sorted(sel.tolist() + test.tolist()) == list(range(101))

    g = torch.Generator().manual_seed(1)
    x, y, z = _normal(120, 2, 0.0, g), _normal(90, 2, 1.0, g), _normal(100, 2, 0.3, g)
    res = relative_mmd_power_test(x, y, z, seed=5)
    assert res.n_select == (60, 45, 50) and res.n_test == (60, 45, 50)
    # the same seeded split reproduced: the reported test is the fixed-kernel test on the test parts alone
    gen = torch.Generator().manual_seed(5)
    parts = [split_samples(t.shape[0], 0.5, gen) for t in (x, y, z)]
    xt, yt, zt = (t[p[1]] for t, p in zip((x, y, z), parts, strict=True))
    ref = kernel_relative_mmd_test(xt, yt, zt, res.kernel)
    assert res.test == ref
    # the criteria come from the selection parts alone
    xs, ys, zs = (t[p[0]] for t, p in zip((x, y, z), parts, strict=True))
    for k, crit in zip(res.candidates, res.criteria, strict=True):
        if k.family == "gaussian":
            assert crit == pytest.approx(relative_mmd_test(xs, ys, zs, bandwidth=k.bandwidth).statistic, rel=1e-9)


# --- the criterion and its maximum ------------------------------------------------------------------------
def test_chosen_kernel_maximises_the_criterion() -> None:
    g = torch.Generator().manual_seed(0)
    x, y, z = _normal(300, 3, 0.0, g), _normal(300, 3, 1.0, g), _normal(300, 3, 0.0, g)
    res = relative_mmd_power_test(x, y, z, seed=2)
    assert res.criterion == max(res.criteria)
    assert res.kernel == res.candidates[int(np.argmax(res.criteria))]
    assert res.p_value < 1e-3 and res.closer == "z"
    # known answer: a width far below every distance between distinct points makes every off-diagonal kernel
    # value 0, so its statistic and criterion are exactly 0; the usable width has a large positive criterion
    tiny, usable = SampleKernel.gaussian(1e-4), SampleKernel.gaussian(1.0)
    res = relative_mmd_power_test(x, y, z, [tiny, usable], seed=2)
    assert res.criteria[0] == 0.0 and res.criteria[1] > 3.0
    assert res.kernel == usable


def test_gaussian_path_matches_relative_mmd_test() -> None:
    g = torch.Generator().manual_seed(4)
    x, y, z = _normal(80, 4, 0.0, g), _normal(60, 4, 0.6, g), _normal(70, 4, 0.2, g)
    a = kernel_relative_mmd_test(x, y, z, SampleKernel.gaussian(1.3))
    b = relative_mmd_test(x, y, z, bandwidth=1.3)
    for f in ("mmd_xy", "mmd_xz", "var_xy", "var_xz", "cov", "statistic", "p_value"):
        assert getattr(a, f) == pytest.approx(getattr(b, f), rel=1e-10, abs=1e-15)


# --- validity under H0 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["z", "either"])
def test_p_values_uniform_under_h0(direction: str) -> None:
    # y and z from one distribution, different from x's: MMD(x, y) = MMD(x, z) exactly (H0 on its boundary)
    reps, alpha = 200, 0.05
    p = []
    for s in range(reps):
        g = torch.Generator().manual_seed(1000 + s)
        x, y, z = _normal(160, 2, 0.0, g), _normal(160, 2, 0.7, g), _normal(160, 2, 0.7, g)
        p.append(relative_mmd_power_test(x, y, z, direction=direction, seed=s).p_value)
    rejections = sum(v < alpha for v in p)
    sd = math.sqrt(reps * alpha * (1 - alpha))
    assert abs(rejections - reps * alpha) <= 3.5 * sd, rejections
    # the whole distribution, not only its 5 % tail (Kolmogorov-Smirnov against U(0, 1))
    from scipy import stats

    assert stats.kstest(p, "uniform").pvalue > 1e-3


# --- the quadratic kernel -------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [0.0, 0.1, 1.0])
def test_quadratic_mmd_is_the_moment_distance(c: float) -> None:
    g = torch.Generator().manual_seed(7)
    d = 6
    x = torch.bernoulli(torch.full((90, d), 0.3, dtype=torch.float64), generator=g)
    y = torch.rand(70, d, generator=g, dtype=torch.float64)
    mu = torch.rand(d, generator=g, dtype=torch.float64)
    k = SampleKernel.quadratic(c, mu)
    got = kernel_mmd(x, y, k)
    xc, yc = (x - mu).numpy(), (y - mu).numpy()
    kw = {"degree": 2, "gamma": 1.0 / d, "coef0": c}
    oracle = _u_mmd(polynomial_kernel(xc, xc, **kw), polynomial_kernel(yc, yc, **kw), polynomial_kernel(xc, yc, **kw))
    assert got == pytest.approx(oracle, rel=1e-12, abs=1e-15)

    # closed form through the moments: sum_ij k(a_i, b_j) = <S_a, S_b>/d^2 + 2c <s_a, s_b>/d + n_a n_b c^2
    def block(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.T @ a * (b.T @ b)).sum() / d**2 + 2 * c * a.sum(0) @ b.sum(0) / d + len(a) * len(b) * c**2)

    def diag(a: torch.Tensor) -> float:
        return float((((a * a).sum(1) / d + c) ** 2).sum())

    a, b = x - mu, y - mu
    m, n = len(a), len(b)
    closed = (block(a, a) - diag(a)) / (m * (m - 1)) + (block(b, b) - diag(b)) / (n * (n - 1))
    closed -= 2 * block(a, b) / (m * n)
    assert got == pytest.approx(closed, rel=1e-12, abs=1e-15)
    # the V-statistic (diagonal kept) is exactly the distance of second moments about mu and of the means
    kxx, kyy = polynomial_kernel(xc, xc, **kw), polynomial_kernel(yc, yc, **kw)
    v_stat = kxx.mean() + kyy.mean() - 2 * polynomial_kernel(xc, yc, **kw).mean()
    m2x, m2y = a.T @ a / m, b.T @ b / n
    moments = float(((m2x - m2y) ** 2).sum() / d**2 + 2 * c / d * ((x.mean(0) - y.mean(0)) ** 2).sum())
    assert v_stat == pytest.approx(moments, rel=1e-12, abs=1e-15)


def test_patch_kernel_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.bernoulli(torch.full((60, 36), 0.3, dtype=torch.float64), generator=g)
    y = torch.bernoulli(torch.full((50, 36), 0.4, dtype=torch.float64), generator=g)
    grid = kernel_grid(x, y, kernels=["patch"], image_shape=(6, 6), patch_size=3, n_patches=5)
    assert [k.scale for k in grid] == [0.5, 1.0, 2.0]
    k = grid[1]
    assert len(k.patches) == 5 and all(len(p) == 9 and max(p) < 36 for p in k.patches)

    def gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return sum(
            rbf_kernel(a[:, list(p)], b[:, list(p)], gamma=1 / (2 * w * w))
            for p, w in zip(k.patches, k.widths, strict=True)
        ) / len(k.patches)

    xn, yn = x.numpy(), y.numpy()
    assert kernel_mmd(x, y, k) == pytest.approx(_u_mmd(gram(xn, xn), gram(yn, yn), gram(xn, yn)), rel=1e-10)


# --- a test that can tell -------------------------------------------------------------------------------
def test_quadratic_detects_correlations_the_median_gaussian_misses() -> None:
    # reference: 12 binary pixels sharing one coin (pairwise correlated); y: independent pixels with the
    # reference's exact marginals (the independent-pixel model); z: the correlated model with each pixel's
    # independent part at 0.55 instead of 0.5 (marginals 0.535). By KL (exact, 4096 states) z is far closer.
    d, q, n = 12, 0.3, 1000
    states = torch.tensor([[(s >> i) & 1 for i in range(d)] for s in range(2**d)], dtype=torch.float64)

    def log_p_factor(p: float) -> torch.Tensor:
        on = q + (1 - q) * p  # P(x_i = 1 | u = 1); P(x_i = 1 | u = 0) = (1 - q) p
        parts = [(states * math.log(pi) + (1 - states) * math.log(1 - pi)).sum(1) for pi in (on, (1 - q) * p)]
        return torch.logsumexp(torch.stack(parts), 0) - math.log(2)

    lp = log_p_factor(0.5)
    kl_y = float((lp.exp() * (lp - d * math.log(0.5))).sum())
    kl_z = float((lp.exp() * (lp - log_p_factor(0.55))).sum())
    assert kl_z < kl_y / 3

    g = torch.Generator().manual_seed(0)
    x = _factor(n, d, q, g)
    y = torch.bernoulli(torch.full((n, d), 0.5, dtype=torch.float64), generator=g)
    z = _factor(n, d, q, g, p=0.55)
    assert relative_mmd_test(x, y, z).p_value > 0.3  # the median-width Gaussian does not prefer z
    mu = _factor(n, d, q, g).mean(0)  # centre from an independent reference sample
    assert kernel_relative_mmd_test(x, y, z, SampleKernel.quadratic(0.0, mu)).p_value < 1e-4
    # selected for power on half of the data, the test on the other half prefers z as well
    res = relative_mmd_power_test(x, y, z, ["gaussian", "quadratic"], seed=0)
    assert res.kernel.family == "quadratic" and res.p_value < 1e-2  # seeds 0-9: p <= 0.004, median width >= 0.46


def test_compare_samples_is_the_pairwise_power_test() -> None:
    g = torch.Generator().manual_seed(9)
    x, y, z = _normal(100, 2, 0.0, g), _normal(100, 2, 1.0, g), _normal(100, 2, 0.2, g)
    comp = compare_samples(x, {"y": y, "z": z}, seed=3)
    single = relative_mmd_power_test(x, y, z, direction="either", seed=3)
    pair = comp.pair("z", "y")
    assert pair.closer == "z" and pair.power.kernel == single.kernel and pair.power.criteria == single.criteria
    assert pair.power.p_value == pytest.approx(single.p_value, rel=1e-9)
    assert comp.mmd2[comp.kernel("gaussian", 1.0).name]["y"] > comp.mmd2[comp.kernel("gaussian", 1.0).name]["z"]
    assert comp.n_select == {"reference": 50, "y": 50, "z": 50}
    assert set(comp.to_dict()) >= {"names", "kernels", "common_kernel", "mmd2", "pairs"}


def test_baseline_restricts_learned_pairs_to_qualified_kernels() -> None:
    # the factor-model case: independent pixels with exact marginals (the baseline) against two correlated models
    d, q, n = 12, 0.3, 2000
    g = torch.Generator().manual_seed(2)
    x = _factor(n, d, q, g)
    samples = {
        "indep": torch.bernoulli(torch.full((n, d), 0.5, dtype=torch.float64), generator=g),
        "a": _factor(n, d, q, g, p=0.55),
        "b": _factor(n, d, 0.2, g),
    }
    comp = compare_samples(x, samples, baseline="indep", seed=0)
    names = [k.name for k in comp.kernels]
    assert comp.qualified and set(comp.qualified) < set(names)
    assert comp.kernel("gaussian", 1.0).name not in comp.qualified  # the median width cannot tell here
    for k in names:  # qualified: both learned candidates beat the baseline on the selection part
        crit = [comp.pair("indep", m).power.criteria[names.index(k)] for m in ("a", "b")]
        assert (k in comp.qualified) == all(c > 2.326 for c in crit)
    learned = comp.pair("a", "b")
    assert learned.power.kernel.name in comp.qualified and comp.common_kernel.name in comp.qualified
    allowed = [abs(c) for k, c in zip(names, learned.power.criteria, strict=True) if k in comp.qualified]
    assert abs(learned.power.criterion) == max(allowed)
    assert abs(learned.power_unconstrained.criterion) == max(abs(c) for c in learned.power.criteria)
    assert comp.pair("indep", "a").power == comp.pair("indep", "a").power_unconstrained
    with pytest.raises(WakesleepError, match="baseline 'c' is not one of the samples"):
        compare_samples(x, samples, baseline="c")


# --- bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: relative_mmd_power_test(x, x[:, :2], x), "y has 2 columns, x has 3"),
        (lambda x: relative_mmd_power_test(x[:5], x, x), "x has 5 samples, too few to split"),
        (lambda x: relative_mmd_power_test(x, x, x, ["gaussian", "cosine"]), "kernels: unknown kernel 'cosine'"),
        (lambda x: relative_mmd_power_test(x, x, x, ["patch"]), "image_shape is required"),
        (lambda x: relative_mmd_power_test(x, x, x, ["patch"], image_shape=(2, 2)), "image_shape"),
        (lambda x: relative_mmd_power_test(x, x, x, direction="y"), "direction must be"),
        (lambda x: relative_mmd_power_test(x, x, x, select_fraction=1.0), "select_fraction must be in"),
        (lambda x: compare_samples(x, {"a": x}), "samples must map at least two"),
        (lambda x: kernel_mmd(x, x, "quadratic"), "kernel must be a SampleKernel"),
        (lambda x: SampleKernel.quadratic(-1.0), "c must be"),
        (lambda x: SampleKernel.gaussian(0.0), "bandwidth must be"),
    ],
)
def test_bad_input_one_line_error(call, match: str) -> None:
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(WakesleepError, match=match) as e:
        call(x)
    assert "\n" not in str(e.value)
