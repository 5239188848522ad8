"""PyTorch's SGD, built in one place: the update rule that training and the parity harness use (docs/training.md).

Mirrors ``keras_impl/optim.py``: coupled weight decay (``g += wd * w``) on every parameter,
``buf = mu * buf + g``, ``w -= lr * buf``.
"""

from __future__ import annotations

import torch


def make_sgd(model: torch.nn.Module, lr: float, momentum: float, weight_decay: float,
             nesterov: bool = False, fused: bool | None = None) -> torch.optim.SGD:
    """``torch.optim.SGD`` over every parameter of ``model`` (BN and biases included, as torchvision).

    ``fused=True`` (the trainer's choice on CUDA) runs the update as one kernel and lets GradScaler
    unscale and skip inside it, without the host sync of its ``.item()`` check.
    """
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov, fused=fused)
