"""Run ``python -m tests.no_weight_decay MODULE ARGS...``: a training CLI (``pytorch_impl.train`` or
``keras_impl.train``) whose optimizer gets weight decay 0 instead of the recipe's. The reference run that
shows the training parity test feels weight decay (``tests/shared/test_train_parity.py``)."""

from __future__ import annotations

import importlib
import sys

if __name__ == "__main__":
    trainer = importlib.import_module(sys.argv[1])
    make_sgd = trainer.make_sgd  # (model, lr, momentum, weight_decay, nesterov, ...) in both trainers

    def without_decay(model, lr, momentum, weight_decay, *args, **kwargs):
        return make_sgd(model, lr, momentum, 0.0, *args, **kwargs)

    trainer.make_sgd = without_decay
    sys.exit(trainer.main(sys.argv[2:]))
