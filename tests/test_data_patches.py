"""Natural image patches (shape, normalisation, split, whitening) and the van Hateren .iml reader."""

from __future__ import annotations

import numpy as np
import pytest

from wakesleep.data import IML_SHAPE, builtin_images, load_patches, load_van_hateren, read_iml, write_iml
from wakesleep.data.patches import split_regions
from wakesleep.errors import WakesleepError

pytest.importorskip("skimage")
pytest.importorskip("sklearn")


def _synthetic_images(k=3, shape=(200, 240), seed=0):
    rng = np.random.default_rng(seed)
    return [np.exp(rng.normal(4.0, 0.5, size=shape)) for _ in range(k)]


def test_builtin_images_are_grey_and_natural():
    ims = builtin_images(["camera", "astronaut", "china"])
    assert set(ims) == {"camera", "astronaut", "china"}
    for im in ims.values():
        assert im.ndim == 2 and 0 <= im.min() and im.max() <= 255
    with pytest.raises(WakesleepError, match="unknown image"):
        builtin_images(["page"])


def test_builtin_patches_shape_and_normalisation():
    ps = load_patches(size=16, n=3000, n_test=500, seed=0)
    assert ps.train.shape == (3000, 256) and ps.test.shape == (500, 256)
    np.testing.assert_allclose(ps.train.mean(axis=1), 0.0, atol=1e-10)  # per-patch mean removed
    np.testing.assert_allclose(ps.test.mean(axis=1), 0.0, atol=1e-10)
    assert ps.train.std() == pytest.approx(1.0, rel=1e-10)  # global unit variance
    assert 0.7 < ps.test.std() < 1.4  # test scaled with the training scale
    assert ps.info["log"] and ps.info["whiten"] is None and len(ps.info["images"]) == 11
    same = load_patches(size=16, n=3000, n_test=500, seed=0)
    np.testing.assert_array_equal(same.train, ps.train)
    other = load_patches(size=16, n=3000, n_test=500, seed=1)
    assert not np.array_equal(other.train, ps.train)


def test_train_and_test_regions_are_disjoint():
    # An image whose pixels are all distinct: a patch identifies its position.
    img = np.arange(256 * 256, dtype=np.float64).reshape(256, 256) + 1
    ps = load_patches(size=8, n=400, n_test=100, seed=0, images=[img], log=False)
    assert ps.train.shape == (400, 64) and ps.test.shape == (100, 64)
    assert ps.info["split_cell"] == 64
    train_cells, test_cells, cell = split_regions([img], 8, 0.2, np.random.default_rng([0, 1]))
    assert cell == 64 and len(train_cells) + len(test_cells) == 16 and len(test_cells) == 3
    train_px = set(np.concatenate([c.ravel() for c in train_cells]).tolist())
    test_px = set(np.concatenate([c.ravel() for c in test_cells]).tolist())
    assert not train_px & test_px


@pytest.mark.parametrize("whiten", ["zca", "pca"])
def test_whitening(whiten):
    ps = load_patches(
        size=6, n=4000, n_test=200, seed=0, images=_synthetic_images(), whiten=whiten, pca_dim=20, eps=1e-6
    )
    d = 20 if whiten == "pca" else 36
    assert ps.train.shape == (4000, d) and ps.test.shape == (200, d)
    cov = ps.train.T @ ps.train / len(ps.train)
    if whiten == "pca":
        np.testing.assert_allclose(cov, np.eye(d), atol=1e-8)
    else:  # ZCA: identity on the 35-dimensional mean-free subspace
        evals = np.linalg.eigvalsh(cov)
        np.testing.assert_allclose(evals[1:], 1.0, atol=1e-3)
        assert evals[0] < 1e-3


def test_patch_option_errors():
    ims = _synthetic_images(1, (128, 128))
    with pytest.raises(WakesleepError, match="whiten"):
        load_patches(size=4, n=10, images=ims, whiten="pcaa")
    with pytest.raises(WakesleepError, match="pca_dim"):
        load_patches(size=4, n=10, n_test=5, images=ims, whiten="pca", pca_dim=16)
    with pytest.raises(WakesleepError, match="too small"):
        load_patches(size=30, n=10, images=[ims[0][:100, :100]])
    with pytest.raises(WakesleepError, match="non-negative"):
        load_patches(size=4, n=10, images=[-ims[0]])


def test_iml_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60000, size=IML_SHAPE, dtype=np.uint16)
    path = write_iml(tmp_path / "imk00001.iml", img)
    assert path.stat().st_size == 1536 * 1024 * 2
    assert path.read_bytes()[:2] == int(img[0, 0]).to_bytes(2, "big")  # big-endian
    np.testing.assert_array_equal(read_iml(path), img)
    small = rng.integers(0, 4000, size=(48, 64), dtype=np.uint16)
    write_iml(tmp_path / "s.iml", small)
    np.testing.assert_array_equal(read_iml(tmp_path / "s.iml", shape=(48, 64)), small)
    with pytest.raises(WakesleepError, match=r"s\.iml has 6144 bytes"):
        read_iml(tmp_path / "s.iml")
    with pytest.raises(WakesleepError, match="does not exist"):
        read_iml(tmp_path / "missing.iml")


def test_van_hateren_folder_patches(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "vh"
    folder.mkdir()
    for i in range(2):
        write_iml(folder / f"imk{i:05d}.iml", rng.integers(1, 5000, size=IML_SHAPE, dtype=np.uint16))
    (folder / "README.txt").write_text("not an image")
    assert len(load_van_hateren(folder)) == 2 and len(load_van_hateren(folder, max_images=1)) == 1
    ps = load_patches(size=16, n=500, n_test=100, seed=0, root=folder)
    assert ps.train.shape == (500, 256) and ps.info["source"] == "van_hateren"
    assert ps.train.std() == pytest.approx(1.0)
    with pytest.raises(WakesleepError, match="no .iml"):
        load_van_hateren(tmp_path)
    with pytest.raises(WakesleepError, match="does not exist"):
        load_van_hateren(tmp_path / "nope")
