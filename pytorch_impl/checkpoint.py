"""The torch resume checkpoint (``checkpoint.pt`` in the run folder): a plain dict of tensors and plain data,
written atomically and read back with ``torch.load(weights_only=True)``, so no code runs on load.

It holds the model, the optimizer (momentum buffers), the AMP grad scaler, the run's progress (epoch,
global iteration, best so far, metrics rows, wall time; after a SIGTERM, the step inside the epoch and the
epoch's sums so far) and torch's RNG states. Nothing in training
draws from Python's own ``random``, so its state is not kept (older checkpoints that hold it load too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.errors import UserError
from shared.io import atomic_write
from shared.run_folder import Progress

FORMAT = 1


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    progress: Progress, device: torch.device) -> Path:
    """The resume checkpoint, atomically: model, optimizer, scaler, progress, RNG."""
    state = {
        "format": FORMAT,
        "framework": "torch",
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "progress": progress.to_dict(),
        "rng": _rng_state(device),
    }
    return atomic_write(path, lambda tmp: _save(state, tmp))


def _save(state: dict[str, Any], tmp: str) -> None:
    # through a Python file, so that a full disk reaches the caller as ENOSPC (torch.save given a path reports
    # only "unexpected pos")
    with open(tmp, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    device: torch.device) -> Progress:
    """Restore a :func:`save_checkpoint` file into ``model``, ``optimizer`` and ``scaler``; its progress."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"cannot read checkpoint {path}: truncated or corrupt ({type(e).__name__}); restore it "
                        "from a copy, or start the run again") from None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if state["scaler"] and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"], device)
    return Progress.from_dict(state["progress"])
