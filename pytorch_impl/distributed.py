"""DistributedDataParallel plumbing of the torch trainer: ``--nproc N`` starts N processes through
``python -m torch.distributed.run``, and each joins the process group (nccl on GPUs, gloo on the CPU).

At most one CUDA process per visible GPU: more would die with "invalid device ordinal", so it is
checked first, with one line that says what to do.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from shared.devices import resolve_device_name
from shared.errors import UserError
from shared.train_flags import without_nproc


def check_nproc(nproc: int, device_name: str, gpus: int) -> None:
    """One CUDA process per visible GPU at most (more would die with "invalid device ordinal")."""
    if nproc < 1:
        raise UserError(f"--nproc must be >= 1; got {nproc}")
    if device_name.startswith("cuda") and nproc > gpus:
        raise UserError(f"{nproc} processes (NPROC={nproc}) but {gpus} CUDA GPU(s) visible "
                   f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use NPROC <= {gpus}, "
                   "or --device cpu (DEVICE=cpu) for gloo processes on the CPU")


def launch(nproc: int, requested: str, argv: list[str]) -> int:
    """``--nproc N``: check, then start this command N times through ``python -m torch.distributed.run``."""
    gpus = torch.cuda.device_count()
    check_nproc(nproc, resolve_device_name(requested, gpus), gpus)
    # the processes run without --nproc (torchrun would take it for its own option)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "pytorch_impl.train", *without_nproc(argv)]
    return subprocess.call(cmd)  # the processes' output is the command's own: passed through, not captured


def init_distributed(requested: str) -> tuple[torch.device, int, int]:
    """(device, rank, world size); joins the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    gpus = torch.cuda.device_count()
    name = resolve_device_name(requested, gpus)
    if world == 1:
        return torch.device(name), 0, 1
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    try:  # started by hand with torchrun: every process would die with "invalid device ordinal"
        check_nproc(int(os.environ.get("LOCAL_WORLD_SIZE", world)), name, gpus)
    except UserError:
        if local_rank:  # the first process says why
            raise SystemExit(1) from None
        raise
    if name.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device, rank, world
