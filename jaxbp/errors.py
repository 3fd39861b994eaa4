"""Every error jaxbp raises on purpose, in one place; all derive from :class:`JaxbpError`.

The command-line programs print any ``JaxbpError`` as one line (no traceback unless ``--debug``).
Each message names where the problem is (level and layer, file, flag) and the values involved.
"""

from __future__ import annotations


class JaxbpError(Exception):
    """Base of every error jaxbp raises on purpose."""


class LayerError(JaxbpError, ValueError):
    """Bad input to a layer or network; the message names the level, layer and shapes."""


class ContractError(LayerError):
    """A backward broke the contract: dparams or dx of the wrong structure, shape or dtype."""


class DataError(JaxbpError, ValueError):
    """A data set could not be loaded or is unusable; the message names the file and the problem."""


class CheckpointError(JaxbpError, ValueError):
    """A checkpoint is missing, corrupt, or belongs to another run configuration."""


class NonFiniteError(JaxbpError, RuntimeError):
    """Training produced a non-finite loss or gradient; the message says epoch, batch and level."""


class UsageError(JaxbpError, ValueError):
    """A command-line flag or a function argument is out of its range."""


def path_text(path: tuple[str, ...]) -> str:
    """A level path as text: ``("3", "branch", "1")`` -> ``"3/branch/1"``; the network itself is ``"0"``."""
    return "/".join(path) or "0"


def at_path(error: LayerError, path: tuple[str, ...], layer: str) -> LayerError:
    """``error`` located at the level ``path`` whose layer is named ``layer``; returns a new error.

    A located error keeps ``path``, ``layer`` and ``detail`` (the message without the location)
    as attributes. Locating an error that is already located prepends ``path`` to its own and
    keeps its (innermost) layer, so an error raised deep inside nested networks names the full
    path once: ``level 3/branch/1 (Dense(4)): ...``.
    """
    inner = getattr(error, "path", None)
    detail = getattr(error, "detail", None) if inner is not None else None
    full = (*path, *inner) if inner is not None else tuple(path)
    layer = getattr(error, "layer", None) or layer if inner is not None else layer
    detail = str(error) if detail is None else detail
    new = type(error)(f"level {path_text(full)} ({layer}): {_prefix(error)}{detail}")
    new.path, new.layer, new.detail = full, layer, detail
    return new


def _prefix(error: Exception) -> str:
    return "its backward broke the contract: " if isinstance(error, ContractError) else ""
