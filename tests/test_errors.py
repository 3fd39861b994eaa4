"""Bad input through the Python API: each a JaxbpError naming what is wrong, raised before any work.

Layer constructors, out-of-range labels under ``jax.jit``, odd data files and corrupt checkpoints.
The command line is in ``test_cli_train.py``; docs/failures.md tabulates both.
"""

import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from jaxbp.errors import CheckpointError, DataError, JaxbpError, LayerError
from jaxbp.layers.attention import MultiHeadAttention
from jaxbp.layers.conv import Conv1D, Conv2D
from jaxbp.layers.dropout import Dropout
from jaxbp.layers.embedding import Embedding
from jaxbp.layers.norm import BatchNorm, LayerNorm
from jaxbp.layers.pool import AvgPool, MaxPool
from jaxbp.layers.recurrent import LSTM, RNN
from jaxbp.layers.shape import Reshape
from jaxbp.layers.softmax import LogSoftmax, Softmax
from jaxbp.losses import SoftmaxCrossEntropy
from jaxbp.step import init_train_state, make_train_step
from jaxbp.train import checkpoint
from jaxbp.train.data import load_npz

# (constructor call, message it must raise): every constructor, every kind of bad argument.
BAD_LAYERS = [
    (lambda: jaxbp.Dense(-3), r"Dense: features must be a positive int, got -3"),
    (lambda: jaxbp.Dense(0), r"Dense: features must be a positive int, got 0"),
    (lambda: jaxbp.Dense(2.5), r"Dense: features must be a positive int, got 2.5 \(float\)"),
    (lambda: jaxbp.Dense("a"), r"Dense: features must be a positive int, got 'a' \(str\)"),
    (lambda: jaxbp.Dense(True), r"Dense: features .* got True \(bool\)"),
    (lambda: jaxbp.Dense(None), r"Dense: features .* got None"),
    (lambda: jaxbp.Dense(4, use_bias="no"), r"Dense: use_bias must be True or False, got 'no'"),
    (lambda: jaxbp.Dense(4, kernel_init=3), r"Dense: kernel_init must be an initializer"),
    (lambda: jaxbp.Dense(4, param_dtype=jnp.int32), r"Dense: param_dtype must be a floating-point dtype"),
    (lambda: jaxbp.Dense(4, param_dtype="float33"), r"Dense: param_dtype must be a floating-point dtype"),
    (lambda: Conv2D(0, 3), r"Conv2D: features must be a positive int, got 0"),
    (lambda: Conv2D(4, (3, 0)), r"Conv2D: kernel_size must be 2 positive ints, got \(3, 0\)"),
    (lambda: Conv2D(4, (3, 3, 3)), r"Conv2D: kernel_size must be 2 positive ints"),
    (lambda: Conv2D(4, 2.0), r"Conv2D: kernel_size must be"),
    (lambda: Conv2D(4, 3, strides=-1), r"Conv2D: strides must be 2 positive ints, got -1"),
    (lambda: Conv2D(4, 3, kernel_dilation=0), r"Conv2D: kernel_dilation must be 2 positive ints, got 0"),
    (lambda: Conv2D(4, 3, padding="FULL"), r"Conv2D: padding must be 'SAME', 'VALID'.*got 'FULL'"),
    (lambda: Conv2D(4, 3, padding=-1), r"Conv2D: padding must be .*got -1"),
    (lambda: Conv2D(4, 3, padding=((1, 1),)), r"Conv2D: padding must be .*2 non-negative \(lo, hi\) pairs"),
    (lambda: Conv2D(4, 3, padding=((1, -1), (0, 0))), r"Conv2D: padding must be"),
    (lambda: Conv2D(4, 3, feature_group_count=0), r"Conv2D: feature_group_count must be a positive int"),
    (lambda: Conv2D(4, 3, feature_group_count=3), r"Conv2D\(4, \(3, 3\)\): features=4 must be divisible"),
    (lambda: Conv2D(4, 3, use_bias=1), r"Conv2D: use_bias must be True or False, got 1"),
    (lambda: Conv1D(4, (3, 3)), r"Conv1D: kernel_size must be 1 positive ints"),
    (lambda: MaxPool(2), r"MaxPool: window_shape must be a sequence of positive ints, got 2"),
    (lambda: MaxPool(()), r"MaxPool: window_shape must be positive ints"),
    (lambda: MaxPool((2, 0)), r"MaxPool: window_shape must be positive ints, got \(2, 0\)"),
    (lambda: MaxPool((2, 2), strides=0), r"MaxPool: strides must be 2 positive ints, got 0"),
    (lambda: MaxPool((2, 2), strides=(1, 1, 1)), r"MaxPool: strides must be 2 positive ints"),
    (lambda: MaxPool((2, 2), padding="same-ish"), r"MaxPool: padding must be"),
    (
        lambda: AvgPool((2,), padding=((1, 1), (1, 1))),
        r"AvgPool: padding must be .*1 non-negative \(lo, hi\) pairs",
    ),
    (lambda: AvgPool((2, 2), count_include_pad="yes"), r"AvgPool: count_include_pad must be True or False"),
    (lambda: Dropout(1.0), r"Dropout: rate must lie in \[0, 1\), got 1.0"),
    (lambda: Dropout(-0.1), r"Dropout: rate must lie in \[0, 1\), got -0.1"),
    (lambda: Dropout(float("nan")), r"Dropout: rate must lie in \[0, 1\), got nan"),
    (lambda: Dropout("0.5"), r"Dropout: rate must lie in \[0, 1\), got '0.5' \(str\)"),
    (lambda: BatchNorm(momentum=1.5), r"BatchNorm: momentum must lie in \[0, 1\], got 1.5"),
    (lambda: BatchNorm(epsilon=0.0), r"BatchNorm: epsilon must lie in \(0, inf\), got 0.0"),
    (lambda: BatchNorm(axis_name=3), r"BatchNorm: axis_name must be a str or None, got 3"),
    (lambda: LayerNorm(epsilon=-1e-5), r"LayerNorm: epsilon must lie in \(0, inf\)"),
    (lambda: LayerNorm(epsilon=float("inf")), r"LayerNorm: epsilon must lie in \(0, inf\), got inf"),
    (lambda: Embedding(0, 4), r"Embedding: num_embeddings must be a positive int, got 0"),
    (lambda: Embedding(10, -4), r"Embedding: features must be a positive int, got -4"),
    (lambda: Embedding(10, 4, embedding_init=None), r"Embedding: embedding_init must be an initializer"),
    (lambda: MultiHeadAttention(0), r"MultiHeadAttention: num_heads must be a positive int, got 0"),
    (lambda: MultiHeadAttention(2.0), r"MultiHeadAttention: num_heads must be a positive int, got 2.0"),
    (lambda: MultiHeadAttention(2, causal="yes"), r"MultiHeadAttention: causal must be True or False"),
    (lambda: RNN(0), r"RNN: hidden must be a positive int, got 0"),
    (lambda: LSTM(-1), r"LSTM: hidden must be a positive int, got -1"),
    (lambda: LSTM(8, param_dtype=jnp.int8), r"LSTM: param_dtype must be a floating-point dtype"),
    (lambda: Reshape((2, -1, -1)), r"Reshape: shape must be a sequence of ints >= 1 \(one may be -1\)"),
    (lambda: Reshape((0, 4)), r"Reshape: shape must be .*got \(0, 4\)"),
    (lambda: Reshape(5), r"Reshape: shape must be .*got 5 \(int\)"),
    (lambda: Softmax(axis=1.5), r"Softmax: axis must be an int, got 1.5"),
    (lambda: LogSoftmax(axis="last"), r"LogSoftmax: axis must be an int, got 'last'"),
    (lambda: jaxbp.LeakyRelu("0.1"), r"LeakyRelu: negative_slope must lie in \(-inf, inf\), got '0.1'"),
    (lambda: jaxbp.Elu(float("nan")), r"Elu: alpha must lie in \(-inf, inf\), got nan"),
    (lambda: jaxbp.Gelu(approximate="tanh"), r"Gelu: approximate must be True or False, got 'tanh'"),
]


@pytest.mark.parametrize("make, message", BAD_LAYERS, ids=[m for _, m in BAD_LAYERS])
def test_bad_constructor_argument_is_a_layer_error_naming_layer_and_value(make, message):
    with pytest.raises(LayerError, match=message):
        make()


def test_good_constructor_arguments_still_accepted():
    """NumPy integers, explicit padding, one -1 in a reshape: normalised, names unchanged."""
    assert jaxbp.Dense(np.int64(3)).name == "Dense(3)"
    assert Conv2D(4, 3, strides=2, padding=((1, 0), (0, 1))).name == "Conv2D(4, (3, 3))"
    assert MaxPool((2, 2), strides=1, padding="same").name == "MaxPool((2, 2))"
    assert Reshape((2, -1)).name == "Reshape((2, -1))"
    assert Dropout(0).name == "Dropout(0)" and jaxbp.LeakyRelu(1).name == "LeakyRelu(1)"


# --- out-of-range labels under jax.jit: a NaN loss and NaN gradient rows, never a finite loss ---


def _mlp_and_batch():
    net = jaxbp.serial(jaxbp.Dense(5), jaxbp.Relu(), jaxbp.Dense(10))
    _, params = net.init(jax.random.PRNGKey(0), (4, 3))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    return net, params, x


def test_out_of_range_labels_under_jit_give_nan_loss_and_gradients():
    net, params, x = _mlp_and_batch()
    loss = SoftmaxCrossEntropy()
    vg = jax.jit(jaxbp.value_and_grad(net, loss))
    good = jnp.array([0, 3, 9, 2])
    value, grads = vg(params, x, good)
    assert np.isfinite(value) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    for bad in (15, -1, 10):
        value, grads = vg(params, x, good.at[1].set(bad))
        assert np.isnan(value), bad
        assert all(np.isnan(g).any() for g in jax.tree.leaves(grads)), bad  # every level's gradient
    with pytest.raises(LayerError, match=r"labels must lie in \[0, 10\), got values in \[-1, 9\]"):
        jaxbp.value_and_grad(net, loss)(params, x, good.at[1].set(-1))  # eagerly: refused outright


def test_out_of_range_labels_in_make_train_step_give_nan_loss():
    net, _, x = _mlp_and_batch()
    loss, opt = SoftmaxCrossEntropy(), optax.sgd(0.1)
    step = make_train_step(net, loss, opt)
    _, ts = init_train_state(net, opt, jax.random.PRNGKey(0), (4, 3))
    ts, value = step(ts, x, jnp.array([15, 0, -1, 2]))
    assert np.isnan(value)
    assert not np.isfinite(jax.tree.leaves(ts.params)[0]).all()  # the guard of jaxbp train sees it


@pytest.mark.slow
def test_out_of_range_labels_stop_fit_with_a_clear_error():
    """``fit`` on a Dataset built by hand (the loaders refuse such labels): the run stops at once."""
    from jaxbp.train.data import Dataset
    from jaxbp.train.fit import fit, make_optimizer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    y = np.arange(32, dtype=np.int32) % 10
    y[5] = 15
    data = Dataset(x, y, x[:8], y[:8] % 10, 10, "bad-labels")
    net = jaxbp.serial(jaxbp.Dense(4), jaxbp.Relu(), jaxbp.Dense(10))
    with pytest.raises(JaxbpError, match=r"labels must lie in \[0, 10\), got values in \[\d+, 15\]"):
        fit(net, data, make_optimizer(0.1), epochs=1, batch_size=16, log=None)


# --- data files: DataError naming the file and the problem ---


def _npz_arrays(n_train=8, n_test=4):
    rng = np.random.default_rng(0)
    return dict(
        x_train=rng.normal(size=(n_train, 3)).astype(np.float32),
        y_train=np.arange(n_train) % 3,
        x_test=rng.normal(size=(n_test, 3)).astype(np.float32),
        y_test=np.arange(n_test) % 3,
    )


def _bad_npz_files(tmp_path):
    """(file, message) pairs: every way a data file can be odd that the issue lists, and a few more."""
    a = _npz_arrays()
    good = tmp_path / "good.npz"
    np.savez(good, **a)
    raw = good.read_bytes()
    cases = []

    def add(name, message, arrays=None, data=None):
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        else:
            np.savez(path, **{**a, **arrays})
        cases.append((path, message))

    add("empty.npz", r"empty.npz: cannot read as .npz without pickle \(EOFError", data=b"")
    add("truncated.npz", r"truncated.npz: cannot read as .npz", data=raw[: len(raw) // 2])
    flipped = bytearray(raw)
    flipped[raw.index(a["x_train"].tobytes()) + 5] ^= 0x10  # one bit inside x_train's data
    add("flipped.npz", r"flipped.npz: cannot read as .npz .*CRC", data=bytes(flipped))
    np.save(tmp_path / "single.npy", a["x_train"])
    add("renamed.npz", r"renamed.npz: not an .npz archive", data=(tmp_path / "single.npy").read_bytes())
    add("text.npz", r"text.npz: cannot read", data=b"x_train,y_train\n1,2\n")
    add(
        "strings.npz",
        r"strings.npz: x_train must hold real numbers, got dtype <U1",
        {"x_train": np.full((8, 3), "a")},
    )
    add(
        "complex.npz",
        r"complex.npz: x_test must hold real numbers, got dtype complex",
        {"x_test": a["x_test"] + 1j},
    )
    add("object.npz", r"object.npz: cannot read as .npz without pickle", {"x_train": np.array([None] * 8)})
    add(
        "float_labels.npz",
        r"y_train must hold integer labels, got dtype float",
        {"y_train": a["y_train"] * 1.0},
    )
    huge = a["y_train"].astype(np.int64)
    huge[3] = 2**31 - 2
    add(
        "huge_label.npz",
        r"huge_label.npz: y_train's largest label is 2147483646.*at most 65536",
        {"y_train": huge},
    )
    add(
        "negative.npz",
        r"negative.npz: train labels out of range: values in \[-1, 1\]",
        {"y_train": a["y_train"] - 1},
    )
    add(
        "zero_features.npz",
        r"zero_features.npz: train examples have no features",
        {"x_train": np.zeros((8, 0))},
    )
    add("vector.npz", r"vector.npz: train examples have no features .*shape \(8,\)", {"x_train": np.zeros(8)})
    add(
        "empty_train.npz",
        r"empty_train.npz: empty train split",
        {"x_train": np.zeros((0, 3)), "y_train": np.zeros(0, int)},
    )
    add(
        "empty_test.npz",
        r"empty_test.npz: empty test split",
        {"x_test": np.zeros((0, 3)), "y_test": np.zeros(0, int)},
    )
    add(
        "mismatch.npz",
        r"mismatch.npz: train images of shape \(8, 3\) do not match labels of shape \(7,\)",
        {"y_train": np.arange(7) % 3},
    )
    add(
        "shapes.npz",
        r"shapes.npz: train images \(3,\) and test images \(4,\) differ",
        {"x_test": np.zeros((4, 4))},
    )
    add("nan.npz", r"nan.npz: test images contain NaN or infinity", {"x_test": np.full((4, 3), np.nan)})
    add(
        "overflow.npz",
        r"overflow.npz: train images contain NaN or infinity",
        {"x_train": np.full((8, 3), 1e300)},
    )
    add(
        "one_class.npz",
        r"one_class.npz: needs at least 2 classes, got 1",
        {"y_train": np.zeros(8, int), "y_test": np.zeros(4, int)},
    )
    return cases


def test_odd_data_files_are_data_errors_naming_file_and_problem(tmp_path):
    cases = _bad_npz_files(tmp_path)
    for path, message in cases:
        with pytest.raises(DataError, match=message):
            load_npz(path)
    assert len(cases) == 20
    assert load_npz(tmp_path / "good.npz").num_classes == 3


# --- checkpoints: CheckpointError naming the file and the problem ---


def _tree():
    return {"w": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3), "k": jnp.array([1, 2], jnp.uint32)}


def _run_meta(epoch=1):
    history = {k: [0.5] * epoch for k in ("epoch", "train_loss", "test_accuracy", "seconds")}
    history.update(levels=["Dense(3)"], dx_norms=[[1.0]] * (epoch + 1), dparam_norms=[[1.0]] * (epoch + 1))
    return {"epoch": epoch, "history": history, "config": {"lr": 0.1}}


def _rewrite_meta(path, meta_text):
    """Replace the ``meta`` entry of a checkpoint (keeping its leaves)."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "meta"}
    np.savez(path, **arrays, **({"meta": np.asarray(meta_text)} if meta_text is not None else {}))


def test_corrupt_checkpoints_are_checkpoint_errors_naming_file(tmp_path):
    checkpoint.save(tmp_path, _tree(), _run_meta())
    path = checkpoint.path_in(tmp_path)
    raw = path.read_bytes()
    bad = {
        "empty": (b"", r"unreadable checkpoint \(EOFError"),
        "truncated": (raw[: len(raw) // 2], r"unreadable checkpoint \(BadZipFile"),
        "header only": (raw[:30], r"unreadable checkpoint"),
        "not a zip": (b"hello world" * 10, r"unreadable checkpoint \("),
    }
    flipped = bytearray(raw)
    flipped[raw.index(np.arange(6.0, dtype=np.float32).tobytes()) + 3] ^= 0x01
    bad["bit flip in a leaf"] = (bytes(flipped), r"CRC")
    np.save(tmp_path / "x.npy", np.zeros(3))
    bad["npy renamed"] = ((tmp_path / "x.npy").read_bytes(), r"a single array, not an .npz archive")
    for data, message in bad.values():
        path.write_bytes(data)
        for call in (lambda: checkpoint.load(tmp_path, _tree()), lambda: checkpoint.read_meta(tmp_path)):
            with pytest.raises(CheckpointError, match=rf"{path}: .*{message}"):
                call()
    # read_meta checks every member's CRC, so a flipped leaf is found before training starts
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"entry 'leaf_00000.npy' fails its CRC check|CRC"):
        checkpoint.read_meta(tmp_path)


@pytest.mark.parametrize(
    "meta, message",
    [
        (None, r"no 'meta' entry"),
        ("{not json", r"unreadable checkpoint \(JSONDecodeError"),
        ("[1, 2]", r"malformed metadata \(a JSON list, expected an object\)"),
        (json.dumps({k: v for k, v in _run_meta().items() if k != "history"}), r"'history' is None"),
        (json.dumps({**_run_meta(), "epoch": "1"}), r"'epoch' is '1', expected an int >= 0"),
        (json.dumps({**_run_meta(), "epoch": -1}), r"'epoch' is -1"),
        (json.dumps({k: v for k, v in _run_meta().items() if k != "config"}), r"no 'config'"),
        (json.dumps({**_run_meta(), "history": {"epoch": [1]}}), r"history has no list 'train_loss'"),
        (json.dumps({**_run_meta(2), "epoch": 3}), r"history\['epoch'\] has 2 entries for epoch 3"),
    ],
)
def test_malformed_run_metadata(tmp_path, meta, message):
    checkpoint.save(tmp_path, _tree(), _run_meta())
    _rewrite_meta(checkpoint.path_in(tmp_path), meta)
    with pytest.raises(CheckpointError, match=rf"checkpoint.npz: .*{message}"):
        checkpoint.validate_run_meta(tmp_path, checkpoint.read_meta(tmp_path))


def test_stale_temporary_files_are_cleaned_and_configs_compared(tmp_path):
    checkpoint.save(tmp_path, _tree(), _run_meta())
    stale = [tmp_path / ".checkpoint-abc.npz.tmp", tmp_path / ".checkpoint-def.npz.tmp"]
    for p in stale:
        p.write_bytes(b"PK partial")
    (tmp_path / "notes.txt").write_text("keep")
    assert checkpoint.clean_stale(tmp_path) == stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "notes.txt"]
    assert checkpoint.clean_stale(tmp_path / "missing") == []
    diff = checkpoint.config_difference(
        {"lr": 0.1, "data": {"source": "a.npz", "fingerprint": "12"}},
        {"lr": 0.2, "data": {"source": "a.npz", "fingerprint": "34"}, "seed": 0},
    )
    assert diff == "data.fingerprint: saved 12, now 34; lr: saved 0.1, now 0.2; seed: saved (none), now 0"


def test_zipfile_errors_do_not_escape(tmp_path):
    """A zip whose central directory is intact but whose member is not an .npy file."""
    with zipfile.ZipFile(checkpoint.path_in(tmp_path), "w") as z:
        z.writestr("meta.npy", b"not an npy header")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        checkpoint.read_meta(tmp_path)


# --- networks, rules and quantities: one line, before anything runs (docs/failures.md) ---


def test_python_api_bad_inputs_are_one_line_each():
    from jaxbp import rules
    from jaxbp.errors import UsageError
    from jaxbp.quantities import value_grad_and

    loss = jaxbp.SoftmaxCrossEntropy()
    with pytest.raises(UsageError, match="name at least one quantity; choose from batch_grad"):
        value_grad_and(jaxbp.serial(jaxbp.Dense(2)), loss)
    net = jaxbp.serial(jaxbp.Dense(4), jaxbp.BatchNorm(), jaxbp.Dense(2))
    _, params = net.init(jax.random.PRNGKey(0), (3, 5))
    with pytest.raises(LayerError, match=r"got state with 0 entries \(no state: pass state=jaxbp.init_state"):
        jaxbp.apply(net, params, jnp.ones((3, 5)), state=(), train=True)
    with pytest.raises(LayerError, match="train must be True or False, got 'yes'"):
        jaxbp.apply(net, params, jnp.ones((3, 5)), state=jaxbp.init_state(net, (3, 5)), train="yes")
    mlp = jaxbp.serial(jaxbp.Dense(4), jaxbp.Tanh(), jaxbp.Dense(2))
    other = jaxbp.serial(jaxbp.Dense(4), jaxbp.Dense(2))
    _, other_params = other.init(jax.random.PRNGKey(0), (3, 5))
    with pytest.raises(LayerError, match=r"got params with 2 entries \(params from another network\?\)"):
        rules.feedback_like(rules.feedback_alignment(mlp), other_params)


def test_a_float16_input_to_a_float32_network_hands_down_float16():
    net = jaxbp.serial(jaxbp.Dense(4), jaxbp.Tanh(), jaxbp.Dense(2))
    _, params = net.init(jax.random.PRNGKey(0), (3, 5))
    x = jnp.ones((3, 5), jnp.float16)
    value, grads = jaxbp.value_and_grad(net, jaxbp.SoftmaxCrossEntropy())(params, x, jnp.array([0, 1, 0]))
    assert grads[0]["W"].dtype == jnp.float32 and bool(jnp.isfinite(value))
