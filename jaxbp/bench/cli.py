"""``python -m jaxbp bench``: flags and output (the measuring is in :mod:`jaxbp.bench.run`)."""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

from jaxbp.bench.models import MODELS
from jaxbp.bench.run import format_table, run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jaxbp bench``."""
    parser.add_argument(
        "--models",
        type=lambda s: [m for m in s.split(",") if m],
        default=list(MODELS),
        help=f"comma-separated subset of {','.join(MODELS)} (default: all; '' for none)",
    )
    parser.add_argument("--repeats", type=int, default=15, help="alternating rounds per timing (default 15)")
    parser.add_argument("--min-block", type=float, default=0.05, help="seconds per block (default 0.05)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    parser.add_argument("--gemm-n", type=int, default=2048, help="GEMM size for the throughput (0: skip)")
    parser.add_argument("--no-epoch", dest="epoch", action="store_false", help="skip the digits epoch")
    parser.add_argument(
        "--no-peer", dest="peer", action="store_false", help="skip the CNN step against PyTorch eager"
    )
    parser.add_argument("--epoch-batch", type=int, default=32, help="digits epoch batch size (default 32)")
    parser.add_argument(
        "--torch-threads",
        type=lambda s: tuple(int(n) for n in s.split(",")),
        default=(2, 1),
        help="PyTorch thread counts to time, comma-separated (default 2,1: the cores, and one)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write the figures as JSON to PATH, or to stdout instead of the table",
    )
    parser.add_argument("--silent", action="store_true", help="no progress lines on stderr")


def main(args: argparse.Namespace) -> int:
    """Run ``jaxbp bench``; returns the exit status."""
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        print(
            f"jaxbp bench: unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}",
            file=sys.stderr,
        )
        return 2
    res = run(args)
    if args.json == "-":
        print(json.dumps(res, indent=1, default=_json_default))
        return 0
    print(format_table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=_json_default)
    return 0


def _json_default(o):
    if isinstance(o, (np.generic, jax.Array)):
        return np.asarray(o).tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
