"""The relative (three-sample) MMD test of Bounliphone et al. (2015)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from wakesleep.errors import WakesleepError
from wakesleep.eval import mmd, relative_mmd_test

pytestmark = pytest.mark.usefixtures("one_thread")


def _bounliphone_var_diff(x, y, z, bw):
    """The paper's appendix estimate 4 (m-2) / (m (m-1)) zeta_1 (equal sample sizes; their terms t1..t9)."""

    def k(a, b):
        return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * bw * bw))

    kyy, kzz, kxy, kxz = k(y, y), k(z, z), k(x, y), k(x, z)
    m = n = r = len(x)
    kyynd, kzznd = kyy - np.diag(np.diag(kyy)), kzz - np.diag(np.diag(kzz))
    u_yy, u_zz = kyynd.sum() / (n * (n - 1)), kzznd.sum() / (r * (r - 1))
    u_xy, u_xz = kxy.sum() / (m * n), kxz.sum() / (m * r)
    t1 = (1 / n**3) * (kyynd.T @ kyynd).sum() - u_yy**2
    t2 = (1 / (n**2 * m)) * (kxy.T @ kxy).sum() - u_xy**2
    t3 = (1 / (n * m**2)) * (kxy @ kxy.T).sum() - u_xy**2
    t4 = (1 / r**3) * (kzznd.T @ kzznd).sum() - u_zz**2
    t5 = (1 / (r * m**2)) * (kxz @ kxz.T).sum() - u_xz**2
    t6 = (1 / (r**2 * m)) * (kxz.T @ kxz).sum() - u_xz**2
    t7 = (1 / (n**2 * m)) * (kyynd @ kxy.T).sum() - u_yy * u_xy
    t8 = (1 / (n * m * r)) * (kxy.T @ kxz).sum() - u_xz * u_xy
    t9 = (1 / (r**2 * m)) * (kzznd @ kxz.T).sum() - u_zz * u_xz
    zeta1 = t1 + t2 + t3 + t4 + t5 + t6 - 2 * (t7 + t8 + t9)
    return 4 * (m - 2) / (m * (m - 1)) * zeta1


def test_values_and_variance_agree_with_paper_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    y = rng.normal(size=(300, 2)) + [1.0, 0.0]
    z = rng.normal(size=(300, 2)) * 1.3
    bw = 1.2
    res = relative_mmd_test(x, y, z, bandwidth=bw)
    assert res.mmd_xy == pytest.approx(mmd(x, y, bw), rel=1e-12)
    assert res.mmd_xz == pytest.approx(mmd(x, z, bw), rel=1e-12)
    # same leading-order quantity; the estimators differ by O(1/n) (V- vs U-type terms)
    assert res.var_diff == pytest.approx(_bounliphone_var_diff(x, y, z, bw), rel=0.05)
    assert res.statistic == pytest.approx((res.mmd_xy - res.mmd_xz) / math.sqrt(res.var_diff))
    assert res.p_value == pytest.approx(stats.norm.sf(res.statistic), rel=1e-12)
    assert res.var_diff == pytest.approx(res.var_xy + res.var_xz - 2 * res.cov, rel=1e-9)


def test_covariance_estimates_match_monte_carlo():
    """Variance/covariance estimates vs the spread of (MMD_xy, MMD_xz) over 200 repetitions (within 30%)."""
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(200):
        x = rng.normal(size=(150, 2))
        y = rng.normal(size=(150, 2)) + [1.0, 0.0]
        z = rng.normal(size=(150, 2)) + [0.6, 0.0]
        r = relative_mmd_test(x, y, z, bandwidth=1.0)
        rows.append((r.mmd_xy, r.mmd_xz, r.var_xy, r.var_xz, r.cov, r.var_diff))
    a = np.array(rows)
    emp = np.cov(a[:, 0], a[:, 1])
    for est, mc in (
        (a[:, 2].mean(), emp[0, 0]),
        (a[:, 3].mean(), emp[1, 1]),
        (a[:, 5].mean(), np.var(a[:, 0] - a[:, 1])),
    ):
        assert 0.77 < est / mc < 1.3, (est, mc)
    # the covariance is positive here (shared reference sample) and of the right size
    assert emp[0, 1] > 0
    assert 0.6 < a[:, 4].mean() / emp[0, 1] < 1.6


def test_null_rejection_rate_and_uniform_p_values():
    """MMD(X,Y) = MMD(X,Z) (Y, Z from one distribution away from X): rejection rate 0.05 +- 3 s.e."""
    rng = np.random.default_rng(2)
    reps, alpha = 250, 0.05
    ps = []
    for _ in range(reps):
        x = rng.normal(size=(100, 2))
        y = rng.normal(size=(100, 2)) + [1.0, 0.0]
        z = rng.normal(size=(100, 2)) + [1.0, 0.0]
        ps.append(relative_mmd_test(x, y, z).p_value)
    ps = np.array(ps)
    rate = np.mean(ps <= alpha)
    assert abs(rate - alpha) < 3 * math.sqrt(alpha * (1 - alpha) / reps), rate
    assert stats.kstest(ps, "uniform").pvalue > 1e-3


def test_power_rises_and_direction():
    rng = np.random.default_rng(3)
    rates = []
    for shift_z in (1.0, 0.8, 0.5, 0.0):
        rej = 0
        for _ in range(40):
            x = rng.normal(size=(100, 2))
            y = rng.normal(size=(100, 2)) + [1.0, 0.0]
            z = rng.normal(size=(100, 2)) + [shift_z, 0.0]
            rej += relative_mmd_test(x, y, z).p_value <= 0.05
        rates.append(rej / 40)
    assert rates == sorted(rates), rates
    assert rates[-1] >= 0.95
    # H1 the other way round (y closer): p-value near 1
    x = rng.normal(size=(200, 2))
    res = relative_mmd_test(x, rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 1.0)
    assert res.p_value > 0.99


def test_tiny_p_values_are_representable():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1000, 2))
    y = rng.normal(size=(1000, 2)) + [2.5, 0.0]
    z = rng.normal(size=(1000, 2))
    res = relative_mmd_test(x, y, z, chunk_size=256)
    assert res.statistic > 20
    assert math.isfinite(res.log10_p_value) and res.log10_p_value < -80
    assert res.log10_p_value == pytest.approx(stats.norm.logsf(res.statistic) / math.log(10))
    assert res.p_value == pytest.approx(10**res.log10_p_value, rel=1e-9)


def test_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(5)
    x, y, z = (torch.randn(n, 3, generator=g, dtype=torch.float64) + s for n, s in ((80, 0.0), (70, 0.5), (60, 0.2)))
    a = relative_mmd_test(x, y, z, bandwidth=1.5, chunk_size=9)
    b = relative_mmd_test(x, y, z, bandwidth=1.5, chunk_size=1000)
    for f in ("mmd_xy", "mmd_xz", "var_xy", "var_xz", "cov", "statistic"):
        assert getattr(a, f) == pytest.approx(getattr(b, f), rel=1e-10, abs=1e-15)
    assert (a.m, a.n, a.r) == (80, 70, 60)


def test_bad_input():
    ok = np.zeros((5, 2)) + np.arange(5)[:, None]
    with pytest.raises(WakesleepError, match="relative_mmd_test: z has 3 columns, x has 2"):
        relative_mmd_test(ok, ok, np.zeros((5, 3)))
    with pytest.raises(
        WakesleepError, match="relative_mmd_test: y has 2 samples; the relative MMD test needs at least 3"
    ):
        relative_mmd_test(ok, ok[:2], ok)
    with pytest.raises(WakesleepError, match="relative_mmd_test: x contains NaN"):
        relative_mmd_test(np.full((5, 2), np.nan), ok, ok)
    with pytest.raises(WakesleepError, match="degenerate"):
        relative_mmd_test(np.zeros((5, 2)), np.zeros((5, 2)), np.zeros((5, 2)), bandwidth=1.0)
    with pytest.raises(WakesleepError, match="'median'"):
        relative_mmd_test(ok, ok, ok, bandwidth="power")
