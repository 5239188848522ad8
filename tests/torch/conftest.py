"""PyTorch suite: this process must never import tensorflow (torch.export would crash)."""

import sys

import pytest


@pytest.fixture(autouse=True)
def _no_tensorflow_here():
    yield
    assert "tensorflow" not in sys.modules, "a torch test imported tensorflow"


def _checkpoint(run_dir):
    import torch

    from shared import runs

    return torch.load(run_dir / runs.CHECKPOINTS["torch"], weights_only=True)


def _checkpoint_progress(run_dir) -> tuple[int, int]:
    progress = _checkpoint(run_dir)["progress"]
    return progress["epoch"], progress["iteration"]


def _check_optimizer(run_dir) -> None:
    """The optimizer's own record of what it used: the recipe's SGD on every parameter, momentum buffers, coupled
    weight decay 1e-4."""
    ckpt = _checkpoint(run_dir)
    (group,) = ckpt["optimizer"]["param_groups"]
    assert len(ckpt["optimizer"]["state"]) == len(group["params"])  # a momentum buffer per parameter
    assert len(group["params"]) == len(ckpt["model"]) - 3 * sum(k.endswith("running_mean") for k in ckpt["model"])
    assert (group["weight_decay"], group["momentum"], group["nesterov"], group["dampening"]) == (1e-4, 0.9, False, 0)


@pytest.fixture(scope="session")
def trainer():
    """The torch trainer, as tests/trainer_contract.py drives it."""
    from tests.conftest import run_code
    from tests.trainer_contract import Trainer

    code = "import torch; print(torch.get_num_threads())"  # this process's count may have been set by a test
    default = int(run_code(code).stdout)
    return Trainer("torch", "pytorch_impl.train", settle=0.5, default_threads=default,
                   checkpoint_progress=_checkpoint_progress, check_optimizer=_check_optimizer, other_framework="keras")
