"""keras_impl.train (model.fit) on the synthetic set, on CPU, TensorFlow backend: it learns, the run folder
is complete, the same seed gives the same metrics.csv, a SIGKILLed run resumes to the same metrics, a NaN
stops the run, fast paths run (mixed_bfloat16, XLA jit_compile, MirroredStrategy on the CPU).

Runs are subprocesses (as users start them) on ResNet-8; the determinism and resume tests run with the
threading a user gets and at one thread. ``tests/keras/test_train_backends.py`` runs the JAX and PyTorch
backends.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from keras_impl.train import gpu_count, main
from shared import runs
from shared.io import load_weights
from shared.machine import cpu_cores
from shared.names import canonical_weights
from shared.spec import ModelSpec, get_spec
from tests.conftest import run_module
from tests.train_helpers import assert_learned_run, assert_resumed_like, kill_in_second_epoch, same_metrics

CHANCE = 0.1  # 10 balanced classes
# 2 replicas against the same steps on one device, relative to each parameter's 6-step move: measured 5e-6 at worst,
# 7.5e-4 once an earlier test has turned TF's op determinism on in this process (other kernels, other rounding).
REPLICA_RTOL = 5e-3



def base_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset", "synthetic", "--data-dir", str(data_dir), "--model", "resnet8", "--batch-size", "100",
            "--device", "cpu", "--no-progress", "--out", str(out), *extra]


THREADING = {"default threading": (), "one thread": ("--workers", "1")}


def backup_state(run_dir: Path) -> tuple[dict, dict]:
    """(BackupAndRestore metadata, {optimizer variable path: value}) of a run's checkpoint."""
    meta = json.loads((run_dir / runs.CHECKPOINTS["keras"]).read_text())
    with h5py.File(run_dir / runs.CHECKPOINTS["keras"].rsplit("/", 1)[0] / meta["weights"]) as f:
        opt = {k: f["optimizer/vars"][k][()] for k in f["optimizer/vars"]}
    return meta, opt


@pytest.fixture(scope="module", params=THREADING)
def full_run(request, data_dir, tmp_path_factory) -> tuple[Path, tuple[str, ...]]:
    """(two epochs of 20 iterations, uninterrupted: the reference run; its threading flags)."""
    threads = THREADING[request.param]
    out = tmp_path_factory.mktemp("runs") / "full"
    run_module("keras_impl.train", *base_args(data_dir, out, "--epochs", "2", "--trace-steps", "5", *threads))
    return out, threads


def _tb_scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_learns_and_leaves_a_complete_run_folder(full_run):
    full_run, threads = full_run
    run = assert_learned_run(full_run, "keras", CHANCE)
    rows, results, config = run["metrics"], run["results"], run["config"]
    workers = int(threads[1]) if threads else None  # TensorFlow's default: one intra-op thread per core
    assert config["threads"] == {"workers": workers, "intra_op": workers or cpu_cores()}
    assert results["best_val_acc"] == max(r["val_acc"] for r in rows)
    for name in ("best", "last"):
        arrays, meta = load_weights(run[name])
        assert ModelSpec.from_dict(json.loads(meta["spec"])).name == "resnet8"
        assert meta["framework"] == "keras" and "layer1.0.conv1.weight" in arrays
    meta, opt = backup_state(full_run)  # keras.callbacks.BackupAndRestore: weights, optimizer, epoch
    assert meta["epoch"] == 2 and meta["backend"] == "tensorflow" and opt["0"] == 40  # optimizer.iterations
    trainable = [w for w in canonical_weights(get_spec("resnet8")) if w.trainable]
    assert len(opt) == 1 + len(trainable)  # iterations (the lr is a schedule of it), one momentum per parameter
    tb = _tb_scalars(full_run)
    assert tb["loss/train"] == pytest.approx([r["train_loss"] for r in rows], rel=1e-6)
    assert tb["accuracy/val"] == pytest.approx([r["val_acc"] for r in rows], rel=1e-6)
    assert "torch" not in sys.modules


def test_same_seed_same_metrics(full_run, data_dir, tmp_path):
    full_run, threads = full_run
    run_module("keras_impl.train", *base_args(data_dir, tmp_path / "again", "--epochs", "2", "--trace-steps", "5",
                                              *threads))
    first = json.loads((full_run / "steps.json").read_text())
    again = json.loads((tmp_path / "again" / "steps.json").read_text())
    assert again["lr"] == first["lr"] == [0.1] * 5
    assert again["loss"] == first["loss"]  # bit for bit
    assert same_metrics(full_run, tmp_path / "again")


def test_sigkill_mid_epoch_then_resume_gives_the_same_metrics(full_run, data_dir, tmp_path):
    full_run, threads = full_run
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "keras_impl.train", *base_args(data_dir, out, "--epochs", "2", *threads)]
    kill_in_second_epoch(cmd, out, "keras", settle=1.0)  # 20 steps of about 0.2 s in epoch 2
    proc = run_module("keras_impl.train", "--resume", str(out), "--no-progress")  # the threads come back by themselves
    assert "resuming at epoch 2" in proc.stdout and "ignored" not in proc.stderr  # (resnet8, synthetic: no defaults)
    restored = ("note: resuming with 1 intra-op thread(s) (--workers 1), as the run started" if threads
                else f"note: resuming with the framework's default threading ({cpu_cores()} intra-op threads)")
    assert restored in proc.stderr
    assert_resumed_like(out, full_run)


def test_nonfinite_loss_stops_with_a_clear_message(data_dir, tmp_path):
    proc = run_module("keras_impl.train", *base_args(data_dir, tmp_path / "nan", "--iters", "15", "--lr", "1e36"),
                      check=False)
    assert proc.returncode != 0
    assert "error: training loss became nan" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "nan" / runs.RESULTS).exists()


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
    assert main(base_args(data_dir, tmp_path / "sgd", "--iters", "2", "--device", "cpu")) == 0
    (model,) = compiled
    opt = model.optimizer
    assert isinstance(opt, TorchSGD) and int(opt.iterations) == 2
    assert (opt.coupled_weight_decay, opt.momentum, opt.nesterov) == (1e-4, 0.9, False)
    assert opt.weight_decay is None  # Keras' own (decoupled) decay would come on top of the coupled one
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
    optimizer = TorchSGD(lrs[0], momentum=0.9, coupled_weight_decay=1e-4)
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
    import keras

    from keras_impl.resnet import build_model
    from keras_impl.weights import get_weights
    from shared.io import save_weights

    spec = get_spec("resnet8")
    keras.utils.set_random_seed(3)
    init = get_weights(build_model(spec), spec)
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


@pytest.mark.parametrize("extra,match", [
    pytest.param(["--device", "cuda"], "no CUDA GPU is visible",
                 marks=pytest.mark.skipif(gpu_count() > 0, reason="this machine has a CUDA GPU")),
    (["--model", "resnet21"], "unknown model 'resnet21'"),
    (["--epochs", "1", "--iters", "5"], "not both"),
    (["--num-classes", "3"], "does not match synthetic, which has 10 classes"),
    (["--batch-size", "5000"], "larger than the 2000 training images"),
    (["--init", "missing.safetensors"], "--init missing.safetensors: no such weight file"),
])
def test_user_errors_are_one_line(data_dir, tmp_path, extra, match):
    with pytest.raises(SystemExit, match=match) as e:
        main(base_args(data_dir, tmp_path / "x", *extra))
    assert str(e.value.code).startswith("error: ")


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(SystemExit, match="not a run folder"):
        main(["--resume", str(tmp_path)])


def test_divergence_keeps_the_last_good_checkpoint_and_resume_recovers(data_dir, tmp_path, monkeypatch):
    from keras_impl.callbacks import RunFolder
    from shared.training import NonFiniteLoss

    real = RunFolder.on_train_batch_end

    def diverge_in_epoch_2(self, batch, logs=None):
        if self.progress.epoch == 1 and batch == 4:
            raise NonFiniteLoss("training loss became nan at epoch 2, iteration 25 (lr 0.1)")
        return real(self, batch, logs)

    out = tmp_path / "diverged"
    monkeypatch.setattr(RunFolder, "on_train_batch_end", diverge_in_epoch_2)
    with pytest.raises(SystemExit, match=r"became nan at epoch 2.*last good checkpoint \(epoch 1\) is kept") as e:
        main(base_args(data_dir, out, "--epochs", "2"))
    assert str(e.value.code).startswith("error: ")
    meta, opt = backup_state(out)
    assert meta["epoch"] == 1 and opt["0"] == 20
    assert load_weights(out / runs.LAST)[1]["epoch"] == "1" and not (out / runs.RESULTS).exists()
    monkeypatch.setattr(RunFolder, "on_train_batch_end", real)
    other = cpu_cores() + 1  # the run started with the default threading: one thread per core
    with pytest.raises(SystemExit, match=rf"^error: --workers {other}: .* started with {cpu_cores()} intra-op"):
        main(["--resume", str(out), "--workers", str(other), "--no-progress"])
    assert main(["--resume", str(out), "--no-progress"]) == 0
    assert runs.read_run(out)["finished"] and len(runs.read_metrics(out)) == 2
