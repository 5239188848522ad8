"""pytorch_impl.train beyond the contract both trainers share (tests/trainer_contract.py): the fast paths act
inside the training step (autocast, channels_last, torch.compile), DDP on two gloo processes takes the steps of
one process, and more processes than GPUs is one line. Runs on ResNet-8, on the CPU.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pytorch_impl.train import main
from shared import errors, runs
from shared.io import load_weights
from tests.conftest import ROOT
from tests.trainer_contract import base_args

# DDP's all-reduced steps against the same steps in one process, relative to each tensor's 6-step move: measured
# 7e-4 at worst (float32 sums in another order, amplified by lr 0.1).
DDP_RTOL = 5e-3


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
    weight and output are channels_last. Without the flags: float32, contiguous NCHW. The CPU is taken to have
    native bf16 (a CPU without it would train --amp in float32): two small steps, slow only where it is emulated."""
    from shared import machine

    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: True)
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
    from pytorch_impl.data import Loader
    from pytorch_impl.optim import make_sgd
    from pytorch_impl.resnet import build_model
    from pytorch_impl.weights import get_weights, set_weights
    from shared.spec import get_spec

    spec = get_spec("resnet8")
    model = build_model(spec)
    set_weights(model, spec, init)
    model.train()
    optimizer = make_sgd(model, lrs[0], 0.9, 1e-4)
    loader = Loader(load_prepared("synthetic", data_dir), "train", 100, train=True, seed=0)
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
    out = tmp_path / "ddp"  # --nproc starts the processes, with torchrun's variables
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


@pytest.mark.parametrize("gpus,nproc", [(1, 2), (0, 2), (2, 3)])
def test_more_processes_than_gpus_is_one_line(data_dir, tmp_path, monkeypatch, capsys, gpus, nproc):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)  # what a GPU machine reports
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert errors.run(main, base_args(data_dir, tmp_path / "x", "--nproc", str(nproc), "--device", "cuda")) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message
    assert (f"{nproc} processes (NPROC={nproc}) but {gpus} CUDA GPU(s) visible" in message if gpus
            else "no CUDA GPU is visible" in message)
