"""``python -m jaxbp {train,check,bench}``: one parser, each command implemented in its own module.

Each command module provides ``add_arguments(parser)`` and ``main(args) -> int`` and is
imported only when its command runs, so ``--help`` stays fast.

Errors: a :class:`~jaxbp.errors.JaxbpError` raised by a command is printed here as one line
``jaxbp <command>: <message>`` on stderr, without a traceback unless ``--debug`` is given
(before or after the command). Exit codes: 0 done; 2 usage, data or checkpoint error (argparse's own
code for a bad flag is 2 too); 3 non-finite values during training (:class:`NonFiniteError`);
``check`` uses 1 for "a backward is wrong"; 130 interrupted (Ctrl-C). ``python -m jaxbp``
without a command prints the help on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from pathlib import Path

from jaxbp.errors import JaxbpError, NonFiniteError, UsageError

COMMANDS = {
    "train": ("jaxbp.train.cli", "train a model with the hand-written backward (the main job)"),
    "check": ("jaxbp.check.cli", "check hand-written backwards against JAX autodiff"),
    "bench": ("jaxbp.bench.cli", "benchmark the manual backward against jax.grad"),
}

EXIT_OK, EXIT_USAGE, EXIT_NONFINITE, EXIT_INTERRUPTED = 0, 2, 3, 130


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen command's module is imported."""
    parser = argparse.ArgumentParser(prog="jaxbp", description="Backpropagation written by hand, in JAX.")
    debug_help = "show the full traceback of errors"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    chosen = next((a for a in (argv or []) if a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # also after the command; SUPPRESS keeps a --debug given before it when this one is absent
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxbp`` command; returns the exit code (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    if args.command is None:
        build_parser().print_help(sys.stderr)
        print("jaxbp: choose a command: " + ", ".join(COMMANDS), file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).main(args) or 0)
    except JaxbpError as e:
        if args.debug:
            raise
        print(f"jaxbp {args.command}: {one_line(e)}", file=sys.stderr)
        return EXIT_NONFINITE if isinstance(e, NonFiniteError) else EXIT_USAGE
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"jaxbp {args.command}: interrupted (a checkpoint already saved is kept)", file=sys.stderr)
        return EXIT_INTERRUPTED


def import_object(spec: str, flag: str) -> object:
    """``module:name`` (``module`` importable from the current directory, or a ``.py`` file) -> the object.

    The spelling of ``jaxbp check MODULE:FACTORY`` and ``jaxbp train --model MODULE:FACTORY``.

    Raises:
      UsageError: one line naming the flag, the spec and what failed (no such module or file, a
        syntax error or an exception while importing it, no such name in it).
    """
    module, _, name = spec.partition(":")
    if not module or not name:
        raise UsageError(f"{flag} {spec}: expected MODULE:NAME, e.g. my_net:make_net")
    try:
        if module.endswith(".py") or "/" in module:
            path = Path(module)
            if not path.is_file():
                raise UsageError(f"{flag} {spec}: no file {path}")
            loaded = importlib.util.spec_from_file_location(path.stem, path)
            mod = importlib.util.module_from_spec(loaded)
            sys.modules[path.stem] = mod  # dataclasses and pickling look their module up here
            loaded.loader.exec_module(mod)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")  # the current directory, as `python -m` has it
            mod = importlib.import_module(module)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001  (importing a user's module may raise anything)
        raise UsageError(f"{flag} {spec}: cannot import {module}: {type(e).__name__}: {e}") from e
    if not hasattr(mod, name):
        raise UsageError(f"{flag} {spec}: {module} has no {name!r}")
    return getattr(mod, name)


def one_line(error: BaseException) -> str:
    """The error's message on one line (newlines folded to ``; ``)."""
    return "; ".join(s.strip() for s in str(error).splitlines() if s.strip()) or type(error).__name__


# argparse types: a bad value is reported by argparse as "argument --flag: ..." with exit code 2.


def ranged(
    kind: type,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Callable[[str], int | float]:
    """An argparse ``type``: an ``int`` or finite ``float`` in ``[lo, hi]`` (``*_open``: bound excluded)."""

    if hi is None:
        bounds = f"{'>' if lo_open else '>='} {lo}"
    else:
        bounds = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        low_bad = lo is not None and (value <= lo if lo_open else value < lo)
        high_bad = hi is not None and (value >= hi if hi_open else value > hi)
        if low_bad or high_bad:
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bounds}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid <type> value" messages
    return parse


def int_list(lo: int = 1) -> Callable[[str], tuple[int, ...]]:
    """An argparse ``type``: comma-separated integers, each ``>= lo`` (e.g. ``--widths 128,64``)."""
    one = ranged(int, lo)

    def parse(text: str) -> tuple[int, ...]:
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(not p for p in parts):
            raise argparse.ArgumentTypeError(f"expected comma-separated integers >= {lo}, got {text!r}")
        return tuple(one(p) for p in parts)

    return parse
