"""The training program: data sets, model presets, compiled epochs, checkpoints, plots and ``fit``.

``python -m jaxbp train`` is :mod:`jaxbp.train.cli`; from Python use :func:`fit`.
"""

from jaxbp.train.data import DataError as DataError
from jaxbp.train.data import Dataset as Dataset
from jaxbp.train.data import load_dataset as load_dataset
from jaxbp.train.fit import FitResult as FitResult
from jaxbp.train.fit import NonFiniteError as NonFiniteError
from jaxbp.train.fit import fit as fit
from jaxbp.train.fit import make_evaluate as make_evaluate
from jaxbp.train.fit import make_optimizer as make_optimizer
from jaxbp.train.models import build_model as build_model
