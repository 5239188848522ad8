"""A training step makes no host-device transfer and no host synchronisation of its own.

On the CPU the calls that would cross the bus or wait for a GPU are counted while whole epochs run
through the real loader and ``train_one_epoch``: tensors made from host data (``torch.tensor``,
``as_tensor``, ``from_numpy``), copies (``.to``, ``.cpu``, ``.cuda``) and reads back to the host
(``.item``, ``.tolist``, ``float()``, ``int()``, ``bool()`` of a tensor). An epoch of 6 steps must make
exactly as many as an epoch of 2: nothing per step, only the per-epoch plan upload and the final
host check. On a CUDA machine the same loop runs under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import collections
import types

import pytest
import torch

import pytorch_impl.train as train
from datasets import load_prepared
from pytorch_impl.data import Loader
from pytorch_impl.optim import make_sgd
from pytorch_impl.resnet import build_model
from shared.run_folder import Progress
from shared.signals import StopRequest
from shared.spec import get_spec

TENSOR_METHODS = ("to", "cpu", "cuda", "item", "tolist", "__float__", "__int__", "__bool__")
TORCH_FUNCTIONS = ("tensor", "as_tensor", "from_numpy")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return load_prepared("synthetic", tmp_path_factory.mktemp("data"))


def fixed_plan(steps: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(iters_in_epoch=lambda epoch: steps, lr_at=lambda it: 0.1, epochs=1)


@pytest.fixture
def counter(monkeypatch) -> collections.Counter:
    """Counts every call of the watched torch functions and tensor methods (while the test runs)."""
    counts: collections.Counter = collections.Counter()

    def watch(owner, name):
        real = getattr(owner, name)

        def counted(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    for name in TENSOR_METHODS:
        watch(torch.Tensor, name)
    for name in TORCH_FUNCTIONS:
        watch(torch, name)
    return counts


def _trainer(synthetic, device: str, *, amp: bool = False, channels_last: bool = False):
    """``epoch(steps, number)``: one epoch of ``train_one_epoch`` on ResNet-8, the run folder reduced to what the
    loop reads of it (a plan of ``steps`` steps, the progress, no trace, no NaN found)."""
    ctx = train.Context(torch.device(device), amp=amp, channels_last=channels_last)
    torch.manual_seed(0)
    model = build_model(get_spec("resnet8", num_classes=10)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_sgd(model, 0.1, 0.9, weight_decay=1e-4)
    loader = Loader(synthetic, "train", 50, train=True, seed=0, device=device, channels_last=channels_last)
    run = types.SimpleNamespace(progress=Progress(), settings=types.SimpleNamespace(trace_steps=0, show_progress=False),
                                check_loss=lambda loss, lr: None)

    def epoch(steps: int, number: int = 0):
        run.plan, run.progress.epoch = fixed_plan(steps), number
        return train.train_one_epoch(model, optimizer, loader, run, ctx, StopRequest())  # no stop asked

    return epoch


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_cpu_training_step_makes_no_transfer_and_no_host_read(synthetic, counter, monkeypatch, channels_last):
    torch.set_num_threads(1)
    epoch = _trainer(synthetic, "cpu", channels_last=channels_last)
    monkeypatch.setattr(train, "CHECK_EVERY", 10**9)  # only the host check after the last step
    epoch(1)  # warm-up: lazy optimizer state
    counter.clear()
    log2 = epoch(2, number=1)
    short = dict(counter)
    counter.clear()
    log6 = epoch(6, number=2)
    assert dict(counter) == short, "per-step transfers or host reads"
    assert short["tolist"] == 1 and short.get("item", 0) == 0  # the one host check per epoch
    # the epoch plan: index, dy, dx and flip, each sent to the device once
    assert short["from_numpy"] == 4 and short.get("tensor", 0) == short.get("as_tensor", 0) == 0
    assert (log2.images, log6.images) == (100, 300)  # counts kept on the host are right


def test_the_counter_sees_host_checks_inside_the_loop(synthetic, counter, monkeypatch):
    """The instrumentation can fail: a host check every 2 steps is 3 reads in 6 steps."""
    torch.set_num_threads(1)
    epoch = _trainer(synthetic, "cpu")
    monkeypatch.setattr(train, "CHECK_EVERY", 2)
    epoch(1)
    counter.clear()
    epoch(6, number=1)
    assert counter["tolist"] == 3


def test_loader_batches_come_in_the_layout_asked_for(synthetic):
    plain = next(iter(Loader(synthetic, "train", 16, train=True, seed=1)))[0]
    cl = next(iter(Loader(synthetic, "train", 16, train=True, seed=1, channels_last=True)))[0]
    assert plain.is_contiguous() and cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain, cl)
    ctx = train.Context(torch.device("cpu"), channels_last=True)
    assert ctx.prepare_input(cl).data_ptr() == cl.data_ptr()  # no copy in the trainer


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", [False, True])
def test_a_cuda_training_step_never_syncs(synthetic, monkeypatch, amp):
    """Every step runs with sync debug mode "error"; only the plan upload and the host check may sync."""
    epoch = _trainer(synthetic, "cuda", amp=amp, channels_last=True)
    monkeypatch.setattr(train, "CHECK_EVERY", 4)

    def allowed(fn):
        def lifted(*args, **kwargs):
            torch.cuda.set_sync_debug_mode(0)
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("error")
        return lifted

    monkeypatch.setattr(train.Context, "host_totals", allowed(train.Context.host_totals))
    from pytorch_impl.data import Loader

    monkeypatch.setattr(Loader, "set_epoch", allowed(Loader.set_epoch))
    epoch(2)  # warm-up (cuDNN, lazy optimizer state)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        log = epoch(8, number=1)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert log.images == 400 and log.loss > 0
