"""``python -m jaxbp check``: check the built-in catalogue, or a user's layer factory.

Examples::

    python -m jaxbp check                       # every catalogue entry; exit 1 on any failure
    python -m jaxbp check --layer Dense --layer MaxPool --seeds 20
    python -m jaxbp check --dtype bfloat16 --json
    python -m jaxbp check my_module:make_layer --input-shape 8,16
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from jaxbp.check.report import CheckReport


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``check`` command's options to ``parser``."""
    parser.add_argument(
        "factory",
        nargs="?",
        help="a user layer factory 'module:function' returning a Layer "
        "(or (layer, input_shape)); default: the built-in catalogue",
    )
    parser.add_argument("--input-shape", help="input shape for a factory, comma separated, e.g. 8,16")
    parser.add_argument(
        "--layer", action="append", metavar="NAME", help="check only this catalogue entry (repeatable)"
    )
    parser.add_argument(
        "--dtype",
        default=None,
        help="the layer's own dtype, checked besides float64 (default: its param dtype)",
    )
    parser.add_argument("--seeds", type=int, default=8, help="random draws per layer (default 8)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--verbose", "-v", action="store_true", help="print the full table for every layer")


def _factory_report(spec: str, input_shape: str | None, dtype, seeds: int) -> CheckReport:
    from jaxbp.check import check_layer
    from jaxbp.core import Layer

    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"jaxbp check: expected 'module:function', got {spec!r}")
    sys.path.insert(0, "")
    made = getattr(importlib.import_module(module), name)()
    layer, shape = (made, None) if isinstance(made, Layer) else made
    if input_shape:
        shape = tuple(int(s) for s in input_shape.split(","))
    if shape is None:
        raise SystemExit("jaxbp check: --input-shape is required when the factory returns only a Layer")
    return check_layer(layer, shape, dtype=dtype, seeds=seeds)


def main(args: argparse.Namespace) -> int:
    """Run the checks; print tables (or JSON); 1 if anything failed."""
    from jaxbp.check import check_catalogue
    from jaxbp.check.catalogue import CATALOGUE

    start = time.perf_counter()
    if args.factory:
        reports = {args.factory: _factory_report(args.factory, args.input_shape, args.dtype, args.seeds)}
    else:
        unknown = [n for n in args.layer or [] if n not in CATALOGUE]
        if unknown:
            print(f"jaxbp check: unknown layer(s) {unknown}; known: {', '.join(CATALOGUE)}", file=sys.stderr)
            return 2
        reports = {}
        for name in args.layer or list(CATALOGUE):
            reports[name] = check_catalogue([name], seeds=args.seeds, dtype=args.dtype)[name]
            if not args.json:
                r = reports[name]
                print(str(r) if (args.verbose or args.layer or not r.ok) else r.summary(), flush=True)
    ok = all(r.ok for r in reports.values())
    if args.json:
        print(json.dumps({"ok": ok, "reports": {n: r.to_dict() for n, r in reports.items()}}, indent=1))
    else:
        if args.factory:
            print(reports[args.factory])
        failed = [n for n, r in reports.items() if not r.ok]
        print(
            f"\n{len(reports) - len(failed)}/{len(reports)} passed in {time.perf_counter() - start:.1f} s"
            + (f"; FAILED: {', '.join(failed)}" if failed else "")
        )
    return 0 if ok else 1
