"""load_dataset: the config's data: section, its validation, and the DataSet it returns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wakesleep.data import FASHION_MNIST_DEFAULT_ROOT, KNOWN_SOURCES, DataSet, load_dataset, write_idx
from wakesleep.errors import WakesleepError


def _msg(spec, *args, **kwargs) -> str:
    with pytest.raises(WakesleepError) as exc:
        load_dataset(spec, *args, **kwargs)
    assert "\n" not in str(exc.value)
    return str(exc.value)


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    return rng.normal(size=(30, 4)), rng.normal(size=(10, 4))


def test_file_npz_npy_csv(tmp_path, xy):
    x, x_test = xy
    np.savez(tmp_path / "d.npz", x=x, x_test=x_test)
    ds = load_dataset({"source": "file", "path": "d.npz"}, expected_dim=4, base_dir=tmp_path, dtype=torch.float64)
    assert isinstance(ds, DataSet) and ds.dim == 4 and ds.n_train == 30 and ds.n_test == 10
    np.testing.assert_array_equal(ds.train.numpy(), x)
    np.testing.assert_array_equal(ds.test.numpy(), x_test)
    assert ds.train.dtype == torch.float64 and ds.binarize == "none"

    np.save(tmp_path / "d.npy", x)
    ds = load_dataset({"source": "file", "path": str(tmp_path / "d.npy"), "n": 7}, dtype=torch.float64)
    assert ds.n_train == 7 and ds.test is None
    np.testing.assert_array_equal(ds.train.numpy(), x[:7])

    np.savetxt(tmp_path / "d.csv", x, delimiter=",", header="a,b,c,d", comments="")
    np.savetxt(tmp_path / "t.csv", x_test, delimiter=",")
    ds = load_dataset(
        {"source": "file", "path": "d.csv", "test_path": "t.csv"}, 4, base_dir=tmp_path, dtype=torch.float64
    )
    np.testing.assert_allclose(ds.train.numpy(), x)
    np.testing.assert_allclose(ds.test.numpy(), x_test)

    np.save(tmp_path / "one.npy", x[:, 0])  # 1-D data: one column
    assert load_dataset({"source": "file", "path": "one.npy"}, 1, base_dir=tmp_path).dim == 1


def test_file_errors(tmp_path, xy):
    x, _ = xy
    assert "data.path: file" in _msg({"source": "file", "path": "nope.npz"}, base_dir=tmp_path)
    assert "data.path: required" in _msg({"source": "file"})
    np.savez(tmp_path / "d.npz", y=x)
    assert "no array 'x'" in _msg({"source": "file", "path": "d.npz"}, base_dir=tmp_path)
    bad = x.copy()
    bad[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    msg = _msg({"source": "file", "path": "nan.npy"}, base_dir=tmp_path)
    assert "nan.npy" in msg and "NaN at row 3, column 2" in msg
    bad[3, 2] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    assert "inf" in _msg({"source": "file", "path": "inf.npy"}, base_dir=tmp_path)
    np.save(tmp_path / "ok.npy", x)
    msg = _msg({"source": "file", "path": "ok.npy"}, 5, base_dir=tmp_path)
    assert "4 columns" in msg and "dimension is 5" in msg
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file")
    assert "cannot read" in _msg({"source": "file", "path": "junk.npz"}, base_dir=tmp_path)
    (tmp_path / "d.txt").write_text("1,2")
    assert "unsupported file type" in _msg({"source": "file", "path": "d.txt"}, base_dir=tmp_path)
    (tmp_path / "s.csv").write_text("a,b\nx,y\n")
    assert "cannot read" in _msg({"source": "file", "path": "s.csv"}, base_dir=tmp_path)
    assert "data.n: asked for 99 rows" in _msg({"source": "file", "path": "ok.npy", "n": 99}, base_dir=tmp_path)
    assert "data.n: expected an integer" in _msg({"source": "file", "path": "ok.npy", "n": "3"}, base_dir=tmp_path)


def test_unknown_source_and_keys():
    msg = _msg({"source": "imagenet"})
    assert "data.source" in msg and all(s in msg for s in KNOWN_SOURCES)
    assert "trainer" in _msg({"source": "model", "n": 100})
    assert "unknown key(s) pth" in _msg({"source": "file", "pth": "x.npz"})
    assert "data.binarize" in _msg({"source": "file", "path": "x.npz", "binarize": "sometimes"})
    assert "config.source" in _msg({"source": None}, field_name="config")


def _fake_mnist(root, n_train=40, n_test=20):
    rng = np.random.default_rng(0)
    root.mkdir()
    for prefix, n in [("train", n_train), ("t10k", n_test)]:
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))


def test_mnist_source_dynamic_binarisation(tmp_path):
    _fake_mnist(tmp_path / "m")
    spec = {"source": "mnist", "root": "m", "binarize": "dynamic", "seed": 1, "n": 30}
    ds = load_dataset(spec, 784, base_dir=tmp_path)
    assert ds.n_train == 30 and ds.n_test == 20 and ds.image_shape == (28, 28)
    assert float(ds.train.min()) >= 0 and float(ds.train.max()) <= 1  # grey levels kept
    assert len(torch.unique(ds.train)) > 2
    assert set(torch.unique(ds.test).tolist()) == {0.0, 1.0}  # test fixed once
    assert ds.train_labels.shape == (30,) and ds.test_labels.shape == (20,)
    d = ds.describe()
    assert d["binarize"] == "dynamic" and d["test_binarize"].startswith("fixed-seed1") and d["source"] == "mnist"
    batches = list(ds.batches(8))
    assert [b.shape[0] for b in batches] == [8, 8, 8, 6]
    assert all(set(torch.unique(b).tolist()) <= {0.0, 1.0} for b in batches)
    assert len(list(ds.batches(8, drop_last=True))) == 3
    a, b = ds.draw_train(), ds.draw_train()
    assert not torch.equal(a, b)
    ordered = torch.cat(list(ds.batches(30, shuffle=False)))
    assert abs(ordered.mean().item() - ds.train.mean().item()) < 0.03
    # the same spec gives the same test set
    assert torch.equal(load_dataset(spec, 784, base_dir=tmp_path).test, ds.test)


def test_mnist_source_fixed_and_errors(tmp_path):
    _fake_mnist(tmp_path / "m")
    ds = load_dataset({"source": "mnist", "root": str(tmp_path / "m"), "binarize": "fixed-seed0"})
    assert set(torch.unique(ds.train).tolist()) == {0.0, 1.0}
    assert torch.equal(ds.draw_train(), ds.train)  # fixed: never changes
    again = load_dataset({"source": "mnist", "root": str(tmp_path / "m"), "binarize": "fixed-seed0"})
    assert torch.equal(again.train, ds.train)
    ds = load_dataset({"source": "mnist", "root": str(tmp_path / "m"), "binarize": "threshold0.5", "split": "test"})
    assert ds.n_train == 20 and ds.test is None
    assert "data.root: required" in _msg({"source": "mnist"})
    assert "split" in _msg({"source": "mnist", "root": str(tmp_path / "m"), "split": "val"})
    assert "dimension is 100" in _msg({"source": "mnist", "root": str(tmp_path / "m")}, 100)
    assert "does not exist" in _msg({"source": "mnist", "root": str(tmp_path / "none")})


@pytest.mark.skipif(
    not FASHION_MNIST_DEFAULT_ROOT.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_source_from_debian_package():
    ds = load_dataset(
        {"source": "fashion_mnist", "split": "train", "binarize": "dynamic", "n": 1000, "n_test": 500}, 784
    )
    assert ds.n_train == 1000 and ds.n_test == 500 and ds.name == "fashion_mnist"
    assert set(torch.unique(next(ds.batches(100))).tolist()) == {0.0, 1.0}


def test_patches_source(tmp_path):
    pytest.importorskip("skimage")
    ds = load_dataset({"source": "patches", "size": 8, "n": 2000, "n_test": 300, "seed": 0}, 64, dtype=torch.float64)
    assert ds.train.shape == (2000, 64) and ds.test.shape == (300, 64) and ds.image_shape == (8, 8)
    assert ds.describe()["per_patch_mean_removed"] and ds.binarize == "none"
    assert "binarisation needs values in [0, 1]" in _msg(
        {"source": "patches", "size": 8, "n": 100, "n_test": 10, "binarize": "dynamic"}
    )
    assert "data.size" in _msg({"source": "patches", "size": 8, "n": 100, "n_test": 10}, 256)
    assert "data.root: required" in _msg({"source": "van_hateren"})


def test_dataset_to_and_create():
    ds = DataSet.create(np.full((5, 3), 0.5), binarize="threshold0.4", dtype=torch.float64)
    assert torch.equal(ds.train, torch.ones(5, 3, dtype=torch.float64))
    ds32 = ds.to(dtype=torch.float32)
    assert ds32.train.dtype == torch.float32 and ds32.binarize == "threshold0.4"
