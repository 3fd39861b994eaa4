"""Test accuracy of the ``jaxbp train`` presets against published results (a benchmark, not a CI test).

Each run is a fresh ``python -m jaxbp train ... --json`` process; ``seconds`` is its whole wall
time (start-up, data loading, compilation, training, evaluation). Prints a markdown table.

    python benchmarks/train_accuracy.py                              # digits MLP, 3 seeds
    python benchmarks/train_accuracy.py --dataset fashion-mnist --model mlp --seeds 0 1 2
    python benchmarks/train_accuracy.py --dataset fashion-mnist --model cnn --seeds 0

Published Fashion-MNIST baselines (the dataset's benchmark table, test split, no augmentation):
MLP 256-128-100: 0.8833; 2 Conv+pooling: 0.916; 2 Conv+pooling+BN: 0.925-0.934.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

TARGETS = {("digits", "mlp"): 0.97, ("fashion-mnist", "mlp"): 0.8833, ("fashion-mnist", "cnn"): 0.916}


def run(dataset: str, model: str, seed: int, extra: list[str]) -> dict:
    """One training process; returns its JSON summary plus the measured wall time."""
    cmd = [sys.executable, "-m", "jaxbp", "train", "--dataset", dataset, "--model", model]
    cmd += ["--seed", str(seed), "--json", "--no-progress", *extra]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    return {**summary, "wall_seconds": wall}


def main(argv: list[str] | None = None) -> int:
    """Run the requested presets and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("extra", nargs="*", help="more flags for jaxbp train, after --")
    args = p.parse_args(argv)
    target = TARGETS.get((args.dataset, args.model))
    print(f"| dataset | model | seed | epochs | seconds | test accuracy | target {target} |")
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        r = run(args.dataset, args.model, seed, args.extra)
        beat = "yes" if target is not None and r["test_accuracy"] > target else "no"
        print(
            f"| {args.dataset} | {args.model} | {seed} | {r['epochs']} | {r['wall_seconds']:.0f} |"
            f" {r['test_accuracy']:.4f} | {beat} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
