"""``python -m jaxbp train``: the flags, their defaults and the command's exit codes.

Exit codes: 0 done, 2 usage, data or checkpoint error, 3 non-finite values during training.
Every flag is range-checked by the parser, and the data, the output paths (``--plot``,
``--checkpoint-dir``: locked for the run and probe-written) and an existing checkpoint are checked
before the first step; errors are raised as :class:`~jaxbp.errors.JaxbpError` and printed by
:func:`jaxbp.cli.main` as one line. ``--help`` ends with the defaults of every preset and the
backward rules, generated from :data:`DEFAULTS` and the rule registry's summaries.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from jaxbp import distributed, rules
from jaxbp.cli import int_list, ranged
from jaxbp.errors import UsageError
from jaxbp.train import plot, progress, run, rundir
from jaxbp.train.data import DATASETS, fingerprint, load_dataset, standardize
from jaxbp.train.epoch import choose_epoch_builder
from jaxbp.train.fit import fit, make_optimizer
from jaxbp.train.models import ACTIVATIONS, MODELS, NORMS, build_model, model_spec
from jaxbp.train.pieces import total_steps

MAX_SEED = 2**31 - 1

# Per (dataset, model) defaults for flags left unset; anything else falls back to "*".
DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("*", "*"): dict(epochs=10, batch_size=128, lr=0.05, momentum=0.9, weight_decay=0.0, dropout=0.0),
    ("digits", "mlp"): dict(epochs=30, batch_size=32, lr=0.05, weight_decay=1e-4),
    ("digits", "cnn"): dict(epochs=20, batch_size=32, lr=0.05, weight_decay=1e-4),
    ("fashion-mnist", "mlp"): dict(epochs=30, batch_size=128, lr=0.05, weight_decay=5e-4),
    ("fashion-mnist", "cnn"): dict(epochs=6, batch_size=128, lr=0.05, weight_decay=5e-4, dropout=0.2),
    ("mnist", "mlp"): dict(epochs=20, batch_size=128, lr=0.05, weight_decay=5e-4),
    ("mnist", "cnn"): dict(epochs=8, batch_size=128, lr=0.05, weight_decay=5e-4, dropout=0.3),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` command's flags to ``parser``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = run.help_epilog(DEFAULTS, {name: rule.summary for name, rule in rules.RULES.items()})
    per_preset = "default: per data set and model, see the table below"
    a = parser.add_argument
    a("--dataset", choices=DATASETS, default="digits", help="data set (default: digits, no download needed)")
    a(
        "--data-dir",
        help="IDX directory for mnist/fashion-mnist (fashion-mnist default: Debian's"
        " /usr/share/datasets/fashion-mnist), or the .npz file for --dataset npz",
    )
    a(
        "--model",
        type=model_spec,
        default="mlp",
        metavar="{" + ",".join(MODELS) + ",MODULE:FACTORY}",
        help="model preset (default: mlp), or your own network: FACTORY() in MODULE (a module name"
        " importable from here, or a path such as ./my_net.py) returns a jaxbp Layer mapping a batch"
        " of the data set's examples to class logits",
    )
    a(
        "--norm",
        choices=NORMS,
        default="batch",
        help="the cnn preset's normalisation: batch (BatchNorm) or group (GroupNorm: per example, DP-SGD)",
    )
    a(
        "--widths",
        type=int_list(1),
        help="comma-separated widths >= 1: mlp hidden widths, or cnn conv channels then dense width"
        " (default: per data set, see the table below)",
    )
    a(
        "--activation",
        choices=tuple(ACTIVATIONS),
        help="the presets' activation (default: relu; tanh is the MLP of docs/rules.md's table)",
    )
    a(
        "--dropout",
        type=ranged(float, 0, 1, hi_open=True),
        help=f"dropout rate in [0, 1) after hidden layers ({per_preset})",
    )
    a("--epochs", type=ranged(int, 1), help=f"epochs (>= 1; {per_preset})")
    a(
        "--batch-size",
        type=ranged(int, 1),
        help=f"examples per step (>= 1, at most the training set; {per_preset})",
    )
    a(
        "--optimizer",
        choices=("sgd", "adam"),
        default="sgd",
        help="sgd: SGD with --momentum; adam: Adam (ignores --momentum) (default: sgd)",
    )
    a("--lr", type=ranged(float, 0, lo_open=True), help=f"(peak) learning rate (> 0; {per_preset})")
    a(
        "--momentum",
        type=ranged(float, 0, 1, hi_open=True),
        help=f"SGD momentum in [0, 1), 0: plain SGD ({per_preset})",
    )
    a(
        "--weight-decay",
        type=ranged(float, 0),
        help=f"L2 weight decay (>= 0) added to the gradient ({per_preset})",
    )
    a(
        "--schedule",
        choices=("constant", "cosine"),
        default="cosine",
        help="learning-rate schedule: cosine decays --lr to 0 over the run, constant keeps it"
        " (default: cosine)",
    )
    a("--seed", type=ranged(int, 0, MAX_SEED), default=0, help=f"PRNG seed in [0, {MAX_SEED}]")
    a(
        "--loop",
        choices=("auto", "scan", "python"),
        default="auto",
        help="epoch as one compiled lax.scan, or a Python loop of compiled steps (auto: the scan)",
    )
    a("--no-standardize", action="store_true", help="keep pixels in [0, 1] instead of standardising")
    a("--checkpoint-dir", help="save a checkpoint here after every epoch")
    a("--resume", action="store_true", help="continue from --checkpoint-dir")
    a(
        "--overwrite",
        action="store_true",
        help="start afresh even though --checkpoint-dir holds a checkpoint (it is replaced after epoch 1)",
    )
    a(
        "--rule",
        choices=rules.RULES,
        default="bp",
        help="backward rule (default: bp; each is explained below); with a rule other than bp every"
        " epoch line shows each weight level's angle between the rule's dL/dx and backprop's",
    )
    a("--plot", metavar="PNG", help="write loss/accuracy curves and the gradient-flow heatmap here")
    a("--json", action="store_true", help="print one JSON summary object as the last line")
    a("--no-progress", action="store_true", help="no progress within epochs (no bar, no progress lines)")
    a(
        "--progress-every",
        type=ranged(float, 0),
        default=10.0,
        metavar="SECONDS",
        help="when stderr is not a terminal (piped, a log file): a progress line every SECONDS"
        " during an epoch (default: 10)",
    )
    a(
        "--dp-clip",
        type=ranged(float, 0, lo_open=True),
        help="DP-SGD (> 0): clip each example's gradient to this norm (ghost clipping)",
    )
    a(
        "--dp-noise",
        type=ranged(float, 0, lo_open=True),
        help="DP-SGD (> 0): Gaussian noise multiplier sigma (noise std sigma * clip)",
    )
    a(
        "--dp-delta",
        type=ranged(float, 0, 1, lo_open=True, hi_open=True),
        default=1e-5,
        help="DP-SGD: the delta of the reported epsilon (default 1e-5)",
    )
    distributed.add_arguments(parser)


def resolve(args: argparse.Namespace) -> dict:
    """The run's configuration: the flags, with unset ones filled from :data:`DEFAULTS`."""
    d = {**DEFAULTS["*", "*"], **DEFAULTS.get((args.dataset, args.model), {})}
    cfg = {k: (getattr(args, k) if getattr(args, k) is not None else d[k]) for k in d}
    cfg.update(
        dataset=args.dataset,
        model=args.model,
        widths=list(args.widths) if args.widths else None,
        optimizer=args.optimizer,
        schedule=args.schedule,
        seed=args.seed,
        standardize=not args.no_standardize,
        loop=args.loop,
        rule=args.rule,
    )
    if args.norm != "batch":
        cfg["norm"] = args.norm
    if args.activation not in (None, "relu"):  # only when not the default: older checkpoints resume
        cfg["activation"] = args.activation
    if args.dp_clip is not None or args.dp_noise is not None:
        cfg.update(dp_clip=args.dp_clip, dp_noise=args.dp_noise, dp_delta=args.dp_delta)
    return cfg


def check_flags(args: argparse.Namespace) -> None:
    """Combinations of flags the parser cannot judge alone, and the output paths; before any work."""
    if args.resume and not args.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir")
    if args.overwrite and args.resume:
        raise UsageError(
            "--resume and --overwrite contradict each other: continue the checkpoint, or replace it"
        )
    if args.overwrite and not args.checkpoint_dir:
        raise UsageError("--overwrite needs --checkpoint-dir")
    dp_flags = (args.dp_clip is not None, args.dp_noise is not None)
    if any(dp_flags) and (not all(dp_flags) or args.devices not in (None, 1)):
        raise UsageError("DP-SGD needs both --dp-clip and --dp-noise, on one device")
    if any(dp_flags) and args.model == "cnn" and args.norm == "batch":
        raise UsageError(
            "DP-SGD clips each example's gradient, and the cnn preset's BatchNorm mixes the examples"
            " in training; pass --norm group (GroupNorm keeps each example's statistics its own)"
        )
    if args.norm != "batch" and args.model != "cnn":
        raise UsageError(f"--norm is the cnn preset's; --model {args.model} has no normalisation")
    if any(dp_flags) and importlib.util.find_spec("dp_accounting") is None:
        raise UsageError(
            "--dp-clip/--dp-noise report epsilon with dp-accounting, which is not installed:"
            " pip install dp-accounting (a dependency of jaxbp: `pip install -e .` installs it)"
        )
    if args.data_dir is not None and args.dataset == "digits":
        raise UsageError(
            "--data-dir is for --dataset mnist, fashion-mnist or npz; digits ships with scikit-learn"
        )
    if args.model not in MODELS:
        for flag, value in (("--widths", args.widths), ("--activation", args.activation)):
            if value is not None:
                raise UsageError(
                    f"{flag} is for the presets ({', '.join(MODELS)}), not for --model {args.model}"
                )
    run.check_devices(args.devices)
    if args.plot:
        plot.check_path(args.plot)
    if args.checkpoint_dir:
        d = Path(args.checkpoint_dir)
        if d.exists() and not d.is_dir():
            raise UsageError(f"--checkpoint-dir {d}: exists and is not a directory")
        base = next(
            p for p in (d.absolute(), *d.absolute().parents) if p.exists()
        )  # created before the first step (rundir.prepare)
        if not base.is_dir():
            raise UsageError(f"--checkpoint-dir {d}: cannot create it, {base} is not a directory")
        if not os.access(base, os.W_OK | os.X_OK):
            raise UsageError(f"--checkpoint-dir {d}: {base} is not writable")


def main(args: argparse.Namespace) -> int:
    """Run the ``train`` command; returns the process exit code (errors are raised as JaxbpError)."""
    t0 = time.perf_counter()
    check_flags(args)
    cfg = resolve(args)
    data = load_dataset(args.dataset, args.data_dir)
    source = str(Path(args.data_dir).resolve()) if args.data_dir else args.dataset
    cfg["data"] = {"source": source, "fingerprint": fingerprint(data)}
    if cfg["batch_size"] > len(data.x_train):
        raise UsageError(
            f"--batch-size {cfg['batch_size']} is larger than the training set ({len(data.x_train)} examples)"
        )
    if cfg["standardize"]:
        data = standardize(data)
    base = build_model(
        cfg["model"],
        data.name,
        data.num_classes,
        cfg["widths"],
        cfg["dropout"],
        cfg.get("activation", "relu"),
        cfg.get("norm", "batch"),
    )
    net = rules.by_name(cfg["rule"], base, key=rules.run_key(cfg["seed"]))  # feedback in the net's state
    print(
        f"{data.name}: {len(data.x_train)} train / {len(data.x_test)} test, {data.num_classes} classes;"
        f" model {net.name}"
    )
    if line := run.devices_line(args.devices):
        print(line)
    with rundir.locked(args.checkpoint_dir) if args.checkpoint_dir else contextlib.nullcontext():
        run.check_checkpoint(args, cfg)
        result = _fit(args, cfg, net, data)
    plot_error = None
    if args.plot:
        try:
            plot.write(result.history, args.plot)
        except UsageError as e:  # the path was checked before training; the disk may still fail
            plot_error = e
    if args.json:
        print(json.dumps(run.finite_or_null(run.summary(cfg, net, data, result, t0)), allow_nan=False))
    if plot_error:
        raise plot_error
    return 0


def _fit(args: argparse.Namespace, cfg: dict, net, data):
    """``fit`` with the optimizer, the epoch builder, DP-SGD and the rule's angle tracker of the flags."""
    step_fn, on_epoch = run.dp_parts(cfg, len(data.x_train)) if "dp_clip" in cfg else (None, None)
    optimizer = make_optimizer(
        cfg["lr"],
        momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"],
        schedule=cfg["schedule"],
        total_steps=total_steps(len(data.x_train), cfg["batch_size"], cfg["epochs"]),  # fit's count too
        name=cfg["optimizer"],
    )
    return fit(
        net,
        data,
        optimizer,
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        seed=cfg["seed"],
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        config=cfg,
        progress="none" if args.no_progress else progress.choose(sys.stderr),
        progress_every=args.progress_every,
        log=print,
        epoch_builder=functools.partial(
            choose_epoch_builder(net, cfg["loop"]),
            devices=args.devices,
            **({"step_fn": step_fn} if step_fn else {}),
        ),
        on_epoch=on_epoch,
        track=run.angle_tracker(net, data, cfg) if cfg["rule"] != "bp" else None,
        track_label="dx angle to bp (deg), level",
    )
