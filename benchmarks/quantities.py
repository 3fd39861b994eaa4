"""Measure jaxbp.quantities against the plain hand-written value_and_grad of the same network.

    PYTHONPATH=. python benchmarks/quantities.py [--quick] [--part quantities|l2|dp|all] [--json OUT]

Parts:
  quantities: each quantity's time and compiled temp memory vs the plain value_and_grad (eval mode),
    on the large MLP (784-1024-1024-10, batch 512), the CNN preset (batch 128), a transformer block.
  l2: batch_l2 vs vmap(jax.grad) followed by the norms, on the large MLP.
  dp: DP-SGD step time and memory (ghost vs materialised vs non-private) on the large MLP, and
    accuracy on digits (and Fashion-MNIST when present) at epsilon 1, 3, 8 (delta 1e-5).
Timings interleave the two functions of a pair (ABAB...) and report medians.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import optax

from jaxbp.backprop import forward_backward
from jaxbp.bench.models import build
from jaxbp.bench.timing import compile_stats, time_alternating
from jaxbp.core import apply, init_state
from jaxbp.quantities import value_grad_and
from jaxbp.quantities.dp import dp_train_step_fn, noise_for_epsilon
from jaxbp.step import init_train_state, train_step_fn

ALL_QUANTITIES = (
    "batch_l2",
    "sum_grad_squared",
    "variance",
    "batch_grad",
    "diag_ggn_mc",
    "kfac",
    "diag_ggn",
    "kflr",
)
PER_MODEL = {
    "mlp_large": ALL_QUANTITIES,
    "cnn": ALL_QUANTITIES,
    "transformer": ("batch_l2", "sum_grad_squared", "variance", "batch_grad", "diag_ggn_mc"),
}


def setup(name, quick):
    m = build(name, quick)
    key = jax.random.PRNGKey(0)
    kx, kp, kt = jax.random.split(key, 3)
    out_shape, params = m.net.init(kp, m.x_shape)
    x = jax.random.normal(kx, m.x_shape, jnp.float32)
    return m, params, init_state(m.net, m.x_shape), x, m.make_target(kt, out_shape), key


def plain_fn(m):
    def f(params, x, t, state):
        value, grads, _ = forward_backward(m.net, m.loss, params, x, t, state=state, train=False)
        return value, grads

    return f


def quantity_fn(m, name):
    vg = value_grad_and(m.net, m.loss, name)

    def f(params, x, t, state, key):
        return vg(params, x, t, state=state, key=key)

    return f


def run_quantities(quick, repeats, out):
    for model in PER_MODEL:
        m, params, state, x, t, key = setup(model, quick)
        plain, pstats = compile_stats(plain_fn(m), params, x, t, state)
        print(f"\n{m.description}: plain temp {pstats['temp_bytes'] / 2**20:.1f} MiB", flush=True)
        for name in PER_MODEL[model]:
            fn, qstats = compile_stats(quantity_fn(m, name), params, x, t, state, key)
            r = time_alternating(
                {name: (fn, (params, x, t, state, key)), "plain": (plain, (params, x, t, state))},
                repeats=repeats,
            )
            row = dict(
                model=model,
                quantity=name,
                time_ratio=r["ratio"],
                quantity_ms=1e3 * r[f"{name}_s"],
                plain_ms=1e3 * r["plain_s"],
                temp_ratio=qstats["temp_bytes"] / max(pstats["temp_bytes"], 1),
                temp_mib=qstats["temp_bytes"] / 2**20,
                plain_temp_mib=pstats["temp_bytes"] / 2**20,
            )
            out.append(row)
            print(
                f"  {name:17s} {row['quantity_ms']:9.1f} ms vs {row['plain_ms']:8.1f} ms"
                f"  x{row['time_ratio']:.2f}   temp {row['temp_mib']:8.1f} MiB  x{row['temp_ratio']:.2f}",
                flush=True,
            )


def run_l2(quick, repeats, out):
    m, params, state, x, t, key = setup("mlp_large", quick)

    def vmap_norms(params, x, t):
        def ell(p, xi, ti):
            return m.loss.forward(apply(m.net, p, xi[None])[0], ti[None])[0]

        pe = jax.vmap(lambda xi, ti: jax.grad(ell)(params, xi, ti))(x, t)
        return jax.tree.map(lambda a: jnp.sum(a.reshape(a.shape[0], -1) ** 2, 1), pe)

    ghost, gstats = compile_stats(quantity_fn(m, "batch_l2"), params, x, t, state, key)
    vm, vstats = compile_stats(vmap_norms, params, x, t)
    r = time_alternating(
        {"batch_l2": (ghost, (params, x, t, state, key)), "vmap": (vm, (params, x, t))}, repeats
    )
    row = dict(
        part="l2",
        batch_l2_ms=1e3 * r["batch_l2_s"],
        vmap_grad_norms_ms=1e3 * r["vmap_s"],
        speedup=1 / r["ratio"],
        batch_l2_temp_mib=gstats["temp_bytes"] / 2**20,
        vmap_temp_mib=vstats["temp_bytes"] / 2**20,
    )
    out.append(row)
    print(f"\nbatch_l2 vs vmap(jax.grad)+norms on {m.description}: {row}", flush=True)


def run_dp_steps(quick, repeats, out):
    m, params, state, x, t, key = setup("mlp_large", quick)
    opt = optax.sgd(0.1)
    _, ts = init_train_state(m.net, opt, key, m.x_shape)
    fns, stats = {}, {}
    for label, step in (
        ("ghost", dp_train_step_fn(m.net, m.loss, opt, clip=1.0, noise=1.0)),
        ("non-private", train_step_fn(m.net, m.loss, opt)),
        ("materialised", dp_train_step_fn(m.net, m.loss, opt, clip=1.0, noise=1.0, method="materialised")),
    ):
        fns[label], stats[label] = compile_stats(step, ts, x, t)
    for other in ("non-private", "materialised"):
        r = time_alternating({"ghost": (fns["ghost"], (ts, x, t)), other: (fns[other], (ts, x, t))}, repeats)
        row = dict(
            part="dp_step",
            vs=other,
            ghost_ms=1e3 * r["ghost_s"],
            other_ms=1e3 * r[f"{other}_s"],
            time_ratio=r["ratio"],
            ghost_temp_mib=stats["ghost"]["temp_bytes"] / 2**20,
            other_temp_mib=stats[other]["temp_bytes"] / 2**20,
        )
        out.append(row)
        print(f"\nDP step on {m.description}: {row}", flush=True)


def run_dp_accuracy(quick, out, datasets):
    from jaxbp.train.data import DataError, load_dataset, standardize
    from jaxbp.train.epoch import make_epoch
    from jaxbp.train.fit import fit, make_optimizer
    from jaxbp.train.models import build_model

    for ds, epochs, batch, lr in datasets:
        try:
            data = standardize(load_dataset(ds, None))
        except DataError as e:
            print(f"{ds}: skipped ({e})")
            continue
        n = len(data.x_train)
        steps = (n // batch) * epochs
        for eps in (None, 1.0, 3.0, 8.0):
            net = build_model("mlp", data.name, data.num_classes, None, 0.0)
            opt = make_optimizer(lr, momentum=0.9, weight_decay=0.0, schedule="cosine", total_steps=steps)
            kw = {}
            sigma = None
            if eps is not None:
                sigma = noise_for_epsilon(eps, batch, n, steps)

                def builder(*a, sigma=sigma, **k):
                    def step_fn(net_, loss_, opt_):
                        return dp_train_step_fn(net_, loss_, opt_, clip=1.0, noise=sigma)

                    return make_epoch(*a, **k, step_fn=step_fn)

                kw["epoch_builder"] = builder
            t0 = time.perf_counter()
            res = fit(net, data, opt, epochs=epochs, batch_size=batch, seed=0, log=None, **kw)
            row = dict(
                part="dp_accuracy",
                dataset=ds,
                epsilon=eps,
                sigma=sigma,
                clip=1.0 if eps else None,
                epochs=epochs,
                batch=batch,
                lr=lr,
                test_accuracy=res.test_accuracy,
                seconds=time.perf_counter() - t0,
            )
            out.append(row)
            print(row, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--part", default="all", choices=("quantities", "l2", "dp", "dpacc", "all"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--fashion", action="store_true", help="also Fashion-MNIST in the DP accuracy table")
    p.add_argument("--json")
    a = p.parse_args(argv)
    out: list[dict] = []
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()},"
        f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    if a.part in ("quantities", "all"):
        run_quantities(a.quick, a.repeats, out)
    if a.part in ("l2", "all"):
        run_l2(a.quick, a.repeats, out)
    if a.part in ("dp", "all"):
        run_dp_steps(a.quick, a.repeats, out)
    if a.part in ("dpacc", "all"):
        sets = [("digits", 30, 32, 0.05)] + ([("fashion-mnist", 10, 256, 0.1)] if a.fashion else [])
        run_dp_accuracy(a.quick, out, sets)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
