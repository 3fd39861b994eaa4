"""Structural guarantees behind the speed figures (no timings here; the benchmarks time).

On CPU every convolution of a conv net's compiled train step, inside a ``lax.scan`` loop body
too, has the forward's dimension numbers: the only form XLA:CPU gives its fast kernels inside
loop bodies (``benchmarks/loop_conv_repro.py`` shows the 70x slowdown of the others).
"""

import re

import jax
import jax.numpy as jnp
import optax
import pytest
from jax import lax

import jaxbp
from jaxbp.step import init_train_state, train_step_fn
from jaxbp.train.epoch import choose_epoch_builder, make_epoch, make_epoch_loop
from jaxbp.train.models import build_model

CANONICAL = {2: "b01f_01io->b01f"}


def _scanned_step_hlo(net, x_shape, classes):
    opt = optax.sgd(0.1, momentum=0.9)
    _, ts = init_train_state(net, opt, jax.random.PRNGKey(0), x_shape)
    step = train_step_fn(net, jaxbp.SoftmaxCrossEntropy(), opt)
    xs = jnp.zeros((2, *x_shape))
    ys = jnp.arange(2 * x_shape[0], dtype=jnp.int32).reshape(2, -1) % classes

    def epoch(ts, xs, ys):
        return lax.scan(lambda t, b: step(t, *b), ts, (xs, ys))

    return jax.jit(epoch).lower(ts, xs, ys).compile().as_text()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU layout choice (GPUs keep XLA's own)")
@pytest.mark.slow
@pytest.mark.parametrize("rank", [2])  # 1-D: XLA re-lays out two of them (0fb_o0i->f0b); not measured
def test_cpu_conv_backward_has_only_canonical_convolutions_in_a_loop_body(rank):
    conv = jaxbp.Conv2D if rank == 2 else jaxbp.Conv1D
    net = jaxbp.serial(
        conv(8, 3, strides=2),  # 2 input channels: its dW is an im2col matmul
        jaxbp.Relu(),
        conv(12, 3 if rank == 2 else 9, kernel_dilation=2),  # 8 * 9 = 72 patch columns: a convolution
        jaxbp.Relu(),
        conv(8, 3),  # (grouped convolutions are rewritten by XLA itself, forward included)
        jaxbp.Flatten(),
        jaxbp.Dense(3),
    )
    shape = (4, *(13,) * rank, 2)
    hlo = _scanned_step_hlo(net, shape, 3)
    labels = re.findall(r"convolution\([^\n]*dim_labels=([\w>-]+)", hlo)
    assert labels, "expected convolutions in the compiled step"
    assert set(labels) == {CANONICAL[rank]}, labels
    assert "while" in hlo  # the step really is inside a loop body


def test_auto_epoch_builder_scans_conv_nets():
    net = build_model("cnn", "digits", 10)
    assert choose_epoch_builder(net) is make_epoch
    assert choose_epoch_builder(net, "python") is make_epoch_loop
    with pytest.raises(ValueError, match="unknown loop"):
        choose_epoch_builder(net, "threads")
