"""The training program: CLI output, resume == uninterrupted (bitwise), non-finite stop, epoch builders."""

import json

import jax
import numpy as np
import pytest
from harness import same_tree, tiny_data

import jaxbp
from jaxbp import cli
from jaxbp.layers.dropout import Dropout
from jaxbp.layers.norm import BatchNorm
from jaxbp.train import checkpoint
from jaxbp.train.epoch import make_epoch, make_epoch_loop
from jaxbp.train.fit import NonFiniteError, fit, make_optimizer


def stateful_net():
    """MLP with BatchNorm (state) and Dropout (needs the RNG): everything a checkpoint must carry."""
    return jaxbp.serial(
        jaxbp.Flatten(), jaxbp.Dense(8), BatchNorm(), jaxbp.Relu(), Dropout(0.2), jaxbp.Dense(3)
    )


def optimizer():
    """SGD with momentum, weight decay and a cosine schedule over 3 epochs of 6 steps."""
    return make_optimizer(0.1, momentum=0.9, weight_decay=1e-3, schedule="cosine", total_steps=3 * 6)


def test_cli_prints_epochs_json_and_writes_plot_and_checkpoint(tmp_path, capsys):
    d = tiny_data()
    np.savez(tmp_path / "d.npz", x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    args = ["train", "--dataset", "npz", "--data-dir", str(tmp_path / "d.npz"), "--epochs", "2"]
    args += ["--batch-size", "16", "--widths", "8", "--json", "--plot", str(tmp_path / "p.png")]
    args += ["--checkpoint-dir", str(tmp_path / "ck")]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-4].startswith("epoch   1/2  train loss") and lines[-3].startswith("epoch   2/2")
    assert (
        lines[-2] == f"wrote the loss/accuracy curves and the gradient flow per level to {tmp_path / 'p.png'}"
    )
    summary = json.loads(lines[-1])
    assert {"test_accuracy", "train_loss", "epochs", "seconds", "steps_per_second"} <= set(summary)
    assert summary["epochs"] == 2 and 0 <= summary["test_accuracy"] <= 1 and summary["seconds"] > 0
    assert (tmp_path / "p.png").stat().st_size > 10_000
    assert checkpoint.exists(tmp_path / "ck")

    assert cli.main([*args[:4], str(tmp_path / "missing.npz"), "--epochs", "1"]) == 2
    assert "no file" in capsys.readouterr().err


def test_resume_equals_uninterrupted(tmp_path):
    data, net, opt = tiny_data(), stateful_net(), optimizer()
    kw = dict(epochs=3, batch_size=16, seed=3, log=None, config={"run": "a"})
    full = fit(net, data, opt, **kw)

    def interrupt(epoch, history):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(net, data, opt, checkpoint_dir=str(tmp_path), on_epoch=interrupt, **kw)
    assert checkpoint.load(tmp_path, full.train_state)[1]["epoch"] == 1
    resumed = fit(net, data, opt, checkpoint_dir=str(tmp_path), resume=True, **kw)

    assert resumed.epochs == 3 and int(resumed.train_state.step) == 3 * 6
    assert same_tree(resumed.train_state, full.train_state)  # params, opt state, BN state, key, step
    for k in ("train_loss", "test_accuracy", "dx_norms", "dparam_norms"):
        assert resumed.history[k] == full.history[k], k
    assert len(full.history["dx_norms"]) == 4 and len(full.history["dx_norms"][0]) == 6

    with pytest.raises(checkpoint.CheckpointError, match="another run configuration"):
        fit(
            net,
            data,
            opt,
            checkpoint_dir=str(tmp_path),
            resume=True,
            **{**kw, "config": {"run": "b"}},
        )


def test_nonfinite_stops_with_epoch_batch_level_and_keeps_checkpoint(tmp_path):
    data, opt = tiny_data(), optimizer()
    net = jaxbp.serial(jaxbp.Flatten(), jaxbp.Dense(8), jaxbp.Tanh(), jaxbp.Dense(3))
    x = data.x_train.copy()
    x[7, 1, 2, 0] = np.inf  # one poisoned example: the data, not a level (which only passes it on)
    poisoned = data._replace(x_train=x)
    good = {}
    for builder in (make_epoch, make_epoch_loop):
        kw = dict(
            batch_size=16, log=None, checkpoint_dir=str(tmp_path / builder.__name__), epoch_builder=builder
        )
        good[builder] = fit(net, data, opt, epochs=1, **kw).train_state
        with pytest.raises(
            NonFiniteError,
            match=r"epoch 2, batch \d+: the input batch itself holds NaN or infinity \(rows \[\d+\]",
        ) as e:
            fit(net, poisoned, opt, epochs=2, resume=True, **kw)
        assert "last good checkpoint" in str(e.value)
        saved, meta = checkpoint.load(kw["checkpoint_dir"], good[builder])
        assert meta["epoch"] == 1 and same_tree(saved, good[builder])

    # the scanned epoch and the Python-loop epoch compute the same training (up to compiler rounding)
    a, b = good.values()
    assert int(a.step) == int(b.step) == 6 and np.array_equal(a.key, b.key)
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(u, v, rtol=2e-5, atol=1e-6)


def test_gradient_flow_history_and_nonfinite_locator_use_level_paths(tmp_path):
    """A residual block: the history names every leaf by its path, the plot labels them, and a
    non-finite gradient inside the branch is located at its path."""
    data = tiny_data()

    def Blowup():  # y = x; a broken backward: dx = g / 0
        def backward(params, x, g):
            # dx = g  (bug: divided by 0)
            return (), g / 0.0

        return jaxbp.Layer(lambda key, s: (tuple(s), ()), lambda p, x: (x, ()), backward, name="Blowup")

    branch = jaxbp.serial(jaxbp.Dense(16), jaxbp.Tanh())
    net = jaxbp.serial(jaxbp.Flatten(), jaxbp.Residual(branch), jaxbp.Dense(3))
    result = fit(net, data, make_optimizer(0.05), epochs=1, batch_size=16, log=None)
    h = result.history
    assert h["paths"] == ["0", "1/branch/0", "1/branch/1", "2"]
    assert h["levels"] == ["Flatten", "Dense(16)", "Tanh", "Dense(3)"]
    assert np.shape(h["dx_norms"]) == np.shape(h["dparam_norms"]) == (2, 4)
    from jaxbp.train.plot import plot_history

    plot_history(h, tmp_path / "flow.png")
    assert (tmp_path / "flow.png").stat().st_size > 0

    branch = jaxbp.serial(jaxbp.Relu(), Blowup(), jaxbp.Dense(16))
    bad = jaxbp.serial(jaxbp.Flatten(), jaxbp.Dense(16), jaxbp.Residual(branch), jaxbp.Dense(3))
    with pytest.raises(NonFiniteError, match=r"backward pass: level 2/branch/1 \(Blowup\)"):
        fit(bad, data, make_optimizer(0.05), epochs=1, batch_size=16, log=None)


def test_fitting_the_same_model_again_reuses_its_compiled_epoch():
    """Layers are not hashable (their ``extras`` mapping): the cache keys them by identity."""
    from jaxbp.train import pieces

    net, opt, loss = stateful_net(), optimizer(), jaxbp.SoftmaxCrossEntropy()
    first = pieces.compiled_epoch(make_epoch, net, loss, opt, 16)
    assert pieces.compiled_epoch(make_epoch, net, loss, opt, 16) is first
    assert pieces.compiled_epoch(make_epoch, stateful_net(), loss, opt, 16) is not first
    assert pieces.compiled_epoch(make_epoch, net, loss, opt, 8) is not first


def test_fit_takes_a_function_of_total_steps_writes_the_plot_and_says_where(tmp_path, capsys):
    """``functools.partial(make_optimizer, lr, schedule="cosine")``: fit passes the run's total steps,
    so the schedule spans the run (no ``3 * 44`` by hand); ``plot=`` writes the picture at the end."""
    import functools

    import optax

    from jaxbp.train import pieces

    data, net = tiny_data(), jaxbp.serial(jaxbp.Flatten(), jaxbp.Dense(3))
    seen = []

    def make(total_steps):
        seen.append(total_steps)
        return make_optimizer(0.1, schedule="cosine", total_steps=total_steps)

    fit(net, data, make, epochs=3, batch_size=16, log=None, plot=str(tmp_path / "c.png"))
    assert seen == [3 * (96 // 16)] and (tmp_path / "c.png").stat().st_size > 10_000
    assert pieces.total_steps(96, 16, 3) == 18
    plot_line = f"wrote the loss/accuracy curves and the gradient flow per level to {tmp_path / 'c.png'}"
    fit(net, data, make, epochs=1, batch_size=16, plot=str(tmp_path / "d.png"))
    assert capsys.readouterr().out.strip().splitlines()[-1] == plot_line.replace("c.png", "d.png")
    cosine = functools.partial(make_optimizer, 0.1, schedule="cosine")
    assert isinstance(pieces.resolve_optimizer(cosine, 18), optax.GradientTransformation)
    assert pieces.resolve_optimizer(cosine, 18) is pieces.resolve_optimizer(cosine, 18)  # compiled once
    with pytest.raises(jaxbp.errors.UsageError, match="a cosine schedule needs total_steps"):
        make_optimizer(0.1, schedule="cosine")
    with pytest.raises(jaxbp.errors.UsageError, match="unknown image format"):
        fit(net, data, make, epochs=1, batch_size=16, log=None, plot=str(tmp_path / "c.txt"))


def test_a_network_without_flatten_is_refused_naming_the_shapes_before_training():
    from jaxbp.train.data import load_dataset

    digits = load_dataset("digits")
    assert digits.x_train.shape[1:] == (8, 8, 1)  # what docs/training.md says load_dataset returns
    net = jaxbp.serial(jaxbp.Dense(64), jaxbp.Relu(), jaxbp.Dense(10))
    with pytest.raises(
        jaxbp.errors.LayerError,
        match=r"maps a batch of shape \(32, 8, 8, 1\) to \(32, 8, 8, 10\), but the loss needs logits of shape"
        r" \(32, 10\) .* the examples of digits are \(8, 8, 1\) arrays: start the network with Flatten\(\)",
    ):
        fit(net, digits, make_optimizer(0.05), epochs=1, batch_size=32, log=None)


def test_a_resumed_tracked_run_does_not_draw_before_training_at_the_resume_point(tmp_path):
    data, net, opt = tiny_data(), jaxbp.serial(jaxbp.Flatten(), jaxbp.Dense(3)), make_optimizer(0.1)
    kw = dict(epochs=3, batch_size=16, log=None, checkpoint_dir=str(tmp_path))

    def stop(epoch, history):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(net, data, opt, on_epoch=stop, **kw)  # not tracked
    steps = []
    result = fit(net, data, opt, resume=True, track=lambda ts: steps.append(int(ts.step)) or {"1": 1.0}, **kw)
    assert steps == [6, 12, 18]  # the resume point (after epoch 1), then epochs 2 and 3
    assert result.history["tracked"] == [None, {"1": 1.0}, {"1": 1.0}, {"1": 1.0}]
    from jaxbp.train.plot import plot_history

    plot_history(result.history, tmp_path / "p.png")  # the untracked point is blank, not an error


def test_huge_inputs_that_overflow_a_level_are_pointed_out_as_data():
    data = tiny_data()
    huge = data._replace(x_train=data.x_train * np.float32(1e37))  # finite, but Dense overflows
    net = jaxbp.serial(jaxbp.Flatten(), jaxbp.Dense(8), jaxbp.Dense(3))
    with pytest.raises(
        NonFiniteError,
        match=r"level 1 \(Dense\(8\)\).*the input batch holds values up to .*e\+37: a data problem\?",
    ):
        fit(net, huge, make_optimizer(0.05), epochs=1, batch_size=16, log=None)
