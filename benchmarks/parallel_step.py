"""The data-parallel CNN train step on all local devices against the one-device step.

Global batch ``--batch-per-device`` x devices (the CNN preset, random 28x28x1 inputs); prints
ms per step for the step on one device (the whole global batch) and for the data-parallel step
(:func:`jaxbp.distributed.make_parallel_train_step`) on every local device, alternating rounds.

``python benchmarks/parallel_step.py [--batch-per-device 128] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import optax

from jaxbp.distributed import make_mesh, make_parallel_train_step, replicate, shard_batch
from jaxbp.losses import SoftmaxCrossEntropy
from jaxbp.step import init_train_state, make_train_step
from jaxbp.train.models import build_model


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-per-device", type=int, default=128)
    p.add_argument("--side", type=int, default=28)
    p.add_argument("--widths", default="32,64,256", help="the cnn preset's widths")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps per timed block")
    a = p.parse_args(argv)
    n = jax.local_device_count()
    batch = a.batch_per_device * n
    widths = tuple(int(w) for w in a.widths.split(","))
    net, loss, opt = (
        build_model("cnn", "fashion-mnist", 10, widths),
        SoftmaxCrossEntropy(),
        optax.sgd(0.01, momentum=0.9),
    )
    shape = (batch, a.side, a.side, 1)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    y = jax.random.randint(jax.random.PRNGKey(2), (batch,), 0, 10)
    mesh = make_mesh()
    xs, ys = shard_batch(mesh, x, y)
    steps = {
        "one device": make_train_step(net, loss, opt),
        f"{n} device(s)": make_parallel_train_step(net, loss, opt, mesh),
    }
    states = {
        "one device": init_train_state(net, opt, jax.random.PRNGKey(0), shape)[1],
        f"{n} device(s)": replicate(mesh, init_train_state(net, opt, jax.random.PRNGKey(0), shape)[1]),
    }
    args = {"one device": (x, y), f"{n} device(s)": (xs, ys)}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(a.rounds + 1):  # round 0 compiles
        for k in steps if r % 2 == 0 else reversed(list(steps)):
            start = time.perf_counter()
            for _ in range(a.steps):
                states[k], value = steps[k](states[k], *args[k])
            jax.block_until_ready(value)
            if r:
                times[k].append((time.perf_counter() - start) / a.steps)
    res = {k: statistics.median(v) for k, v in times.items()}
    kind = jax.devices()[0].device_kind
    print(f"data-parallel CNN step, global batch {batch} ({a.batch_per_device} per device), {n} x {kind}:")
    for k, t in res.items():
        print(f"  {k:12}: {1e3 * t:8.2f} ms/step ({batch / t:,.0f} examples/s)")
    return res


if __name__ == "__main__":
    main()
