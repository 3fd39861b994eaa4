"""What ``jaxbp train`` does around :func:`~jaxbp.train.fit.fit`, beyond parsing its flags.

The checkpoint directory's checks (under its lock), the devices ``--devices`` uses, DP-SGD's step
and per-epoch privacy report, a backward rule's per-epoch angle to backprop, and the ``--json``
summary (NaN and infinity written as null at any depth). :mod:`jaxbp.train.cli` assembles them.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Callable
from typing import Any

from jaxbp import rules
from jaxbp.errors import CheckpointError, UsageError
from jaxbp.train import checkpoint
from jaxbp.train.models import preset_widths


def help_epilog(defaults: dict, rule_help: dict[str, str]) -> str:
    """The end of ``train --help``: each preset's ``defaults`` (a table) and the rules' one-line help."""
    head = ("dataset", "model", "epochs", "batch", "lr", "momentum", "decay", "dropout", "widths")
    rows = [head]
    for (dataset, model), d in defaults.items():
        if dataset == "*":
            continue
        v = {**defaults["*", "*"], **d}
        widths = ",".join(map(str, preset_widths(model, dataset)))
        rows.append((dataset, model, *(f"{v[k]:g}" for k in NUMBERS), widths))
    v = defaults["*", "*"]
    other = "; ".join(f"{m} " + ",".join(map(str, preset_widths(m, "other"))) for m in ("mlp", "cnn"))
    rows.append(("other", "any", *(f"{v[k]:g}" for k in NUMBERS), other))
    width = [max(len(r[i]) for r in rows) for i in range(len(head))]
    table = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)).rstrip() for r in rows]
    rule_width = max(map(len, rule_help))
    rule_lines = [f"  {name.ljust(rule_width)}  {text}" for name, text in rule_help.items()]
    return "\n".join(
        [
            "defaults of the flags left unset, per data set and model (every preset: --optimizer sgd,",
            "--schedule cosine, --seed 0, --activation relu; 'other': npz data or your own --model):",
            *table,
            "",
            "backward rules (--rule), as each changes the dL/dx a weight level hands down:",
            *rule_lines,
        ]
    )


NUMBERS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "dropout")


def check_devices(devices: int | None) -> None:
    """``--devices N`` must not exceed the devices there are (the parser refused N < 1)."""
    if devices is None:
        return
    import jax

    available = jax.devices()
    if devices > len(available):
        hint = (
            f"; on CPU force more with XLA_FLAGS=--xla_force_host_platform_device_count={devices}"
            if available[0].platform == "cpu"
            else ""
        )
        raise UsageError(
            f"--devices {devices}: only {len(available)} {available[0].platform} device(s) here{hint}"
        )


def devices_line(devices: int | None) -> str | None:
    """What ``--devices`` uses, to confirm it: None for one device chosen by default."""
    import jax

    used = jax.devices()[: devices or None]
    if devices is None and len(used) == 1:
        return None
    names = ", ".join(str(d) for d in used) if len(used) <= 8 else f"{used[0]} ... {used[-1]}"
    return f"data-parallel over {len(used)} {used[0].platform} device(s): {names}"


def check_checkpoint(args: argparse.Namespace, cfg: dict, log=print) -> None:
    """Before training, holding the directory's lock: clean stale temporary files; refuse a
    checkpoint of another configuration.

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


def summary(cfg: dict, net, data, result, t0: float) -> dict:
    """The ``--json`` line's object (see :func:`finite_or_null` for NaN)."""
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
    return summary


def angle_tracker(net, data, cfg: dict) -> Callable:
    """The rule's angle (degrees) between its dL/dx and backprop's per weight level; compiled once."""
    import jax
    import jax.numpy as jnp

    from jaxbp.losses import SoftmaxCrossEntropy

    x, y = jnp.asarray(data.x_train[: cfg["batch_size"]]), jnp.asarray(data.y_train[: cfg["batch_size"]])
    key = jax.random.PRNGKey(cfg["seed"] + 1)  # the probe batch and key of final_alignment and the flow

    @jax.jit
    def angles(params, state):
        rows = rules.alignment(net, SoftmaxCrossEntropy(), params, x, y, state=state, key=key)
        return {path: row["dx"] for path, row in rows.items()}

    def track(ts) -> dict[str, float]:
        got = angles(ts.params, ts.state)  # a dict comes back with its keys sorted as strings: "10" < "2"
        return {path: round(float(got[path]), 3) for path in sorted(got, key=_path_order)}

    return track


def _path_order(path: str) -> tuple:
    """Level paths in walk order: ``"2" < "10"``, ``"3/branch/1" < "3/branch/10"``."""
    return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in path.split("/"))


def dp_parts(cfg: dict, n_train: int) -> tuple[Callable, Callable]:
    """DP-SGD's train step and the per-epoch privacy report (epsilon at ``--dp-delta``)."""
    from jaxbp.quantities import dp

    step_fn = functools.partial(dp.dp_train_step_fn, clip=cfg["dp_clip"], noise=cfg["dp_noise"])
    per_epoch = n_train // cfg["batch_size"]

    def on_epoch(e, history):
        eps = dp.epsilon(cfg["dp_noise"], cfg["batch_size"], n_train, e * per_epoch, cfg["dp_delta"])
        history.setdefault("epsilon", []).append(eps)
        print(f"privacy after epoch {e}: epsilon {eps:.3f} at delta {cfg['dp_delta']:g}")

    return step_fn, on_epoch


def finite_or_null(value: Any) -> Any:
    """JSON has no NaN or infinity: such a value is written as null, at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value
