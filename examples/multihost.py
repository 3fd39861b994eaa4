"""Data-parallel jaxbp training across processes ("hosts") with ``jax.distributed.initialize``.

Run ``python examples/multihost.py``: it starts 2 worker processes on this machine, each
with 2 forced CPU devices, joined into one 4-device mesh through a coordinator on
127.0.0.1. Both train the same MLP for a few steps with ``make_parallel_train_step``;
the launcher then checks that both processes hold the same params and that they equal
one-device training on the global batch.

On real hosts run the worker on every host with the same arguments except the process
id, and the coordinator address of host 0::

    python examples/multihost.py --worker --process-id I --num-processes N --coordinator HOST0:PORT

The training code is exactly the one-host code: ``jax.devices()`` lists the devices of all
processes after ``jax.distributed.initialize``, ``make_mesh()`` spans them, and
``shard_batch`` / ``replicate`` build global arrays from what each process holds.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

STEPS, BATCH, FEATURES, CLASSES = 4, 16, 8, 3


def data() -> tuple[np.ndarray, np.ndarray]:
    """The same global batches on every process (each keeps only the slices on its devices)."""
    rng = np.random.default_rng(0)
    return (
        rng.normal(size=(STEPS, BATCH, FEATURES)).astype(np.float32),
        rng.integers(0, CLASSES, size=(STEPS, BATCH)),
    )


def train(parallel: bool) -> list[np.ndarray]:
    """Train for STEPS steps (data-parallel over all devices, or on one device); return the params."""
    import jax
    import optax

    import jaxbp
    from jaxbp import distributed as par

    net = jaxbp.serial(jaxbp.Dense(32), jaxbp.Relu(), jaxbp.Dense(CLASSES))
    loss, opt = jaxbp.SoftmaxCrossEntropy(), optax.adam(1e-2)
    _, ts = jaxbp.init_train_state(net, opt, jax.random.PRNGKey(0), (BATCH, FEATURES))
    xs, ys = data()
    if parallel:
        mesh = par.make_mesh()  # every device of every process
        step, ts = par.make_parallel_train_step(net, loss, opt, mesh), par.replicate(mesh, ts)
        for x, y in zip(xs, ys, strict=True):
            ts, value = step(ts, *par.shard_batch(mesh, x, y))
    else:
        step = jaxbp.make_train_step(net, loss, opt)
        for x, y in zip(xs, ys, strict=True):
            ts, value = step(ts, x, y)
    print(f"process {jax.process_index()}: {jax.device_count()} devices, final loss {float(value):.6f}")
    # params are replicated: each process reads the full copy on its first local device
    return [np.asarray(a.addressable_data(0)) for a in jax.tree.leaves(ts.params)]


def worker(args: argparse.Namespace) -> None:
    """One process: join the cluster, train data-parallel, save its copy of the params."""
    import jax

    jax.distributed.initialize(
        coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
    )
    params = train(parallel=True)
    if args.out:
        np.savez(Path(args.out) / f"params-{args.process_id}.npz", *params)
    jax.distributed.shutdown()


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(num_processes: int = 2, devices_per_process: int = 2, timeout: float = 120) -> int:
    """Start the workers on localhost, wait, and compare their params with each other and one device."""
    coordinator = f"127.0.0.1:{free_loopback_port()}"
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
    )
    with tempfile.TemporaryDirectory() as out:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    "--process-id",
                    str(i),
                    "--num-processes",
                    str(num_processes),
                    "--coordinator",
                    coordinator,
                    "--out",
                    out,
                ],
                env=env,
            )
            for i in range(num_processes)
        ]
        try:
            codes = [p.wait(timeout=timeout) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        if any(codes):
            print(f"workers exited with {codes}")
            return 1
        got = []
        for i in range(num_processes):
            with np.load(Path(out) / f"params-{i}.npz") as f:
                got.append([f[f"arr_{k}"] for k in range(len(f.files))])
    want = train(parallel=False)
    same = all(np.array_equal(a, b) for g in got[1:] for a, b in zip(g, got[0], strict=True))
    err = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(got[0], want, strict=True))
    print(f"processes agree exactly: {same}; max relative difference to one device: {err:.2e}")
    ok = same and err <= 2e-5
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="run one worker (else: launch 2 on localhost)")
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--coordinator", default="127.0.0.1:12355", help="HOST:PORT of process 0")
    parser.add_argument("--out", default="", help="directory for the params of each worker")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the workers")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    return launch(args.num_processes, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
