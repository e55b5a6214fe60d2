"""``load_dataset(spec)``: the ``data:`` section of a config turned into a :class:`DataSet`.

Sources (``source:`` key) and their other keys; every source also takes ``n`` (keep the first ``n``
training rows; for patches: how many to draw), ``n_test``, ``seed`` and ``binarize``:

``file``
    ``path`` (required; ``.npz`` with array ``key`` (default ``x``), ``.npy`` or ``.csv`` of numbers, one row
    per data point, an optional header line), ``test_path`` (same formats), ``key``, ``test_key``
    (default ``x_test``: used as the test set when the ``.npz`` holds it).
``mnist``
    ``root`` (required: folder of the four IDX files), ``split`` (``train`` (default) or ``test``: which
    split becomes the training data; with ``train`` the official test split is the test set).
``fashion_mnist``
    ``root`` (default: Debian's ``/usr/share/datasets/fashion-mnist``), ``split``.
``patches``
    ``size`` (16), ``images`` (``builtin`` or a list of names), ``log``, ``whiten``, ``pca_dim``,
    ``test_fraction``: see :func:`wakesleep.data.patches.load_patches`. ``n`` defaults to 50000,
    ``n_test`` to 10000.
``van_hateren``
    ``root`` (required: folder of ``.iml`` files), ``max_images`` and the patch keys above.

Data drawn from the model itself (``source: model``) is handled by the trainer, not here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from wakesleep.data.binarize import Binarizer, check_unit_interval, parse_scheme
from wakesleep.data.binarize import binarize as binarize_array
from wakesleep.data.checks import as_rows as _rows
from wakesleep.data.checks import check_dataset, check_numeric
from wakesleep.data.files import load_array
from wakesleep.data.mnist import FASHION_MNIST_DEFAULT_ROOT, load_fashion_mnist, load_mnist
from wakesleep.data.patches import load_patches
from wakesleep.errors import WakesleepError

if TYPE_CHECKING:
    from wakesleep.families import ExponentialFamily

__all__ = ["DataSet", "KNOWN_SOURCES", "load_array", "load_dataset"]

_COMMON = ("source", "n", "n_test", "seed", "binarize")
_PATCH_KEYS = ("size", "log", "whiten", "pca_dim", "test_fraction")
_SOURCE_KEYS: dict[str, tuple[str, ...]] = {
    "file": ("path", "test_path", "key", "test_key"),
    "mnist": ("root", "split"),
    "fashion_mnist": ("root", "split"),
    "patches": ("images", *_PATCH_KEYS),
    "van_hateren": ("root", "max_images", *_PATCH_KEYS),
}
#: The sources :func:`load_dataset` understands.
KNOWN_SOURCES: tuple[str, ...] = tuple(_SOURCE_KEYS)


@dataclass
class DataSet:
    """A training set (and optionally a test set) as rows ``[N, D]``, with its binarisation scheme.

    Build it with :meth:`create` (or :func:`load_dataset`), which applies the scheme: fixed schemes
    (``fixed-seed<S>``, ``threshold<T>``) are applied once to both sets; with ``dynamic`` the training set
    keeps its grey levels and every call of :meth:`batches` / :meth:`draw_train` draws a fresh binary
    version, while the test set is binarised once with ``fixed-seed<seed>`` (stream 1), so that every
    model is evaluated on the same binary test set.

    Attributes
    ----------
    train : torch.Tensor
        ``[N, D]``. Grey levels in [0, 1] for ``dynamic``; otherwise the data as the model sees it.
    test : torch.Tensor or None
        ``[M, D]`` as the model sees it (binary whenever a scheme is set).
    binarize : str
        Scheme name (``"none"`` when not binarised); goes into every result file.
    seed : int
        Seed of the dynamic binariser and of minibatch shuffling.
    name : str
        Short description, e.g. ``"fashion_mnist"``.
    info : dict
        JSON-able description of the source and preprocessing (:meth:`describe` adds the scheme).
    image_shape : tuple of int or None
        Shape of one data point as an image (e.g. ``(28, 28)``), for sample grids.
    train_labels, test_labels : torch.Tensor or None
        Class labels, when the source has them.
    """

    train: torch.Tensor
    test: torch.Tensor | None = None
    binarize: str = "none"
    seed: int = 0
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    image_shape: tuple[int, ...] | None = None
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        kind, _ = parse_scheme(self.binarize)
        self.binarize = "none" if self.binarize is None else str(self.binarize)
        self.binarizer = Binarizer(self.binarize if kind == "dynamic" else "none", seed=self.seed)
        self._shuffle_gen = torch.Generator().manual_seed(self.seed)

    @classmethod
    def create(
        cls,
        train: np.ndarray | torch.Tensor,
        test: np.ndarray | torch.Tensor | None = None,
        *,
        binarize: str | None = None,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        what: str = "data",
        **kwargs: Any,
    ) -> DataSet:
        """Make a data set from arrays, applying the binarisation scheme (see the class docstring).

        Parameters
        ----------
        train, test : array or tensor
            ``[N, D]`` and ``[M, D]`` (test optional). Must lie in [0, 1] when a scheme is given.
        binarize : str, optional
            Scheme name; None means ``"none"``.
        seed : int, default 0
            Seed of the dynamic binariser and of shuffling; also the seed of the test set's fixed draw
            under ``dynamic``.
        dtype : torch.dtype, optional
            Floating dtype of the stored tensors (default: torch's default dtype).
        what : str, default "data"
            Name used in error messages (e.g. the config field).
        **kwargs
            Other attributes (``name``, ``info``, ``image_shape``, labels).
        """
        dtype = dtype or torch.get_default_dtype()
        scheme = "none" if binarize is None else str(binarize)
        kind, _ = parse_scheme(scheme)
        tr = _real(train, f"{what} (training values)").to(dtype)
        te = None if test is None else _real(test, f"{what} (test values)").to(dtype)
        info = dict(kwargs.pop("info", {}) or {})
        if kind != "none":
            check_unit_interval(tr, f"{what}.binarize ({what} training values)")
            if te is not None:
                check_unit_interval(te, f"{what}.binarize ({what} test values)")
        if kind in ("fixed", "threshold"):
            tr = binarize_array(tr, scheme, stream=0)
            if te is not None:
                te = binarize_array(te, scheme, stream=1)
        elif kind == "dynamic" and te is not None:
            test_scheme = f"fixed-seed{int(seed)}"
            te = binarize_array(te, test_scheme, stream=1)
            info["test_binarize"] = test_scheme + " (stream 1)"
        return cls(train=tr, test=te, binarize=scheme, seed=int(seed), info=info, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Number of columns ``D``."""
        return int(self.train.shape[1])

    @property
    def n_train(self) -> int:
        """Number of training rows."""
        return int(self.train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test rows (0 without a test set)."""
        return 0 if self.test is None else int(self.test.shape[0])

    def __len__(self) -> int:
        return self.n_train

    # ------------------------------------------------------------------ use
    def describe(self) -> dict[str, Any]:
        """JSON-able description for result files: name, scheme, sizes and the source's ``info``."""
        return {
            "name": self.name,
            "binarize": self.binarize,
            "seed": self.seed,
            "dim": self.dim,
            "n_train": self.n_train,
            "n_test": self.n_test,
            **self.info,
        }

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DataSet:
        """A copy on ``device`` with floating dtype ``dtype`` (labels keep their dtype)."""

        def mv(t: torch.Tensor | None, float_: bool = True) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if float_ else None)

        return replace(
            self,
            train=mv(self.train),
            test=mv(self.test),
            train_labels=mv(self.train_labels, False),
            test_labels=mv(self.test_labels, False),
        )

    def draw_train(self) -> torch.Tensor:
        """The whole training set as the model sees it (a fresh binary draw under ``dynamic``)."""
        return self.binarizer(self.train)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Iterate once over the training set in minibatches ``[B, D]``, binarised per the scheme.

        Parameters
        ----------
        batch_size : int
            Rows per batch.
        shuffle : bool, default True
            Random order, from ``generator`` (default: the data set's own generator seeded with ``seed``).
        drop_last : bool, default False
            Skip a final batch smaller than ``batch_size``.
        generator : torch.Generator, optional
            CPU generator for the permutation.
        """
        if batch_size < 1:
            raise WakesleepError(f"batch_size must be at least 1, got {batch_size}")
        n = self.n_train
        if shuffle:
            order = torch.randperm(n, generator=generator or self._shuffle_gen).to(self.train.device)
        else:
            order = torch.arange(n, device=self.train.device)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.binarizer(self.train[order[start : start + batch_size]])


def _int(spec: Mapping[str, Any], key: str, default: int | None, field_: str, minimum: int = 0) -> int | None:
    value = spec.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise WakesleepError(f"{field_}.{key}: expected an integer, got {value!r}")
    if value < minimum:
        raise WakesleepError(f"{field_}.{key}: must be at least {minimum}, got {value}")
    return int(value)


def _head(x: np.ndarray, n: int | None, key: str, field_: str) -> np.ndarray:
    if n is None:
        return x
    if n > x.shape[0]:
        raise WakesleepError(f"{field_}.{key}: asked for {n} rows but only {x.shape[0]} are available")
    return x[:n]


def _real(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """``x`` as a tensor of real numbers; complex or non-numeric values are an error, not a silent cast."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise WakesleepError(f"{what}: data are complex (dtype {x.dtype}); observations must be real numbers")
        return x
    x = np.asarray(x)
    check_numeric(x, what)
    return torch.as_tensor(x)


# ---------------------------------------------------------------------- load_dataset
def load_dataset(
    spec: Mapping[str, Any],
    expected_dim: int | None = None,
    *,
    base_dir: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    field_name: str = "data",
    family: ExponentialFamily | None = None,
) -> DataSet:
    """Load the data set described by a config's ``data:`` section.

    Parameters
    ----------
    spec : mapping
        E.g. ``{"source": "file", "path": "data.npz"}``,
        ``{"source": "fashion_mnist", "split": "train", "binarize": "dynamic"}``,
        ``{"source": "mnist", "root": "DIR"}``, ``{"source": "patches", "size": 16, "n": 50000, "seed": 0}``.
        See the module docstring for every key.
    expected_dim : int, optional
        The model's observation dimension; a different number of columns is an error.
    base_dir : str or os.PathLike, optional
        Relative paths (``path``, ``test_path``, ``root``) are resolved against it (e.g. the config file's
        folder). Default: the working directory.
    dtype : torch.dtype, optional
        Floating dtype of the tensors (default: torch's default dtype).
    field_name : str, default "data"
        Prefix of the field names in error messages.
    family : ExponentialFamily, optional
        The model's observation family (``wakesleep.models.build.observation_family(model)``): the data as
        the model sees them (after binarisation) must lie in its support, e.g. 0/1 for Bernoulli.

    Returns
    -------
    DataSet

    Raises
    ------
    WakesleepError
        On an unknown source or key, a missing/corrupt file, NaN/inf or complex values, a wrong number of
        columns, fewer than two training rows, binarisation of data outside [0, 1], or a value outside the
        family's support; the message names the field or file (and the row and column of a bad value).
    """
    f = field_name
    if not isinstance(spec, Mapping):
        raise WakesleepError(f"{f}: expected a mapping with a 'source' key, got {type(spec).__name__}")
    source = spec.get("source")
    if source == "model":
        raise WakesleepError(
            f"{f}.source: 'model' (data drawn from the model) is handled by the trainer, not by load_dataset"
        )
    if source not in _SOURCE_KEYS:
        raise WakesleepError(
            f"{f}.source: unknown source {source!r}; known: {', '.join(KNOWN_SOURCES)} (and 'model', via the trainer)"
        )
    allowed = set(_COMMON) | set(_SOURCE_KEYS[source])
    unknown = sorted(str(k) for k in spec if k not in allowed)
    if unknown:
        raise WakesleepError(
            f"{f}: unknown key(s) {', '.join(unknown)} for source {source!r}; allowed: {', '.join(sorted(allowed))}"
        )
    scheme = spec.get("binarize")
    try:
        parse_scheme(scheme)
    except WakesleepError as exc:
        raise WakesleepError(f"{f}.{exc}") from None
    seed = _int(spec, "seed", 0, f)
    n = _int(spec, "n", None, f, minimum=1)
    n_test = _int(spec, "n_test", None, f)
    base = Path(base_dir) if base_dir is not None else Path.cwd()

    def resolve(key: str) -> Path:
        value = spec.get(key)
        if not isinstance(value, str | os.PathLike):
            raise WakesleepError(f"{f}.{key}: expected a path, got {value!r}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    common = {"binarize": scheme, "seed": seed, "dtype": dtype, "what": f}

    if source == "file":
        if "path" not in spec:
            raise WakesleepError(f"{f}.path: required for source 'file'")
        path = resolve("path")
        key = spec.get("key", "x")
        x = load_array(path, key, f"{f}.path")
        x, image_shape = _rows(x, f"{f}.path ({path})", expected_dim)
        x_test = None
        test_field, test_file = "test_key", path
        if "test_path" in spec:
            tpath = resolve("test_path")
            test_field, test_file = "test_path", tpath
            x_test = load_array(
                tpath, spec.get("test_key", "x_test") if tpath.suffix == ".npz" else None, f"{f}.test_path"
            )
            x_test, _ = _rows(x_test, f"{f}.test_path ({tpath})", x.shape[1])
        elif path.suffix.lower() == ".npz":
            test_key = spec.get("test_key", "x_test")
            with np.load(path, allow_pickle=False) as npz:
                has = test_key in npz.files
            if has:
                x_test, _ = _rows(load_array(path, test_key, f"{f}.test_key"), f"{f}.test_key ({path})", x.shape[1])
            elif "test_key" in spec:
                raise WakesleepError(f"{f}.test_key: {path} has no array {test_key!r}")
        x = _head(x, n, "n", f)
        if x_test is not None:
            x_test = _head(x_test, n_test, "n_test", f)
        info = {"source": "file", "path": str(path)}
        ds = DataSet.create(x, x_test, name=path.stem, info=info, image_shape=image_shape, **common)
        test_where = None if x_test is None else f"{f}.{test_field} ({test_file})"
        check_dataset(ds, family, f"{f}.path ({path})", test_where, dim=expected_dim)
        return ds

    if source in ("mnist", "fashion_mnist"):
        split = spec.get("split", "train")
        if split not in ("train", "test"):
            raise WakesleepError(f"{f}.split: must be 'train' or 'test', got {split!r}")
        if source == "mnist":
            if "root" not in spec:
                raise WakesleepError(
                    f"{f}.root: required for source 'mnist' (a folder of the four MNIST IDX files; "
                    "wakesleep.data.download_mnist(DIR) fetches them)"
                )
            root = resolve("root")
            loader = load_mnist
        else:
            root = resolve("root") if spec.get("root") is not None else None
            loader = load_fashion_mnist
        images, labels = loader(root, split)
        t_images = t_labels = None
        if split == "train":
            t_images, t_labels = loader(root, "test")
        images, labels = _head(images, n, "n", f), _head(labels, n, "n", f)
        # grey levels / 255, computed directly in the target precision (MNIST in float64 is 376 MB)
        np_dtype = torch.empty(0, dtype=dtype or torch.get_default_dtype()).numpy().dtype
        x = images.reshape(len(images), -1).astype(np_dtype) / np_dtype.type(255)
        _rows(x[:1], f"{f} ({source})", expected_dim)
        x_test = None
        if t_images is not None:
            t_images, t_labels = _head(t_images, n_test, "n_test", f), _head(t_labels, n_test, "n_test", f)
            x_test = t_images.reshape(len(t_images), -1).astype(np_dtype) / np_dtype.type(255)
        info = {
            "source": source,
            "root": str(root if root is not None else FASHION_MNIST_DEFAULT_ROOT),
            "split": split,
            "scale": "grey levels / 255",
        }
        ds = DataSet.create(
            x,
            x_test,
            name=source,
            info=info,
            image_shape=tuple(images.shape[1:]),
            train_labels=torch.as_tensor(labels.astype(np.int64)),
            test_labels=None if t_labels is None else torch.as_tensor(t_labels.astype(np.int64)),
            **common,
        )
        check_dataset(ds, family, f"{f} ({source} {split} split)", f"{f} ({source} test split)", dim=expected_dim)
        return ds

    # patches / van_hateren
    kwargs: dict[str, Any] = {k: spec[k] for k in _PATCH_KEYS if k in spec}
    if "size" in kwargs:
        kwargs["size"] = _int(spec, "size", 16, f, minimum=2)
    if source == "van_hateren":
        if "root" not in spec:
            raise WakesleepError(f"{f}.root: required for source 'van_hateren' (a folder of .iml files)")
        kwargs["root"] = resolve("root")
        kwargs["max_images"] = _int(spec, "max_images", None, f, minimum=1)
    elif "images" in spec:
        kwargs["images"] = spec["images"]
    ps = load_patches(n=50000 if n is None else n, n_test=10000 if n_test is None else n_test, seed=seed, **kwargs)
    if expected_dim is not None and ps.train.shape[1] != int(expected_dim):
        raise WakesleepError(
            f"{f}.size: patches have {ps.train.shape[1]} dimensions but the model's observation dimension is "
            f"{expected_dim}"
        )
    side = int(kwargs.get("size", 16))
    image_shape = (side, side) if ps.train.shape[1] == side * side else None
    ds = DataSet.create(ps.train, ps.test, name=source, info=ps.info, image_shape=image_shape, **common)
    check_dataset(ds, family, f"{f} ({source})", f"{f} ({source} test patches)", dim=expected_dim)
    return ds
