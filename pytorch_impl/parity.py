"""PyTorch side of the cross-framework parity check: one JSON job in, files and a JSON report out.

    python -m pytorch_impl.parity JOBS.json     # {"jobs": [job, ...], "report": path}

Job keys (all optional but ``spec``), applied in this order: ``summary`` (path of the
summary JSON to write), ``randomize`` (seed: fresh values for every parameter and BN statistic,
``shared.harness.parity.randomize_arrays``), ``weights`` (a canonical .safetensors or native checkpoint to
load), ``save_weights`` (path: canonical safetensors), ``forward`` {input (.npy, NCHW), layers, out
(.npz of those layers' outputs + ``logits``, eval mode)}, ``train_step`` {input, labels, lr, momentum,
weight_decay, out}: one SGD step in train mode. ``keras_impl/parity.py`` is the mirror image.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pytorch_impl.convert import read_native
from pytorch_impl.optim import make_sgd
from pytorch_impl.resnet import build_model
from pytorch_impl.summary import summarize
from pytorch_impl.weights import get_weights, set_weights
from shared.harness.parity import randomize_arrays
from shared.harness.summary import dump
from shared.io import atomic_write_json, atomic_write_text, save_weights
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
    """Execute a parity job (see the module docstring); returns the report."""
    torch.manual_seed(0)
    spec = ModelSpec.from_dict(job["spec"])
    model = build_model(spec)
    report: dict[str, Any] = {"framework": "torch", "model": spec.name}
    if job.get("summary"):
        atomic_write_text(job["summary"], dump(summarize(model, spec)))
    if job.get("randomize") is not None:
        set_weights(model, spec, randomize_arrays(spec, get_weights(model, spec), int(job["randomize"])))
    if job.get("weights"):
        set_weights(model, spec, read_native(job["weights"], spec))
    if job.get("save_weights"):
        save_weights(job["save_weights"], get_weights(model, spec),
                     {"spec": spec.to_json(), "framework": "torch"})
    if job.get("forward"):
        fw = job["forward"]
        x = torch.from_numpy(np.load(fw["input"]))
        outputs = layer_outputs(model, x, list(fw["layers"]))
        np.savez(fw["out"], **outputs)
    if job.get("train_step"):
        ts = job["train_step"]
        x = torch.from_numpy(np.load(ts["input"]))
        y = torch.from_numpy(np.load(ts["labels"])).long()
        counts = bn_counts(model, x)
        loss = train_step(model, x, y, ts["lr"], ts["momentum"], ts["weight_decay"])
        save_weights(ts["out"], get_weights(model, spec), {"spec": spec.to_json(), "framework": "torch"})
        report["train_step"] = {"loss": loss, "bn_counts": counts}
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m pytorch_impl.parity JOBS.json")
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    atomic_write_json(request["report"], [run_job(job) for job in request["jobs"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
