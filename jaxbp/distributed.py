"""Data-parallel training on JAX's own machinery: a 1-D device mesh, ``shard_map`` and ``pmean``.

Each device (mesh position along :data:`AXIS`) holds a copy of the params and optimizer
state and one equal slice of every batch. Inside one ``jax.jit``-compiled step each shard
runs the forward and the hand-written, layer-wise backward on its slice; the gradients
(and the loss) are averaged over the axis with ``lax.pmean`` — one all-reduce per gradient
leaf, which XLA may fuse — and every device applies the same optax update::

    g_d   = dL_d/dω            (manual backward on shard d, L_d = mean loss over its B/N rows)
    dL/dω = pmean_d g_d = (1/N) Σ_d g_d       (equal shards: the gradient of the global mean loss)
    ω     ← ω + optimizer.update(dL/dω)         (identical on every device)

BatchNorm: build it with ``BatchNorm(..., axis_name=AXIS)`` so its batch statistics and
the reductions of its backward are ``pmean``-ed over the shards; training then matches
one-device training on the global batch for any device count. Other network state that
still differs between shards after the step is averaged (floating leaves) before it is
stored, so the replicated state stays replicated.

Random layers (Dropout) get a per-shard key: the step key folded with the shard index. The
shard's step is :func:`jaxbp.step.train_step_fn` itself with a :class:`~jaxbp.step.Reduction`
(``pmean`` of the gradients, state averaging, per-shard key), so one device and many share
the key handling and the update.

Several hosts: call ``jax.distributed.initialize`` first; ``jax.devices()`` then lists the
devices of all processes and the same code runs unchanged (see ``examples/multihost.py``).
Every process must hold the same global batch; :func:`shard_batch` keeps only the slices
that live on its own devices.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxbp import xla
from jaxbp.core import Array, Layer, LayerError, Loss
from jaxbp.step import Reduction, TrainState, train_step_fn

AXIS = "batch"  # the name of the data-parallel mesh axis; pass it to BatchNorm(axis_name=...)


def make_mesh(devices: int | Sequence[jax.Device] | None = None, axis_name: str = AXIS) -> Mesh:
    """A 1-D device mesh for data parallelism.

    Args:
      devices: a device count (the first N of ``jax.devices()``), a list of devices, or
        None for all devices (of all processes, after ``jax.distributed.initialize``).
      axis_name: the name of the mesh axis.

    Returns:
      A ``jax.sharding.Mesh`` with one axis ``axis_name``.
    """
    available = jax.devices()
    if devices is None:
        devices = available
    elif isinstance(devices, int):
        if not 1 <= devices <= len(available):
            raise LayerError(
                f"make_mesh: asked for {devices} devices, {len(available)} available"
                f" ({available[0].platform}); on CPU force more with"
                f" XLA_FLAGS=--xla_force_host_platform_device_count={devices}"
            )
        devices = available[:devices]
    # Auto axis: jit may reshard host arrays to the batch sharding (Explicit axes would refuse them)
    return jax.make_mesh((len(devices),), (axis_name,), axis_types=(AxisType.Auto,), devices=list(devices))


def _global_array(x: Any, sharding: NamedSharding) -> Array:
    """``x`` (the same full value on every process) as a global array with ``sharding``."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(x)  # each process builds only the slices on its own devices
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_batch(mesh: Mesh, *arrays: Any) -> tuple[Array, ...]:
    """Split arrays along their first (batch) axis over ``mesh``'s axis.

    Args:
      mesh: the 1-D data-parallel mesh.
      *arrays: the full global batch (inputs, targets), the same on every process.

    Returns:
      The arrays as global ``jax.Array``s sharded ``P(axis)``.

    Raises:
      LayerError: when a batch size is not divisible by the number of devices.
    """
    (axis,) = mesh.axis_names
    n = mesh.devices.size
    for a in arrays:
        _check_divisible("shard_batch", np.shape(a), n)
    return tuple(_global_array(a, NamedSharding(mesh, P(axis))) for a in arrays)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Place a full copy of every leaf of ``tree`` (a TrainState, params) on each device of ``mesh``."""
    sharding = NamedSharding(mesh, P())

    def put(leaf):
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jax.dtypes.prng_key):
            return jax.device_put(leaf, sharding)
        return _global_array(leaf, sharding)

    return jax.tree.map(put, tree)


def _check_divisible(what: str, shape: tuple[int, ...], n: int) -> None:
    if len(shape) < 1 or shape[0] % n:
        size = shape[0] if shape else "a scalar"
        raise LayerError(
            f"{what}: batch size {size} (array of shape {tuple(shape)}) is not divisible by"
            f" the device count {n}; use a batch size that is a multiple of {n}"
        )


def _average_varying(tree: Any, axis: str) -> Any:
    """``pmean`` the floating leaves that still differ between shards; leave replicated ones alone."""

    def fix(leaf):
        aval = jax.typeof(leaf)
        manual = getattr(aval, "manual_axis_type", None)  # JAX's record of the axes a value varies over
        varying = axis in (manual.varying if manual is not None else getattr(aval, "vma", {axis}))
        return lax.pmean(leaf, axis) if varying and jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return jax.tree.map(fix, tree)


def parallel_train_step_fn(
    net: Layer, loss: Loss, optimizer: optax.GradientTransformation, mesh: Mesh
) -> Callable:
    """The uncompiled data-parallel step ``(train_state, x, target) -> (train_state, loss)``.

    It is :func:`jaxbp.step.train_step_fn` itself, run on each shard under ``shard_map`` with a
    :class:`~jaxbp.step.Reduction` that ``pmean``-s the gradients and the loss over the mesh axis
    (so the key handling and the update cannot drift from the one-device step); ``x`` and
    ``target`` are split over ``mesh``'s axis, the train state is replicated.
    """
    (axis,) = mesh.axis_names
    n = mesh.devices.size
    reduction = Reduction(
        grads=lambda tree: lax.pmean(tree, axis),
        state=lambda state: _average_varying(state, axis),
        key=lambda key: jax.random.fold_in(key, lax.axis_index(axis)),  # own dropout masks per shard
    )
    shard_step = train_step_fn(net, loss, optimizer, reduction=reduction)

    sharded = jax.shard_map(shard_step, mesh=mesh, in_specs=(P(), P(axis), P(axis)), out_specs=(P(), P()))

    def step(ts: TrainState, x: Array, target: Array) -> tuple[TrainState, Array]:
        _check_divisible("parallel train step", x.shape, n)
        _check_divisible("parallel train step (target)", target.shape, n)
        if x.shape[0] != target.shape[0]:
            raise LayerError(f"parallel train step: x has {x.shape[0]} rows, target {target.shape[0]}")
        return sharded(ts, x, target)

    return step


def make_parallel_train_step(
    net: Layer, loss: Loss, optimizer: optax.GradientTransformation, mesh: Mesh | None = None
) -> Callable:
    """One ``jax.jit``-compiled data-parallel training step with the train state donated.

    Args:
      net: the network; build BatchNorm with ``axis_name=AXIS`` (the mesh's axis name).
      loss: the (mean-reduced) loss.
      optimizer: any optax ``GradientTransformation``.
      mesh: a 1-D mesh from :func:`make_mesh`; None for all devices.

    Returns:
      ``step(train_state, x, target) -> (train_state, loss_value)``, the drop-in
      counterpart of :func:`jaxbp.step.make_train_step`. Place the state once with
      :func:`replicate` and each batch with :func:`shard_batch` (host arrays also work on
      one host, at the cost of a transfer per call). A batch whose size is not a
      multiple of the device count raises :class:`LayerError` before anything is donated.
      On a CPU mesh of several devices the step waits for its result before returning:
      XLA:CPU runs all devices' programs on one thread pool the size of the core count, and
      with several steps in flight a device blocked in step k+1's all-reduce can starve one
      still finishing step k (a rendezvous deadlock, seen with 4 forced devices on 2 cores).
      A ``lax.scan`` over steps inside one program (a compiled epoch) is not affected. Cost, measured
      by ``benchmarks/parallel_step_cpu.py`` (2 forced devices, shared 2-core machine, jax 0.10.2):
      546 steps/s one step per call with the wait, against 1143 steps/s for the scanned epoch; the
      same run without the wait deadlocked (XLA aborts after its 40 s rendezvous timeout).

      The ~150x lower step rate once reported for ``train --devices 2`` was not this guard: the
      training program's second epoch compiled again, because the train state entered the first
      epoch on one device and came back replicated over the mesh. :func:`jaxbp.train.fit` now
      replicates it first; steady-state 2-device epochs then run at the scanned-epoch rate.
    """
    mesh = make_mesh() if mesh is None else mesh
    jitted = xla.jit(parallel_train_step_fn(net, loss, optimizer, mesh), donate_argnums=0)
    if mesh.devices.size == 1 or mesh.devices.flat[0].platform != "cpu":
        return jitted

    @functools.wraps(jitted)
    def step(ts: TrainState, x: Array, target: Array) -> tuple[TrainState, Array]:
        return jax.block_until_ready(jitted(ts, x, target))

    step.lower = jitted.lower  # type: ignore[attr-defined]  # HLO inspection as on a jitted function
    return step


def train_step_fn_for(
    net: Layer, loss: Loss, optimizer: optax.GradientTransformation, devices: int | None = None
) -> tuple[Callable, Mesh | None]:
    """The uncompiled train step for ``--devices N``: what a training program swaps in.

    Args:
      net: the network (BatchNorm built with ``axis_name=AXIS`` when N > 1).
      loss: the loss.
      optimizer: the optax transformation.
      devices: the device count N; None for all devices.

    Returns:
      ``(step, mesh)``: for N == 1 the plain :func:`jaxbp.step.train_step_fn` and None (so
      one-device runs are unchanged); else :func:`parallel_train_step_fn` on an N-device mesh
      and that mesh. ``step`` works inside ``jax.jit`` / ``lax.scan`` (a compiled epoch);
      place the train state (and a device-resident data set) with :func:`replicate` first.
    """
    mesh = make_mesh(devices)
    if mesh.devices.size == 1:
        return train_step_fn(net, loss, optimizer), None
    return parallel_train_step_fn(net, loss, optimizer, mesh), mesh


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--devices N`` (default: all devices; N >= 1, refused by the parser otherwise)."""
    from jaxbp.cli import ranged

    parser.add_argument(
        "--devices",
        type=ranged(int, 1),
        default=None,
        metavar="N",
        help="data-parallel over N devices (default: all; on CPU force N with"
        " XLA_FLAGS=--xla_force_host_platform_device_count=N)",
    )
