"""The XLA compiler options of jaxbp's own compiled programs, and ``jit`` that applies them.

On CPU (jax 0.10.2's XLA), convolutions are handed to YNNPACK by default. On the CNN preset
that is the slow path: the second convolution's weight gradient takes 39 ms through YNNPACK and
12 ms through XLA's own convolution runtime, its forward 10 ms and 5 ms (batch 128; measured
side by side, ``docs/performance.md``), and the train step 64.6 ms against 36.9 ms. So jaxbp's
compiled programs keep YNNPACK for what it does well here (dots, dot fusions, reductions) and
leave convolutions to XLA. Programs without a convolution compile to the same executable either
way (``tests/test_xla_options.py`` checks this, so a jaxlib that changes its defaults shows up there).

The options are XLA:CPU's and experimental: if this jaxlib does not accept them, or JAX runs on
another backend, ``compiler_options()`` is empty and everything compiles with XLA's defaults.
A program you compile yourself can take them too: ``jax.jit(f, compiler_options=compiler_options())``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

_YNN = "xla_cpu_experimental_ynn_fusion_type"
# XLA:CPU's default YNNPACK fusion types (jax 0.10.2) without LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
_YNN_WITHOUT_CONVOLUTIONS = ",".join(
    f"LIBRARY_FUSION_TYPE_{kind}" for kind in ("DOT", "INDIVIDUAL_DOT", "REDUCE")
)


@functools.cache
def _accepted(backend: str) -> dict[str, Any]:
    if backend != "cpu":
        return {}
    options = {_YNN: _YNN_WITHOUT_CONVOLUTIONS}
    try:  # an option this jaxlib does not know (or an enum value it renamed) fails the compile
        jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
    except (jax.errors.JaxRuntimeError, ValueError):
        return {}
    return options


def compiler_options() -> dict[str, Any]:
    """The options jaxbp compiles its training and evaluation programs with on this backend."""
    return dict(_accepted(jax.default_backend()))


def jit(fun: Callable, **kwargs: Any) -> Callable:
    """``jax.jit(fun, **kwargs)`` with :func:`compiler_options` for the current backend."""
    return jax.jit(fun, compiler_options=compiler_options(), **kwargs)


__all__ = ["compiler_options", "jit"]
