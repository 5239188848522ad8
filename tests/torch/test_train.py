"""pytorch_impl.train on the synthetic set, on CPU: it learns, the run folder is complete, the same seed
gives the same metrics.csv, a SIGKILLed run resumes to the same metrics (with its thread count restored),
a NaN stops the run, fast paths run.

Runs are subprocesses (as users start them) on ResNet-8; the determinism and resume tests run at one
thread and at the default threading.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pytorch_impl.train import main
from shared import runs
from shared.io import load_weights
from shared.spec import ModelSpec
from tests.conftest import ROOT, run_module
from tests.train_helpers import assert_learned_run, assert_resumed_like, kill_in_second_epoch, same_metrics

CHANCE = 0.1  # 10 balanced classes
# DDP's all-reduced steps against the same steps in one process, relative to each tensor's 6-step move: measured
# 7e-4 at worst (float32 sums in another order, amplified by lr 0.1).
DDP_RTOL = 5e-3



def base_args(data_dir: Path, out: Path, *extra: str, workers: str | None = "1") -> list[str]:
    threads = ["--workers", workers] if workers else []  # None: the default threading
    return ["--dataset", "synthetic", "--data-dir", str(data_dir), "--model", "resnet8", "--batch-size", "100",
            *threads, "--no-progress", "--device", "cpu", "--out", str(out), *extra]


THREADING = {"one thread": "1", "default threading": None}


@pytest.fixture(scope="module")
def default_threads() -> int:
    """torch's own thread count in a fresh process (this one's may have been set by an in-process run)."""
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.fixture(scope="module", params=THREADING)
def full_run(request, data_dir, tmp_path_factory) -> tuple[Path, str | None]:
    """(two epochs of 20 iterations, uninterrupted: the reference run; its --workers)."""
    workers = THREADING[request.param]
    out = tmp_path_factory.mktemp("runs") / "full"
    run_module("pytorch_impl.train", *base_args(data_dir, out, "--epochs", "2", "--trace-steps", "5", workers=workers))
    return out, workers


def _tb_scalars(run_dir: Path) -> dict[str, list[float]]:
    # tensorboard's reader, on its TF-free stub (tensorflow must stay out of this process)
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_learns_and_leaves_a_complete_run_folder(full_run, default_threads):
    full_run, workers = full_run
    run = assert_learned_run(full_run, "torch", CHANCE)
    rows, results, config = run["metrics"], run["results"], run["config"]
    assert config["threads"] == {"workers": workers and int(workers),
                                 "intra_op": int(workers) if workers else default_threads}
    assert results["best_val_acc"] == max(r["val_acc"] for r in rows)
    for name in ("best", "last"):
        arrays, meta = load_weights(run[name])
        assert ModelSpec.from_dict(json.loads(meta["spec"])).name == "resnet8"
        assert meta["framework"] == "torch" and "layer1.0.conv1.weight" in arrays
    ckpt = torch.load(run["checkpoint"], weights_only=True)
    assert ckpt["progress"]["iteration"] == 40 and ckpt["progress"]["epoch"] == 2
    assert len(ckpt["optimizer"]["state"]) == len(ckpt["optimizer"]["param_groups"][0]["params"])  # momentum
    # The optimizer's own record of what it used: the recipe's SGD on every parameter, coupled weight decay 1e-4.
    (group,) = ckpt["optimizer"]["param_groups"]
    assert len(group["params"]) == len(ckpt["model"]) - 3 * sum(k.endswith("running_mean") for k in ckpt["model"])
    assert (group["weight_decay"], group["momentum"], group["nesterov"], group["dampening"]) == (1e-4, 0.9, False, 0)
    tb = _tb_scalars(full_run)
    assert tb["loss/train"] == pytest.approx([r["train_loss"] for r in rows], rel=1e-6)
    assert tb["accuracy/val"] == pytest.approx([r["val_acc"] for r in rows], rel=1e-6)
    assert "tensorflow" not in sys.modules


def test_same_seed_same_metrics(full_run, data_dir, tmp_path):
    full_run, workers = full_run
    again = tmp_path / "again"
    run_module("pytorch_impl.train", *base_args(data_dir, again, "--epochs", "2", "--trace-steps", "5",
                                                workers=workers))
    first = json.loads((full_run / "steps.json").read_text())
    steps = json.loads((again / "steps.json").read_text())
    assert steps["lr"] == first["lr"] == [0.1] * 5
    assert steps["loss"] == first["loss"]  # bit for bit
    assert same_metrics(again, full_run)


def test_sigkill_mid_epoch_then_resume_gives_the_same_metrics(full_run, data_dir, tmp_path, default_threads):
    full_run, workers = full_run
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pytorch_impl.train", *base_args(data_dir, out, "--epochs", "2", workers=workers)]
    kill_in_second_epoch(cmd, out, "torch", settle=0.5)  # about 20 x 0.1 s of steps in epoch 2
    # The run's thread count comes back without --workers; a conflicting --epochs is reported and ignored.
    proc = run_module("pytorch_impl.train", "--resume", str(out), "--epochs", "5", "--no-progress", "--device", "cpu")
    assert "resuming at epoch 2" in proc.stdout
    assert "note: --epochs 5 ignored" in proc.stderr and "epochs 2" in proc.stderr
    assert proc.stderr.count("ignored") == 1  # flags not given (--model, --dataset) are not "ignored"
    restored = (f"note: resuming with {workers} intra-op thread(s) (--workers {workers})" if workers
                else f"note: resuming with the framework's default threading ({default_threads} intra-op")
    assert restored in proc.stderr
    assert_resumed_like(out, full_run)


def test_nonfinite_loss_stops_with_a_clear_message(data_dir, tmp_path):
    proc = run_module("pytorch_impl.train", *base_args(data_dir, tmp_path / "nan", "--iters", "15", "--lr", "1e36"),
                      check=False)
    assert proc.returncode != 0
    assert "error: training loss became nan" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "nan" / runs.RESULTS).exists()


def _observe_training_convs(monkeypatch) -> list[dict]:
    """Record, at every conv forward inside the trainer's training steps, the layout of its input, weight and
    output and the output's dtype (a forward hook, attached to the model ``train_one_epoch`` is given)."""
    import pytorch_impl.train as train

    seen: list[dict] = []
    real = train.train_one_epoch

    def hook(conv, inputs, output):
        cl = torch.channels_last
        seen.append({"input": inputs[0].is_contiguous(memory_format=cl), "weight": conv.weight.is_contiguous(
            memory_format=cl), "output": output.is_contiguous(memory_format=cl), "dtype": output.dtype,
            "grad": torch.is_grad_enabled() and conv.training})

    def observed(model, *args, **kwargs):
        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        try:
            return real(model, *args, **kwargs)
        finally:
            for h in handles:
                h.remove()

    monkeypatch.setattr(train, "train_one_epoch", observed)
    return seen


@pytest.mark.parametrize("flags,dtype,layout", [(("--amp", "1", "--channels-last"), torch.bfloat16, True),
                                                ((), torch.float32, False)], ids=["amp-channels-last", "plain"])
def test_amp_and_channels_last_act_inside_the_training_step(data_dir, tmp_path, monkeypatch, flags, dtype, layout):
    """--amp: every conv of the training forward computes in bfloat16 (CPU autocast); --channels-last: its input,
    weight and output are channels_last. Without the flags: float32, contiguous NCHW."""
    seen = _observe_training_convs(monkeypatch)
    out = tmp_path / "fast"
    assert main(base_args(data_dir, out, "--iters", "2", "--batch-size", "20", *flags)) == 0
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in build_resnet8().modules())
    assert len(seen) == 2 * convs and all(s["grad"] for s in seen)  # two training steps, every conv
    assert {s["dtype"] for s in seen} == {dtype}
    assert {(s["input"], s["weight"], s["output"]) for s in seen} == {(layout,) * 3}
    run = runs.read_run(out)
    assert run["config"]["fast_paths"]["amp"] is bool(flags) and run["config"]["fast_paths"]["channels_last"] is bool(
        flags)
    assert math.isfinite(run["metrics"][0]["train_loss"]) and run["finished"]


def test_amp_on_a_cpu_without_bf16_trains_in_float32_with_a_note(data_dir, tmp_path, monkeypatch, capsys):
    """Emulated bf16 is ~13x slower than float32: on such a CPU --amp says so in one line; the convs run float32."""
    from shared import machine

    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)
    seen = _observe_training_convs(monkeypatch)
    assert main(base_args(data_dir, tmp_path / "amp", "--iters", "2", "--batch-size", "20", "--amp", "1")) == 0
    assert "note: --amp ignored: this CPU has no native bf16" in capsys.readouterr().err
    assert seen and {s["dtype"] for s in seen} == {torch.float32}


def build_resnet8() -> torch.nn.Module:
    from pytorch_impl.resnet import build_model
    from shared.spec import get_spec

    return build_model(get_spec("resnet8"))


@pytest.mark.slow
def test_torch_compile_trains_through_compiled_graphs(data_dir, tmp_path, monkeypatch):
    """--compile: the training steps get torch.compile's module, and dynamo captured and compiled graphs."""
    from torch._dynamo.eval_frame import OptimizedModule
    from torch._dynamo.utils import counters

    import pytorch_impl.train as train

    given = []
    real = train.train_one_epoch
    monkeypatch.setattr(train, "train_one_epoch", lambda model, *a, **k: (given.append(model), real(model, *a, **k))[1])
    counters.clear()
    out = tmp_path / "compiled"
    assert main(base_args(data_dir, out, "--iters", "4", "--compile")) == 0
    assert given and all(isinstance(m, OptimizedModule) for m in given)
    assert counters["stats"]["unique_graphs"] > 0 and counters["frames"]["ok"] > 0
    assert runs.read_run(out)["finished"]


def _ddp_reference(data_dir: Path, init: dict, lrs: list[float], world: int, alone: bool = False) -> dict:
    """What ``world`` DDP processes compute, in one process: each global batch of the trainer's loader is cut
    into ``world`` contiguous slices, each slice runs its own train-mode forward (BN normalizes with its
    slice's statistics, as in every DDP process), the gradients are averaged (DDP's all-reduce), one SGD
    step. The BN running statistics are rank 0's (DDP broadcasts rank 0's buffers at every forward).
    ``alone``: rank 0's slice only, no averaging (the ranks never share gradients)."""
    import torch.nn.functional as F

    from datasets import load_prepared
    from pytorch_impl.data import make_loader
    from pytorch_impl.optim import make_sgd
    from pytorch_impl.resnet import build_model
    from pytorch_impl.weights import get_weights, set_weights
    from shared.spec import get_spec

    spec = get_spec("resnet8")
    model = build_model(spec)
    set_weights(model, spec, init)
    model.train()
    optimizer = make_sgd(model, lrs[0], 0.9, 1e-4)
    loader = make_loader(load_prepared("synthetic", data_dir), "train", 100, train=True, seed=0)
    loader.set_epoch(0)
    for lr, (x, y) in zip(lrs, loader):
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        rank0_buffers = None
        for rank, (xs, ys) in enumerate(zip(x.chunk(world), y.chunk(world))):
            if alone and rank:
                break
            (F.cross_entropy(model(xs), ys) / (1 if alone else world)).backward()
            if rank == 0:
                rank0_buffers = {k: b.clone() for k, b in model.named_buffers()}
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(rank0_buffers[k])
        optimizer.step()
    return get_weights(model, spec)


def test_ddp_two_cpu_processes_with_gloo_take_the_steps_of_one_process(data_dir, tmp_path):
    """Two gloo processes on one global batch end at the weights of the same steps taken in one process
    (:func:`_ddp_reference`), to float32 rounding; rank 0 training alone would end far away."""
    from pytorch_impl.resnet import build_model
    from pytorch_impl.weights import get_weights
    from shared.io import save_weights
    from shared.spec import get_spec

    spec = get_spec("resnet8")
    torch.manual_seed(3)
    init = get_weights(build_model(spec), spec)
    save_weights(tmp_path / "init.safetensors", init, {"spec": spec.to_json()})
    out = tmp_path / "ddp"  # --nproc starts the processes through python -m torch.distributed.run
    cmd = [sys.executable, "-m", "pytorch_impl.train", "--nproc", "2",
           *base_args(data_dir, out, "--iters", "6", "--trace-steps", "6", "--init", tmp_path / "init.safetensors")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x2" in proc.stdout
    run = runs.read_run(out)
    assert run["config"]["device"]["world_size"] == 2 and run["finished"]
    assert len(run["metrics"]) == 1 and run["metrics"][0]["train_acc"] > 0
    # The global batch is split across the ranks, so the step count and lr match a single-process run.
    steps = json.loads((out / "steps.json").read_text())
    assert len(steps["loss"]) == 6 and steps["lr"] == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.001])
    ddp, _ = load_weights(run["last"])
    expected = _ddp_reference(data_dir, init, steps["lr"], world=2)
    alone = _ddp_reference(data_dir, init, steps["lr"], world=2, alone=True)
    assert set(ddp) == set(expected)
    for key in ddp:
        moved = np.linalg.norm(expected[key] - init[key])
        assert moved > 0, key
        gap = np.linalg.norm(ddp[key] - expected[key])
        assert gap <= DDP_RTOL * moved, f"{key}: DDP is {gap / moved:.1e} of its move off the one-process steps"
    far = max(np.linalg.norm(alone[k] - expected[k]) / np.linalg.norm(expected[k] - init[k]) for k in ddp)
    assert far > 50 * DDP_RTOL  # ranks that do not share gradients would fail it (measured 0.6)


@pytest.mark.parametrize("extra,match", [
    pytest.param(["--device", "cuda"], "no CUDA GPU is visible",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
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


@pytest.mark.parametrize("gpus,nproc", [(1, 2), (0, 2), (2, 3)])
def test_more_processes_than_gpus_is_one_line(data_dir, tmp_path, monkeypatch, gpus, nproc):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)  # what a GPU machine reports
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as e:
        main(base_args(data_dir, tmp_path / "x", "--nproc", str(nproc), "--device", "cuda"))
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert (f"{nproc} processes (NPROC={nproc}) but {gpus} CUDA GPU(s) visible" in message if gpus
            else "no CUDA GPU is visible" in message)


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(SystemExit, match="not a run folder"):
        main(["--resume", str(tmp_path)])


def test_divergence_keeps_the_last_good_checkpoint_and_resume_recovers(data_dir, tmp_path, monkeypatch):
    import pytorch_impl.train as train
    from shared.training import NonFiniteLoss

    real = train.train_one_epoch

    def diverge_in_epoch_2(*args, **kwargs):
        if args[4] == 1:  # 0-based epoch
            raise NonFiniteLoss("training loss became nan at epoch 2, iteration 25 (lr 0.1)")
        return real(*args, **kwargs)

    out = tmp_path / "diverged"
    monkeypatch.setattr(train, "train_one_epoch", diverge_in_epoch_2)
    with pytest.raises(SystemExit, match=r"became nan at epoch 2.*last good checkpoint \(epoch 1\) is kept") as e:
        main(base_args(data_dir, out, "--epochs", "2"))
    assert str(e.value.code).startswith("error: ")
    ckpt = torch.load(out / runs.CHECKPOINTS["torch"], weights_only=True)
    assert ckpt["progress"]["epoch"] == 1 and ckpt["progress"]["iteration"] == 20
    assert load_weights(out / runs.LAST)[1]["epoch"] == "1" and not (out / runs.RESULTS).exists()
    monkeypatch.setattr(train, "train_one_epoch", real)
    with pytest.raises(SystemExit, match=r"^error: --workers 2: .* started with 1 intra-op thread\(s\) .*--workers 1$"):
        main(["--resume", str(out), "--workers", "2", "--no-progress", "--device", "cpu"])
    assert main(["--resume", str(out), "--workers", "1", "--no-progress", "--device", "cpu"]) == 0
    assert runs.read_run(out)["finished"] and len(runs.read_metrics(out)) == 2
