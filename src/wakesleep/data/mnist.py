"""MNIST and Fashion-MNIST from a folder of IDX files, and an MNIST downloader with SHA-256 checks.

Both data sets use the same four file names, each optionally gzipped::

    train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]

(the variant with a dot, ``train-images.idx3-ubyte``, found in some redistributions, is accepted too).
Fashion-MNIST is read by default from Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``). MNIST has no such package; :func:`download_mnist` fetches it.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wakesleep.data.idx import read_idx
from wakesleep.errors import WakesleepError
from wakesleep.io import atomic_write

__all__ = [
    "FASHION_MNIST_DEFAULT_ROOT",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "MNIST_SHA256",
    "download_mnist",
    "find_idx_file",
    "load_fashion_mnist",
    "load_mnist",
]

#: Base names (without ``.gz``) of the image and label files of each split.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: SHA-256 of the four original MNIST archives (as distributed by Y. LeCun and mirrored by PyTorch/TF).
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

#: Mirrors tried in order (each URL is the mirror followed by the file name).
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: Where Debian's ``dataset-fashion-mnist`` package puts the files.
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")

_SPLITS = tuple(MNIST_FILES)


def _candidates(base: str) -> list[str]:
    dotted = base.replace("-idx", ".idx")
    return [base, base + ".gz", dotted, dotted + ".gz"]


def find_idx_file(root: str | os.PathLike, base: str, dataset: str = "MNIST") -> Path:
    """Return the path of ``base`` (or ``base.gz``, or the dotted variant) in ``root``.

    Parameters
    ----------
    root : str or os.PathLike
        Folder to look in.
    base : str
        File name without ``.gz``, e.g. ``"train-images-idx3-ubyte"``.
    dataset : str, default "MNIST"
        Name used in the error message.

    Raises
    ------
    WakesleepError
        If the folder or the file is missing.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise WakesleepError(f"{dataset} folder {root} does not exist or is not a folder")
    for name in _candidates(base):
        if (root / name).is_file():
            return root / name
    raise WakesleepError(f"{dataset} file {base}[.gz] not found in {root}")


def _load_split(root: str | os.PathLike, split: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in _SPLITS:
        raise WakesleepError(f"{dataset} split must be one of {', '.join(_SPLITS)}, got {split!r}")
    img_base, lab_base = MNIST_FILES[split]
    img_path = find_idx_file(root, img_base, dataset)
    lab_path = find_idx_file(root, lab_base, dataset)
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise WakesleepError(
            f"{dataset} image file {img_path} holds a {images.dtype} array of shape {images.shape}, "
            "expected uint8 [N, rows, cols]"
        )
    if labels.ndim != 1:
        raise WakesleepError(f"{dataset} label file {lab_path} holds an array of shape {labels.shape}, expected [N]")
    if len(labels) != len(images):
        raise WakesleepError(
            f"{dataset} files disagree: {img_path} has {len(images)} images but {lab_path} has {len(labels)} labels"
        )
    return images, labels


def load_mnist(root: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load one split of MNIST from a folder of IDX files.

    Parameters
    ----------
    root : str or os.PathLike
        Folder holding the four standard files (gzipped or not). :func:`download_mnist` makes one.
    split : {"train", "test"}
        ``"train"``: 60000 images; ``"test"``: the 10000 ``t10k`` images.

    Returns
    -------
    images : numpy.ndarray
        ``uint8`` array ``[N, 28, 28]`` with grey levels 0..255 (0 is background).
    labels : numpy.ndarray
        ``uint8`` array ``[N]`` of digit classes.

    Raises
    ------
    WakesleepError
        On a missing folder or file, a corrupt file, or image/label files that disagree.
    """
    return _load_split(root, split, "MNIST")


def load_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load one split of Fashion-MNIST (Xiao et al. 2017).

    Parameters
    ----------
    root : str or os.PathLike, optional
        Folder holding the four standard files. Default: ``/usr/share/datasets/fashion-mnist``, where
        Debian's ``dataset-fashion-mnist`` package installs them.
    split : {"train", "test"}
        60000 training or 10000 test images.

    Returns
    -------
    images : numpy.ndarray
        ``uint8`` array ``[N, 28, 28]``.
    labels : numpy.ndarray
        ``uint8`` array ``[N]`` of the 10 clothing classes.

    Raises
    ------
    WakesleepError
        If no folder is given and the Debian package is not installed (the message says how to get it),
        or on a missing or corrupt file.
    """
    if root is None:
        root = FASHION_MNIST_DEFAULT_ROOT
        if not root.is_dir():
            raise WakesleepError(
                f"Fashion-MNIST not found in {root}: install it with `apt-get install dataset-fashion-mnist` "
                "(Debian/Ubuntu) or pass a folder holding the four IDX files (data: root: DIR)"
            )
    return _load_split(root, split, "Fashion-MNIST")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_mnist(
    root: str | os.PathLike,
    *,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    checksums: Mapping[str, str] = MNIST_SHA256,
    opener: Callable[..., Any] | None = None,
    timeout: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Download the four MNIST files into ``root``, verifying the SHA-256 of each.

    A file already in ``root`` with the right checksum is kept. Each missing file is fetched from the
    mirrors in order; a download whose checksum is wrong is discarded and the next mirror tried. Files are
    written through a temporary file and renamed into place, so ``root`` never holds a partial file.

    Parameters
    ----------
    root : str or os.PathLike
        Destination folder (created if needed).
    mirrors : sequence of str
        Base URLs; the file name is appended. Default :data:`MNIST_MIRRORS`.
    checksums : mapping of str to str
        File name -> expected SHA-256 (hex). Default :data:`MNIST_SHA256`, the four original files.
    opener : callable, optional
        ``opener(url, timeout=...)`` returning a readable file-like object (a context manager);
        default ``urllib.request.urlopen``. Tests pass a fake one.
    timeout : float, default 60
        Seconds per connection attempt.
    progress : callable, optional
        Called with a one-line message per file (e.g. ``print``).

    Returns
    -------
    pathlib.Path
        ``root``, ready for :func:`load_mnist`.

    Raises
    ------
    WakesleepError
        If some file could not be fetched with the right checksum from any mirror; the message lists what
        each mirror answered.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    opener = opener or urllib.request.urlopen
    say = progress or (lambda msg: None)
    for name, expected in checksums.items():
        dest = root / name
        if dest.is_file() and _sha256(dest) == expected:
            say(f"{name}: present, checksum ok")
            continue
        failures = []
        for mirror in mirrors:
            url = mirror if mirror.endswith(name) else mirror.rstrip("/") + "/" + name
            digest = hashlib.sha256()
            try:
                with atomic_write(dest, "wb") as out, opener(url, timeout=timeout) as response:
                    for block in iter(lambda r=response: r.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
                    if digest.hexdigest() != expected:
                        raise _ChecksumMismatch(digest.hexdigest())
            except _ChecksumMismatch as exc:
                failures.append(f"{url}: SHA-256 {exc.args[0][:12]}... != expected {expected[:12]}...")
                continue
            except (urllib.error.URLError, OSError, ValueError) as exc:
                failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
                continue
            say(f"{name}: downloaded from {url}, checksum ok")
            break
        else:
            raise WakesleepError(f"could not download MNIST file {name} into {root}: " + "; ".join(failures))
    return root


class _ChecksumMismatch(Exception):
    """Internal: a download finished but its SHA-256 is wrong (the temporary file is discarded)."""
