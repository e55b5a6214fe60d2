"""Kernel ridge regression (wakesleep.algorithms.krr) against scikit-learn's KernelRidge.

Convention: our ridge ``lam`` multiplies N (``K + N lam I``); scikit-learn's ``alpha`` is the un-normalised
``N * lam``, and its ``gamma`` is ``1 / (2 h^2)`` for our bandwidth h.
"""

import numpy as np
import pytest
import torch

from wakesleep.algorithms.krr import (
    KernelRidge,
    gaussian_kernel,
    make_regressor,
    median_bandwidth,
    select_hyperparameters,
)


def _data(n=300, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.stack([torch.sin(2 * x[:, 0]) + x[:, 1] ** 2, x[:, 2]], 1) + 0.1 * torch.randn(
        n, 2, generator=g, dtype=torch.float64
    )
    xq = torch.randn(50, d, generator=g, dtype=torch.float64)
    return x, y, xq


@pytest.mark.parametrize(("h", "lam"), [(0.7, 1e-3), (2.0, 1e-6), (1.3, 0.1)])
def test_exact_matches_sklearn(h, lam):
    from sklearn.kernel_ridge import KernelRidge as SkKR

    x, y, xq = _data()
    n = x.shape[0]
    ours = KernelRidge(h, lam).fit(x).predict(xq, y)
    sk = SkKR(kernel="rbf", gamma=1.0 / (2 * h * h), alpha=n * lam).fit(x.numpy(), y.numpy()).predict(xq.numpy())
    np.testing.assert_allclose(ours.numpy(), sk, rtol=1e-7, atol=1e-8)


def test_weights_are_linear_in_targets():
    x, y, xq = _data()
    reg = KernelRidge(1.0, 1e-3).fit(x)
    w = reg.weights(xq)
    assert w.shape == (x.shape[0], xq.shape[0])
    torch.testing.assert_close(w.T @ y, reg.predict(xq, y))


def test_nystrom_with_all_landmarks_is_exact():
    x, y, xq = _data(n=200)
    exact = KernelRidge(1.0, 1e-3).fit(x).predict(xq, y)
    nys = make_regressor("nystrom", 1.0, 1e-3, n_components=200).fit(x).predict(xq, y)
    torch.testing.assert_close(nys, exact, rtol=1e-5, atol=1e-5)


def test_rff_approximates_exact():
    x, y, xq = _data(n=400)
    exact = KernelRidge(1.5, 1e-3).fit(x).predict(xq, y)
    g = torch.Generator().manual_seed(0)
    rff = make_regressor("rff", 1.5, 1e-3, n_components=4000, generator=g).fit(x).predict(xq, y)
    rel = float((rff - exact).norm() / exact.norm())
    assert rel < 0.05, rel


def test_kernel_and_median_bandwidth():
    from scipy.spatial.distance import pdist

    x, _, xq = _data(n=100)
    k = gaussian_kernel(x, xq, 0.8)
    ref = np.exp(-((x.numpy()[:, None] - xq.numpy()[None]) ** 2).sum(-1) / (2 * 0.64))
    np.testing.assert_allclose(k.numpy(), ref, rtol=1e-10)
    assert median_bandwidth(x) == pytest.approx(float(np.median(pdist(x.numpy()))), rel=1e-3)  # torch: lower median


@pytest.mark.parametrize("kind", ["exact", "nystrom", "rff"])
def test_selection_prefers_sensible_hyperparameters(kind):
    x, y, _ = _data(n=500)
    bws = [0.05, 1.0, 50.0]
    sel = select_hyperparameters(
        x,
        y,
        kind,
        bandwidths=bws,
        ridges=[1e-6, 1e-3, 10.0],
        n_components=300,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(sel.grid) == 9
    assert sel.bandwidth == 1.0 and sel.ridge < 10.0
    assert sel.rel_error < 0.3
