"""Natural image patches (e.g. 16 x 16) for the image-patch experiments, and a van Hateren ``.iml`` reader.

Images
------
``"builtin"`` uses the natural photographs shipped inside scikit-learn (``china``, ``flower`` from
:func:`sklearn.datasets.load_sample_images`) and scikit-image (``camera``, ``astronaut``, ``coffee``,
``chelsea``, ``rocket``, ``grass``, ``gravel``, ``brick``, ``moon`` from :mod:`skimage.data`), all available
offline. Drawings, text scans, microscopy, astronomy and synthetic images of ``skimage.data`` are left out.
Alternatively, a folder of van Hateren & van der Schaaf (1998) ``.iml``/``.imc`` files (1536 x 1024, raw
big-endian ``uint16``) supplied by the user.

Preprocessing (in this order, the usual one for sparse-coding / Helmholtz-machine patch experiments)
------------------------------------------------------------------------------------------------------
1. Grey scale: RGB images are converted with ITU-R BT.709 luminance weights
   (:func:`skimage.color.rgb2gray`) and put back on their 0..255 scale; ``.iml`` files keep their raw counts.
2. Log intensity: ``log(1 + I)`` (``log=False`` skips it).
3. Train/test split by image region: the images are tiled into square cells of side ``max(4 * size, 64)``
   and a random ``test_fraction`` (default 20%) of the cells is reserved for test patches; every patch lies
   inside one cell, so no pixel is shared between training and test patches.
4. Random extraction: a patch position is drawn uniformly over all valid positions of all images (so an
   image contributes in proportion to its area), with ``numpy.random.default_rng(seed)``; patches may overlap.
5. Per-patch mean removal (the DC component of each patch is subtracted).
6. Global scaling: every value is divided by the standard deviation of all training-patch pixels, so the
   training set has unit variance per pixel on average. The test set uses the training scale.
7. Optional whitening, fitted on the training set: ``"zca"`` (symmetric whitening,
   ``C^{-1/2}`` with eigenvalue floor ``eps``) keeps the pixel basis; ``"pca"`` projects onto the leading
   ``pca_dim`` principal components scaled to unit variance (the dimension becomes ``pca_dim``).

Patches are returned flattened in row-major order, shape ``[n, size * size]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wakesleep.errors import WakesleepError

__all__ = [
    "IML_SHAPE",
    "PatchSet",
    "SKIMAGE_NATURAL",
    "SKLEARN_NATURAL",
    "builtin_images",
    "extract_patches",
    "load_patches",
    "load_van_hateren",
    "read_iml",
    "split_regions",
    "write_iml",
]

#: (rows, cols) of a van Hateren image.
IML_SHAPE = (1024, 1536)
#: Natural photographs in :mod:`skimage.data` used by ``"builtin"``.
SKIMAGE_NATURAL = ("camera", "astronaut", "coffee", "chelsea", "rocket", "grass", "gravel", "brick", "moon")
#: Photographs in :func:`sklearn.datasets.load_sample_images` used by ``"builtin"``.
SKLEARN_NATURAL = ("china", "flower")
_WHITEN = (None, "zca", "pca")


def read_iml(path: str | os.PathLike, shape: tuple[int, int] = IML_SHAPE) -> np.ndarray:
    """Read a van Hateren ``.iml`` (or ``.imc``) image: raw big-endian ``uint16``, no header.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    shape : tuple of int, default (1024, 1536)
        (rows, cols); the file must hold exactly ``rows * cols * 2`` bytes.

    Returns
    -------
    numpy.ndarray
        ``uint16`` array of shape ``shape`` (native byte order).

    Raises
    ------
    WakesleepError
        If the file is missing or its size is not that of a ``shape`` image.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise WakesleepError(f"van Hateren image {path} does not exist") from None
    except OSError as exc:
        raise WakesleepError(f"cannot read van Hateren image {path}: {exc.strerror or exc}") from None
    expected = shape[0] * shape[1] * 2
    if len(raw) != expected:
        raise WakesleepError(
            f"van Hateren image {path} has {len(raw)} bytes, expected {expected} "
            f"({shape[1]} x {shape[0]} big-endian uint16); truncated or not an .iml file"
        )
    return np.frombuffer(raw, dtype=">u2").reshape(shape).astype(np.uint16)


def write_iml(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a 2-D array as a raw big-endian ``uint16`` ``.iml`` file (for tests and conversions)."""
    from wakesleep.io import atomic_write

    path = Path(path)
    image = np.asarray(image)
    if image.ndim != 2:
        raise WakesleepError(f"write_iml: {path}: expected a 2-D image, got shape {image.shape}")
    with atomic_write(path, "wb") as fh:
        fh.write(np.ascontiguousarray(image, dtype=">u2").tobytes())
    return path


def load_van_hateren(
    root: str | os.PathLike, max_images: int | None = None, shape: tuple[int, int] = IML_SHAPE
) -> list[np.ndarray]:
    """Read every ``*.iml`` / ``*.imc`` file of a folder (sorted by name) as float64 arrays of raw counts.

    Parameters
    ----------
    root : str or os.PathLike
        Folder supplied by the user (the images are not distributed with this library).
    max_images : int, optional
        Read only the first ``max_images`` files.
    shape : tuple of int, default (1024, 1536)
        Image shape (rows, cols).

    Raises
    ------
    WakesleepError
        If the folder is missing or holds no ``.iml``/``.imc`` file, or a file is malformed.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise WakesleepError(f"van Hateren folder {root} does not exist or is not a folder")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".iml", ".imc") and p.is_file())
    if not files:
        raise WakesleepError(f"van Hateren folder {root} holds no .iml or .imc file")
    if max_images is not None:
        files = files[: int(max_images)]
    return [read_iml(p, shape).astype(np.float64) for p in files]


def builtin_images(names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The natural photographs shipped with scikit-learn and scikit-image, in grey scale on 0..255.

    Parameters
    ----------
    names : list of str, optional
        Subset of :data:`SKIMAGE_NATURAL` + :data:`SKLEARN_NATURAL`; default all of them.

    Returns
    -------
    dict
        Name -> float64 array ``[rows, cols]``.
    """
    known = SKIMAGE_NATURAL + SKLEARN_NATURAL
    names = list(known) if names is None else list(names)
    bad = [n for n in names if n not in known]
    if bad:
        raise WakesleepError(f"patches: images: unknown image(s) {bad}; known: {', '.join(known)}")
    try:
        import skimage.color
        import skimage.data
    except ImportError:  # pragma: no cover - depends on the environment
        raise WakesleepError(
            "patches: the built-in images need scikit-image and scikit-learn (pip install 'wakesleep[images]')"
        ) from None
    out: dict[str, np.ndarray] = {}
    sk_images: dict[str, np.ndarray] = {}
    if any(n in SKLEARN_NATURAL for n in names):
        try:
            from sklearn.datasets import load_sample_images
        except ImportError:  # pragma: no cover
            raise WakesleepError("patches: the built-in images need scikit-learn (pip install scikit-learn)") from None
        sample = load_sample_images()
        sk_images = {Path(f).stem: img for f, img in zip(sample.filenames, sample.images, strict=True)}
    for name in names:
        img = sk_images[name] if name in SKLEARN_NATURAL else getattr(skimage.data, name)()
        img = np.asarray(img)
        if img.ndim == 3:
            img = skimage.color.rgb2gray(img[..., :3]) * 255.0
        out[name] = np.asarray(img, dtype=np.float64)
    return out


def extract_patches(images: list[np.ndarray], size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Cut ``n`` random ``size x size`` patches from ``images``; positions uniform over all valid ones.

    Returns
    -------
    numpy.ndarray
        ``[n, size, size]`` float64.
    """
    counts = np.array([max(im.shape[0] - size + 1, 0) * max(im.shape[1] - size + 1, 0) for im in images])
    if counts.sum() == 0:
        raise WakesleepError(f"patches: no image region is large enough for {size} x {size} patches")
    which = rng.choice(len(images), size=n, p=counts / counts.sum())
    out = np.empty((n, size, size))
    for i, im in enumerate(images):
        idx = np.flatnonzero(which == i)
        if idx.size == 0:
            continue
        r = rng.integers(0, im.shape[0] - size + 1, size=idx.size)
        c = rng.integers(0, im.shape[1] - size + 1, size=idx.size)
        rows = r[:, None, None] + np.arange(size)[None, :, None]
        cols = c[:, None, None] + np.arange(size)[None, None, :]
        out[idx] = im[rows, cols]
    return out


def split_regions(
    images: list[np.ndarray], size: int, test_fraction: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Tile the images into square cells and assign a random ``test_fraction`` of the cells to the test set.

    Cells have side ``max(4 * size, 64)`` (smaller at the right and bottom edges; cells narrower than
    ``size`` are dropped). Patches are later cut from inside one cell, so training and test patches never
    share a pixel, while both sets still cover every image.

    Returns
    -------
    train_cells, test_cells : list of numpy.ndarray
        Views into the images.
    cell : int
        The cell side.
    """
    cell = max(4 * size, 64)
    cells = [
        im[r : r + cell, c : c + cell]
        for im in images
        for r in range(0, im.shape[0], cell)
        for c in range(0, im.shape[1], cell)
        if min(im[r : r + cell, c : c + cell].shape) >= size
    ]
    if len(cells) < 2:
        raise WakesleepError(
            f"patches: the images are too small to hold separate training and test regions of {size} x {size} patches"
        )
    order = rng.permutation(len(cells))
    n_test = min(max(1, int(round(test_fraction * len(cells)))), len(cells) - 1)
    test = [cells[i] for i in order[:n_test]]
    train = [cells[i] for i in order[n_test:]]
    return train, test, cell


@dataclass
class PatchSet:
    """Preprocessed patches.

    Attributes
    ----------
    train, test : numpy.ndarray
        ``[n, size*size]`` and ``[n_test, size*size]`` (``[., pca_dim]`` with ``whiten="pca"``), float64.
    scale : float
        The global standard deviation the patches were divided by (step 6).
    whitening : numpy.ndarray or None
        The matrix applied on the right after scaling (``x @ whitening``), or None.
    info : dict
        JSON-able description of the source and preprocessing, for result files.
    """

    train: np.ndarray
    test: np.ndarray
    scale: float
    whitening: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


def load_patches(
    size: int = 16,
    n: int = 50000,
    n_test: int = 10000,
    seed: int = 0,
    *,
    images: str | list[str] | list[np.ndarray] = "builtin",
    root: str | os.PathLike | None = None,
    max_images: int | None = None,
    log: bool = True,
    whiten: str | None = None,
    pca_dim: int | None = None,
    eps: float = 1e-3,
    test_fraction: float = 0.2,
) -> PatchSet:
    """Random natural-image patches with the preprocessing described in the module docstring.

    Parameters
    ----------
    size : int, default 16
        Patch side length.
    n, n_test : int
        Number of training and test patches.
    seed : int, default 0
        Seed of the patch positions.
    images : "builtin", list of names, or list of 2-D arrays
        ``"builtin"``: all of :data:`SKIMAGE_NATURAL` and :data:`SKLEARN_NATURAL`; a list of their names; or
        grey-scale images given directly (intensities >= 0). Ignored when ``root`` is given.
    root : str or os.PathLike, optional
        A folder of van Hateren ``.iml``/``.imc`` files to use instead.
    max_images : int, optional
        With ``root``: use only the first ``max_images`` files.
    log : bool, default True
        Take ``log(1 + I)`` of the intensities.
    whiten : {None, "zca", "pca"}
        Optional whitening fitted on the training patches.
    pca_dim : int, optional
        Number of components kept by ``whiten="pca"`` (default ``size*size - 1``: the DC direction is
        empty after mean removal).
    eps : float, default 1e-3
        Eigenvalue floor (relative to unit pixel variance) for ZCA whitening.
    test_fraction : float, default 0.2
        Fraction of the image cells reserved for test patches (see :func:`split_regions`).

    Returns
    -------
    PatchSet
    """
    size, n, n_test = int(size), int(n), int(n_test)
    if size < 2:
        raise WakesleepError(f"patches: size must be at least 2, got {size}")
    if n < 2 or n_test < 0:
        raise WakesleepError(f"patches: need n >= 2 and n_test >= 0, got n={n}, n_test={n_test}")
    if whiten not in _WHITEN:
        raise WakesleepError(f"patches: whiten must be one of null, 'zca', 'pca', got {whiten!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise WakesleepError(f"patches: test_fraction must lie in (0, 1), got {test_fraction}")
    if root is not None:
        ims = load_van_hateren(root, max_images)
        source = {"images": "van_hateren", "root": str(root), "n_images": len(ims)}
    elif isinstance(images, str):
        if images != "builtin":
            raise WakesleepError(f"patches: images must be 'builtin' or a list of image names, got {images!r}")
        named = builtin_images()
        ims = list(named.values())
        source = {"images": sorted(named)}
    elif all(isinstance(im, str) for im in images):
        named = builtin_images(list(images))
        ims = list(named.values())
        source = {"images": list(named)}
    else:
        ims = [np.asarray(im, dtype=np.float64) for im in images]
        if any(im.ndim != 2 for im in ims):
            raise WakesleepError("patches: images given as arrays must be 2-D grey-scale")
        source = {"images": f"{len(ims)} arrays"}
    if any(float(im.min()) < 0 for im in ims):
        raise WakesleepError("patches: image intensities must be non-negative")
    if log:
        ims = [np.log1p(im) for im in ims]
    train_parts, test_parts, cell = split_regions(ims, size, test_fraction, np.random.default_rng([seed, 1]))
    rng = np.random.default_rng(seed)
    train = extract_patches(train_parts, size, n, rng).reshape(n, size * size)
    test = extract_patches(test_parts, size, n_test, rng).reshape(n_test, size * size)
    train -= train.mean(axis=1, keepdims=True)
    test -= test.mean(axis=1, keepdims=True)
    scale = float(train.std())
    if not scale > 0:
        raise WakesleepError("patches: the training patches are constant (zero variance)")
    train /= scale
    test /= scale
    w = None
    d = size * size
    if whiten is not None:
        cov = train.T @ train / n
        evals, evecs = np.linalg.eigh(cov)
        evals, evecs = evals[::-1], evecs[:, ::-1]
        if whiten == "zca":
            w = evecs @ np.diag(1.0 / np.sqrt(np.maximum(evals, 0.0) + eps)) @ evecs.T
        else:
            k = d - 1 if pca_dim is None else int(pca_dim)
            if not 1 <= k <= d - 1:
                raise WakesleepError(f"patches: pca_dim must lie in [1, {d - 1}], got {pca_dim}")
            w = evecs[:, :k] / np.sqrt(evals[:k])
        train = train @ w
        test = test @ w
    info = {
        "source": "van_hateren" if root is not None else "natural_images",
        **source,
        "size": size,
        "n": n,
        "n_test": n_test,
        "seed": int(seed),
        "log": bool(log),
        "per_patch_mean_removed": True,
        "scale": scale,
        "whiten": whiten,
        "test_fraction": float(test_fraction),
        "split_cell": cell,
    }
    if whiten == "pca":
        info["pca_dim"] = int(w.shape[1])
    if whiten == "zca":
        info["eps"] = float(eps)
    return PatchSet(train=train, test=test, scale=scale, whitening=w, info=info)
