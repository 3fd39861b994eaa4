"""Data-parallel scaling: steps/s of the compiled jaxbp train step on 1, 2, 4, ... devices.

``python benchmarks/scaling.py [--devices 1 2 4] [--batch 256] [--hidden 512] [--steps 50]``

The global batch is fixed (strong scaling): N devices each get batch/N rows. On CPU the
script forces ``max(--devices)`` host devices (``XLA_FLAGS`` is set before JAX starts); they
share the machine's cores, so CPU figures show the overhead of the sharded step rather
than a speed-up. On a GPU/TPU host the real devices are used. The one-device
``make_train_step`` (no mesh) is timed too as the baseline.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4], help="device counts to time")
    p.add_argument("--batch", type=int, default=256, help="global batch size")
    p.add_argument("--hidden", type=int, default=512, help="width of the two hidden layers")
    p.add_argument("--steps", type=int, default=50, help="timed steps per device count")
    p.add_argument("--repeats", type=int, default=5, help="timing rounds; the best is reported")
    return p.parse_args(argv)


def time_steps(step, ts, x, y, steps: int):
    """Run ``steps`` calls of ``step``; return (seconds, the final train state)."""
    import jax

    t0 = time.perf_counter()
    for _ in range(steps):
        ts, value = step(ts, x, y)
    jax.block_until_ready((ts, value))
    return time.perf_counter() - t0, ts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in flags:
        flag = f"--xla_force_host_platform_device_count={max(args.devices)}"
        os.environ["XLA_FLAGS"] = (flags + " " + flag).strip()

    import jax
    import numpy as np
    import optax

    import jaxbp
    from jaxbp import distributed as par

    dev = jax.devices()[0]
    print(
        f"# {jax.device_count()} x {dev.platform} ({dev.device_kind}), {os.cpu_count()} CPU cores;"
        f" MLP 784-{args.hidden}-{args.hidden}-10, global batch {args.batch}, adam"
    )
    net = jaxbp.serial(
        jaxbp.Dense(args.hidden), jaxbp.Relu(), jaxbp.Dense(args.hidden), jaxbp.Relu(), jaxbp.Dense(10)
    )
    loss, opt = jaxbp.SoftmaxCrossEntropy(), optax.adam(1e-3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=(args.batch,))

    def fresh():
        return jaxbp.init_train_state(net, opt, jax.random.PRNGKey(0), x.shape)[1]

    # name -> [step, train state, x, y]; compiled and warmed up first
    runs = {"1 (make_train_step)": [jaxbp.make_train_step(net, loss, opt), fresh(), x, y]}
    for n in args.devices:
        mesh = par.make_mesh(n)
        runs[f"{n} (parallel)"] = [
            par.make_parallel_train_step(net, loss, opt, mesh),
            par.replicate(mesh, fresh()),
            *par.shard_batch(mesh, x, y),
        ]
    best = dict.fromkeys(runs, float("inf"))
    for r in range(args.repeats + 1):  # round 0 compiles and warms up; configurations interleaved
        for name, run in runs.items():
            seconds, run[1] = time_steps(*run, steps=args.steps if r else 2)
            if r:
                best[name] = min(best[name], seconds / args.steps)
    base = best["1 (make_train_step)"]
    print("| devices | steps/s | examples/s | vs make_train_step |")
    print("|---|---|---|---|")
    for name, sec in best.items():
        print(f"| {name} | {1 / sec:.1f} | {args.batch / sec:.0f} | {base / sec:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
