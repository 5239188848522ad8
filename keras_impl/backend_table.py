"""What differs between Keras' backends, as one table: threads, determinism, devices and distribution, the input
that ``fit`` is given, XLA, several processes, the ONNX export route (docs/keras-backends.md). The rest of
``keras_impl`` asks :data:`CURRENT`, never which backend runs.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Any

import keras

from shared import machine
from shared.devices import resolve_device_name
from shared.errors import UserError


@dataclass(frozen=True)
class Backend:
    """The facts of one Keras backend; each backend overrides what it does its own way."""

    name: str
    batches_ahead: int = 0  # batches prepared ahead of the step in a thread (``keras_impl.data.EpochDataset``)
    always_jit: bool = False  # compiled whatever --jit says (JAX without jit runs op by op)
    several_processes: str | None = None  # None: --nproc works; else why not, and the way that does
    onnx_exporter: str | None = None  # what Keras' model.export(format="onnx") goes through; None: no exact route
    run_eagerly_counts: bool = True  # False: run_eagerly changes nothing (the backend runs eagerly unless jit)
    cpu_name: str = "cpu"  # the backend's name of the CPU device, and of the first GPU
    gpu_name: str = "gpu"

    def version(self) -> str:
        """The version of the backend's package."""
        return importlib.import_module(self.name).__version__

    def thread_record(self) -> Any:
        """The backend's CPU threads as a report records them (None where the count is not exposed)."""
        return self.threads()

    def device_scope(self, name: str) -> Any:
        """The context that places ops on device ``name`` (the backend's own placement where it has none)."""
        return contextlib.nullcontext()

    def gpu_missing(self) -> str | None:
        """None when this backend sees a GPU; else what it reported instead, in a few words."""
        return None if self.gpus() else "no GPU visible"

    def enable_float64(self) -> None:
        """Let float64 mean float64 (the parity harness computes in it)."""

    def threads(self) -> int | None:
        """The intra-op CPU threads now; None where the pool is sized once at start-up (XLA's)."""
        return None

    def set_threads(self, count: int) -> None:
        """Set the intra-op CPU threads (before the first op)."""

    def gpus(self) -> int:
        return 0

    def place(self, device: str, strategy: str, deterministic: bool) -> tuple[Any, int]:
        """(the scope to build and compile in, replicas) on ``device`` under ``--strategy``."""
        if strategy == "mirrored":
            raise UserError(f"--strategy mirrored: Keras' {self.name} backend trains on one device (keras.distribution "
                            "is JAX-only); use KERAS_BACKEND=jax or tensorflow, or pytorch_impl.train with --nproc")
        return contextlib.nullcontext(), 1

    def fit_input(self, dataset: Any) -> Any:
        """What ``fit`` and ``evaluate`` are given for a ``keras.utils.PyDataset``: the dataset itself."""
        return dataset

    def jit_compile(self, jit: bool) -> bool:
        return True if self.always_jit else bool(jit)

    def check_several_processes(self, what: str) -> None:
        """One line unless this backend trains over several processes."""
        if self.several_processes is not None:
            raise UserError(f"{what}: several Keras training processes run on the jax backend (keras.distribution), "
                            f"not on {self.name}; use KERAS_BACKEND=jax (BACKEND=jax). {self.several_processes}.")


class TensorFlow(Backend):
    def thread_record(self) -> Any:
        import tensorflow as tf

        return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}

    def device_scope(self, name: str) -> Any:
        import tensorflow as tf

        return tf.device(name)

    def gpu_missing(self) -> str | None:
        return None if self.gpus() else "tf.config.list_physical_devices('GPU') is empty"

    def threads(self) -> int | None:
        import tensorflow as tf

        return tf.config.threading.get_intra_op_parallelism_threads() or machine.cpu_cores()  # 0: one per core

    def set_threads(self, count: int) -> None:
        import tensorflow as tf

        with contextlib.suppress(RuntimeError):  # the pool exists already (main() called twice in a process)
            tf.config.threading.set_intra_op_parallelism_threads(count)

    def gpus(self) -> int:
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))

    def place(self, device: str, strategy: str, deterministic: bool) -> tuple[Any, int]:
        """``tf.distribute.MirroredStrategy`` over the visible GPUs (``auto``: when more than one; ``mirrored``:
        also over the CPU's logical devices). On the CPU, op determinism makes same-seed runs and resumes exact;
        Keras compiles without XLA while it is on, so ``--jit`` gives it up (``deterministic=False``)."""
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if device == "cpu":
            tf.config.set_visible_devices([], "GPU")
            gpus = []
        elif ":" in device:
            gpus = [gpus[int(device.split(":")[1])]]
            tf.config.set_visible_devices(gpus, "GPU")
        if device == "cpu" and deterministic:
            tf.config.experimental.enable_op_determinism()
        if strategy == "mirrored" or (strategy == "auto" and len(gpus) > 1):
            cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
            mirrored = tf.distribute.MirroredStrategy(devices=[f"/gpu:{i}" for i in range(len(gpus))] or cpus)
            return mirrored, mirrored.num_replicas_in_sync
        return contextlib.nullcontext(), 1

    def fit_input(self, dataset: Any) -> Any:
        """The batches through ``tf.data.Dataset.from_generator`` (as Keras' own adapter makes it) with tf.data's
        autotuning off and one private thread: with autotuning on, the default for a ``PyDataset``, ResNet-20
        epochs on 2 cores ran at 190-230 instead of 400-470 images/s at random (2 of every 6, measured)."""
        import tensorflow as tf

        spec = tuple(tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)) for a in dataset[0])
        # called anew for every epoch's iterator, so it reads the plan the epoch's callback chose
        ds = tf.data.Dataset.from_generator(lambda: (dataset[i] for i in range(len(dataset))),
                                            output_signature=spec)
        options = tf.data.Options()
        options.autotune.enabled = False
        options.threading.private_threadpool_size = 1
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(dataset))).prefetch(1)
        return ds.with_options(options)


class Jax(Backend):
    def gpu_missing(self) -> str | None:
        import jax

        return None if self.gpus() else f"jax.devices() is {jax.devices()}"

    def enable_float64(self) -> None:
        import jax

        jax.config.update("jax_enable_x64", True)  # without it JAX silently computes float64 in float32

    def gpus(self) -> int:
        import jax

        return sum(d.platform == "gpu" for d in jax.devices())

    def place(self, device: str, strategy: str, deterministic: bool) -> tuple[Any, int]:
        """``keras.distribution.DataParallel`` over the visible devices (``auto``: when more than one), each
        process feeding its own part of every batch (``auto_shard_dataset=False``)."""
        devices = keras.distribution.list_devices("gpu" if device.startswith("cuda") else "cpu")
        if strategy == "mirrored" or (strategy == "auto" and len(devices) > 1):
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices,
                                                                                auto_shard_dataset=False))
            return contextlib.nullcontext(), len(devices)
        return contextlib.nullcontext(), 1


class Torch(Backend):
    def gpu_missing(self) -> str | None:
        return None if self.gpus() else "torch.cuda.is_available() is False"

    def threads(self) -> int | None:
        import torch

        return torch.get_num_threads()

    def set_threads(self, count: int) -> None:
        import torch

        torch.set_num_threads(count)

    def gpus(self) -> int:
        import torch

        return torch.cuda.device_count()

    def place(self, device: str, strategy: str, deterministic: bool) -> tuple[Any, int]:
        scope = super().place(device, strategy, deterministic)
        if device.startswith("cuda"):
            import torch

            torch.set_default_device(device)
        return scope


TABLE: dict[str, Backend] = {
    # TensorFlow's from_generator input waits for each batch: two are prepared ahead in a thread. JAX dispatches
    # its step asynchronously, and the torch backend's step uses both cores: there a thread would only compete.
    "tensorflow": TensorFlow("tensorflow", batches_ahead=2,
                             several_processes="TensorFlow's way is MultiWorkerMirroredStrategy with a TF_CONFIG per "
                                               "host, which this trainer does not wire",
                             onnx_exporter="tf2onnx", cpu_name="/CPU:0", gpu_name="/GPU:0"),
    # Keras' own ONNX route on JAX is jax2onnx (flax, equinox, optax, orbax, huggingface-hub): the exact route here
    # is the model's canonical weights exported by Keras on another backend (keras_impl/export.py).
    "jax": Jax("jax", always_jit=True),
    "torch": Torch("torch", several_processes="Keras offers none on the torch backend; pytorch_impl.train --nproc N "
                                              "trains with DDP",
                   onnx_exporter="torch.onnx", run_eagerly_counts=False, gpu_name="cuda"),
}
CURRENT: Backend = TABLE[keras.backend.backend()]


def device_name(requested: str) -> str:
    """``--device`` resolved against the GPUs this backend sees (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    return resolve_device_name(requested, CURRENT.gpus())
