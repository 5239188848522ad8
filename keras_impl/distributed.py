"""Several processes for the Keras trainer, on the JAX backend: ``keras.distribution.initialize()`` joins
them (it calls ``jax.distributed.initialize``), and ``keras.distribution.DataParallel`` then spans the
devices of every process. Each process feeds its own slice of every global batch
(:class:`keras_impl.data.EpochDataset`'s ``part``); Keras assembles the global batch from them.

* On several hosts, run the same command on each, with Keras' own variables:
  ``KERAS_DISTRIBUTION_JOB_ADDRESSES=host0:PORT KERAS_DISTRIBUTION_NUM_PROCESSES=N
  KERAS_DISTRIBUTION_PROCESS_ID=i`` and ``--out`` on a filesystem every host sees.
* On one machine, ``--nproc N`` (``NPROC=N make train-keras BACKEND=jax DEVICE=cpu``) starts the N
  processes with those variables set: CPU processes, which all-reduce through gloo (on GPUs one process
  already trains on every local GPU).

Only the first process writes the run folder. TensorFlow's multi-worker route is
``MultiWorkerMirroredStrategy`` with a ``TF_CONFIG`` per host and Keras' torch backend has none; both
are refused here with one line (docs/keras-backends.md).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from keras_impl.backend_table import Backend
from shared.errors import UserError
from shared.signals import free_port, run_processes
from shared.train_flags import without_nproc

ADDRESSES, COUNT, INDEX = (f"KERAS_DISTRIBUTION_{k}" for k in ("JOB_ADDRESSES", "NUM_PROCESSES", "PROCESS_ID"))


@dataclass(frozen=True)
class Processes:
    """This process among the training processes: ``index`` of ``count`` (0 of 1 alone)."""

    index: int = 0
    count: int = 1

    @property
    def owner(self) -> bool:
        """Whether this process writes the run folder (the first one)."""
        return self.index == 0


def requested() -> int:
    """The process count that Keras' ``KERAS_DISTRIBUTION_NUM_PROCESSES`` asks for (1 when unset)."""
    value = os.environ.get(COUNT, "1")
    try:
        count = int(value)
    except ValueError:
        raise UserError(f"{COUNT}={value!r} is not a whole number") from None
    if count < 1:
        raise UserError(f"{COUNT}={count}: must be >= 1")
    return count


def initialize(backend: Backend) -> Processes:
    """Join the other processes when ``KERAS_DISTRIBUTION_NUM_PROCESSES`` > 1 (before JAX lists its devices)."""
    count = requested()
    if count == 1:
        return Processes()
    backend.check_several_processes(f"{COUNT}={count}")
    import jax
    import keras

    # JAX's CPU collectives are off unless chosen (gloo ships with jaxlib); GPUs use their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    keras.distribution.initialize()  # reads the KERAS_DISTRIBUTION_* variables; waits for every process
    return Processes(jax.process_index(), jax.process_count())


@contextlib.contextmanager
def errors_said_once():
    """A user error is said by the first process; the others exit 1 quietly."""
    try:
        yield
    except UserError:
        if os.environ.get(INDEX, "0") != "0":
            raise SystemExit(1) from None
        raise


def from_owner(processes: Processes, arrays: dict[str, Any]) -> dict[str, Any]:
    """The first process's ``arrays`` (e.g. the best weights it wrote), on every process; the others pass
    arrays of the same names and shapes (their own weights), which are replaced."""
    if processes.count == 1:
        return arrays
    from jax.experimental import multihost_utils

    return {k: np.asarray(v) for k, v in multihost_utils.broadcast_one_to_all(arrays, processes.owner).items()}


def agreement(processes: Processes) -> Callable[[bool], bool] | None:
    """How several processes agree to stop: a collective every process joins at the same step, True when any of
    them was asked; None alone (the process stops on its own)."""
    if processes.count == 1:
        return None
    from jax.experimental import multihost_utils

    return lambda asked: bool(np.any(multihost_utils.process_allgather(np.int32(asked))))


def launch(nproc: int, backend: Backend, device: str, argv: list[str]) -> int:
    """``--nproc N``: start this command N times on this machine, joined by Keras' variables; the first failure's
    exit status (143 after a SIGTERM). The processes' output is the command's own (passed through, not captured);
    ``shared.signals.run_processes`` passes each stop signal on to them once."""
    if nproc < 1:
        raise UserError(f"--nproc must be >= 1; got {nproc}")
    backend.check_several_processes(f"--nproc {nproc}")
    if device != "cpu":  # each process would take every local GPU; one process drives them all already
        raise UserError(f"--nproc {nproc} --device {device}: the processes on one machine are CPU processes (gloo); "
                        "give --device cpu (DEVICE=cpu). On GPUs one process trains on every local GPU "
                        "(DataParallel); across hosts set KERAS_DISTRIBUTION_* on each")
    rest = without_nproc(argv)
    address = f"localhost:{free_port()}"
    cmd = [sys.executable, "-m", "keras_impl.train", *rest]
    return run_processes([(cmd, {**os.environ, ADDRESSES: address, COUNT: str(nproc), INDEX: str(i)})
                          for i in range(nproc)])
