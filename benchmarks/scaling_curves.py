"""How cost grows with work: manual backward against ``jax.grad`` as depth, width and batch grow.

For Dense/Relu MLPs (input 64, 10 classes, softmax cross-entropy, SGD-momentum train step) it sweeps

* depth: 2 -> 64 Dense levels at width 256, batch 128;
* width: 64 -> 4096 at 3 Dense levels, batch 128;
* batch: 1 -> 4096 at 4 Dense levels of width 256;

and records, for the manual and the ``jax.grad`` train step, the step time (median of
alternating blocks, ratio per round), XLA's compiled temp memory and the compile time
(lowering + XLA). Points are subsampled (powers of 4, depth by 2) to keep the sweep short on a
shared machine. It writes ``docs/scaling_curves.json`` and plots ``docs/scaling_curves.png``.

``python benchmarks/scaling_curves.py [--repeats 5] [--quick] [--out docs]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from jaxbp.bench.models import class_labels, mlp
from jaxbp.bench.timing import autodiff_forward_backward, compile_stats, time_alternating
from jaxbp.step import init_train_state, train_step_fn

SWEEPS = {
    "depth": ([2, 4, 8, 16, 32, 64], lambda d: ((64, *(256,) * (d - 1), 10), 128)),
    "width": ([64, 256, 1024, 4096], lambda w: ((64, w, w, 10), 128)),
    "batch": ([1, 16, 256, 4096], lambda b: ((64, 256, 256, 256, 10), b)),
}
QUICK = {  # two tiny points per sweep (the tests run these)
    "depth": ([2, 3], lambda d: ((8, *(8,) * (d - 1), 3), 4)),
    "width": ([8, 16], lambda w: ((8, w, w, 3), 4)),
    "batch": ([1, 4], lambda b: ((8, 8, 3), b)),
}


def point(sizes: tuple[int, ...], batch: int, repeats: int, min_block_s: float) -> dict:
    """Step time, temp memory and compile time of the manual and jax.grad train steps."""
    model = mlp("sweep", sizes, batch)
    opt = optax.sgd(0.01, momentum=0.9)
    out_shape, ts = init_train_state(model.net, opt, jax.random.PRNGKey(0), model.x_shape)
    x = jax.random.normal(jax.random.PRNGKey(1), model.x_shape, jnp.float32)
    t = class_labels(jax.random.PRNGKey(2), out_shape)
    fns = {
        "manual": train_step_fn(model.net, model.loss, opt),
        "jax": train_step_fn(model.net, model.loss, opt, forward_backward=autodiff_forward_backward),
    }
    res: dict = {"sizes": sizes, "batch": batch}
    compiled = {}
    for who, fn in fns.items():
        compiled[who], stats = compile_stats(fn, ts, x, t)
        res[f"{who}_temp_bytes"], res[f"{who}_compile_s"] = stats["temp_bytes"], stats["compile_s"]
    timing = time_alternating(
        {who: (c, (ts, x, t)) for who, c in compiled.items()}, repeats=repeats, min_block_s=min_block_s
    )
    res.update(manual_s=timing["manual_s"], jax_s=timing["jax_s"], ratio=timing["ratio"])
    return res


def plot(results: dict, path: Path, title: str) -> None:
    """Three rows (depth, width, batch) of three panels: time ratio, temp memory, compile time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(13, 10))
    for row, (name, pts) in zip(axes, results.items(), strict=True):
        xs = [p["value"] for p in pts]
        row[0].plot(xs, [p["ratio"] for p in pts], "o-", label="manual / jax.grad")
        row[0].axhline(1.0, color="grey", lw=0.8)
        row[0].set_ylabel(f"{name}\nstep time ratio")
        row[1].plot(xs, [p["manual_temp_bytes"] / 2**20 for p in pts], "o-", label="manual")
        row[1].plot(xs, [p["jax_temp_bytes"] / 2**20 for p in pts], "s--", label="jax.grad")
        row[1].set_ylabel("compiled temp MiB")
        row[2].plot(xs, [p["manual_compile_s"] for p in pts], "o-", label="manual")
        row[2].plot(xs, [p["jax_compile_s"] for p in pts], "s--", label="jax.grad")
        row[2].set_ylabel("compile s")
        for ax in row:
            ax.set_xscale("log", base=2)
            ax.set_xlabel(name)
            ax.legend(fontsize=8)
        row[1].set_yscale("symlog")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-block", type=float, default=0.05)
    p.add_argument("--quick", action="store_true", help="two tiny points per sweep (for the tests)")
    p.add_argument("--out", type=Path, default=Path("docs"))
    p.add_argument("--note", default="", help="conditions written into the title and JSON")
    a = p.parse_args(argv)
    results: dict = {}
    for name, (values, make) in (QUICK if a.quick else SWEEPS).items():
        results[name] = []
        for v in values:
            r = point(*make(v), a.repeats, a.min_block)
            r["value"] = v
            results[name].append(r)
            ms = f"{1e3 * r['manual_s']:.2f}/{1e3 * r['jax_s']:.2f}"
            print(
                f"{name}={v}: ratio {r['ratio']:.3f}, step {ms} ms,"
                f" temp {r['manual_temp_bytes']}/{r['jax_temp_bytes']} B,"
                f" compile {r['manual_compile_s']:.2f}/{r['jax_compile_s']:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"jaxbp manual backward vs jax.grad, MLP train step; {when}; jax {jax.__version__}"
    title += f", {jax.default_backend()}"
    title += f"; {a.note}" if a.note else ""
    a.out.mkdir(parents=True, exist_ok=True)
    stem = "scaling_curves_quick" if a.quick else "scaling_curves"
    (a.out / f"{stem}.json").write_text(json.dumps({"title": title, "results": results}, indent=1))
    plot(results, a.out / f"{stem}.png", title)
    return results


if __name__ == "__main__":
    main()
