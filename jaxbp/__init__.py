"""jaxbp: backpropagation written by hand, level by level, compiled with JAX."""

from jaxbp.backprop import forward_backward as forward_backward
from jaxbp.backprop import grad as grad
from jaxbp.backprop import value_and_grad as value_and_grad
from jaxbp.combinators import serial as serial
from jaxbp.core import Layer as Layer
from jaxbp.core import LayerError as LayerError
from jaxbp.core import Loss as Loss
from jaxbp.core import Static as Static
from jaxbp.core import apply as apply
from jaxbp.core import init_state as init_state
from jaxbp.core import is_stateful as is_stateful
from jaxbp.core import output_shape as output_shape
from jaxbp.layers.activations import Elu as Elu
from jaxbp.layers.activations import Gelu as Gelu
from jaxbp.layers.activations import LeakyRelu as LeakyRelu
from jaxbp.layers.activations import Relu as Relu
from jaxbp.layers.activations import Sigmoid as Sigmoid
from jaxbp.layers.activations import Softplus as Softplus
from jaxbp.layers.activations import Tanh as Tanh
from jaxbp.layers.dense import Dense as Dense
from jaxbp.layers.shape import Flatten as Flatten
from jaxbp.layers.shape import Reshape as Reshape
from jaxbp.losses import BinaryCrossEntropyWithLogits as BinaryCrossEntropyWithLogits
from jaxbp.losses import MeanSquaredError as MeanSquaredError
from jaxbp.losses import SoftmaxCrossEntropy as SoftmaxCrossEntropy
from jaxbp.step import TrainState as TrainState
from jaxbp.step import init_train_state as init_train_state
from jaxbp.step import make_predict as make_predict
from jaxbp.step import make_train_step as make_train_step
from jaxbp.step import train_step_fn as train_step_fn

__version__ = "0.1.0"
