"""``python -m jaxbp train``: the flags, their defaults and the command's exit codes.

Exit codes: 0 done, 2 usage, data or checkpoint error, 3 non-finite values during training.
Every flag is range-checked by the parser, and the data, the output paths (``--plot``,
``--checkpoint-dir``) and an existing checkpoint are checked before the first step; errors are
raised as :class:`~jaxbp.errors.JaxbpError` and printed by :func:`jaxbp.cli.main` as one line.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxbp import distributed, rules
from jaxbp.cli import int_list, ranged
from jaxbp.errors import CheckpointError, UsageError
from jaxbp.train import checkpoint
from jaxbp.train.data import DATASETS, fingerprint, load_dataset, standardize
from jaxbp.train.epoch import choose_epoch_builder
from jaxbp.train.fit import fit, make_optimizer
from jaxbp.train.models import MODELS, NORMS, build_model

MAX_SEED = 2**31 - 1
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp")

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
    a = parser.add_argument
    a("--dataset", choices=DATASETS, default="digits", help="data set (default: digits, no download needed)")
    a(
        "--data-dir",
        help="IDX directory for mnist/fashion-mnist (fashion-mnist default: Debian's"
        " /usr/share/datasets/fashion-mnist), or the .npz file for --dataset npz",
    )
    a("--model", choices=MODELS, default="mlp", help="model preset (default: mlp)")
    a(
        "--norm",
        choices=NORMS,
        default="batch",
        help="the cnn preset's normalisation: batch (BatchNorm) or group (GroupNorm: per example, DP-SGD)",
    )
    a(
        "--widths",
        type=int_list(1),
        help="comma-separated widths >= 1: mlp hidden widths, or cnn conv channels then dense width",
    )
    a("--dropout", type=ranged(float, 0, 1, hi_open=True), help="dropout rate in [0, 1) after hidden layers")
    a("--epochs", type=ranged(int, 1), help="epochs (>= 1)")
    a("--batch-size", type=ranged(int, 1), help="examples per step (>= 1, at most the training set)")
    a("--optimizer", choices=("sgd", "adam"), default="sgd")
    a("--lr", type=ranged(float, 0, lo_open=True), help="(peak) learning rate (> 0)")
    a("--momentum", type=ranged(float, 0, 1, hi_open=True), help="SGD momentum in [0, 1) (0: plain SGD)")
    a("--weight-decay", type=ranged(float, 0), help="L2 weight decay (>= 0) added to the gradient")
    a("--schedule", choices=("constant", "cosine"), default="cosine", help="learning-rate schedule")
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
        help="backward rule (jaxbp.rules): bp, fa, usf, frsf, brsf, dfa",
    )
    a("--plot", metavar="PNG", help="write loss/accuracy curves and the gradient-flow heatmap here")
    a("--json", action="store_true", help="print one JSON summary object as the last line")
    a("--no-progress", action="store_true", help="no progress bar even on a terminal")
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
    if args.data_dir is not None and args.dataset == "digits":
        raise UsageError(
            "--data-dir is for --dataset mnist, fashion-mnist or npz; digits ships with scikit-learn"
        )
    if args.plot:
        _check_writable_file("--plot", Path(args.plot), PLOT_SUFFIXES)
    if args.checkpoint_dir:
        d = Path(args.checkpoint_dir)
        if d.exists() and not d.is_dir():
            raise UsageError(f"--checkpoint-dir {d}: exists and is not a directory")
        base = next(
            p for p in (d.absolute(), *d.absolute().parents) if p.exists()
        )  # created at the first save
        if not base.is_dir():
            raise UsageError(f"--checkpoint-dir {d}: cannot create it, {base} is not a directory")
        if not os.access(base, os.W_OK | os.X_OK):
            raise UsageError(f"--checkpoint-dir {d}: {base} is not writable")


def _check_writable_file(flag: str, path: Path, suffixes: tuple[str, ...]) -> None:
    if path.suffix.lower() not in suffixes:
        raise UsageError(
            f"{flag} {path}: unknown image format {path.suffix!r}; use one of {', '.join(suffixes)}"
        )
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable")


def check_checkpoint(args: argparse.Namespace, cfg: dict, log=print) -> None:
    """Before training: clean stale temporary files; refuse a checkpoint of another configuration.

    Without ``--resume`` an existing checkpoint is replaced only with ``--overwrite``; with
    ``--resume`` its metadata must be intact and its configuration (data identity included) equal.
    """
    d = args.checkpoint_dir
    if not d:
        return
    stale = checkpoint.clean_stale(d)
    if stale and log:
        log(f"removed {len(stale)} stale temporary file(s) from {d} (left by an interrupted save)")
    if not checkpoint.exists(d) or args.overwrite:
        return
    path = checkpoint.path_in(d)
    if not args.resume:
        raise CheckpointError(
            f"{path} already holds a checkpoint; pass --resume to continue it or --overwrite to replace it"
        )
    meta = checkpoint.read_meta(d)
    checkpoint.validate_run_meta(d, meta)
    if meta["config"] != cfg:
        diff = checkpoint.config_difference(meta["config"], cfg)
        raise CheckpointError(
            f"{path} was saved by another run configuration ({diff});"
            " resume with the same flags and data, or pass --overwrite instead of --resume to start afresh"
        )


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
    check_checkpoint(args, cfg)
    if cfg["standardize"]:
        data = standardize(data)
    base = build_model(
        cfg["model"], data.name, data.num_classes, cfg["widths"], cfg["dropout"], cfg.get("norm", "batch")
    )
    net = rules.by_name(cfg["rule"], base, key=rules.run_key(cfg["seed"]))  # feedback in the net's state
    steps = (len(data.x_train) // cfg["batch_size"]) * cfg["epochs"]
    opt = make_optimizer(
        cfg["lr"],
        momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"],
        schedule=cfg["schedule"],
        total_steps=steps,
        name=cfg["optimizer"],
    )
    print(
        f"{data.name}: {len(data.x_train)} train / {len(data.x_test)} test, {data.num_classes} classes;"
        f" model {net.name}"
    )
    step_fn, on_epoch = _dp_parts(cfg, len(data.x_train)) if "dp_clip" in cfg else (None, None)
    result = fit(
        net,
        data,
        opt,
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        seed=cfg["seed"],
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        config=cfg,
        progress=sys.stderr.isatty() and not args.no_progress,
        log=print,
        epoch_builder=functools.partial(
            choose_epoch_builder(net, cfg["loop"]),
            devices=args.devices,
            **({"step_fn": step_fn} if step_fn else {}),
        ),
        on_epoch=on_epoch,
        track=_angle_tracker(net, data, cfg) if args.plot and cfg["rule"] != "bp" else None,
    )
    plot_error = None
    if args.plot:
        from jaxbp.train.plot import plot_history

        try:
            plot_history(result.history, args.plot)
        except (OSError, ValueError) as e:  # the path was checked before training; the disk may still fail
            plot_error = UsageError(f"--plot {args.plot}: could not write the image ({e})")
    if args.json:
        summary = {
            "test_accuracy": result.test_accuracy,
            "train_loss": result.train_loss,
            "epochs": result.epochs,
            "seconds": round(time.perf_counter() - t0, 3),
            "train_seconds": round(result.seconds, 3),
            "steps_per_second": round(result.steps_per_second, 1),
            "dataset": data.name,
            "model": cfg["model"],
            "seed": cfg["seed"],
            "rule": cfg["rule"],
            "alignment": None
            if result.train_state is None
            else rules.final_alignment(net, result.train_state, data, cfg["batch_size"], cfg["seed"]),
        }
        if "dp_clip" in cfg:
            summary["epsilon"] = result.history["epsilon"][-1] if result.history.get("epsilon") else 0.0
        print(json.dumps(_finite_or_null(summary), allow_nan=False))
    if plot_error:
        raise plot_error
    return 0


def _angle_tracker(net, data, cfg: dict) -> Callable:
    """``--plot`` with a rule: each level's angle (degrees) between the rule's dL/dx and backprop's."""

    def track(ts) -> dict[str, float]:
        angles = rules.final_alignment(net, ts, data, cfg["batch_size"], cfg["seed"])
        return {path: row["dx"] for path, row in angles.items()}

    return track


def _dp_parts(cfg: dict, n_train: int) -> tuple[Callable, Callable]:
    """DP-SGD's train step and the per-epoch privacy report (epsilon at ``--dp-delta``)."""
    from jaxbp.quantities import dp

    step_fn = functools.partial(dp.dp_train_step_fn, clip=cfg["dp_clip"], noise=cfg["dp_noise"])
    per_epoch = n_train // cfg["batch_size"]

    def on_epoch(e, history):
        eps = dp.epsilon(cfg["dp_noise"], cfg["batch_size"], n_train, e * per_epoch, cfg["dp_delta"])
        history.setdefault("epsilon", []).append(eps)
        print(f"privacy after epoch {e}: epsilon {eps:.3f} at delta {cfg['dp_delta']:g}")

    return step_fn, on_epoch


def _finite_or_null(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or infinity: such a value is written as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
