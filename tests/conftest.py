"""Test setup: x64 available (library code still defaults to float32), a PRNG key fixture."""

import jax
import pytest
from hypothesis import settings

jax.config.update("jax_enable_x64", True)

settings.register_profile("ci", max_examples=6, deadline=None, derandomize=True)
settings.load_profile("ci")


@pytest.fixture
def key():
    """A fixed PRNG key."""
    return jax.random.PRNGKey(0)
