"""Run ``python -m tests.no_weight_decay MODULE ARGS...``: a training CLI (``pytorch_impl.train`` or
``keras_impl.train``) whose optimizer gets weight decay 0 instead of the recipe's. The reference run that
shows the training parity test feels weight decay (``tests/shared/test_train_parity.py``)."""

from __future__ import annotations

import importlib
import sys

if __name__ == "__main__":
    trainer = importlib.import_module(sys.argv[1])
    make_sgd = trainer.make_sgd  # both trainers pass weight_decay=... by keyword

    def without_decay(*args, weight_decay, **kwargs):
        return make_sgd(*args, weight_decay=0.0, **kwargs)

    trainer.make_sgd = without_decay
    sys.exit(trainer.main(sys.argv[2:]))
