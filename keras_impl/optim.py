"""torch.optim.SGD as a Keras optimizer: the one update rule training and the parity harness use.

Mirrors ``pytorch_impl/optim.py``. Keras' own SGD differs from PyTorch's in two ways that matter for
reproducing the paper's recipe: its ``weight_decay`` is decoupled (``w -= lr * wd * w`` beside the
step) where torch's is coupled (``g += wd * w`` before momentum), and its velocity
``v = mu * v - lr * g`` carries the old lr across a milestone where torch's buffer ``buf = mu * buf + g``
is scaled by the new lr at once. :class:`TorchSGD` follows torch exactly.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="resnet_xf")
class TorchSGD(keras.optimizers.Optimizer):
    """``torch.optim.SGD(lr, momentum, weight_decay, nesterov)`` as a Keras optimizer.

    Per variable: ``g = grad + wd * w``; ``buf = momentum * buf + g`` (torch's first step sets
    ``buf = g``, the same thing from a zero buffer); ``w -= lr * (g + momentum * buf if nesterov else buf)``.
    """

    def __init__(self, learning_rate: float = 0.1, momentum: float = 0.9, coupled_weight_decay: float = 0.0,
                 nesterov: bool = False, name: str = "torch_sgd", **kwargs: Any) -> None:
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1]; got {momentum}")
        if coupled_weight_decay < 0:
            raise ValueError(f"coupled_weight_decay must be >= 0; got {coupled_weight_decay}")
        self.momentum = float(momentum)
        self.coupled_weight_decay = float(coupled_weight_decay)
        self.nesterov = bool(nesterov)

    def build(self, variables) -> None:
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate) -> None:
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            g = ops.add(g, ops.multiply(ops.cast(self.coupled_weight_decay, variable.dtype), variable))
        buf = self.momentums[self._get_variable_index(variable)]
        mu = ops.cast(self.momentum, variable.dtype)
        new_buf = ops.add(ops.multiply(buf, mu), g)
        self.assign(buf, new_buf)
        step = ops.add(g, ops.multiply(new_buf, mu)) if self.nesterov else new_buf
        self.assign_sub(variable, ops.multiply(step, lr))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"momentum": self.momentum, "coupled_weight_decay": self.coupled_weight_decay,
                       "nesterov": self.nesterov})
        return config


def make_sgd(model: keras.Model | None, lr: float, momentum: float, weight_decay: float,
             nesterov: bool = False) -> TorchSGD:
    """The Keras twin of ``torch.optim.SGD(model.parameters(), lr, momentum, weight_decay, nesterov)``.

    ``model`` is unused (Keras binds variables when the optimizer is built or applied); it keeps the
    signature equal to PyTorch's.
    """
    del model
    return TorchSGD(learning_rate=lr, momentum=momentum, coupled_weight_decay=weight_decay, nesterov=nesterov)
