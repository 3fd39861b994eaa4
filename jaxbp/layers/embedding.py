"""Embedding: a lookup table indexed by integer inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbp.core import Layer, LayerError, PerExample, check_param_shapes, linear_residual
from jaxbp.layers import _args
from jaxbp.layers import per_example as qx


def Embedding(
    num_embeddings: int,
    features: int,
    *,
    embedding_init=jax.nn.initializers.normal(1.0),
    param_dtype=jnp.float32,
) -> Layer:
    """y = table[ids]: int (...) -> (..., features); params {"table": (num_embeddings, features)}.

    Integer inputs have no gradient: ``backward`` returns ``None`` as dx, so Embedding must
    be the bottom level of a network. Ids outside [0, num_embeddings) raise a LayerError
    when they are concrete; under ``jax.jit`` they cannot be checked and give NaN rows
    and no table gradient.
    """
    num_embeddings = _args.positive_int("Embedding", "num_embeddings", num_embeddings)
    features = _args.positive_int("Embedding", "features", features)
    _args.initializer("Embedding", "embedding_init", embedding_init)
    _args.float_dtype("Embedding", "param_dtype", param_dtype)
    name = f"Embedding({num_embeddings}, {features})"
    if num_embeddings < 1 or features < 1:
        raise LayerError(f"{name}: needs num_embeddings >= 1 and features >= 1")

    def init(key, input_shape):
        table = embedding_init(key, (num_embeddings, features), param_dtype)
        return (*input_shape, features), {"table": table}

    def forward(params, ids):
        check_param_shapes(name, {"table": (num_embeddings, features)}, params)
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise LayerError(f"{name}: needs integer ids, got dtype {ids.dtype} (shape {ids.shape})")
        if not isinstance(ids, jax.core.Tracer) and ids.size:
            with jax.ensure_compile_time_eval():  # concrete ids closed over by a jit stay concrete
                lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= num_embeddings:
                raise LayerError(
                    f"{name}: ids must lie in [0, {num_embeddings}), got values in [{lo}, {hi}]"
                    f" (shape {ids.shape})"
                )
        ids = jnp.where(ids < 0, num_embeddings, ids)  # negative ids are out of range, not wrapped
        return jnp.take(params["table"], ids, axis=0, mode="fill", fill_value=jnp.nan), ids

    def backward(params, ids, g):
        # dtable[k] = sum_{i: ids_i = k} g_i   (scatter-add; out-of-range ids dropped); dx = None
        dtable = jax.ops.segment_sum(g.reshape(-1, features), ids.reshape(-1), num_segments=num_embeddings)
        return {"table": dtable.astype(params["table"].dtype)}, None

    def batch_grad(params, ids, g):
        # dtable_n[k] = sum_{t: ids_nt = k} g_nt   (one row per example: a one-hot contraction)
        onehot = jax.nn.one_hot(ids.reshape(ids.shape[0], -1), num_embeddings, dtype=g.dtype)
        return {"table": jnp.einsum("btk,btf->bkf", onehot, qx.as_sequence(g))}

    def batch_l2(params, ids, g):
        # ||dtable_n||² = sum_{t,t'} [ids_nt = ids_nt'] g_nt·g_nt'   (Gram form, no (B, V, F) array)
        i, gs = ids.reshape(ids.shape[0], -1), qx.as_sequence(g)
        same = (i[:, :, None] == i[:, None, :]) & (i[:, :, None] < num_embeddings)
        return {"table": jnp.einsum("bts,bts->b", same.astype(g.dtype), jnp.einsum("btf,bsf->bts", gs, gs))}

    # linear in the table; an integer input hands nothing down (no feedback hook: no weight transport)
    hooks = PerExample(batch_grad, batch_l2, hessian_residual=linear_residual)
    return Layer(init, forward, backward, name=name, per_example=hooks)
