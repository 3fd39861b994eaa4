"""``python -m jaxbp {train,check,bench}``: one parser, each command implemented in its own module.

Each command module provides ``add_arguments(parser)`` and ``main(args) -> int`` and is
imported only when its command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("jaxbp.train.cli", "train a model with the hand-written backward (the main job)"),
    "check": ("jaxbp.check.cli", "check hand-written backwards against JAX autodiff"),
    "bench": ("jaxbp.bench.cli", "benchmark the manual backward against jax.grad"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen command's module is imported."""
    parser = argparse.ArgumentParser(prog="jaxbp", description="Backpropagation written by hand, in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    chosen = next((a for a in (argv or []) if a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxbp`` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    return int(importlib.import_module(COMMANDS[args.command][0]).main(args) or 0)
