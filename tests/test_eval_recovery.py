"""Parameter recovery up to permutation and sign of latent units."""

import numpy as np
import pytest
import torch

import wakesleep
from wakesleep.errors import WakesleepError
from wakesleep.eval import match_columns, model_recovery_error, recovery_error

from oracles import linear_gaussian_config


def test_permutation_and_sign_are_undone():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(10, 4))
    perm = np.array([2, 0, 3, 1])
    signs = np.array([1.0, -1.0, -1.0, 1.0])
    est = w[:, perm] * signs
    m = match_columns(est, w)
    assert m.error == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(m.aligned, w)
    # true column j is estimated column permutation[j]
    assert np.array_equal(perm[m.permutation], np.arange(4))
    assert np.allclose(m.similarity, 1.0)
    # signs not free: a flipped column costs its norm
    err = recovery_error(est, w, signs=False)
    assert err > 0.5


def test_error_value_and_scale():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(20, 3))
    noise = 0.05 * rng.normal(size=w.shape)
    est = (w + noise)[:, ::-1]
    assert recovery_error(est, w) == pytest.approx(np.linalg.norm(noise[:, ::-1][:, ::-1]) / np.linalg.norm(w))
    scaled = w * np.array([2.0, 0.5, 3.0])
    assert recovery_error(scaled, w) > 0.5
    assert recovery_error(scaled, w, allow_scale=True) == pytest.approx(0.0, abs=1e-12)
    # extra estimated units are ignored
    extra = np.concatenate([w, rng.normal(size=(20, 2))], axis=1)
    assert recovery_error(torch.as_tensor(extra), w) == pytest.approx(0.0, abs=1e-12)


def test_model_recovery_error_undoes_unit_permutations():
    cfg = linear_gaussian_config(dims=(2, 3, 5), seed=0)
    true = wakesleep.build_model(cfg)
    learned = wakesleep.build_model(cfg)
    p1, s1 = torch.tensor([2, 0, 1]), torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)
    p2, s2 = torch.tensor([1, 0]), torch.tensor([1.0, -1.0], dtype=torch.float64)
    with torch.no_grad():
        wx = true.layers["x"].link.weight  # [5, 3]: columns are z1 units
        w1 = true.layers["z1"].link.weight  # [3, 2]: rows z1 units, columns z2 units
        learned.layers["x"].link.weight.copy_(wx[:, p1] * s1)
        # learned z1 unit j is true unit p1[j] times s1[j]: permute/flip rows, then z2 columns
        learned.layers["z1"].link.weight.copy_((w1[p1] * s1[:, None])[:, p2] * s2)
    errs = model_recovery_error(learned, true)
    assert errs["layers.x.link.weight"] == pytest.approx(0.0, abs=1e-12)
    assert errs["layers.z1.link.weight"] == pytest.approx(0.0, abs=1e-12)
    assert errs["mean"] == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        learned.layers["z1"].link.weight.add_(0.1)
    assert model_recovery_error(learned, true)["layers.z1.link.weight"] > 0.01


def test_bad_input():
    with pytest.raises(WakesleepError, match="match_columns: estimated has 3 rows, true has 4"):
        match_columns(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(WakesleepError, match="fewer than true's 3"):
        match_columns(np.ones((4, 2)), np.ones((4, 3)))
    with pytest.raises(WakesleepError, match="true contains NaN"):
        match_columns(np.ones((4, 2)), np.full((4, 2), np.nan))
    with pytest.raises(WakesleepError, match="all zeros"):
        recovery_error(np.ones((4, 2)), np.zeros((4, 2)))
