"""Observations checked against the observation family's support (issue 17): check_observations, load_dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import wakesleep
from wakesleep.data import check_observations, load_dataset
from wakesleep.errors import WakesleepError
from wakesleep.families import FAMILIES
from wakesleep.models.build import observation_family


def _family(name: str):
    return FAMILIES[name](3) if name == "categorical" else FAMILIES[name]()


def _error(x, family, **kwargs) -> str:
    with pytest.raises(WakesleepError) as exc:
        check_observations(x, family, "data.path", **kwargs)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# family -> (accepted data, (row, column, bad value as a string, support in words))
CASES = {
    "bernoulli": (np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]), (1, 2, "0.5", "{0, 1}")),
    "poisson": (np.array([[0.0, 7.0, 1.0], [3.0, 0.0, 12.0]]), (0, 1, "2.5", "non-negative integers")),
    "gamma": (np.array([[0.5, 7.0, 1e-3], [3.0, 2.0, 12.0]]), (1, 0, "0.0", "positive real numbers")),
    "categorical": (np.array([[0.0, 2.0, 1.0], [1.0, 0.0, 2.0]]), (0, 2, "3.0", "integers 0 to 2")),
    "gaussian": (np.array([[-1.5, 2.0, 0.0], [1e30, -3.0, 0.1]]), None),
    "laplace": (np.array([[-1.5, 2.0, 0.0], [1e30, -3.0, 0.1]]), None),
}


def test_every_family_has_a_case():
    assert set(CASES) == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_accepted_data_pass_unchanged(name):
    good, _ = CASES[name]
    out = check_observations(good, _family(name), "data.path", dim=3)
    assert out is good or np.array_equal(out, good)
    # the same values as float32, as integers where they are integers, and as a tensor
    check_observations(good.astype(np.float32), _family(name), "data.path")
    check_observations(torch.as_tensor(good), _family(name), "data.path")
    if name in ("bernoulli", "poisson", "categorical"):
        check_observations(good.astype(np.int64), _family(name), "data.path")


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if CASES[n][1] is not None])
def test_rejected_value_names_row_column_value_and_support(name):
    good, (row, col, value, support) = CASES[name]
    bad = good.copy()
    bad[row, col] = float(value)
    expected = f"data.path: row {row}, column {col}: {value} is outside the support of a {name} observation layer"
    assert _error(bad, _family(name)) == f"{expected} ({support})"


def test_support_specifics():
    bern, pois, gamma, cat = _family("bernoulli"), _family("poisson"), _family("gamma"), _family("categorical")
    x = np.zeros((5, 8))
    x[3, 7] = 9.0
    x[4, 0] = 5.0  # the first bad value in row-major order is named
    assert _error(x, bern) == (
        "data.path: row 3, column 7: 9.0 is outside the support of a bernoulli observation layer ({0, 1})"
    )
    check_observations(np.array([[True, False], [False, True]]), bern, "data.path")  # booleans are 0/1
    assert "row 0, column 1: -1 is outside" in _error(np.array([[0, -1], [2, 3]]), pois)  # integer dtype shown as is
    assert "row 0, column 0: -0.5 is outside" in _error(np.array([[-0.5, 1.0], [2.0, 3.0]]), gamma)
    assert "row 1, column 0: -1.0 is outside" in _error(np.array([[0.0, 1.0], [-1.0, 2.0]]), cat)
    assert "row 0, column 1: 0.1 is outside" in _error(np.array([[0, 0.1], [1, 1]], dtype=np.float32), bern)


def test_complex_object_and_string_arrays_are_rejected_not_cast():
    gauss = _family("gaussian")
    for x in (np.array([[1.0 + 0j, 2.0], [3.0, 4.0]]), torch.ones(3, 2, dtype=torch.complex64)):
        msg = _error(x, gauss)
        assert msg.startswith("data.path: data are complex (dtype complex") and "real" in msg
    assert "must be numeric, got dtype object" in _error(np.array([[1.0, None], [2.0, 3.0]], dtype=object), gauss)
    assert "must be numeric, got dtype <U" in _error(np.array([["a", "b"], ["c", "d"]]), gauss)
    assert "rectangular" in _error([[1.0, 2.0], [3.0]], gauss)


def test_generic_checks_shape_rows_columns_finite():
    gauss = _family("gaussian")
    assert _error(np.ones((1, 3)), gauss) == "data.path: data have 1 row(s), at least 2 are needed"
    assert "0 row(s)" in _error(np.ones((0, 3)), gauss)
    assert "3 columns but the model's observation layer has dim 2" in _error(np.ones((4, 3)), gauss, dim=2)
    assert "2-D array [N, 2]" in _error(np.ones((4, 2, 2)), gauss, dim=2)
    assert check_observations(np.ones(4), gauss, "data.path", dim=1).shape == (4, 1)  # 1-D: one column
    x = np.ones((4, 3))
    x[2, 1], x[3, 0] = np.nan, np.inf
    assert _error(x, gauss) == "data.path: row 2, column 1: NaN is not a finite number (2 non-finite value(s) in all)"
    assert "row 3, column 0: -inf" in _error(np.where(np.isnan(x), 0.0, -x), gauss)
    check_observations(np.ones((1, 3)), None, "data.path", min_rows=1)  # no family: generic checks only


def test_observation_family_of_built_and_zoo_models():
    model = wakesleep.build_model(
        {
            "layers": [
                {"name": "z", "family": "gaussian", "dim": 2},
                {"name": "x", "family": "categorical", "dim": 3, "categories": 4},
            ]
        }
    )
    fam = observation_family(model)
    assert fam is model.layers["x"].family and fam.categories == 4
    assert observation_family(torch.nn.Linear(2, 2)) is None


def test_load_dataset_checks_the_family_and_keeps_the_old_call(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.uniform(size=(20, 4))
    np.savez(tmp_path / "grey.npz", x=grey, x_test=grey[:5])
    binary = (grey > 0.5).astype(float)
    bad_test = binary[:5].copy()
    bad_test[2, 3] = 2.0
    np.savez(tmp_path / "bin.npz", x=binary, x_test=bad_test)
    bern, gamma = _family("bernoulli"), _family("gamma")

    def msg(spec, family, **kwargs):
        with pytest.raises(WakesleepError) as exc:
            load_dataset(spec, 4, base_dir=tmp_path, family=family, **kwargs)
        assert "\n" not in str(exc.value)
        return str(exc.value)

    grey_spec = {"source": "file", "path": "grey.npz"}
    assert load_dataset(grey_spec, 4, base_dir=tmp_path).n_train == 20  # no family: as before
    m = msg(grey_spec, bern)
    assert m.startswith(f"data.path ({tmp_path / 'grey.npz'}): row 0, column 0: ") and "data.binarize" in m
    # binarised data are checked as the model sees them: 0/1 for Bernoulli, but 0 is outside Gamma's support
    for scheme in ("dynamic", "threshold0.5", "fixed-seed0"):
        ds = load_dataset({**grey_spec, "binarize": scheme}, 4, base_dir=tmp_path, family=bern, dtype=torch.float64)
        assert ds.n_train == 20 and ds.n_test == 5
        assert f"binarised ({scheme}): row" in msg({**grey_spec, "binarize": scheme}, gamma)
    assert load_dataset(grey_spec, 4, base_dir=tmp_path, family=gamma).n_train == 20
    # the test set is checked too, and named by its own field
    m = msg({"source": "file", "path": "bin.npz"}, bern)
    assert m == (
        f"data.test_key ({tmp_path / 'bin.npz'}): row 2, column 3: 2.0 is outside the support of a bernoulli "
        "observation layer ({0, 1})"
    )
    # complex files and a single training row are errors even without a family
    np.save(tmp_path / "c.npy", grey + 1j)
    assert "complex" in msg({"source": "file", "path": "c.npy"}, None)
    assert "1 row(s), at least 2" in msg({**grey_spec, "n": 1}, None)


def test_dataset_create_rejects_complex_arrays_and_tensors():
    from wakesleep.data import DataSet

    for x in (np.ones((3, 2)) + 1j, torch.ones(3, 2, dtype=torch.complex64)):
        with pytest.raises(WakesleepError, match=r"^data \(training values\): data are complex"):
            DataSet.create(x)
    with pytest.raises(WakesleepError, match=r"^data \(test values\): data are complex"):
        DataSet.create(np.ones((3, 2)), np.ones((2, 2)) * 1j)
