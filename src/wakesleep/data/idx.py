"""Reader and writer for IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian ``uint32``
sizes, then the array in C order, big-endian. Files may be gzip-compressed (recognised by their content,
not their name). Every problem with a file (missing, truncated, corrupt, trailing bytes) raises a
:class:`~wakesleep.errors.WakesleepError` whose one-line message names the file.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from wakesleep.errors import WakesleepError
from wakesleep.io import atomic_write

__all__ = ["IDX_DTYPES", "read_idx", "write_idx"]

#: IDX dtype codes and the (big-endian) numpy dtype each stands for.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("=").kind + str(dt.itemsize): code for code, dt in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """Return the (decompressed) content of ``path``, raising a one-line error on any failure."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise WakesleepError(f"IDX file {path} does not exist") from None
    except IsADirectoryError:
        raise WakesleepError(f"IDX file {path} is a directory, not a file") from None
    except OSError as exc:
        raise WakesleepError(f"cannot read IDX file {path}: {exc.strerror or exc}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise WakesleepError(f"IDX file {path} is a truncated or corrupt gzip file ({exc})") from None
    if path.suffix == ".gz":
        raise WakesleepError(f"IDX file {path} is named .gz but is not gzip-compressed (corrupt download?)")
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array.

    Parameters
    ----------
    path : str or os.PathLike
        The file. Gzip compression is detected from the content, so the name need not end in ``.gz``.

    Returns
    -------
    numpy.ndarray
        The array, with the shape stored in the header and the native-byte-order version of the stored
        dtype (``uint8`` for MNIST images and labels).

    Raises
    ------
    WakesleepError
        If the file is missing, not an IDX file (bad magic number or unknown dtype code), truncated, or has
        bytes after the array. The message names the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise WakesleepError(f"IDX file {path} is truncated: {len(data)} bytes, not even a 4-byte header")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise WakesleepError(
            f"IDX file {path} has a bad magic number 0x{data[:4].hex()} (must start with 0x0000): not an IDX file"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise WakesleepError(f"IDX file {path} has unknown dtype code 0x{code:02X} (known: {known})")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise WakesleepError(
            f"IDX file {path} is truncated: header promises {ndim} dimensions but the file has {len(data)} bytes"
        )
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_len
    if actual < expected:
        raise WakesleepError(f"IDX file {path} is truncated: shape {shape} needs {expected} data bytes, found {actual}")
    if actual > expected:
        raise WakesleepError(
            f"IDX file {path} is corrupt: {actual - expected} unexpected bytes after the {shape} array"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (atomically: temporary file, then rename).

    Parameters
    ----------
    path : str or os.PathLike
        Destination.
    array : numpy.ndarray
        Array of dtype uint8, int8, int16, int32, float32 or float64, with at least one dimension.
    compress : bool, optional
        Gzip the file. Default: when ``path`` ends in ``.gz``.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path)
    array = np.asarray(array)
    key = array.dtype.kind + str(array.dtype.itemsize)
    if key not in _CODES:
        raise WakesleepError(f"cannot write {array.dtype} to IDX file {path}: unsupported dtype")
    if array.ndim < 1 or array.ndim > 255:
        raise WakesleepError(f"cannot write a {array.ndim}-dimensional array to IDX file {path}")
    code = _CODES[key]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        payload = gzip.compress(payload, mtime=0)
    with atomic_write(path, "wb") as fh:
        fh.write(payload)
    return path
