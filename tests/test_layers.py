"""Every catalogue layer: backward == jax.vjp of its forward, for params and input.

Three sources of configurations, all in one harness (``harness.check_layer_against_vjp``):

* **edge cases**, chosen on purpose (``harness.edge_cases``): attention with head_dim > 1,
  normalisations over >= 3 elements, overlapping and explicitly padded pools, grouped convs ...;
* **fresh random draws** from each entry's ``sample``, new on every run (the seed is printed on a
  failure; ``JAXBP_TEST_SEED=N`` reproduces it): one per layer in the fast tier, more in the slow tier;
* each layer's **default** configuration in float32.

float64 to 1e-12 relative; float32 to 2e-5. The checker's own tests (tests/test_check.py) run the
checker's three witnesses over many seeds.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from harness import check_layer_against_vjp, edge_cases, run_seed

from jaxbp.check.catalogue import CATALOGUE

NAMES = sorted(CATALOGUE)
EDGE = edge_cases()
EDGE_IDS = [(name, i) for name in sorted(EDGE) for i in range(len(EDGE[name]))]
SEED = run_seed()
SLOW_DRAWS = 6


def check_entry(name, layer, shape, seed, dtype=jnp.float64):
    entry = CATALOGUE[name]
    try:
        check_layer_against_vjp(
            layer, shape, key=seed, dtype=dtype, make_input=entry.make_input, train=entry.train
        )
    except AssertionError as e:
        raise AssertionError(f"{layer.name or name} on {shape}, seed {seed}: {e}") from e


def test_every_entry_with_a_degenerate_draw_has_edge_cases():
    assert set(EDGE) <= set(CATALOGUE)
    for name in ("MultiHeadAttention", "BatchNorm", "LayerNorm", "MaxPool", "AvgPool", "Conv2D", "Conv1D"):
        assert EDGE[name], name


@pytest.mark.parametrize(("name", "i"), EDGE_IDS, ids=[f"{n}-{i}" for n, i in EDGE_IDS])
def test_edge_cases_float64(name, i):
    layer, shape = EDGE[name][i]
    check_entry(name, layer, shape, SEED + i)


@pytest.mark.parametrize("name", NAMES)
def test_default_case_float32(name):
    layer, shape = CATALOGUE[name].default()
    check_entry(name, layer, shape, SEED, jnp.float32)


@pytest.mark.parametrize("name", NAMES)
def test_fresh_random_draw_float64(name):
    layer, shape = CATALOGUE[name].sample(np.random.default_rng(SEED))
    check_entry(name, layer, shape, SEED)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_more_random_draws_float64(name):
    for k in range(1, SLOW_DRAWS + 1):
        layer, shape = CATALOGUE[name].sample(np.random.default_rng(SEED + k))
        check_entry(name, layer, shape, SEED + k)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "i"), EDGE_IDS, ids=[f"{n}-{i}" for n, i in EDGE_IDS])
def test_checker_sweep_over_edge_cases(name, i):
    """The checker's three witnesses over 10 seeds on each edge case (grouped convs, head_dim > 1 ...),
    not only on each layer's default configuration."""
    from jaxbp.check import check_layer

    layer, shape = EDGE[name][i]
    entry = CATALOGUE[name]
    report = check_layer(layer, shape, seeds=10, make_input=entry.make_input, train=entry.train)
    assert report.ok, str(report)
