"""``python -m jaxbp train``: the flags, their defaults and the command's exit codes.

Exit codes: 0 done, 2 usage, data or checkpoint error, 3 non-finite values during training.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from typing import Any

from jaxbp import distributed
from jaxbp.train import checkpoint
from jaxbp.train.data import DATASETS, DataError, load_dataset, standardize
from jaxbp.train.epoch import choose_epoch_builder
from jaxbp.train.fit import NonFiniteError, fit, make_optimizer
from jaxbp.train.models import MODELS, build_model

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
    a("--widths", help="comma-separated widths: mlp hidden widths, or cnn conv channels then dense width")
    a("--dropout", type=float, help="dropout rate after hidden layers (needs jaxbp.layers.dropout)")
    a("--epochs", type=int)
    a("--batch-size", type=int)
    a("--optimizer", choices=("sgd", "adam"), default="sgd")
    a("--lr", type=float, help="(peak) learning rate")
    a("--momentum", type=float, help="SGD momentum (0: plain SGD)")
    a("--weight-decay", type=float, help="L2 weight decay added to the gradient")
    a("--schedule", choices=("constant", "cosine"), default="cosine", help="learning-rate schedule")
    a("--seed", type=int, default=0)
    a(
        "--loop",
        choices=("auto", "scan", "python"),
        default="auto",
        help="epoch as one compiled lax.scan, or a Python loop of compiled steps; auto: the loop for"
        " conv nets on CPU (XLA:CPU runs conv weight gradients slowly inside loops), else the scan",
    )
    a("--no-standardize", action="store_true", help="keep pixels in [0, 1] instead of standardising")
    a("--checkpoint-dir", help="save a checkpoint here after every epoch")
    a("--resume", action="store_true", help="continue from --checkpoint-dir")
    a("--plot", metavar="PNG", help="write loss/accuracy curves and the gradient-flow heatmap here")
    a("--json", action="store_true", help="print one JSON summary object as the last line")
    a("--no-progress", action="store_true", help="no progress bar even on a terminal")
    a("--dp-clip", type=float, help="DP-SGD: clip each example's gradient to this norm (ghost clipping)")
    a("--dp-noise", type=float, help="DP-SGD: Gaussian noise multiplier sigma (noise std sigma * clip)")
    a("--dp-delta", type=float, default=1e-5, help="DP-SGD: the delta of the reported epsilon (default 1e-5)")
    distributed.add_arguments(parser)


def resolve(args: argparse.Namespace) -> dict:
    """The run's configuration: the flags, with unset ones filled from :data:`DEFAULTS`."""
    d = {**DEFAULTS["*", "*"], **DEFAULTS.get((args.dataset, args.model), {})}
    cfg = {k: (getattr(args, k) if getattr(args, k) is not None else d[k]) for k in d}
    widths = tuple(int(w) for w in args.widths.split(",")) if args.widths else None
    cfg.update(
        dataset=args.dataset,
        model=args.model,
        widths=list(widths) if widths else None,
        optimizer=args.optimizer,
        schedule=args.schedule,
        seed=args.seed,
        standardize=not args.no_standardize,
        loop=args.loop,
    )
    if args.dp_clip is not None or args.dp_noise is not None:
        cfg.update(dp_clip=args.dp_clip, dp_noise=args.dp_noise, dp_delta=args.dp_delta)
    return cfg


def main(args: argparse.Namespace) -> int:
    """Run the ``train`` command; returns the process exit code."""
    t0 = time.perf_counter()
    cfg = resolve(args)
    if args.resume and not args.checkpoint_dir:
        print("jaxbp train: --resume needs --checkpoint-dir", file=sys.stderr)
        return 2
    try:
        data = load_dataset(args.dataset, args.data_dir)
    except DataError as e:
        print(f"jaxbp train: {e}", file=sys.stderr)
        return 2
    if cfg["standardize"]:
        data = standardize(data)
    net = build_model(cfg["model"], data.name, data.num_classes, cfg["widths"], cfg["dropout"])
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
    step_fn, on_epoch = None, None
    if "dp_clip" in cfg:
        from jaxbp.quantities import dp

        if cfg["dp_clip"] is None or cfg["dp_noise"] is None or args.devices not in (None, 1):
            print("jaxbp train: DP-SGD needs both --dp-clip and --dp-noise, on one device", file=sys.stderr)
            return 2
        try:
            step_fn = functools.partial(dp.dp_train_step_fn, clip=cfg["dp_clip"], noise=cfg["dp_noise"])
        except ValueError as e:
            print(f"jaxbp train: {e}", file=sys.stderr)
            return 2
        per_epoch = len(data.x_train) // cfg["batch_size"]

        def on_epoch(e, history):
            eps = dp.epsilon(
                cfg["dp_noise"], cfg["batch_size"], len(data.x_train), e * per_epoch, cfg["dp_delta"]
            )
            history.setdefault("epsilon", []).append(eps)
            print(f"privacy after epoch {e}: epsilon {eps:.3f} at delta {cfg['dp_delta']:g}")

    try:
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
        )
    except (NonFiniteError, checkpoint.CheckpointError, ValueError) as e:
        print(f"jaxbp train: {e}", file=sys.stderr)
        return 3 if isinstance(e, NonFiniteError) else 2
    if args.plot:
        from jaxbp.train.plot import plot_history

        plot_history(result.history, args.plot)
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
        }
        if "dp_clip" in cfg:
            summary["epsilon"] = result.history["epsilon"][-1] if result.history.get("epsilon") else 0.0
        print(json.dumps(summary))
    return 0
