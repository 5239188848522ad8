"""keras_impl.train beyond the contract both trainers share (tests/trainer_contract.py), on the TensorFlow backend:
mixed_bfloat16 and XLA on the CPU, the optimizer ``fit`` steps with, and MirroredStrategy on two CPU replicas
taking the steps of one device. ``tests/keras/test_train_backends.py`` runs the JAX and PyTorch backends.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from keras_impl.train import main
from shared import runs
from shared.io import load_weights
from shared.names import canonical_weights
from shared.spec import get_spec
from tests.conftest import run_module
from tests.trainer_contract import base_args as contract_args

# 2 replicas against the same steps on one device, relative to each parameter's 6-step move: measured 5e-6 at worst,
# 7.5e-4 once an earlier test has turned TF's op determinism on in this process (other kernels, other rounding).
REPLICA_RTOL = 5e-3


def base_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    """The contract's flags with the threading a user gets (TensorFlow's one intra-op thread per core)."""
    return contract_args(data_dir, out, *extra, threads=None)


def test_mixed_bfloat16_and_xla_on_cpu(data_dir, tmp_path):
    from shared.machine import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no native bf16: --amp falls back to float32 (tested below)")
    out = tmp_path / "amp"
    run_module("keras_impl.train", *base_args(data_dir, out, "--iters", "4", "--amp", "1", "--jit", "1"))
    run = runs.read_run(out)
    assert run["config"]["fast_paths"]["amp"] is True and run["config"]["fast_paths"]["jit"] is True
    assert run["config"]["device"]["policy"] == "mixed_bfloat16"
    assert math.isfinite(run["metrics"][0]["train_loss"]) and run["finished"]


def test_amp_on_a_cpu_without_bf16_falls_back_to_float32(data_dir, tmp_path, monkeypatch, capsys):
    from shared import machine

    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)
    assert main(base_args(data_dir, tmp_path / "amp", "--iters", "2", "--amp", "1")) == 0
    assert "no native bf16" in capsys.readouterr().err
    assert runs.read_run(tmp_path / "amp")["config"]["device"]["policy"] == "float32"


def test_fit_steps_with_torchs_sgd_and_the_recipes_weight_decay(data_dir, tmp_path, monkeypatch):
    """The optimizer ``fit`` actually stepped with: TorchSGD, coupled weight decay 1e-4, no Keras decay on top."""
    import keras_impl.train as train
    from keras_impl.optim import TorchSGD

    compiled = []
    real = train.compile_model
    monkeypatch.setattr(train, "compile_model", lambda model, *a, **k: (real(model, *a, **k), compiled.append(model)))
    assert main(base_args(data_dir, tmp_path / "sgd", "--iters", "2")) == 0
    (model,) = compiled
    opt = model.optimizer
    assert isinstance(opt, TorchSGD) and int(opt.iterations) == 2
    assert (opt.torch_weight_decay, opt.momentum, opt.nesterov) == (1e-4, 0.9, False)
    assert opt.weight_decay is None  # Keras' own (decoupled) decay would come on top of torch's coupled one
    assert model.jit_compile is False  # no --jit: no XLA (what Keras settled on, not the flag)


def test_jit_compiles_the_steps_with_xla(data_dir, tmp_path):
    """--jit: TensorFlow's own log says an XLA cluster was compiled (Keras silently falls back to plain graphs
    when it cannot, e.g. while op determinism is on)."""
    args = base_args(data_dir, tmp_path / "jit", "--iters", "2", "--batch-size", "20", "--jit", "1", "--device", "cpu")
    proc = run_module("keras_impl.train", *args, env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert "Compiled cluster using XLA" in proc.stderr
    assert "doesn't support `jit_compile=True`" not in proc.stderr
    assert runs.read_run(tmp_path / "jit")["config"]["fast_paths"]["jit"] is True


def _replica_steps(data_dir: Path, init: dict, lrs: list[float], replicas: int, alone: bool = False) -> dict:
    """What ``replicas`` MirroredStrategy replicas compute, on one device: each global batch of the trainer's
    data is cut into ``replicas`` contiguous slices, each runs its own train-mode forward (BN normalizes with
    its slice's statistics, as on every replica), the loss is the mean over the global batch (the slices'
    mean), one TorchSGD step. ``alone``: replica 0's slice only (replicas that never share gradients)."""
    import keras
    import tensorflow as tf

    from datasets import load_prepared
    from keras_impl.data import EpochDataset
    from keras_impl.optim import TorchSGD
    from keras_impl.resnet import build_model
    from keras_impl.weights import get_weights, set_weights

    spec = get_spec("resnet8")
    model = build_model(spec)
    set_weights(model, spec, init)
    optimizer = TorchSGD(lrs[0], momentum=0.9, weight_decay=1e-4)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    data = EpochDataset(load_prepared("synthetic", data_dir), "train", 100, train=True, seed=0)
    for i, lr in enumerate(lrs):
        x, y = data[i]
        slices = list(zip(np.split(x, replicas), np.split(y, replicas)))[:1 if alone else replicas]
        with tf.GradientTape() as tape:
            loss = tf.add_n([cross_entropy(ys, model(xs, training=True)) for xs, ys in slices]) / len(slices)
        optimizer.learning_rate.assign(lr)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    return get_weights(model, spec)


def test_mirrored_strategy_with_two_cpu_replicas_takes_the_steps_of_one_device(data_dir, tmp_path):
    """MirroredStrategy over 2 logical CPU devices (tests/cpu_replicas.py) on one global batch: the trained
    parameters equal the same steps taken on one device (:func:`_replica_steps`) to float32 rounding, while
    replicas that did not share gradients would end far away. (BN running statistics are aggregated across
    replicas by the strategy and are not compared.)"""

    from keras_impl.resnet import build_model
    from keras_impl.weights import get_weights
    from shared.io import save_weights

    spec = get_spec("resnet8")
    init = get_weights(build_model(spec, seed=3), spec)
    save_weights(tmp_path / "init.safetensors", init, {"spec": spec.to_json()})
    out = tmp_path / "mirrored"
    proc = run_module("tests.cpu_replicas", "2", "keras_impl.train", *base_args(
        data_dir, out, "--iters", "6", "--trace-steps", "6", "--strategy", "mirrored", "--device", "cpu",
        "--init", tmp_path / "init.safetensors"))
    assert "MirroredStrategy x2" in proc.stdout
    run = runs.read_run(out)
    assert run["config"]["device"]["strategy"] == "MirroredStrategy" and run["config"]["device"]["replicas"] == 2
    assert run["finished"]
    # The same global batch and schedule as a single-device run.
    steps = json.loads((out / "steps.json").read_text())
    assert len(steps["loss"]) == 6 and steps["lr"] == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.001])
    trained, _ = load_weights(run["last"])
    expected = _replica_steps(data_dir, init, steps["lr"], replicas=2)
    alone = _replica_steps(data_dir, init, steps["lr"], replicas=2, alone=True)
    trainable = [w.key for w in canonical_weights(spec) if w.trainable]
    gaps = {k: np.linalg.norm(trained[k] - expected[k]) / np.linalg.norm(expected[k] - init[k]) for k in trainable}
    far = max(np.linalg.norm(alone[k] - expected[k]) / np.linalg.norm(expected[k] - init[k]) for k in trainable)
    worst = max(gaps, key=gaps.get)
    assert gaps[worst] <= REPLICA_RTOL, f"{worst}: {gaps[worst]:.1e} of its move off the one-device steps"
    assert far > 20 * REPLICA_RTOL  # replicas that do not share gradients would fail it (measured 0.34)
