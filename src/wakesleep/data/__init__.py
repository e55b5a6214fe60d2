"""Data: IDX / MNIST / Fashion-MNIST readers, binarisation, natural image patches, ``load_dataset``, checks.

See ``docs/data.md`` for where the data come from and how they are preprocessed.
"""

from __future__ import annotations

from wakesleep.data.binarize import SCHEME_FORMS, Binarizer, binarize, check_unit_interval, parse_scheme
from wakesleep.data.checks import check_dataset, check_observations
from wakesleep.data.dataset import KNOWN_SOURCES, DataSet, load_array, load_dataset
from wakesleep.data.idx import read_idx, write_idx
from wakesleep.data.mnist import (
    FASHION_MNIST_DEFAULT_ROOT,
    MNIST_FILES,
    MNIST_MIRRORS,
    MNIST_SHA256,
    download_mnist,
    load_fashion_mnist,
    load_mnist,
)
from wakesleep.data.patches import (
    IML_SHAPE,
    PatchSet,
    builtin_images,
    extract_patches,
    load_patches,
    load_van_hateren,
    read_iml,
    write_iml,
)

__all__ = [
    "Binarizer",
    "DataSet",
    "FASHION_MNIST_DEFAULT_ROOT",
    "IML_SHAPE",
    "KNOWN_SOURCES",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "MNIST_SHA256",
    "PatchSet",
    "SCHEME_FORMS",
    "binarize",
    "builtin_images",
    "check_dataset",
    "check_observations",
    "check_unit_interval",
    "download_mnist",
    "extract_patches",
    "load_array",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "load_patches",
    "load_van_hateren",
    "parse_scheme",
    "read_idx",
    "read_iml",
    "write_idx",
    "write_iml",
]
