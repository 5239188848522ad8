"""Keras suite: TensorFlow backend; this process must never import torch."""

import os
import sys

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@pytest.fixture(scope="session", autouse=True)
def _one_intra_op_thread():
    """TensorFlow sizes its intra-op pool once per process, at its first op, and later requests are ignored. The
    SIGTERM contract trains in this process with ``--threads 1`` and compares bit for bit with a run at one thread
    in a subprocess: the pool is fixed here, before any test runs an op, so the tests' order cannot change it."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)


@pytest.fixture(autouse=True)
def _no_torch_here():
    yield
    assert "torch" not in sys.modules, "a keras test imported torch"


def backup_state(run_dir) -> tuple[dict, dict]:
    """(the resume backup's metadata, {optimizer variable path: value}) of a run's checkpoint."""
    import json

    import h5py

    from shared import runs

    meta_path = run_dir / runs.CHECKPOINTS["keras"]
    meta = json.loads(meta_path.read_text())
    with h5py.File(meta_path.parent / meta["weights"]) as f:
        opt = {k: f["optimizer/vars"][k][()] for k in f["optimizer/vars"]}
    return meta, opt


def _checkpoint_progress(run_dir) -> tuple[int, int]:
    meta, opt = backup_state(run_dir)
    return meta["epoch"], int(opt["0"])  # optimizer.iterations


def _check_optimizer(run_dir) -> None:
    """The backup holds the optimizer's step count (the lr is a schedule of it) and a momentum per parameter."""
    from shared.names import canonical_weights
    from shared.spec import get_spec

    meta, opt = backup_state(run_dir)
    assert meta["backend"] == os.environ["KERAS_BACKEND"]
    trainable = [w for w in canonical_weights(get_spec("resnet8")) if w.trainable]
    assert len(opt) == 1 + len(trainable)


@pytest.fixture(scope="session")
def trainer():
    """The Keras trainer, as tests/trainer_contract.py drives it."""
    from shared.machine import cpu_cores
    from tests.trainer_contract import Trainer

    # TensorFlow's default: one intra-op thread per core
    return Trainer("keras", "keras_impl.train", settle=1.0, default_threads=cpu_cores(),
                   checkpoint_progress=_checkpoint_progress, check_optimizer=_check_optimizer, other_framework="torch")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Slow on Keras, fast on torch: the contract under the framework's default threading (a minute of TensorFlow
    runs; the fast suite keeps it under one thread, and the restore of default threading is shared/threads.py, the
    same for both trainers), and a run on a real full disk (the fast suite's SIGTERM test fills the disk at the
    Keras checkpoint through the same write path)."""
    for item in items:
        if "test_train_contract.py" in item.nodeid and (
                "[default threading]" in item.nodeid or "test_a_full_disk_in_the_second_epoch" in item.nodeid):
            item.add_marker(pytest.mark.slow)
