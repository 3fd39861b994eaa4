"""What a data-parallel step costs on forced CPU devices: the scanned epoch and the deadlock guard.

Run: ``XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/parallel_step_cpu.py``

Times an MLP step (digits shapes: 64 -> 128 -> 64 -> 10, batch 32) as a compiled ``lax.scan``
epoch of 50 steps on 1 device and on 2 forced host devices (XLA combines the gradient
all-reduces into one per step; the count is printed), and the
one-step-per-call parallel step, which waits for each result (the deadlock guard: without it
this run deadlocked on the shared 2-core machine, so its cost cannot be measured against an
unguarded run; it is measured against the scanned epoch, which needs no guard).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax

from jaxbp.distributed import make_mesh, make_parallel_train_step, replicate, shard_batch
from jaxbp.losses import SoftmaxCrossEntropy
from jaxbp.step import init_train_state
from jaxbp.train.epoch import make_epoch
from jaxbp.train.models import mlp

STEPS, BATCH = 50, 32


def timed(f, repeats=3):
    f()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    net, loss, opt = mlp((128, 64), 10), SoftmaxCrossEntropy(), optax.sgd(0.1, momentum=0.9)
    x = jax.random.normal(jax.random.PRNGKey(0), (STEPS * BATCH, 8, 8, 1))
    y = jax.random.randint(jax.random.PRNGKey(1), (STEPS * BATCH,), 0, 10)
    probe = (x[:BATCH], y[:BATCH], jax.random.PRNGKey(2))
    _, ts0 = init_train_state(net, opt, jax.random.PRNGKey(0), (BATCH, 8, 8, 1))
    print(f"jax {jax.__version__}, {jax.device_count()} devices ({jax.devices()[0].platform})")
    for devices in (1, 2):
        epoch = make_epoch(net, loss, opt, BATCH, devices=devices)
        ts = replicate(make_mesh(devices), ts0) if devices > 1 else ts0

        def run(epoch=epoch, ts=ts):
            jax.block_until_ready(epoch(jax.tree.map(jnp.copy, ts), x, y, probe).losses)

        print(f"scanned epoch, {devices} device(s): {STEPS / timed(run):8.1f} steps/s")
        if devices > 1:
            text = epoch.lower(ts, x, y, probe).compile().as_text()
            print(f"  all-reduce ops in the compiled epoch: {text.count('all-reduce(')}")
    mesh = make_mesh(2)
    step = make_parallel_train_step(net, loss, opt, mesh)
    xs, ys = shard_batch(mesh, x[:BATCH], y[:BATCH])

    def run():
        ts = replicate(mesh, jax.tree.map(jnp.copy, ts0))
        for _ in range(STEPS):
            ts, value = step(ts, xs, ys)
        jax.block_until_ready(value)

    # Without the guard (calling the jitted step directly, several steps in flight) this run
    # deadlocked here: XLA aborted the process after its 40 s all-reduce rendezvous timeout.
    rate = STEPS / timed(run)
    print(f"one step per call, 2 devices, waiting for each result (the guard): {rate:8.1f} steps/s")


if __name__ == "__main__":
    main()
