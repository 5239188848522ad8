"""PyTorch loader of a prepared dataset: uint8 on the device, augmented there in whole batches (docs/data.md).

It implements ``shared/data.py`` exactly, and a batch costs no host-device transfer (docs/gpu.md).
``python -m pytorch_impl.data --dataset synthetic --bench`` measures images/s; ``--dump FILE.npz`` writes batches.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from shared import errors
from shared.data import augmentation, check_split, epoch_plan, loader_arg_parser, norm_constants


class Loader:
    """One split of a prepared dataset as batches of (x float32 NCHW normalized, y int64) on ``device``.

    The whole split is one uint8 tensor: memory-mapped on the CPU (no copy), resident on an
    accelerator (150 MB for CIFAR-10). ``set_epoch`` computes the epoch's plan on the host and sends
    it to the device once; every batch is then a slice of it, so after ``set_epoch`` iterating makes
    no host-device transfer and no synchronisation. ``channels_last`` yields ``x`` in
    ``torch.channels_last`` memory (what such a model wants), written that way by :meth:`normalize`.
    """

    def __init__(self, prepared, split: str, batch_size: int, *, train: bool, seed: int = 0,
                 device: str | torch.device = "cpu", channels_last: bool = False) -> None:
        check_split(split)
        self.x_np, self.y_np = prepared.arrays(split)
        self.manifest = prepared.manifest
        self.batch_size, self.train, self.seed, self.epoch = batch_size, train, seed, 0
        self.device, self.channels_last = torch.device(device), channels_last
        self.pad = augmentation(self.manifest["name"]).pad
        mean, std = norm_constants(self.manifest)
        self.mean = torch.from_numpy(mean).to(self.device)
        self.std = torch.from_numpy(std).to(self.device)
        self.size = int(self.x_np.shape[1])
        with warnings.catch_warnings():  # the memory map is read-only, and only ever read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.x = torch.from_numpy(self.x_np).to(self.device)
        self.y = torch.from_numpy(np.asarray(self.y_np, dtype=np.int64)).to(self.device)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces (one upload)."""
        self.epoch = int(epoch)
        self._plan = epoch_plan(len(self.x_np), self.batch_size, train=self.train, pad=self.pad,
                                seed=self.seed, epoch=self.epoch)
        plan = self._plan
        self._index, self._dy, self._dx, self._flip = (
            torch.from_numpy(a).to(self.device) for a in (plan.index, plan.dy.astype(np.int64),
                                                           plan.dx.astype(np.int64), plan.flip))

    def __len__(self) -> int:
        return len(self._plan)

    def augment(self, xb: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Zero-pad, crop at (dy, dx) and flip where ``flip``: uint8 NHWC in and out (one gather).

        Output pixel (i, j) of image b reads padded pixel (dy + i, dx + j), or (dy + i, dx + s-1-j) when
        flipped, as a flat index into the padded image (3.5x faster on CPU than 3-D advanced indexing).
        """
        p, s, n = self.pad, self.size, len(xb)
        padded = F.pad(xb, (0, 0, p, p, p, p)).reshape(n, -1, 3)
        ar = torch.arange(s, device=xb.device)
        rows = dy[:, None] + ar[None, :]
        cols = torch.where(flip[:, None], dx[:, None] + (s - 1) - ar[None, :], dx[:, None] + ar[None, :])
        flat = (rows[:, :, None] * (s + 2 * p) + cols[:, None, :]).reshape(n, s * s, 1)
        return torch.gather(padded, 1, flat.expand(n, s * s, 3)).reshape(n, s, s, 3)

    def normalize(self, xb: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> float32 NCHW, ``(x / 255 - mean) / std``.

        The arithmetic runs in NHWC; the NCHW view of that result already is ``channels_last``
        memory, so that layout costs nothing, and the NCHW-contiguous one costs one copy.
        """
        x = xb.float()
        x = x.div_(255.0).sub_(self.mean).div_(self.std).permute(0, 3, 1, 2)
        return x if self.channels_last else x.contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch ``start`` on (a run resumed inside an epoch)."""
        bs = self.batch_size
        for i in range(start, len(self)):
            s = slice(i * bs, (i + 1) * bs)
            idx = self._index[s]
            xb = self.x.index_select(0, idx)  # 20x faster on CPU than self.x[idx] (advanced indexing)
            if self.train:
                xb = self.augment(xb, self._dy[s], self._dx[s], self._flip[s])
            yield self.normalize(xb), self.y.index_select(0, idx)


def bench(prepared, batch_size: int = 128, batches: int = 100, train: bool = True,
          device: str = "cpu", threads: int | None = None) -> dict:
    """Images/s of the training input pipeline (gather + augment + normalize), after one warm-up batch.

    ``threads`` sets torch's intra-op threads first (default: torch's own choice).
    """
    if threads:
        torch.set_num_threads(threads)
    from shared.bench.timing import TimingPlan, rate

    loader = Loader(prepared, "train", batch_size, train=train, device=device)
    it = iter(loader)

    sizes: list[int] = []

    def next_batch() -> None:
        nonlocal it
        try:
            x = next(it)[0]
        except StopIteration:
            loader.set_epoch(loader.epoch + 1)
            it = iter(loader)
            x = next(it)[0]
        sizes.append(len(x))

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    # the one timing loop: one warm-up batch, then one block of `batches` batches (an eval epoch ends short)
    speed = rate(next_batch, 1, TimingPlan(batch_size, iters=batches, repeats=1, warmup=1), sync)
    n, dt = sum(sizes[1:]), batches / speed["median"]
    return {"framework": "torch", "images_per_s": n / dt, "images": n, "seconds": dt, "batch_size": batch_size,
            "train": train, "device": device, "threads": torch.get_num_threads(), "torch": torch.__version__}


def numpy_batches(prepared, split: str, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
                  device: str = "cpu"):
    """(batches in the epoch, the loader's batches as NHWC numpy (x, y)), for ``--dump``."""
    loader = Loader(prepared, split, batch_size, train=train, seed=seed, device=device)
    loader.set_epoch(epoch)
    return len(loader), ((x.permute(0, 2, 3, 1).cpu().numpy(), y.cpu().numpy()) for x, y in loader)


def main(argv: list[str] | None = None) -> int:
    from datasets.loading import loader_main

    parser = loader_arg_parser("python -m pytorch_impl.data", "dump or time the loader")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for --bench")
    args = parser.parse_args(argv)
    return loader_main(
        args,
        bench=lambda prepared: bench(prepared, args.batch_size, args.batches or 100, args.train, args.device,
                                     args.threads),
        batches=lambda prepared: numpy_batches(prepared, args.split, args.batch_size, train=args.train,
                                               seed=args.seed, epoch=args.epoch, device=args.device),
    )


if __name__ == "__main__":
    sys.exit(errors.run(main))
