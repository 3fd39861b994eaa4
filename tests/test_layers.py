"""Every catalogue layer: backward == jax.vjp of its forward, for params and input.

float64 (<= 1e-12 relative) over random configurations drawn by hypothesis; float32 (2e-5)
on each layer's default configuration. The checker's own test (tests/test_check.py) runs
the default configurations again over 50 seeds in both dtypes with three witnesses.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from harness import check_layer_against_vjp
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxbp.check.catalogue import CATALOGUE

NAMES = sorted(CATALOGUE)


@pytest.mark.parametrize("name", NAMES)
def test_default_case_float32(name, key):
    entry = CATALOGUE[name]
    layer, shape = entry.default()
    check_layer_against_vjp(
        layer, shape, key=key, dtype=jnp.float32, make_input=entry.make_input, train=entry.train
    )


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=4)
@given(seed=st.integers(0, 2**31 - 1))
def test_random_shapes_float64(name, seed):
    import jax

    entry = CATALOGUE[name]
    layer, shape = entry.sample(np.random.default_rng(seed))
    check_layer_against_vjp(
        layer,
        shape,
        key=jax.random.PRNGKey(seed),
        dtype=jnp.float64,
        make_input=entry.make_input,
        train=entry.train,
    )
