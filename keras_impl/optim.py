"""torch.optim.SGD as a Keras optimizer, and the recipe's per-step lr as a Keras schedule: the update rule
training and the parity harness use (mirrors ``pytorch_impl/optim.py``; docs/training.md says why Keras' own
SGD differs).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from shared.recipes import Plan


@keras.saving.register_keras_serializable(package="resnet_xf")
class TorchSGD(keras.optimizers.Optimizer):
    """``torch.optim.SGD(lr, momentum, weight_decay, nesterov)`` as a Keras optimizer.

    Per variable: ``g = grad + weight_decay * w`` (torch's coupled decay: in the gradient, before momentum);
    ``buf = momentum * buf + g`` (torch's first step sets ``buf = g``, the same thing from a zero buffer);
    ``w -= lr * (g + momentum * buf if nesterov else buf)``. Keras' own ``weight_decay`` attribute is its decoupled
    decay, applied beside the step: it stays off, and torch's is kept as :attr:`torch_weight_decay`.
    """

    def __init__(self, learning_rate: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 nesterov: bool = False, name: str = "torch_sgd", **kwargs: Any) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1]; got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got {weight_decay}")
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        self.momentum = float(momentum)
        self.torch_weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)

    def build(self, variables) -> None:
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate) -> None:
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.torch_weight_decay:
            g = ops.add(g, ops.multiply(ops.cast(self.torch_weight_decay, variable.dtype), variable))
        # The one non-public call: a variable's slot, as every Keras optimizer finds it (on TensorFlow the step
        # sees the backend's own variable, which a public attribute such as ``path`` does not name).
        buf = self.momentums[self._get_variable_index(variable)]
        mu = ops.cast(self.momentum, variable.dtype)
        new_buf = ops.add(ops.multiply(buf, mu), g)
        self.assign(buf, new_buf)
        step = ops.add(g, ops.multiply(new_buf, mu)) if self.nesterov else new_buf
        self.assign_sub(variable, ops.multiply(step, lr))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"momentum": self.momentum, "weight_decay": self.torch_weight_decay, "nesterov": self.nesterov})
        return config


def make_sgd(lr: Any, momentum: float, weight_decay: float, nesterov: bool = False) -> TorchSGD:
    """The Keras twin of ``torch.optim.SGD(model.parameters(), lr, momentum, weight_decay, nesterov)``; ``lr`` may
    be a schedule. Keras binds the model's variables when the optimizer is built, so no model is passed."""
    return TorchSGD(learning_rate=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


@keras.saving.register_keras_serializable(package="resnet_xf")
class RecipeSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``Plan.lr_at(step)`` as a Keras schedule, exactly: the lr of every iteration is tabulated once from the
    shared function (float64 there, float32 here, as torch's param groups hand it to the float32 update) and
    looked up by ``optimizer.iterations``; a formula re-derived in float32 ops could differ in the last bit."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = Plan.from_dict(plan)
        self.table = np.array([self.plan.lr_at(i) for i in range(self.plan.total_iters)], np.float32)

    def __call__(self, step):
        i = keras.ops.minimum(keras.ops.cast(step, "int32"), len(self.table) - 1)
        return keras.ops.take(keras.ops.convert_to_tensor(self.table), i)

    def get_config(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict()}
