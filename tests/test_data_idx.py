"""IDX reader/writer: round trips, gzip, and one-line errors naming the file."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from wakesleep.data import read_idx, write_idx
from wakesleep.errors import WakesleepError


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_round_trip(tmp_path, dtype, name):
    rng = np.random.default_rng(0)
    arr = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = write_idx(tmp_path / name, arr)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (3, 4, 5)
    np.testing.assert_array_equal(back, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")


def test_one_dimensional_and_header_layout(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    path = write_idx(tmp_path / "labels", labels)
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 1]) and raw[4:8] == (10).to_bytes(4, "big")
    np.testing.assert_array_equal(read_idx(path), labels)


def test_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path = write_idx(tmp_path / "plain-name", arr, compress=True)
    np.testing.assert_array_equal(read_idx(path), arr)


def _error(path) -> str:
    with pytest.raises(WakesleepError) as exc:
        read_idx(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_missing_file(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope")


def test_truncated_data(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((4, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    assert "truncated" in _error(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    assert "truncated" in _error(path)
    path.write_bytes(b"\x00\x00")
    assert "truncated" in _error(path)


def test_trailing_bytes(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((4,), dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"junk")
    assert "unexpected bytes" in _error(path)


def test_bad_magic_and_dtype(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"PK\x03\x04" + bytes(20))
    assert "magic" in _error(path)
    path.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))
    assert "dtype code 0x07" in _error(path)


def test_corrupt_gzip(tmp_path):
    good = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(200))
    path = tmp_path / "x.gz"
    path.write_bytes(good[: len(good) // 2])
    assert "gzip" in _error(path)
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 1, 7]))  # named .gz but not compressed
    assert "gzip" in _error(path)


def test_directory(tmp_path):
    _error(tmp_path)


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(WakesleepError):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.complex64))
