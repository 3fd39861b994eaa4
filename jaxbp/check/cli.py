"""``python -m jaxbp check``: check the built-in catalogue, or a user's layer factory.

Examples::

    python -m jaxbp check                       # every catalogue entry
    python -m jaxbp check --layer Dense --layer MaxPool --seeds 20
    python -m jaxbp check --dtype bfloat16 --json
    python -m jaxbp check my_module:make_layer --input-shape 8,16

Exit status:

    0  every check passed
    1  a backward is wrong (a check failed; the report says where)
    2  usage or load error: unknown catalogue entry, a factory that cannot be imported or called or
       returns no Layer, a bad --input-shape, an argument out of range (one line on stderr)
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


EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _LoadError(Exception):
    """A user's factory could not be loaded or used (exit status 2)."""


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise _LoadError(f"--input-shape must be comma-separated integers, got {text!r}") from None
    if any(s < 0 for s in shape):
        raise _LoadError(f"--input-shape must not be negative, got {text!r}")
    return shape


def _load_factory(spec: str, input_shape: str | None):
    """``(layer, shape)`` from ``module:function``; :class:`_LoadError` naming what went wrong."""
    from jaxbp.core import Layer

    module, _, name = spec.partition(":")
    if not module or not name:
        raise _LoadError(f"expected 'module:function', got {spec!r}")
    sys.path.insert(0, "")
    try:
        factory = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise _LoadError(f"cannot import module {module!r}: {e}") from e
    except AttributeError:
        raise _LoadError(f"module {module!r} has no {name!r}") from None
    try:
        made = factory()
    except Exception as e:  # noqa: BLE001  (a user's factory may raise anything)
        raise _LoadError(f"{spec}() raised {type(e).__name__}: {e}") from e
    layer, shape = (made, None) if isinstance(made, Layer) else _pair(spec, made)
    if input_shape:
        shape = _parse_shape(input_shape)
    if shape is None:
        raise _LoadError("--input-shape is required when the factory returns only a Layer")
    return layer, shape


def _pair(spec: str, made):
    from jaxbp.core import Layer

    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], Layer):
        return made
    raise _LoadError(f"{spec}() returned {type(made).__name__}, expected a Layer or (layer, input_shape)")


def _factory_report(spec: str, input_shape: str | None, dtype, seeds: int) -> CheckReport:
    from jaxbp.check import check_layer

    layer, shape = _load_factory(spec, input_shape)
    return check_layer(layer, shape, dtype=dtype, seeds=seeds)


def _catalogue_reports(args: argparse.Namespace) -> dict[str, CheckReport]:
    from jaxbp.check import check_catalogue

    reports = {}
    for name in args.layer or list(_catalogue_names()):
        reports[name] = check_catalogue([name], seeds=args.seeds, dtype=args.dtype)[name]
        if not args.json:
            r = reports[name]
            print(str(r) if (args.verbose or args.layer or not r.ok) else r.summary(), flush=True)
    return reports


def _catalogue_names() -> list[str]:  # imported lazily: --help stays fast
    from jaxbp.check.catalogue import CATALOGUE

    return list(CATALOGUE)


def main(args: argparse.Namespace) -> int:
    """Run the checks; print tables (or JSON); return 0 (all passed), 1 (a check failed) or 2 (usage/load)."""
    from jaxbp.errors import JaxbpError

    start = time.perf_counter()
    try:
        if args.factory:
            reports = {args.factory: _factory_report(args.factory, args.input_shape, args.dtype, args.seeds)}
        else:
            unknown = [n for n in args.layer or [] if n not in _catalogue_names()]
            if unknown:
                raise _LoadError(f"unknown layer(s) {unknown}; known: {', '.join(_catalogue_names())}")
            reports = _catalogue_reports(args)
    except (_LoadError, JaxbpError) as e:
        print(f"jaxbp check: {e}", file=sys.stderr)
        return EXIT_USAGE
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
    return EXIT_OK if ok else EXIT_FAILED
