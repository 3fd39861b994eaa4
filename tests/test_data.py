"""Data loaders: digits split, IDX (plain and gzip), npz, and the errors for bad or missing files."""

import gzip
import struct

import numpy as np
import pytest

from jaxbp.train.data import DataError, load_dataset, load_digits, load_idx_dir, load_npz, read_idx


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``path`` ends in .gz."""
    data = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(data)


def make_idx_dir(directory, n_train=12, n_test=6, labels=None, gz=True):
    """A tiny MNIST-format directory with 5x4 images; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 5, 4), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8) if labels is None else labels[split]
        suffix = ".gz" if gz else ""
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", x)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", y)
        arrays[split] = (x, y)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dir_loads_scaled_images_and_labels(tmp_path, gz):
    arrays = make_idx_dir(tmp_path, gz=gz)
    d = load_dataset("mnist", str(tmp_path))
    assert d.x_train.shape == (12, 5, 4, 1) and d.x_test.shape == (6, 5, 4, 1)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    np.testing.assert_array_equal(d.x_train[..., 0], arrays["train"][0] / np.float32(255))
    np.testing.assert_array_equal(d.y_test, arrays["t10k"][1])
    assert d.num_classes == 10


def test_idx_wrong_magic(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="not an IDX file.*01020801"):
        read_idx(tmp_path / "bad")


def test_idx_truncated(tmp_path):
    write_idx(tmp_path / "x", np.zeros((3, 2, 2), np.uint8))
    (tmp_path / "y").write_bytes((tmp_path / "x").read_bytes()[:-3])
    with pytest.raises(DataError, match=r"truncated.*shape \(3, 2, 2\)"):
        read_idx(tmp_path / "y")


def test_idx_truncated_gzip(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((30, 20, 20), np.uint8))
    (tmp_path / "y.gz").write_bytes((tmp_path / "x.gz").read_bytes()[:-20])
    with pytest.raises(DataError, match="y.gz"):
        read_idx(tmp_path / "y.gz")


def test_idx_labels_out_of_range(tmp_path):
    labels = {"train": np.array([0, 1, 10, 2], np.uint8), "t10k": np.array([3, 4], np.uint8)}
    make_idx_dir(tmp_path, n_train=4, n_test=2, labels=labels)
    with pytest.raises(DataError, match=r"train labels out of range.*\[0, 10\].*\[0, 10\)"):
        load_idx_dir(tmp_path, "mnist")


def test_idx_missing_file_and_directory(tmp_path):
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="no t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", str(tmp_path))
    with pytest.raises(DataError, match="dataset-fashion-mnist.*--data-dir"):
        load_dataset("fashion-mnist", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="mnist: no --data-dir given"):
        load_dataset("mnist")


def test_npz(tmp_path):
    rng = np.random.default_rng(1)
    arrays = dict(
        x_train=rng.integers(0, 256, (8, 3, 3), dtype=np.uint8),
        y_train=np.array([0, 1, 2, 0, 1, 2, 0, 1]),
        x_test=rng.normal(size=(4, 3, 3)),
        y_test=np.array([2, 1, 0, 1]),
    )
    np.savez(tmp_path / "d.npz", **arrays)
    d = load_npz(tmp_path / "d.npz")
    assert d.num_classes == 3 and d.x_train.dtype == d.x_test.dtype == np.float32
    np.testing.assert_allclose(d.x_train, arrays["x_train"] / 255, rtol=1e-6)
    np.testing.assert_allclose(d.x_test, arrays["x_test"], rtol=1e-6)

    np.savez(tmp_path / "bad.npz", **{**arrays, "y_test": np.array([0, 1, 3, 1])})
    with pytest.raises(DataError, match=r"test labels out of range.*\[0, 3\]"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", **{**arrays, "y_train": np.array([0, None], dtype=object)})
    with pytest.raises(DataError, match="without pickle"):
        load_npz(tmp_path / "obj.npz")
    np.savez(tmp_path / "part.npz", x_train=arrays["x_train"])
    with pytest.raises(DataError, match=r"missing arrays \['x_test', 'y_test', 'y_train'\]"):
        load_npz(tmp_path / "part.npz")


def test_digits_fixed_split():
    a, b = load_digits(), load_digits()
    assert a.x_train.shape == (1433, 8, 8, 1) and a.x_test.shape == (364, 8, 8, 1)
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert set(np.bincount(a.y_test)) <= {35, 36, 37}  # stratified: ~1/5 of each class


def test_one_hot_labels_are_reported_as_one_hot(tmp_path):
    x = np.ones((6, 3), np.float32)
    for dtype in (np.int64, np.float32):  # integer or float one-hot rows
        one_hot = np.eye(2, dtype=dtype)[np.arange(6) % 2]
        np.savez(tmp_path / "d.npz", x_train=x, y_train=one_hot, x_test=x[:2], y_test=np.arange(2))
        with pytest.raises(
            DataError, match=r"y_train holds one-hot rows \(shape \(6, 2\)\); .*y\.argmax\(1\)"
        ):
            load_npz(tmp_path / "d.npz")
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.zeros((6, 2), int), x_test=x[:2], y_test=np.arange(2))
    with pytest.raises(DataError, match=r"y_train must be a vector of class indices, got shape \(6, 2\)"):
        load_npz(tmp_path / "d.npz")


def test_huge_finite_pixels_standardise_without_overflow(tmp_path):
    """3e38 is finite in float32; its square is not: the statistics are reduced in float64."""
    from jaxbp.train.data import standardize

    x = np.zeros((8, 3), np.float32)
    x[1::2] = 3e38
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(8) % 2, x_test=x[:4], y_test=np.arange(4) % 2)
    d = standardize(load_npz(tmp_path / "d.npz"))
    assert np.isfinite(d.x_train).all() and set(np.unique(d.x_train)) == {-1.0, 1.0}
    d = standardize(d._replace(x_train=x, x_test=np.full((4, 3), -3e38, np.float32)))  # 6e38 apart
    assert np.isfinite(d.x_test).all() and float(d.x_test.min()) == pytest.approx(-3.0)
    tiny = d._replace(  # training std 5e-31: a test pixel of 1e10 standardises to 2e40
        x_train=np.where(x > 0, np.float32(1e-30), np.float32(0)), x_test=np.full((4, 3), 1e10, np.float32)
    )
    with pytest.raises(DataError, match=r"x_test overflows float32 when standardised .*--no-standardize"):
        standardize(tiny)
