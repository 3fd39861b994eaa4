"""jaxbp's own compile options (``jaxbp.xla``): on CPU convolutions leave YNNPACK, nothing else changes.

No timings here (``docs/performance.md`` has them); these tests pin the structure that the
speed-up rests on, so a jaxlib that renames the option or changes its defaults shows up.
"""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from jaxbp import xla
from jaxbp.step import init_train_state, make_train_step, train_step_fn
from jaxbp.train.epoch import make_epoch

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's options")

CONV_NET = jaxbp.serial(  # channel counts YNNPACK takes by default (smaller convolutions stay in XLA)
    jaxbp.Conv2D(32, (3, 3), padding="SAME"),
    jaxbp.Relu(),
    jaxbp.Conv2D(64, (3, 3), padding="SAME"),
    jaxbp.Relu(),
    jaxbp.Flatten(),
    jaxbp.Dense(3),
)
SHAPE = (4, 8, 8, 1)
MLP = jaxbp.serial(jaxbp.Dense(32), jaxbp.Relu(), jaxbp.Dense(3))


def _step(net, shape):
    opt = optax.sgd(0.1, momentum=0.9)
    _, ts = init_train_state(net, opt, jax.random.PRNGKey(0), shape)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    y = jnp.arange(shape[0], dtype=jnp.int32) % 3
    return train_step_fn(net, jaxbp.SoftmaxCrossEntropy(), opt), (ts, x, y)


def _entry_ops(compiled) -> collections.Counter:
    """Op counts of the compiled entry computation; fusions by kind, YNNPACK ones marked."""
    text = compiled.as_text()
    ops = collections.Counter()
    for line in text[text.index("ENTRY") :].splitlines():
        if m := re.search(r"= \S+ ([\w-]+)\(", line):
            op = m.group(1)
            if op == "fusion":
                op += ":" + re.search(r"kind=(\w+)", line).group(1) + (":ynn" if "ynn" in line else "")
            ops[op] += 1
    return ops


def _ynn_convolutions(compiled) -> int:
    """YNNPACK fusions (anywhere, loop bodies included) whose computation is a convolution."""
    with_conv, current, calls = set(), None, []
    for line in compiled.as_text().splitlines():
        if header := re.match(r"^(?:ENTRY )?%([\w.-]+) \(.*\{$", line):
            current = header.group(1)
        elif "convolution(" in line:
            with_conv.add(current)
        if "fusion(" in line and "ynn" in line:
            calls += re.findall(r"calls=%([\w.-]+)", line)
    return sum(name in with_conv for name in calls)


def test_this_jaxlib_accepts_the_options():
    assert xla.compiler_options() == {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
        "LIBRARY_FUSION_TYPE_REDUCE"
    }


def test_a_program_without_convolutions_compiles_the_same():
    f, args = _step(MLP, (8, 16))
    default = jax.jit(f).lower(*args).compile()
    ours = xla.jit(f).lower(*args).compile()
    assert _entry_ops(ours) == _entry_ops(default)
    assert _entry_ops(ours)["fusion:kCustom:ynn"] > 0  # YNNPACK still runs the dots


def test_conv_steps_run_xla_convolutions_with_the_same_result():
    f, args = _step(CONV_NET, SHAPE)
    default = jax.jit(f).lower(*args).compile()
    assert _entry_ops(default)["convolution"] == 0 and _ynn_convolutions(default) >= 3  # by default
    for ours in (xla.jit(f).lower(*args).compile(), make_train_step(*_parts()).lower(*args).compile()):
        assert _entry_ops(ours)["convolution"] >= 3  # forwards, the top dW and dx (the bottom dW is a dot)
        assert _ynn_convolutions(ours) == 0
    (ts_a, loss_a), (ts_b, loss_b) = default(*args), xla.jit(f)(*args)
    for a, b in zip(
        jax.tree.leaves((ts_a.params, loss_a)), jax.tree.leaves((ts_b.params, loss_b)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6 * float(jnp.abs(a).max()))


def test_the_scanned_epoch_compiles_with_the_options():
    epoch = make_epoch(*_parts(), 4)
    ts = init_train_state(CONV_NET, _parts()[2], jax.random.PRNGKey(0), SHAPE)[1]
    x, y = jnp.zeros((8, *SHAPE[1:])), jnp.zeros((8,), jnp.int32)
    probe = (x[:4], y[:4], jax.random.PRNGKey(2))
    compiled = epoch.lower(ts, x, y, probe).compile()
    assert "while" in compiled.as_text() and "convolution(" in compiled.as_text()
    assert _ynn_convolutions(compiled) == 0  # the loop body's convolutions left YNNPACK


def _parts():
    return CONV_NET, jaxbp.SoftmaxCrossEntropy(), optax.sgd(0.1, momentum=0.9)
