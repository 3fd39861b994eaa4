"""``--plot``: training curves and the gradient-flow heatmap from a :func:`jaxbp.train.fit` history."""

from __future__ import annotations

import os

import numpy as np


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
    rows = 3 if tracked else 2
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
    if tracked:  # e.g. a backward rule's per-level angle to backprop's dL/dx (Lillicrap's figure)
        for key in tracked[0]:
            ax[2, 0].plot(range(len(tracked)), [t[key] for t in tracked], marker=".", label=f"level {key}")
        ax[2, 0].axhline(90, color="gray", lw=0.8, ls="--")
        ax[2, 0].set(
            title="angle (degrees) between the rule's dL/dx and backprop's",
            xlabel="epoch (0 = before training)",
        )
        ax[2, 0].legend(fontsize=7)
        ax[2, 1].axis("off")
    fig.savefig(path, dpi=110)
    plt.close(fig)
