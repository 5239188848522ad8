"""DistributedDataParallel plumbing of the torch trainer: ``--nproc N`` starts N processes on this machine with
torchrun's variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...), and each joins the process group (nccl on
GPUs, gloo on the CPU). ``shared.signals.run_processes`` starts them, so a SIGTERM reaches each once and they stop
together with a checkpoint; torchrun itself prints a traceback on SIGTERM and kills its workers 30 s later.
``python -m torch.distributed.run`` still starts the trainer by hand (several hosts).

At most one CUDA process per visible GPU: more would die with "invalid device ordinal", so it is
checked first, with one line that says what to do.
"""

from __future__ import annotations

import os
import sys

import torch

from shared.devices import resolve_device_name
from shared.errors import UserError
from shared.signals import free_port, run_processes
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
    """``--nproc N``: check, then run this command N times as the ranks of one DDP run; the first failure's exit
    status (143 after a SIGTERM)."""
    gpus = torch.cuda.device_count()
    check_nproc(nproc, resolve_device_name(requested, gpus), gpus)
    port = free_port()  # rank 0's rendezvous store
    # the processes run without --nproc; like torchrun, one OpenMP thread each unless OMP_NUM_THREADS says
    common = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc),
              "LOCAL_WORLD_SIZE": str(nproc), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "pytorch_impl.train", *without_nproc(argv)]
    return run_processes([(cmd, {**os.environ, **common, "RANK": str(i), "LOCAL_RANK": str(i)})
                          for i in range(nproc)])


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
