"""What a check needs before it runs: argument checks, random draws, dtypes, and the compile call."""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check._witness import cast, is_float
from jaxbp.core import Layer, apply, init_state, is_stateful
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
    """``jax.jit(f)(*args)`` compiled the cheapest way that keeps float64 exact.

    A check runs its program once, so compile time is what a user waits for. XLA's backend
    optimisation level 1 compiles ~40% faster than the default with the same float64 results
    (level 0 is 3x faster but gave float32-accurate derivatives of transcendental functions in
    float64 programs -- caught by the catalogue's 1e-14 tolerance, as any such regression would be).
    On CPU, XLA's classic elemental emitters compile each fusion ~2x faster than its newer fusion
    emitters (a 5-level CNN check: 1.7 s against 3.2 s). Arrays are passed as arguments, never
    captured as constants.

    Matrix products and convolutions are traced at ``"highest"`` precision: a GPU otherwise runs
    float32 ones in TF32 (10-bit mantissa) and a TPU in bfloat16 passes, and two correct backwards
    that order their products differently (the hand-written one and ``jax.vjp``'s) then disagree at
    that precision, far beyond float32's tolerance. The check is of the derivative, not of the
    backend's speed-for-precision trade (on an H200 the LSTM's float32 pass failed without this).
    """
    compile_options = _CHECK_OPTIONS.get(jax.default_backend(), _ANY)
    return lowered(f, *args).compile(compiler_options=compile_options)(*args)


def lowered(f, *args):
    """``jax.jit(f).lower(*args)`` with products at full precision (see :func:`compiled`)."""
    with full_precision():
        return jax.jit(f).lower(*args)


def full_precision():
    """The checkers' products: true float32, not TF32 (GPU) or bfloat16 passes (TPU); see :func:`compiled`."""
    return jax.default_matmul_precision("highest")


_ANY = {"xla_backend_optimization_level": 1}
_CHECK_OPTIONS = {"cpu": {**_ANY, "xla_cpu_use_fusion_emitters": False}}


def native_dtype(tree, fallback=jnp.float32):
    """The dtype of the first floating leaf of ``tree`` (``fallback`` when none)."""
    floats = [a.dtype for a in jax.tree.leaves(tree) if is_float(a)]
    return jnp.dtype(floats[0]) if floats else jnp.dtype(fallback)


def host_rng(key, *salt: int) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key (typed or raw) and ``salt``: the checker draws on the host,
    so no random op enters the compiled check (each would be compiled for a program run once)."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.random.default_rng([int(v) for v in np.asarray(data, np.uint32).ravel()] + list(salt))


def perturbed(params, noise):
    """``params`` + (0.1 + rms / 2) ``noise`` per floating leaf: away from an init's special values."""
    return jax.tree.map(
        lambda a, n: a + (0.1 + 0.5 * jnp.sqrt(jnp.mean(a * a))) * n.astype(a.dtype) if is_float(a) else a,
        params,
        noise,
    )


class Draws(NamedTuple):
    """The random inputs of a layer check, drawn on the host, each with a leading seeds axis.

    Attributes:
      keys: (seeds, 3, 4) uint32: the keys (``unsafe_rbg``) of the layer's ``init``, of a user's
        ``make_input`` and of a stateful layer's forward.
      noise: standard normal draws shaped like the params (the perturbation).
      x: the input (None when a user's ``make_input`` draws it in the program).
      g: the output cotangent.
      pool: standard normal float64 draws the witnesses' random tangents are sliced from.
      state: the layer's initial state, shared by all seeds (no seeds axis).
    """

    keys: Any
    noise: Any
    x: Any
    g: Any
    pool: Any
    state: Any


def layer_draws(layer: Layer, shape, key, *, seeds: int, native, make_input, train: bool) -> Draws:
    """Draw ``seeds`` sets of keys, noise, input, cotangent and tangents for a layer check, with NumPy.

    Only the layer's own ``init`` (and a user's ``make_input``) run in the check's program, on the
    keys drawn here: every other draw is NumPy, so it adds nothing to compile.
    """
    from jaxbp.check._probe import tangent_size

    rng = host_rng(key)
    keys = rng.integers(0, 2**32, (seeds, 3, 4), dtype=np.uint32)
    key1 = jax.ShapeDtypeStruct((4,), jnp.uint32)
    params = jax.eval_shape(lambda k: cast(layer.init(rbg(k), shape)[1], native), key1)
    state = cast(init_state(layer, shape), native)
    lkey = jax.eval_shape(rbg, key1) if is_stateful(layer) else None
    if make_input is None:
        x = _normal(rng, (seeds,), _input_like(shape, native), native)
        x1 = _input_like(shape, native)
    else:
        x = None
        x1 = jax.eval_shape(lambda k: make_input(rbg(k), shape, native), key1)
    y = jax.eval_shape(
        lambda p, x, k: apply(layer, p, x, state=state, key=k, train=train)[0], params, x1, lkey
    )
    n = tangent_size(layer, params, x1, state, lkey, train=train)
    return Draws(
        keys=jnp.asarray(keys),
        noise=_normal(rng, (seeds,), params, jnp.float64),
        x=x,
        g=_normal(rng, (seeds,), y, native),
        pool=jnp.asarray(rng.standard_normal((seeds, n))),
        state=state,
    )


def _input_like(shape, dtype):
    """The abstract default input: one array of ``shape``, or a tuple for a tuple of shapes."""
    if shape and isinstance(shape[0], tuple):
        return tuple(jax.ShapeDtypeStruct(s, dtype) for s in shape)
    return jax.ShapeDtypeStruct(shape, dtype)


def _normal(rng: np.random.Generator, lead: tuple, tree, dtype):
    """Standard normal NumPy draws shaped ``lead + leaf.shape`` for each floating leaf of ``tree``
    (zeros for the others), as arrays of ``dtype``."""
    return jax.tree.map(
        lambda a: (
            jnp.asarray(rng.standard_normal(lead + a.shape), dtype)
            if is_float(a)
            else jnp.zeros(lead + a.shape, a.dtype)
        ),
        tree,
    )


def rbg(data):
    """The key of XLA's RngBitGenerator (``unsafe_rbg``) with 4 uint32 words drawn on the host: one op
    per draw of the layer's own ``init``, where threefry would unroll into many (compile time)."""
    return jax.random.wrap_key_data(data, impl="unsafe_rbg")


def passes(native) -> list:
    """The dtypes a check runs in: float64 first (with every witness), then the native dtype."""
    return [jnp.dtype(jnp.float64)] + ([native] if native != jnp.float64 else [])
