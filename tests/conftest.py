"""Test setup: XLA's backend optimisation level, x64 available (library code still defaults to
float32), a PRNG key fixture."""

import os

# Most test programs run once, so their compile time is the cost. The fast tier compiles at
# XLA:CPU's backend level 1 with its classic elemental emitters: the same float64 results (level
# 0 is not exact: it approximates transcendental functions) at about half the compile time.
# `make test-all` (and CI) set JAXBP_TEST_XLA_LEVEL=2 and run everything with XLA's defaults,
# the compiler users get. Set before JAX starts its backend.
LEVEL = os.environ.setdefault("JAXBP_TEST_XLA_LEVEL", "1")
if LEVEL != "2":
    FLAGS = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level={LEVEL}"
    os.environ["XLA_FLAGS"] = f"{FLAGS} --xla_cpu_use_fusion_emitters=false".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
    """A fixed PRNG key."""
    return jax.random.PRNGKey(0)
