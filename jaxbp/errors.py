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
