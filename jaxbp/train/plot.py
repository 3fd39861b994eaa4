"""``--plot``: training curves and the gradient-flow heatmap from a :func:`jaxbp.train.fit` history."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxbp.errors import UsageError

SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp")


def check_path(path: str | os.PathLike, flag: str = "--plot") -> None:
    """Before training: ``path`` has an image suffix and can be written (its directory exists).

    Raises:
      UsageError: naming the path and what is wrong with it.
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise UsageError(
            f"{flag} {path}: unknown image format {path.suffix!r}; use one of {', '.join(SUFFIXES)}"
        )
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable")


def write(
    history: dict, path: str | os.PathLike, log: Callable[[str], None] | None = print, flag: str = "--plot"
) -> Path:
    """:func:`plot_history` to ``path``, then ``log`` where it went; a failed write is one UsageError."""
    try:
        plot_history(history, path)
    except (OSError, ValueError) as e:  # the path was checked before training; the disk may still fail
        raise UsageError(f"{flag} {path}: could not write the image ({e})") from e
    if log:
        log(f"wrote the loss/accuracy curves and the gradient flow per level to {path}")
    return Path(path)


def plot_history(history: dict, path: str | os.PathLike) -> None:
    """Write loss/accuracy curves and heatmaps of log10 ‖dL/dx^n‖ and log10 ‖dL/dω^n‖ to an image.

    Args:
      history: ``FitResult.history``: ``epoch``, ``train_loss``, ``test_accuracy``, ``levels`` (names),
        ``paths`` (level paths such as ``3/branch/1``, the heatmaps' labels) and ``dx_norms`` /
        ``dparam_norms`` (one row of per-level norms before training and after each epoch).
      path: the output file; the format follows its suffix (``.png``, ``.pdf``, ``.svg``).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    epochs = np.asarray(history["epoch"])
    paths = history.get("paths") or [str(n) for n in range(len(history["levels"]))]
    names = [f"{path}: {name}" for path, name in zip(paths, history["levels"], strict=True)]
    dx = np.asarray(history["dx_norms"], dtype=float).T  # (levels, epochs + 1)
    dp = np.asarray(history["dparam_norms"], dtype=float).T
    dp = np.where(dp > 0, dp, np.nan)  # levels without params: blank, not log(0)

    tracked = history.get("tracked") or []
    rows = 3 if any(t is not None for t in tracked) else 2
    fig, ax = plt.subplots(rows, 2, figsize=(12, 3 + 0.3 * len(names) + 3 * (rows - 2)), layout="constrained")
    ax[0, 0].plot(epochs, history["train_loss"], marker=".")
    ax[0, 0].set(title="training loss", xlabel="epoch", yscale="log")
    ax[0, 1].plot(epochs, history["test_accuracy"], marker=".", color="tab:green")
    ax[0, 1].set(title="test accuracy", xlabel="epoch")
    for a, norms, title in ((ax[1, 0], dx, "log10 ‖dL/dx^n‖"), (ax[1, 1], dp, "log10 ‖dL/dω^n‖")):
        with np.errstate(divide="ignore"):
            im = a.imshow(np.log10(norms), aspect="auto", origin="lower", interpolation="nearest")
        a.set(title=title + " per level (probe batch)", xlabel="epoch (0 = before training)", ylabel="level")
        a.set_yticks(range(len(names)), names, fontsize=7)
        fig.colorbar(im, ax=a)
    if any(t is not None for t in tracked):  # a backward rule's per-level angle to backprop's dL/dx
        for key in next(t for t in tracked if t is not None):
            values = [
                np.nan if t is None else t[key] for t in tracked
            ]  # None: a resumed run's untracked epochs
            ax[2, 0].plot(range(len(tracked)), values, marker=".", label=f"level {key}")
        ax[2, 0].axhline(90, color="gray", lw=0.8, ls="--")
        ax[2, 0].set(
            title="angle (degrees) between the rule's dL/dx and backprop's",
            xlabel="epoch (0 = before training)",
        )
        ax[2, 0].legend(fontsize=7)
        ax[2, 1].axis("off")
    fig.savefig(path, dpi=110)
    plt.close(fig)
