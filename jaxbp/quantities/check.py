"""Check the quantities a network computes against autodiff oracles, in the checker's report format.

This is checker code: autodiff is allowed here, as the oracle. Each registered quantity names its
reference as a function of an :class:`Oracle` (per-example gradients, the GGN, the Hessian, all
by autodiff of the network's forward); under a backward rule the oracle differentiates the rule's
``check_forward`` oracles (whose VJPs are the rule's definition), so a rule's quantities are
checked against the rule's own definition. ``check_layer(..., quantities=...)`` delegates here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxbp.check._probe import oracle_forward
from jaxbp.check.report import WITNESSES, CheckReport, LeafCheck, compare_arrays
from jaxbp.combinators import leaves, param_owners
from jaxbp.core import Layer, Loss, init_state, layer_name, output_shape
from jaxbp.losses import MeanSquaredError
from jaxbp.quantities.api import value_grad_and
from jaxbp.quantities.registry import QUANTITIES, lookup

FIRST_ORDER = ("batch_grad", "batch_l2", "sum_grad_squared", "variance")
ORACLES = {name: q.oracle_summary for name, q in QUANTITIES.items()}  # the built-ins (see QUANTITIES)


class QuantityReport(CheckReport):
    """A :class:`CheckReport` whose witnesses are quantity names."""

    @property
    def failed_levels(self) -> list[str]:
        failed = {r.level for r in self.rows if r.status == "FAIL"}
        return [p for p in self.levels if p in failed]

    def failed_leaves(self, level: str | None = None) -> set[str]:
        level = self.first_bad_level if level is None else level
        return {r.leaf for r in self.rows if r.status == "FAIL" and r.level == level}

    def __str__(self) -> str:
        legend = "; ".join(
            f"{w}: {r.hand} vs {r.reference}" for w, r in {r.witness: r for r in self.rows}.items()
        )
        return "\n".join([self.summary(), self.table(), f"(hand vs reference -- {legend})"])


class Oracle:
    """Autodiff references of one draw, computed when a quantity's oracle first asks for them.

    Attributes (lazy): ``per_example`` (vmap of jax.grad per example, / N), ``grad``, ``ggn`` and
    ``ggn_mc`` (full matrices over the flattened params, from jax.jacrev and jax.hessian), ``hessian``
    (jax.hessian of the loss wrt the flattened params); ``unravel`` maps a flat vector to params.
    """

    def __init__(self, forward: Callable, loss: Loss, params, x, t, S_mc):
        self.forward, self.loss, self.params, self.x, self.t, self.S_mc = forward, loss, params, x, t, S_mc
        self.flat, self.unravel = ravel_pytree(params)
        self.n = x.shape[0]

    def L(self, p, x, t):
        return self.loss.forward(self.forward(p, x), t)[0]

    @functools.cached_property
    def per_example(self):
        pe = jax.vmap(lambda xi, ti: jax.grad(self.L)(self.params, xi[None], ti[None]))(self.x, self.t)
        return jax.tree.map(lambda a: a / self.n, pe)

    @functools.cached_property
    def grad(self):
        return jax.grad(self.L)(self.params, self.x, self.t)

    @functools.cached_property
    def _jacobian(self):
        y = self.forward(self.params, self.x)
        J = jax.jacrev(lambda fp: self.forward(self.unravel(fp), self.x))(self.flat)
        H = jax.hessian(lambda yy: self.loss.forward(yy.reshape(y.shape), self.t)[0])(y.ravel())
        B = self.n
        return J.reshape(B, -1, self.flat.size), H.reshape(B, y.size // B, B, y.size // B)

    @functools.cached_property
    def ggn(self):
        J, H = self._jacobian
        return sum(J[n].T @ H[n, :, n, :] @ J[n] for n in range(self.n))

    @functools.cached_property
    def ggn_mc(self):
        J, _ = self._jacobian
        JS = jnp.einsum("bcp,mbc->mbp", J, self.S_mc.reshape(self.S_mc.shape[0], self.n, -1))
        return jnp.einsum("mbp,mbq->pq", JS, JS)

    @functools.cached_property
    def hessian(self):
        return jax.hessian(lambda fp: self.L(self.unravel(fp), self.x, self.t))(self.flat)


def _draw(layer: Layer, shape, out_shape, key, make_input):
    """One draw in float64: input, params moved off their init values, a target, and a perturbed state."""
    kx, kp, kt, kn = jax.random.split(key, 4)
    x = make_input(kx, shape) if make_input else jax.random.normal(kx, shape, jnp.float64)
    _, params = layer.init(kp, shape)
    params = jax.tree.map(
        lambda a: a.astype(jnp.float64) + 0.3 * jax.random.normal(kn, a.shape, jnp.float64), params
    )
    state = jax.tree.map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
        init_state(layer, shape),
    )
    return x, params, jax.random.normal(kt, out_shape, jnp.float64), state


def _rows(names, q, oracle: Oracle, owners, levels, tol, seed) -> list[LeafCheck]:
    rows = []
    offsets, start = [], 0
    for a in jax.tree.leaves(oracle.params):
        offsets.append((start, a.size, a.shape))
        start += a.size
    for name in names:
        quantity = QUANTITIES[name]
        ref = quantity.oracle(oracle)
        hand_leaves = jax.tree.structure(oracle.params).flatten_up_to(q[name])  # one value per param leaf
        ref_leaves = jax.tree.leaves(ref) if quantity.compare is None else None
        for i, ((level, key), (s, n, shape)) in enumerate(zip(owners, offsets, strict=True)):
            hand, want, detail = hand_leaves[i], None, ""
            if quantity.compare is None:
                want = ref_leaves[i]
            else:
                hand, want, detail = quantity.compare(hand, ref[s : s + n, s : s + n], shape)
            rows.append(
                compare_arrays(
                    hand,
                    want,
                    level=level,
                    level_name=levels[level],
                    leaf=key,
                    witness=name,
                    dtype="float64",
                    tol=tol,
                    seed=seed,
                    detail=detail,
                    hand_text="hand-written PerExample hooks",
                    reference_text=quantity.oracle_summary,
                )
            )
    return rows


def check_quantities(
    layer: Layer,
    input_shape: Sequence[int],
    quantities: Sequence[str] = FIRST_ORDER,
    *,
    seeds: int = 2,
    tol: float = 1e-10,
    make_input: Callable | None = None,
    key=None,
    loss: Loss | None = None,
) -> QuantityReport:
    """Verify the quantities of ``layer`` (any layer or network, a rule net too) against autodiff.

    Runs in float64 (x64 switched on for the call and restored, as :func:`jaxbp.check_layer` does).
    The loss defaults to the mean squared error to a random target (its Hessian is positive
    definite, so every curvature quantity is exercised). Stateful layers run in eval mode.

    Args:
      layer: any layer or network whose leaves have the hooks the quantities need.
      input_shape: the input batch shape (batch axis first).
      quantities: names from :data:`jaxbp.quantities.QUANTITIES`.
      seeds: random draws of input, params and target.
      tol: relative tolerance (max abs error over the largest element).
      make_input: ``(key, shape) -> x`` for inputs that are not standard normal (e.g. integer ids).
      key: PRNG key (default ``PRNGKey(0)``).
      loss: the loss on top (default :func:`~jaxbp.losses.MeanSquaredError`).

    Returns:
      A :class:`QuantityReport`: one row per (level, param leaf, quantity), the worst of the seeds.
    """
    names = tuple(q.name for q in lookup(tuple(quantities), "check_quantities"))
    with jax.enable_x64(True):
        return _check(
            layer, tuple(input_shape), names, seeds, tol, make_input, key, loss or MeanSquaredError()
        )


def _check(layer, shape, names, seeds, tol, make_input, key, loss) -> QuantityReport:
    key = jax.random.PRNGKey(0) if key is None else key
    x_dtype = jax.eval_shape(lambda k: make_input(k, shape), key).dtype if make_input else jnp.float64
    found = leaves(layer, shape, x_dtype)
    levels = {lf.path: layer_name(lf.layer) for lf in found}
    out_shape = output_shape(layer, shape)
    worst: dict = {}
    for seed in range(seeds):
        kd, kq = jax.random.split(jax.random.fold_in(key, seed))
        x, params, t, state = _draw(layer, shape, out_shape, kd, make_input)
        fkey, mkey = jax.random.split(kq)

        def forward(p, xx, state=state, fkey=fkey):
            return oracle_forward(layer, p, xx, state=state, key=fkey, train=False)

        lres = loss.forward(forward(params, x), t)[1]
        S_mc = loss.sqrt_hessian_mc(lres, mkey, 1) if loss.sqrt_hessian_mc else None
        _, _, q = jax.jit(lambda p, x, t, s, k: value_grad_and(layer, loss, *names)(p, x, t, state=s, key=k))(
            params, x, t, state, kq
        )
        oracle = Oracle(forward, loss, params, x, t, S_mc)
        for row in _rows(names, q, oracle, param_owners(layer, params), levels, tol, seed):
            k = (row.level, row.leaf, row.witness)
            if k not in worst or not row.max_rel_err <= worst[k].max_rel_err:
                worst[k] = row
    name = f"{layer_name(layer)} on {shape}"
    return QuantityReport(name=name, levels=levels, rows=list(worst.values()), seeds=seeds)


__all__ = ["ORACLES", "WITNESSES", "Oracle", "QuantityReport", "check_quantities"]
