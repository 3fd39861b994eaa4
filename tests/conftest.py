"""Test setup: x64 available (library code still defaults to float32), a PRNG key fixture."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
    """A fixed PRNG key."""
    return jax.random.PRNGKey(0)
