"""Progress within an epoch, for terminals and for logs alike.

Long epochs (a Fashion-MNIST CNN epoch takes half a minute on two cores) must show that work is
going on wherever the output goes:

* ``"bar"``: a tqdm bar per epoch on stderr (an interactive terminal);
* ``"lines"``: a plain line on stderr every ``every`` seconds while an epoch runs, e.g.
  ``epoch 1/6: batch 180/468 (38%), 12.0s`` (output piped to ``tee`` or a file, or a terminal that
  reports 0 columns, where a bar would draw nothing); epochs shorter than ``every`` print nothing;
* ``"none"``.

:func:`choose` picks the mode for a stream. The epoch calls :meth:`Progress.tick` with the batch
index (from the device, every ~2% of the batches); the training program's own per-epoch line is
printed by :func:`jaxbp.train.fit.fit` (or, in bar mode, becomes the bar's last state).
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO

MODES = ("bar", "lines", "none")


def choose(stream: IO | None = None, requested: str = "auto") -> str:
    """``requested`` unless ``"auto"``: a bar on a terminal with columns, plain lines anywhere else."""
    if requested != "auto":
        if requested not in MODES:
            raise ValueError(f"unknown progress mode {requested!r}; choose auto, {', '.join(MODES)}")
        return requested
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
        columns = os.get_terminal_size(stream.fileno()).columns if tty else 0
    except (AttributeError, OSError, ValueError):
        tty, columns = False, 0
    return "bar" if tty and columns > 0 else "lines"


class Progress:
    """One run's progress display: :meth:`start` an epoch, :meth:`tick` per batch, :meth:`close`."""

    def __init__(self, mode: str = "none", every: float = 10.0, stream: IO | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}; choose one of {', '.join(MODES)}")
        self.mode, self.every, self.stream = mode, every, stream
        self.bar = None
        self._label, self._total, self._t0, self._last = "", 0, 0.0, 0.0

    @property
    def active(self) -> bool:
        """Whether the epoch must call :meth:`tick` at all."""
        return self.mode != "none"

    def start(self, epoch: int, epochs: int, total: int) -> None:
        """An epoch of ``total`` batches begins."""
        self._label, self._total = f"epoch {epoch}/{epochs}", total
        self._t0 = self._last = time.perf_counter()
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self._label, unit="batch", leave=True, file=self._out())

    def tick(self, i) -> None:
        """Batch ``i`` (0-based) is done."""
        done = int(i) + 1
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif self.mode == "lines":
            now = time.perf_counter()
            if now - self._last >= self.every and done < self._total:
                self._last = now
                pct = 100 * done // max(self._total, 1)
                print(
                    f"{self._label}: batch {done}/{self._total} ({pct}%), {now - self._t0:.1f}s",
                    file=self._out(),
                    flush=True,
                )

    def finish(self, summary: str) -> bool:
        """End the epoch; True when the summary went into the bar (nothing else to print)."""
        if self.bar is None:
            return False
        self.bar.set_postfix_str(summary)
        self.bar.update(self._total - self.bar.n)
        self.close()
        return True

    def close(self) -> None:
        """Close the bar (after an error too)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _out(self) -> IO:
        return self.stream or sys.stderr
