"""PyTorch side of the cross-framework parity check: one JSON job file in, files and a JSON report out.

    python -m pytorch_impl.parity JOBS.json     # {"jobs": [job, ...], "report": path}

The job keys are in docs/harness.md ("How it works"); arrays are NCHW. ``keras_impl/parity.py`` is the mirror
image; only this side calibrates BN statistics (its pre-hooks see every BN's input in one pass).
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pytorch_impl.convert import read_native
from pytorch_impl.optim import make_sgd
from pytorch_impl.resnet import build_model
from pytorch_impl.summary import summarize
from pytorch_impl.weights import get_weights, set_weights
from shared import errors
from shared.harness.parity.randomize import calibrated_stats, calibration_rng, randomize_arrays
from shared.harness.parity.run import serve_jobs
from shared.harness.summary import dump
from shared.io import atomic_write_text, save_weights
from shared.names import canonical_weights
from shared.spec import ModelSpec


def layer_outputs(model: torch.nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
    """Eval-mode outputs of the named canonical layers (forward hooks) and the logits."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"the PyTorch model has no module named {missing[:3]}")
    captured: dict[str, np.ndarray] = {}
    handles = []
    for name in names:
        # clone: the in-place ReLU that follows a BN would otherwise overwrite the captured tensor
        def hook(_m, _inp, out, name=name):
            captured[name] = out.detach().clone().cpu().numpy()

        handles.append(modules[name].register_forward_hook(hook))
    model.eval()
    try:
        with torch.no_grad():
            captured["logits"] = model(x).cpu().numpy()
    finally:
        for h in handles:
            h.remove()
    return captured


def bn_counts(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """For every BN layer, the number of values per channel it normalizes over (batch x H x W)."""
    counts: dict[str, int] = {}
    handles = [
        m.register_forward_hook(lambda _m, inp, _out, name=name: counts.__setitem__(
            name, inp[0].numel() // inp[0].shape[1]))
        for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad():
            model.eval()
            model(x)
    finally:
        for h in handles:
            h.remove()
    return counts


def calibrate_bn(model: torch.nn.Module, x: torch.Tensor, seed: int, layers: list[str] | None = None) -> None:
    """Set the named BNs' (default: every BN's) running statistics from their own eval-mode input on ``x``.

    One forward pass: a pre-hook runs just before each BN, so every BN sees its input as the calibrated
    earlier layers make it (``shared.harness.parity.randomize.calibrated_stats``).
    """
    rng = calibration_rng(seed)

    def calibrate(module: torch.nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...]) -> None:
        v = inputs[0].detach().double()
        mean, var = calibrated_stats(v.mean((0, 2, 3)).numpy(), v.var((0, 2, 3), unbiased=False).numpy(), rng)
        module.running_mean.copy_(torch.from_numpy(mean))
        module.running_var.copy_(torch.from_numpy(var))

    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if isinstance(m, torch.nn.BatchNorm2d)] if layers is None else layers
    handles = [modules[n].register_forward_pre_hook(calibrate) for n in names]
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def canonical_arrays(model: torch.nn.Module, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Every canonical tensor in the model's own dtype (``get_weights`` gives float32)."""
    state = model.state_dict()
    return {w.key: state[w.key].detach().cpu().numpy().copy() for w in canonical_weights(spec)}


def perturbed(model: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    """A copy whose parameters are multiplied by 1 + scale * N(0, 1) (the step's sensitivity probe)."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1 + scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return other


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, momentum: float,
               weight_decay: float) -> float:
    """One SGD step in train mode (BN uses and updates batch statistics); returns the loss."""
    model.train()
    optimizer = make_sgd(model, lr, momentum, weight_decay)
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Execute a parity job (its keys: docs/harness.md, "How it works"); returns the report."""
    torch.manual_seed(0)
    spec = ModelSpec.from_dict(job["spec"])
    model = build_model(spec)
    report: dict[str, Any] = {"framework": "torch", "model": spec.name}
    if job.get("summary"):
        atomic_write_text(job["summary"], dump(summarize(model, spec)))
    if job.get("randomize") is not None:
        set_weights(model, spec, randomize_arrays(spec, get_weights(model, spec), int(job["randomize"])))
    if job.get("calibrate"):
        cal = job["calibrate"]
        calibrate_bn(model, torch.from_numpy(np.load(cal["input"])), int(cal["seed"]), cal.get("layers"))
    if job.get("weights"):
        set_weights(model, spec, read_native(job["weights"], spec))
    if job.get("save_weights"):
        save_weights(job["save_weights"], get_weights(model, spec),
                     {"spec": spec.to_json(), "framework": "torch"})
    if job.get("forward"):
        fw = job["forward"]
        x = torch.from_numpy(np.load(fw["input"]))
        outputs = layer_outputs(model, x, list(fw["layers"]))
        if fw.get("float64"):  # float32's own error at each tensor: the same weights in float64
            wide = layer_outputs(copy.deepcopy(model).double(), x.double(), list(fw["layers"]))
            outputs.update({f"float64:{k}": v for k, v in wide.items()})
        np.savez(fw["out"], **outputs)
    if job.get("train_step"):
        ts = job["train_step"]
        dtype = getattr(torch, ts.get("dtype", "float32"))
        x = torch.from_numpy(np.load(ts["input"])).to(dtype)
        y = torch.from_numpy(np.load(ts["labels"])).long()
        counts = bn_counts(model, x.float())
        model = model.to(dtype)
        meta = {"spec": spec.to_json(), "framework": "torch"}
        if ts.get("probe"):
            probe = perturbed(model, ts["probe"]["scale"], ts["probe"]["seed"])
            train_step(probe, x, y, ts["lr"], ts["momentum"], ts["weight_decay"])
            save_weights(ts["probe"]["out"], canonical_arrays(probe, spec), meta)
        loss = train_step(model, x, y, ts["lr"], ts["momentum"], ts["weight_decay"])
        save_weights(ts["out"], canonical_arrays(model, spec), meta)
        report["train_step"] = {"loss": loss, "bn_counts": counts, "dtype": str(dtype).removeprefix("torch.")}
    return report


def main(argv: list[str] | None = None) -> int:
    return serve_jobs("python -m pytorch_impl.parity", run_job, argv)


if __name__ == "__main__":
    sys.exit(errors.run(main))
