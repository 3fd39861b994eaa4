"""jaxbp.quantities vs BackPACK (PyTorch, CPU) on the large MLP, interleaved in one process.

    PYTHONPATH=. python benchmarks/quantities_backpack.py [--quick] [--rounds 3] [--json OUT]

Needs ``torch`` and ``backpack-for-pytorch`` (``pip install --no-deps backpack-for-pytorch einops
unfoldNd``). Both sides run the same model shape on float32 data of the same shape; for each
quantity the two are timed alternately and the medians reported (with the plain gradient of each).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.backprop import forward_backward
from jaxbp.bench.models import build
from jaxbp.quantities import value_grad_and

EXT = {
    "batch_l2": "BatchL2Grad",
    "sum_grad_squared": "SumGradSquared",
    "variance": "Variance",
    "batch_grad": "BatchGrad",
    "diag_ggn_mc": "DiagGGNMC",
    "kfac": "KFAC",
    "diag_ggn": "DiagGGNExact",
    "kflr": "KFLR",
}


def torch_side(sizes, x, y):
    import torch
    from backpack import backpack, extend, extensions

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message="Full backward hook")
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = extend(torch.nn.Sequential(*layers))
    lossf = extend(torch.nn.CrossEntropyLoss())
    xt, yt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y)).long()

    def run(name):
        model.zero_grad()
        loss = lossf(model(xt), yt)
        if name is None:
            loss.backward()
        else:
            with backpack(getattr(extensions, EXT[name])()):
                loss.backward()
        return loss

    return run


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json")
    a = p.parse_args(argv)
    m = build("mlp_large", a.quick)
    key = jax.random.PRNGKey(0)
    _, params = m.net.init(key, m.x_shape)
    x = jax.random.normal(key, m.x_shape, jnp.float32)
    y = jax.random.randint(key, (m.x_shape[0],), 0, m.dense_sizes[-1])
    run_torch = torch_side(m.dense_sizes, x, y)
    plain = jax.jit(lambda p, x, y: forward_backward(m.net, m.loss, p, x, y)[:2])
    rows = []
    for name in (None, *EXT):
        if name is None:
            jfn = plain
        else:
            vg = value_grad_and(m.net, m.loss, name)
            jfn = jax.jit(lambda p, x, y, k, vg=vg: vg(p, x, y, key=k))
        args = (params, x, y) if name is None else (params, x, y, key)
        jax.block_until_ready(jfn(*args))
        run_torch(name)
        js, ts = [], []
        for r in range(a.rounds):
            pair = [
                lambda js=js, f=jfn, a=args: js.append(timed(lambda: jax.block_until_ready(f(*a)))),
                lambda ts=ts, n=name: ts.append(timed(lambda: run_torch(n))),
            ]
            for f in pair if r % 2 == 0 else reversed(pair):
                f()
        row = dict(
            quantity=name or "gradient",
            jaxbp_ms=1e3 * statistics.median(js),
            backpack_ms=1e3 * statistics.median(ts),
        )
        row["ratio"] = row["jaxbp_ms"] / row["backpack_ms"]
        rows.append(row)
        print(
            f"{row['quantity']:17s} jaxbp {row['jaxbp_ms']:9.1f} ms  BackPACK {row['backpack_ms']:9.1f} ms"
            f"  jaxbp/BackPACK {row['ratio']:.2f}",
            flush=True,
        )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
