"""What a check needs before it runs: argument checks, random draws, dtypes, and the compile call."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp

from jaxbp.check._witness import is_float
from jaxbp.errors import UsageError


def check_arguments(where: str, *, seeds: int = 1, rtol=None, atol=None) -> None:
    """Refuse out-of-range arguments with a :class:`~jaxbp.errors.UsageError` naming the argument."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UsageError(f"{where}: seeds must be an integer >= 1, got {seeds!r}")
    for arg, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and not (
            isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
        ):
            raise UsageError(
                f"{where}: {arg} must be a finite number >= 0 (or None for the default), got {value!r}"
            )


def check_shape(where: str, shape) -> tuple:
    """An input shape (or a tuple of shapes) of non-negative ints, else a UsageError."""

    def ok(s):
        return isinstance(s, (tuple, list)) and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in s
        )

    if ok(shape):
        return tuple(shape)
    if isinstance(shape, (tuple, list)) and shape and all(ok(s) for s in shape):
        return tuple(tuple(s) for s in shape)
    raise UsageError(
        f"{where}: input_shape must be a tuple of non-negative ints (or of such tuples), got {shape!r}"
    )


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def check_size(where: str, tree, seeds: int) -> None:
    """Refuse a check whose float64 witnesses would not fit in memory (instead of crashing the process).

    The float64 pass keeps about ``8 + 4 L`` vectors of the size of params plus input (``L`` leaves:
    one tangent and four finite-difference points per leaf), per seed.
    """
    leaves = jax.tree.leaves(tree)
    n = sum(math.prod(a.shape) for a in leaves)
    need = 8 * n * (8 + 4 * len(leaves)) * seeds
    have = _memory_bytes()
    if need > have // 2:
        raise UsageError(
            f"{where}: checking {n:,} values ({len(leaves)} leaves, {seeds} seeds) would need about"
            f" {need / 2**30:.1f} GiB in float64, more than half of this machine's {have / 2**30:.1f} GiB;"
            " check a smaller configuration of the layer (a backward's correctness does not depend on size)"
        )


def compiled(f, *args):
    """``jax.jit(f)(*args)`` compiled with XLA's backend optimisation level 1.

    A check runs its program once, so compile time dominates: level 1 compiles ~40% faster than
    the default with the same float64 results. (Level 0 is 3x faster but gave float32-accurate
    derivatives of transcendental functions in float64 programs -- caught by the catalogue's
    1e-14 tolerance, as any such regression would be.) Arrays are passed as arguments, never
    captured as constants.
    """
    lowered = jax.jit(f).lower(*args)
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 1})(*args)


def native_dtype(tree, fallback=jnp.float32):
    """The dtype of the first floating leaf of ``tree`` (``fallback`` when none)."""
    floats = [a.dtype for a in jax.tree.leaves(tree) if is_float(a)]
    return jnp.dtype(floats[0]) if floats else jnp.dtype(fallback)


def random_like(key, tree):
    """Standard normal draws shaped like ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    return treedef.unflatten(
        [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves, strict=False)]
    )


def perturbed(key, params):
    """``params`` + N(0, (0.1 + rms / 2)^2) noise per floating leaf: away from an init's special values."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    return treedef.unflatten(
        [
            a + (0.1 + 0.5 * jnp.sqrt(jnp.mean(a * a))) * jax.random.normal(k, a.shape, a.dtype)
            if is_float(a)
            else a
            for k, a in zip(keys, leaves, strict=False)
        ]
    )


def rbg(key):
    """The checker's own random draws use XLA's RngBitGenerator: one op instead of an unrolled
    threefry per draw halves the compile time, which dominates a check."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    data = jnp.asarray(data, jnp.uint32).reshape(-1)
    return jax.random.wrap_key_data(jnp.concatenate([data, data])[:4], impl="unsafe_rbg")


def passes(native) -> list:
    """The dtypes a check runs in: float64 first (with every witness), then the native dtype."""
    return [jnp.dtype(jnp.float64)] + ([native] if native != jnp.float64 else [])
