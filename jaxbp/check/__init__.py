"""The checker: hand-written backwards against JAX autodiff, level by level and leaf by leaf.

``python -m jaxbp check`` is :mod:`jaxbp.check.cli`.
"""

from jaxbp.check.checker import check_catalogue as check_catalogue
from jaxbp.check.checker import check_layer as check_layer
from jaxbp.check.checker import check_network as check_network
from jaxbp.check.checker import check_sgd_step as check_sgd_step
from jaxbp.check.report import CheckReport as CheckReport
