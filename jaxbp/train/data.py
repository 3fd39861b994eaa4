"""Data sets for ``jaxbp train``: scikit-learn's 8x8 digits, MNIST-format IDX directories and ``.npz`` files.

Every loader returns a :class:`Dataset` of NumPy arrays: images as float32 of shape
``(N, H, W, C)`` (pixels scaled to [0, 1]: digits / 16, IDX / 255), labels as int32
in ``[0, num_classes)``. Bad files raise :class:`DataError` before any training starts.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxbp.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist installs it
DATASETS = ("digits", "fashion-mnist", "mnist", "npz")
MAX_CLASSES = 1 << 16  # labels are class indices 0..C-1; a larger inferred C is a mislabelled file

# IDX type codes (third magic byte) -> big-endian NumPy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class Dataset(NamedTuple):
    """A fixed train/test split.

    Attributes:
      x_train: float32 ``(N, H, W, C)`` (or ``(N, D)`` for npz vectors).
      y_train: int32 ``(N,)``.
      x_test: float32, same trailing shape as ``x_train``.
      y_test: int32 ``(M,)``.
      num_classes: labels lie in ``[0, num_classes)``.
      name: e.g. "digits".
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 8, 8) in 0..16 and labels, read without importing sklearn."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is None or not csv.is_file():  # layout changed: take the public (slower to import) route
        from sklearn.datasets import load_digits as sk_digits

        d = sk_digits()
        return d.images, d.target
    table = np.loadtxt(csv, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int32)


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, shipped with the package), fixed stratified 80/20 split."""
    images, labels = _digits_arrays()
    x = (images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1) in [0, 1]
    y = labels.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(y))
    test = np.zeros(len(y), bool)
    for c in range(10):  # every fifth example of each class (in a fixed shuffled order) is a test example
        test[order[y[order] == c][::5]] = True
    return Dataset(x[~test], y[~test], x[test], y[test], 10, "digits")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a NumPy array.

    Args:
      path: e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
      The array, with the dimensions the header declares.

    Raises:
      DataError: wrong magic number, unknown type code, or a file shorter or longer than its header says.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # EOFError / BadGzipFile: a truncated or corrupt .gz
        raise DataError(f"{path}: cannot read IDX file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(
            f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'},"
            " expected 0000 followed by a type code and the number of dimensions, e.g. 00000803)"
        )
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header} for {ndim} dims)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: IDX file {kind}: header says shape {shape} ({expected} bytes), file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def load_idx_dir(directory: str | os.PathLike, name: str, num_classes: int = 10) -> Dataset:
    """Load ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` from ``directory``.

    Args:
      directory: the folder holding the four files.
      name: the data set's name, used in messages.
      num_classes: labels must lie in ``[0, num_classes)``.

    Returns:
      A :class:`Dataset` with images scaled to [0, 1], shape ``(N, H, W, 1)``.
    """
    directory = Path(directory)
    arrays = {}
    for split in ("train", "t10k"):
        for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
            stem = f"{split}-{kind}-ubyte"
            path = _find(directory, stem)
            if path is None:
                raise DataError(f"{name}: {directory} has no {stem} or {stem}.gz")
            a = read_idx(path)
            if a.ndim != ndim or a.dtype != np.uint8:
                raise DataError(f"{path}: expected {ndim}-d unsigned bytes, got {a.ndim}-d {a.dtype}")
            arrays[split, kind] = a
    x_tr, y_tr = arrays["train", "images-idx3"], arrays["train", "labels-idx1"]
    x_te, y_te = arrays["t10k", "images-idx3"], arrays["t10k", "labels-idx1"]
    return _validated(
        name,
        (x_tr / np.float32(255))[..., None].astype(np.float32),
        y_tr,
        (x_te / np.float32(255))[..., None].astype(np.float32),
        y_te,
        num_classes,
        f"{name} ({directory})",
    )


def load_npz(path: str | os.PathLike, num_classes: int | None = None) -> Dataset:
    """Load ``x_train, y_train, x_test, y_test`` from a ``.npz`` without pickle; uint8 images are scaled /255.

    Args:
      path: the ``.npz`` file.
      num_classes: labels must lie in ``[0, num_classes)``; default ``max(y_train) + 1``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz: no file {path} (pass --data-dir PATH/TO/FILE.npz)")
    try:
        with open(path, "rb") as fh:  # our own handle: closed even when np.load fails half-way
            f = np.load(fh, allow_pickle=False)
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: not an .npz archive (a single {type(f).__name__}: a .npy renamed?)")
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)} (has {sorted(f.files)})")
            x_tr, y_tr, x_te, y_te = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # empty, truncated, bit-flipped, pickled
        raise DataError(f"{path}: cannot read as .npz without pickle ({type(e).__name__}: {e})") from e

    for k, x in (("x_train", x_tr), ("x_test", x_te)):
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == bool):
            raise DataError(f"{path}: {k} must hold real numbers, got dtype {x.dtype}")
    for k, y in (("y_train", y_tr), ("y_test", y_te)):
        _refuse_one_hot(path, k, y)
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: {k} must hold integer labels, got dtype {y.dtype}")

    def scale(x):
        return x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)

    if num_classes is None:
        num_classes = int(y_tr.max()) + 1 if y_tr.size else 0
        if num_classes > MAX_CLASSES:
            raise DataError(
                f"{path}: y_train's largest label is {num_classes - 1}, which would mean {num_classes}"
                f" classes (at most {MAX_CLASSES}); labels must be class indices 0..C-1"
            )
    with np.errstate(over="ignore"):  # float64 pixels beyond float32's range become inf: refused below
        return _validated(path.stem, scale(x_tr), y_tr, scale(x_te), y_te, num_classes, path)


def _refuse_one_hot(where, key: str, y: np.ndarray) -> None:
    """Labels given as one-hot rows (or any matrix) instead of class indices: say so, and how to convert."""
    if y.ndim == 2 and y.size and np.isin(y, (0, 1)).all() and (y.sum(1) == 1).all():
        raise DataError(
            f"{where}: {key} holds one-hot rows (shape {y.shape}); jaxbp wants class indices of shape"
            f" ({y.shape[0]},): save y.argmax(1) instead"
        )
    if y.ndim != 1:
        raise DataError(f"{where}: {key} must be a vector of class indices, got shape {y.shape}")


def _validated(name, x_tr, y_tr, x_te, y_te, num_classes, source=None) -> Dataset:
    where = str(source or name)
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        _refuse_one_hot(where, f"y_{split}", y)
        if len(y) == 0:
            raise DataError(f"{where}: empty {split} split (0 examples)")
        if x.shape[:1] != y.shape:
            raise DataError(
                f"{where}: {split} images of shape {x.shape} do not match labels of shape {y.shape}"
            )
        if x.ndim < 2 or math.prod(x.shape[1:]) == 0:
            raise DataError(f"{where}: {split} examples have no features (images of shape {x.shape})")
        if y.min() < 0 or y.max() >= num_classes:
            raise DataError(
                f"{where}: {split} labels out of range: values in [{y.min()}, {y.max()}],"
                f" expected [0, {num_classes})"
            )
        if not np.isfinite(x).all():
            raise DataError(f"{where}: {split} images contain NaN or infinity")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(
            f"{where}: train images {x_tr.shape[1:]} and test images {x_te.shape[1:]} differ in shape"
        )
    if num_classes < 2:
        raise DataError(f"{where}: needs at least 2 classes, got {num_classes}")
    return Dataset(x_tr, y_tr.astype(np.int32), x_te, y_te.astype(np.int32), num_classes, name)


def fingerprint(data: Dataset) -> str:
    """A content hash of the split (arrays' dtypes, shapes and bytes, and the class count): 16 hex digits."""
    h = hashlib.blake2b(digest_size=8)
    for a in (data.x_train, data.y_train, data.x_test, data.y_test):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    h.update(str(data.num_classes).encode())
    return h.hexdigest()


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Load a data set by the name ``--dataset`` takes.

    Args:
      name: one of ``digits``, ``fashion-mnist``, ``mnist``, ``npz``.
      data_dir: the IDX directory (``fashion-mnist`` defaults to Debian's install location), or the
        ``.npz`` file for ``npz``.

    Raises:
      DataError: unknown name, missing directory (saying which package or flag provides it), bad files.
    """
    if name == "digits":
        return load_digits()
    if name == "npz":
        if data_dir is None:
            raise DataError(
                "--dataset npz needs --data-dir PATH/TO/FILE.npz (arrays x_train, y_train, x_test, y_test)"
            )
        return load_npz(data_dir)
    if name in ("fashion-mnist", "mnist"):
        if data_dir is None and name == "fashion-mnist":
            data_dir = FASHION_MNIST_DIR
        if data_dir is None or not Path(data_dir).is_dir():
            hint = (
                "install Debian's package dataset-fashion-mnist (`make data` as root, or"
                f" `apt-get install dataset-fashion-mnist`), which puts it in {FASHION_MNIST_DIR}, or"
                if name == "fashion-mnist"
                else "no package provides MNIST here:"
            )
            where = f"directory {data_dir} does not exist" if data_dir else "no --data-dir given"
            raise DataError(
                f"{name}: {where}; {hint} pass --data-dir DIR holding train-images-idx3-ubyte[.gz],"
                " train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"
            )
        return load_idx_dir(data_dir, name)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def standardize(data: Dataset) -> Dataset:
    """Shift and scale all images by the training set's mean and standard deviation (one scalar each).

    Computed in float64 (in chunks), so pixels anywhere in float32's range (up to 3.4e38)
    standardise without overflow; the result is float32.

    Raises:
      DataError: a standardised value that float32 cannot hold (test pixels far outside the range
        of a nearly constant training set).
    """
    mean = float(data.x_train.mean(dtype=np.float64))
    std = float(data.x_train.std(dtype=np.float64)) or 1.0
    out = {}
    for k in ("x_train", "x_test"):
        x = getattr(data, k)
        out[k] = np.empty(x.shape, np.float32)
        with np.errstate(over="ignore"):  # a float64 value beyond float32's range becomes inf: refused below
            for i in range(0, len(x), 4096):
                out[k][i : i + 4096] = (x[i : i + 4096].astype(np.float64) - mean) / std
        if not np.isfinite(out[k]).all():
            raise DataError(
                f"{data.name}: {k} overflows float32 when standardised (training mean {mean:.3g},"
                f" standard deviation {std:.3g}, pixels up to {np.abs(x).max():.3g});"
                " rescale the data, or pass --no-standardize"
            )
    return data._replace(**out)
