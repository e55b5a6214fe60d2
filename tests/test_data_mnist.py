"""MNIST / Fashion-MNIST folder loading and the (offline-tested) MNIST downloader."""

from __future__ import annotations

import hashlib
import io
import urllib.error

import numpy as np
import pytest

from wakesleep.data import (
    FASHION_MNIST_DEFAULT_ROOT,
    MNIST_SHA256,
    download_mnist,
    load_fashion_mnist,
    load_mnist,
    write_idx,
)
from wakesleep.data import mnist as mnist_mod
from wakesleep.errors import WakesleepError


def make_fake_mnist(root, n_train=12, n_test=5, gz=True, dotted=False):
    """Write four tiny MNIST-format files (8 x 8 images) into ``root``."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, prefix in [("train", n_train, "train"), ("test", n_test, "t10k")]:
        images = rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        sep = "." if dotted else "-"
        suffix = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images{sep}idx3-ubyte{suffix}", images)
        write_idx(root / f"{prefix}-labels{sep}idx1-ubyte{suffix}", labels)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dotted", [False, True])
def test_load_mnist_from_folder(tmp_path, gz, dotted):
    truth = make_fake_mnist(tmp_path / "m", gz=gz, dotted=dotted)
    for split in ("train", "test"):
        images, labels = load_mnist(tmp_path / "m", split)
        np.testing.assert_array_equal(images, truth[split][0])
        np.testing.assert_array_equal(labels, truth[split][1])


def test_load_mnist_errors(tmp_path):
    with pytest.raises(WakesleepError, match="does not exist"):
        load_mnist(tmp_path / "missing")
    make_fake_mnist(tmp_path / "m")
    with pytest.raises(WakesleepError, match="split"):
        load_mnist(tmp_path / "m", "validation")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(WakesleepError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found"):
        load_mnist(tmp_path / "m", "test")
    write_idx(tmp_path / "m" / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(WakesleepError, match="disagree"):
        load_mnist(tmp_path / "m", "test")
    path = tmp_path / "m" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(WakesleepError, match="train-images-idx3-ubyte.gz"):
        load_mnist(tmp_path / "m", "train")


def test_fashion_mnist_missing_default_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_mod, "FASHION_MNIST_DEFAULT_ROOT", tmp_path / "absent")
    with pytest.raises(WakesleepError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist()
    make_fake_mnist(tmp_path / "f")
    images, _ = load_fashion_mnist(tmp_path / "f", "test")
    assert images.shape == (5, 8, 8)


@pytest.mark.skipif(
    not FASHION_MNIST_DEFAULT_ROOT.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_debian_package():
    images, labels = load_fashion_mnist(split="test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))


# ---------------------------------------------------------------- downloader (never the network)
def _payloads():
    return {name: f"fake content of {name}".encode() for name in MNIST_SHA256}


def _checksums(payloads):
    return {name: hashlib.sha256(data).hexdigest() for name, data in payloads.items()}


def test_real_checksums_are_sha256_hex():
    assert len(MNIST_SHA256) == 4
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in MNIST_SHA256.values())


def test_download_from_file_urls_with_a_bad_first_mirror(tmp_path):
    payloads = _payloads()
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    for name, data in payloads.items():
        (good / name).write_bytes(data)
        (bad / name).write_bytes(b"corrupted " + data)
    dest = tmp_path / "dest"
    messages = []
    out = download_mnist(
        dest,
        mirrors=[bad.as_uri() + "/", good.as_uri()],
        checksums=_checksums(payloads),
        progress=messages.append,
    )
    assert out == dest
    for name, data in payloads.items():
        assert (dest / name).read_bytes() == data
    assert sorted(p.name for p in dest.iterdir()) == sorted(payloads)  # no temporary files left
    assert all("checksum ok" in m for m in messages)

    # second call: everything present, nothing opened
    def no_network(url, timeout):
        raise AssertionError("should not download again")

    download_mnist(dest, checksums=_checksums(payloads), opener=no_network)


def test_download_fails_cleanly_when_no_mirror_is_right(tmp_path):
    payloads = _payloads()
    calls = []

    def opener(url, timeout):
        calls.append(url)
        if "mirror-a" in url:
            raise urllib.error.URLError("no route to host")
        return io.BytesIO(b"wrong bytes")

    with pytest.raises(WakesleepError) as exc:
        download_mnist(
            tmp_path / "d",
            mirrors=["http://mirror-a/", "http://mirror-b/"],
            checksums=_checksums(payloads),
            opener=opener,
        )
    msg = str(exc.value)
    assert "\n" not in msg and "no route to host" in msg and "SHA-256" in msg
    assert calls[:2] == [
        "http://mirror-a/train-images-idx3-ubyte.gz",
        "http://mirror-b/train-images-idx3-ubyte.gz",
    ]
    assert list((tmp_path / "d").iterdir()) == []  # no partial file


def test_downloaded_fake_mnist_loads(tmp_path):
    """End to end: IDX files served by a fake opener, verified, then read by load_mnist."""
    src = tmp_path / "src"
    make_fake_mnist(src, gz=True)
    payloads = {name: (src / name).read_bytes() for name in MNIST_SHA256}

    def opener(url, timeout):
        return io.BytesIO(payloads[url.rsplit("/", 1)[1]])

    root = download_mnist(
        tmp_path / "mnist",
        mirrors=["https://example.invalid/"],
        checksums=_checksums(payloads),
        opener=opener,
    )
    images, labels = load_mnist(root, "train")
    assert images.shape == (12, 8, 8) and labels.shape == (12,)
