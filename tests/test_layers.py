"""Every catalogue layer: backward == jax.vjp of its forward, for params and input."""

import jax.numpy as jnp
import numpy as np
import pytest
from harness import check_layer_against_vjp
from hypothesis import given
from hypothesis import strategies as st

from jaxbp.catalogue import CATALOGUE

NAMES = sorted(CATALOGUE)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_default_case(name, dtype, key):
    entry = CATALOGUE[name]
    layer, shape = entry.default()
    check_layer_against_vjp(layer, shape, key=key, dtype=dtype, make_input=entry.make_input, train=entry.train)


@pytest.mark.parametrize("name", NAMES)
@given(seed=st.integers(0, 2**31 - 1))
def test_random_shapes_float64(name, seed):
    import jax

    entry = CATALOGUE[name]
    layer, shape = entry.sample(np.random.default_rng(seed))
    check_layer_against_vjp(
        layer, shape, key=jax.random.PRNGKey(seed), dtype=jnp.float64, make_input=entry.make_input,
        train=entry.train,
    )
