"""Test setup: XLA's backend optimisation level, x64 available (library code still defaults to
float32), a PRNG key fixture."""

import os

# Most test programs run once, so their compile time is the cost. XLA:CPU's backend level 1
# compiles them faster than its default (2) with the same float64 results (level 0 does not: it
# approximates transcendental functions). `make test-all` (and CI) run everything at level 2, the
# level users get. Set before JAX starts its backend.
LEVEL = os.environ.setdefault("JAXBP_TEST_XLA_LEVEL", "1")
FLAGS = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level={LEVEL}"
os.environ["XLA_FLAGS"] = FLAGS.strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
    """A fixed PRNG key."""
    return jax.random.PRNGKey(0)
