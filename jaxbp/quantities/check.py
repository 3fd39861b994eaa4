"""Check a layer's quantity extras against autodiff oracles, in the checker's per-level, per-leaf report.

This is checker code: autodiff is allowed here, as the oracle. ``check_layer(..., quantities=...)``
delegates to :func:`check_quantities`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxbp.check.report import WITNESSES, CheckReport, LeafCheck
from jaxbp.combinators import walk_forward
from jaxbp.contract import path_str
from jaxbp.core import Layer, apply, init_state, layer_name
from jaxbp.losses import MeanSquaredError
from jaxbp.quantities.api import value_grad_and
from jaxbp.quantities.engine import assemble

ORACLES = {
    "batch_grad": "vmap(jax.grad) per example / N",
    "batch_l2": "squared norms of vmap(jax.grad) per example / N",
    "sum_grad_squared": "sum of squares of vmap(jax.grad) per example / N",
    "variance": "variance over examples of vmap(jax.grad) / N",
    "diag_ggn": "diag of J_nᵀ H_n J_n summed over n (jax.jacobian, jax.hessian)",
    "diag_ggn_mc": "diag of J_nᵀ s_n s_nᵀ J_n for the sampled factor s (jax.jacobian)",
    "kflr": "bias: exact GGN block (jax.jacobian); W: shapes of A (in, in) and G (out, out)",
    "kfac": "bias: GGN block of the sampled factor (jax.jacobian); W: shapes of A and G",
    "diag_hessian": "diag of jax.hessian of the loss wrt the params",
}


class QuantityReport(CheckReport):
    """A :class:`CheckReport` whose witnesses are quantity names (see :data:`ORACLES`)."""

    @property
    def failed_levels(self) -> list[str]:
        failed = {r.level for r in self.rows if r.status == "FAIL"}
        return [p for p in self.levels if p in failed]

    def failed_leaves(self, level: str | None = None) -> set[str]:
        level = self.first_bad_level if level is None else level
        return {r.leaf for r in self.rows if r.status == "FAIL" and r.level == level}

    def __str__(self) -> str:
        legend = "; ".join(
            f"{w}: {'hand-written extras' if w in ORACLES else WITNESSES[w][0]} vs "
            f"{ORACLES.get(w) or WITNESSES[w][1]}"
            for w in dict.fromkeys(r.witness for r in self.rows)
        )
        return "\n".join([self.summary(), self.table(), f"(hand vs reference -- {legend})"])


def _oracles(net, loss, params, x, t, state, S_mc, names):
    """Every requested quantity by autodiff, in the params' structure (Kron rows handled apart)."""
    B = x.shape[0]
    flat, unravel = ravel_pytree(params)

    def L(p, xx, tt):
        return loss.forward(apply(net, p, xx, state=state)[0], tt)[0]

    out = {}
    pe = jax.tree.map(lambda a: a / B, jax.vmap(lambda xi, ti: jax.grad(L)(params, xi[None], ti[None]))(x, t))
    grad = jax.grad(L)(params, x, t)
    out["batch_grad"] = pe
    out["batch_l2"] = jax.tree.map(lambda a: (a.reshape(B, -1) ** 2).sum(1), pe)
    out["sum_grad_squared"] = jax.tree.map(lambda a: (a**2).sum(0), pe)
    out["variance"] = jax.tree.map(lambda a, g: (a**2).sum(0) / B - (g / B) ** 2, pe, grad)
    if {"diag_ggn", "diag_ggn_mc", "kflr", "kfac"} & set(names):
        y = apply(net, params, x, state=state)[0]
        J = jax.jacobian(lambda fp: apply(net, unravel(fp), x, state=state)[0])(flat).reshape(
            B, -1, flat.size
        )
        H = jax.hessian(lambda yy: loss.forward(yy.reshape(y.shape), t)[0])(y.ravel())
        H = H.reshape(B, y.size // B, B, y.size // B)
        ggn = sum(J[n].T @ H[n, :, n, :] @ J[n] for n in range(B))
        JS = jnp.einsum("bcp,mbc->mbp", J, S_mc.reshape(S_mc.shape[0], B, -1))
        ggn_mc = jnp.einsum("mbp,mbq->pq", JS, JS)
        out["diag_ggn"], out["diag_ggn_mc"] = unravel(jnp.diag(ggn)), unravel(jnp.diag(ggn_mc))
        out["kflr"], out["kfac"] = ggn, ggn_mc  # full matrices; blocks cut per leaf below
    if "diag_hessian" in names:
        out["diag_hessian"] = unravel(jnp.diag(jax.hessian(lambda fp: L(unravel(fp), x, t))(flat)))
    return out


def _row(level, lname, leaf, name, hand, ref, tol, seed, dtype, detail=""):
    """One report row: the hand-written quantity against its autodiff oracle (max abs error vs scale)."""
    hand, ref = np.asarray(hand, np.float64), np.asarray(ref, np.float64)
    same = dict(
        level=level,
        level_name=lname,
        leaf=leaf,
        witness=name,
        dtype=dtype,
        tol=tol,
        atol=0.0,
        hand="hand-written extras",
        reference=ORACLES[name],
        seed=seed,
    )
    if hand.shape != ref.shape:
        return LeafCheck(
            **same,
            max_abs_err=np.inf,
            max_rel_err=np.inf,
            worst_index=None,
            cosine=None,
            status="FAIL",
            detail=f"shape {hand.shape} != {ref.shape}",
        )
    err = np.abs(hand - ref)
    scale = max(np.abs(ref).max(initial=0.0), np.abs(hand).max(initial=0.0))
    denom = np.linalg.norm(hand) * np.linalg.norm(ref)
    abs_err = float(err.max(initial=0.0))
    return LeafCheck(
        **same,
        max_abs_err=abs_err,
        max_rel_err=abs_err / scale if scale else abs_err,
        worst_index=tuple(int(i) for i in np.unravel_index(np.argmax(err), err.shape)) if err.size else (),
        cosine=float(np.vdot(hand, ref) / denom) if denom > 0 else 1.0,
        status="ok" if abs_err <= tol * max(scale, 1e-300) or abs_err == 0 else "FAIL",
        detail=detail,
    )


def check_quantities(
    layer: Layer,
    input_shape: Sequence[int],
    quantities: Sequence[str] = ("batch_grad", "batch_l2", "sum_grad_squared", "variance"),
    *,
    seeds: int = 2,
    tol: float = 1e-10,
    make_input: Callable | None = None,
    key=None,
) -> QuantityReport:
    """Verify ``layer``'s quantity extras against autodiff, per level and param leaf, in float64.

    The loss is the mean squared error to a random target (its Hessian is positive definite, so
    every curvature quantity is exercised). Needs ``jax_enable_x64``.

    Args:
      layer: any layer or network whose leaves provide the extras.
      input_shape: the input batch shape (batch axis first).
      quantities: names from :data:`jaxbp.quantities.NAMES`.
      seeds: random draws of input, params and target.
      tol: relative tolerance (max abs error over the largest element).
      make_input: ``(key, shape) -> x`` for inputs that are not standard normal (e.g. integer ids).
      key: PRNG key (default ``PRNGKey(0)``).

    Returns:
      A :class:`QuantityReport` (a :class:`~jaxbp.check.report.CheckReport`): one row per
      (level, param leaf, quantity), the worst of the seeds.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    loss, names, shape = MeanSquaredError(), tuple(quantities), tuple(input_shape)
    levels, owner = _levels(layer, shape, make_input, key)
    worst: dict = {}
    for seed in range(seeds):
        kx, kp, kt, kq, kn = jax.random.split(jax.random.fold_in(key, seed), 5)
        x = make_input(kx, shape) if make_input else jax.random.normal(kx, shape, jnp.float64)
        out_shape, params = layer.init(kp, shape)
        params = jax.tree.map(
            lambda a, k=kn: a.astype(jnp.float64) + 0.3 * jax.random.normal(k, a.shape), params
        )
        state = init_state(layer, shape)
        t = jax.random.normal(kt, out_shape, jnp.float64)
        _, _, q = value_grad_and(layer, loss, *names)(params, x, t, state=state, key=kq)
        lres = loss.forward(apply(layer, params, x, state=state)[0], t)[1]
        S_mc = loss.extras["sqrt_hessian_mc"](lres, jax.random.split(kq)[1], 1)
        ref = _oracles(layer, loss, params, x, t, state, S_mc, names)
        for row in _rows(q, ref, params, names, levels, owner, tol, seed):
            k = (row.level, row.leaf, row.witness)
            if k not in worst or row.max_rel_err > worst[k].max_rel_err:
                worst[k] = row
    return QuantityReport(
        name=f"{layer_name(layer)} on {shape}", levels=levels, rows=list(worst.values()), seeds=seeds
    )


def _levels(layer: Layer, shape, make_input, key) -> tuple[dict[str, str], object]:
    """``{path: name}`` of the network's leaves (forward order) and a params-shaped tree of paths."""
    found: dict[tuple[str, ...], str] = {}

    def leaf(path, lv, p, x, *, state, key, train):
        found[path] = layer_name(lv)
        return apply(lv, p, x, state=state, key=key, train=train)

    def run(k):
        x = make_input(k, shape) if make_input else jnp.zeros(shape, jnp.float64)
        _, params = layer.init(k, shape)
        walk_forward(layer, params, x, leaf, state=init_state(layer, shape), key=k)

    jax.eval_shape(run, key)
    owner = assemble(layer, {p: path_str(p) for p in found})
    return {path_str(p): name for p, name in found.items()}, owner


def _level_at(owner, keypath) -> tuple[str, tuple]:
    """The level path that owns a params leaf at ``keypath``, and the keys below that level."""
    for i, k in enumerate(keypath):
        if isinstance(owner, str):
            return owner, keypath[i:]
        owner = owner[k.idx] if hasattr(k, "idx") else owner[k.key]
    return owner, ()


def _rows(q, ref, params, names, levels, owner, tol, seed):
    offsets, start = {}, 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        offsets[path] = (start, leaf.size, leaf.shape)
        start += leaf.size
    for name in names:
        for path, (s, n, pshape) in offsets.items():
            level, below = _level_at(owner, path)
            leaf = jax.tree_util.keystr(below)
            args = (level, levels[level], leaf, name)
            if name not in ("kfac", "kflr"):
                hand = _get(q[name], path)
                yield _row(*args, hand, _get(ref[name], path), tol, seed, "float64")
                continue
            factors = _get(q[name], path)
            if len(factors) == 1:
                yield _row(*args, factors[0], ref[name][s : s + n, s : s + n], tol, seed, "float64")
            else:
                A, G = factors
                ok = A.shape[0] * G.shape[0] == n and A.shape[0] == A.shape[1] and G.shape[0] == G.shape[1]
                yield _row(
                    *args,
                    np.zeros(1) if ok else np.ones(1),
                    np.zeros(1),
                    tol,
                    seed,
                    "float64",
                    detail=f"A {A.shape}, G {G.shape} for a param of shape {pshape}",
                )


def _get(tree, path):
    for k in path:
        tree = tree[k.idx] if hasattr(k, "idx") else tree[k.key]
    return tree
