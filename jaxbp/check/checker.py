"""Gradient verification: every hand-written backward against autodiff and finite differences.

:func:`check_layer` draws params, an input and a cotangent at random (for as many seeds
as asked, vmapped in one compiled program) and compares the layer's backward, for every
parameter leaf and for the input, against ``jax.vjp``, a ``jax.jvp`` dot-product test
and central finite differences in float64 (see :mod:`jaxbp.check._witness`). It runs in
float64 (x64 switched on for the duration and restored) and in the layer's own dtype,
with tolerances from the dtype's epsilon and the size of the computation.

:func:`check_network` checks every level of a network in place -- every leaf, wherever it sits
(inside ``serial``, ``Residual``, ``parallel``, nested), named by its path such as ``3/branch/1`` -- on the
activations and cotangents that really reach it, plus the loss and the end-to-end
gradient, and names the level where the error starts. :func:`check_sgd_step` compares
one full optax step. This module and its helpers are the only library code that calls
JAX autodiff: it is the oracle, never the implementation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check import _setup
from jaxbp.check._probe import Top, probe, tangent_size
from jaxbp.check._rows import FD_RTOL, build_report, default_rtol
from jaxbp.check._witness import cast, inner, witness_stats
from jaxbp.check.report import CheckReport
from jaxbp.check.sgd import check_sgd_step
from jaxbp.core import Array, Layer, Loss, Params, Shape, State, is_stateful, layer_name

__all__ = [
    "FD_RTOL",
    "CheckReport",
    "check_catalogue",
    "check_layer",
    "check_network",
    "check_sgd_step",
    "default_rtol",
]


def check_layer(
    layer: Layer,
    input_shape: Shape,
    *,
    key: Array | None = None,
    dtype=None,
    atol: float | None = None,
    rtol: float | None = None,
    seeds: int = 1,
    make_input=None,
    train: bool = True,
    perturb: bool = True,
    quantities: Sequence[str] = (),
) -> CheckReport:
    """Check ``layer.backward`` for every parameter leaf and the input against three witnesses.

    Params (from ``layer.init``), the input and the cotangent are drawn at random for each
    of ``seeds`` keys; all seeds run vmapped in one compiled program. The check runs in
    float64 (x64 is switched on for the call and restored) with vjp, jvp-dot-product and
    finite-difference witnesses, and again in the layer's own dtype with the vjp witness
    (tolerance from its epsilon).
    A network (``serial``, ``Residual``, ``parallel``, nested) is checked leaf by leaf in place and
    end to end, so the report names the level path. A layer with a ``check_forward`` is
    checked against the autodiff VJP of that function instead of its forward (a backward rule that
    is not the gradient by design), without finite differences. A non-finite hand-written value
    where the reference is finite (or the reverse) fails.

    Args:
      layer: any :class:`~jaxbp.core.Layer`, built-in or user-written.
      input_shape: the input shape, batch axis included.
      key: PRNG key (default ``PRNGKey(0)``).
      dtype: the layer's own dtype (default: the dtype of its initial params, else float32).
      atol: absolute tolerance added to every bound (default 0).
      rtol: relative tolerance (default :func:`default_rtol` of each dtype and size).
      seeds: number of random draws.
      make_input: ``(key, shape, dtype) -> x`` (default standard normal, drawn with NumPy).
      train: the mode for stateful layers (BatchNorm, Dropout); they get a fixed key.
      perturb: move the initial params by random noise (0.1 + half their RMS), so that special
        initial values (a scale of 1, a bias of 0) do not hide a bug that multiplies by them.
      quantities: names from :data:`jaxbp.quantities.NAMES`: also verify the layer's hand-written
        per-example and curvature contributions (its ``PerExample`` hooks) against autodiff oracles in float64
        (:func:`jaxbp.quantities.check.check_quantities`); their rows join the same report.

    Returns:
      A :class:`~jaxbp.check.report.CheckReport`.

    Raises:
      UsageError: ``seeds`` < 1, a negative or non-finite ``rtol``/``atol``, a bad ``input_shape``,
        or a layer too large to check in this machine's memory (before anything is compiled).
    """
    _setup.check_arguments("check_layer", seeds=seeds, rtol=rtol, atol=atol)
    shape = _setup.check_shape("check_layer", input_shape)
    key = jax.random.PRNGKey(0) if key is None else key
    abstract_params = jax.eval_shape(lambda k: layer.init(k, shape)[1], jax.random.PRNGKey(0))
    inputs = shape if shape and isinstance(shape[0], tuple) else (shape,)  # one shape or a tuple of them
    _setup.check_size(
        "check_layer", (abstract_params, [jax.ShapeDtypeStruct(s, jnp.float64) for s in inputs]), seeds
    )
    native = jnp.dtype(dtype) if dtype is not None else _setup.native_dtype(abstract_params)
    dtypes = _setup.passes(native)
    with jax.enable_x64(True):
        draws = _setup.layer_draws(
            layer, shape, key, seeds=seeds, native=native, make_input=make_input, train=train
        )

        def run(keys, noise, x, g, pool, state):
            kp, kx, kl = (_setup.rbg(k) for k in keys)
            params = cast(layer.init(kp, shape)[1], native)
            params = _setup.perturbed(params, noise) if perturb else params
            x = make_input(kx, shape, native) if x is None else x
            lkey = kl if is_stateful(layer) else None
            return {
                str(dt): probe(
                    layer,
                    params,
                    x,
                    state,
                    lkey,
                    train=train,
                    top=Top(value=lambda y, gd=cast(g, dt): inner(gd, y), hand_g=None, g=cast(g, dt)),
                    pool=pool if dt == jnp.float64 else None,
                    dtype=dt,
                    fd=dt == jnp.float64,
                )
                for dt in dtypes
            }

        batched = jax.vmap(run, in_axes=(0, 0, 0, 0, 0, None))  # one state for every seed
        out = _setup.compiled(batched, draws.keys, draws.noise, draws.x, draws.g, draws.pool, draws.state)
    report = build_report(
        f"{layer_name(layer)} on {shape}", _by_pass(out, dtypes, 0), rtol=rtol, atol=atol or 0.0, seeds=seeds
    )
    return (
        _with_quantities(report, layer, shape, tuple(quantities), key, seeds, make_input)
        if quantities
        else report
    )


def _with_quantities(
    report: CheckReport, layer: Layer, shape, quantities, key, seeds, make_input
) -> CheckReport:
    """``report`` joined with the rows of :func:`jaxbp.quantities.check.check_quantities` (float64)."""
    from jaxbp.quantities.check import QuantityReport, check_quantities

    def draw(k, s):
        return (make_input or jax.random.normal)(k, s, jnp.float64)

    with jax.enable_x64(True):
        q = check_quantities(layer, shape, quantities, seeds=seeds, key=key, make_input=draw)
    return QuantityReport(name=report.name, levels=report.levels, rows=report.rows + q.rows, seeds=seeds)


def _by_pass(out: dict, dtypes: list, seed_axis: int | None) -> dict:
    """``{dtype: (stats as NumPy with a leading seeds axis, ProbeInfo)}`` in the order of ``dtypes``
    (float64 first: its ties excuse the same draws in the native pass) from a probe program's output:
    the witnesses' raw values are reduced to statistics here, on the host."""

    def stats(raw, shapes):
        if raw is None:
            return None
        raw = {k: np.asarray(v) if seed_axis == 0 else np.asarray(v)[None] for k, v in raw.items()}
        return witness_stats(raw, [math.prod(s) for s in shapes])

    passes = {}
    for dt in dtypes:
        o = out[str(jnp.dtype(dt))]
        info = o["info"].value
        passes[jnp.dtype(dt)] = (
            {
                "levels": [stats(r, i.shapes) for r, i in zip(o["levels"], info.levels, strict=True)],
                "loss": stats(o["loss"], [(info.loss_size,)] if info.loss_size is not None else []),
                "e2e": stats(o["e2e"], info.e2e.shapes if info.e2e is not None else []),
            },
            info,
        )
    return passes


def check_network(
    net: Layer,
    loss: Loss,
    params: Params,
    x: Array,
    target: Array,
    *,
    state: State = (),
    key: Array | None = None,
    train: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> CheckReport:
    """Check every level of ``net`` in place, the loss, and the end-to-end gradient.

    Each level's own backward is run on the activation that really reaches it and on the
    true cotangent from above (autodiff of the levels above and the loss), against the
    same witnesses as :func:`check_layer`; the loss's backward is checked as level N; the
    whole hand-written gradient (``jaxbp`` forward-backward, input gradient included) is
    compared with ``jax.grad``. ``report.first_bad_level`` walks down from the loss to the
    first level whose own backward disagrees: where the error starts. End-to-end errors
    at and below it are marked ``follows``.

    Args:
      net: any network (each leaf is a level, named by its path) or a single layer.
      loss: the loss on top.
      params: the network's params.
      x: the input batch.
      target: the targets.
      state: the network's state (``()`` for plain networks).
      key: the PRNG key given to random layers (Dropout).
      train: the mode for stateful layers.
      atol: absolute tolerance (default 0).
      rtol: relative tolerance (default from the dtype and size).

    Returns:
      A :class:`~jaxbp.check.report.CheckReport` whose levels are the network's levels plus the loss.
    """
    _setup.check_arguments("check_network", rtol=rtol, atol=atol)
    with jax.enable_x64(True):
        native = _setup.native_dtype((params, x))
        dtypes = _setup.passes(native)

        pool = _setup.host_rng(jax.random.PRNGKey(1)).standard_normal(
            tangent_size(net, params, x, state, key, train=train)
        )

        def run(params, x, target, state, lkey, pool):
            out = {}
            for dt in dtypes:
                t = cast(target, dt)
                top = Top(
                    value=lambda y, t=t: loss.forward(y, t)[0],
                    hand_g=lambda y, t=t: loss.backward(loss.forward(y, t)[1]),
                    g=None,
                )
                out[str(dt)] = probe(
                    net,
                    params,
                    x,
                    state,
                    lkey,
                    train=train,
                    top=top,
                    pool=pool if dt == jnp.float64 else None,
                    dtype=dt,
                    fd=dt == jnp.float64,
                )
            return out

        out = _setup.compiled(run, params, x, target, state, key, pool)
    name = f"{layer_name(net)} + {loss.name or 'loss'} on {tuple(jnp.shape(x))}"
    return build_report(name, _by_pass(out, dtypes, None), rtol=rtol, atol=atol or 0.0, seeds=1)


def check_catalogue(
    names=None, *, seeds: int = 1, dtype=None, key: Array | None = None
) -> dict[str, CheckReport]:
    """Run :func:`check_layer` on the default configuration of each built-in catalogue entry.

    Args:
      names: entry names (default: the whole catalogue).
      seeds: random draws per entry (values vary, shapes stay: one compile per entry).
      dtype: the "own" dtype to check besides float64 (default: each layer's param dtype).
      key: PRNG key.

    Returns:
      ``{name: report}`` in catalogue order.
    """
    from jaxbp.check.catalogue import CATALOGUE

    _setup.check_arguments("check_catalogue", seeds=seeds)
    out = {}
    for name in names or list(CATALOGUE):
        entry = CATALOGUE[name]
        layer, shape = entry.default()
        out[name] = check_layer(
            layer, shape, key=key, dtype=dtype, seeds=seeds, make_input=entry.make_input, train=entry.train
        )
    return out
