"""The PyTorch side of the GPU report on the CPU: the trainer's combined fast paths as bench variants, the GPU-busy
arithmetic on real profiler events, the matmul peaks of each precision, and the per-step sync counter."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from pytorch_impl import bench as tbench
from pytorch_impl import syncs
from shared import bench, errors
from shared.bench import TimingPlan
from shared.spec import get_spec

SPEC = get_spec("resnet8")
TINY = TimingPlan(batch_size=4, iters=1, repeats=2, warmup=1, latency_iters=2)


def test_amp_channels_last_is_autocast_in_channels_last():
    work = tbench.build_workload(SPEC, "amp_channels_last", 4, "cpu")
    assert work.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert work.infer_step().dtype == torch.bfloat16  # bf16 autocast on the CPU
    assert work.info["autocast_dtype"] == "bfloat16" and work.busy is None  # no GPU to profile


def test_amp_compile_compiles_like_the_trainer(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or model)
    work = tbench.build_workload(SPEC, "amp_compile", 4, "cpu")
    assert calls == [{"mode": None, "dynamic": False}]  # static shapes; CUDA graphs only on CUDA
    assert work.info["compile"] == "inductor" and work.info["memory_format"] == "channels_last"
    work.train_step()
    assert work.infer_step().dtype == torch.bfloat16


def test_busy_time_counts_overlapping_kernels_once():
    # microseconds: two overlapping kernels (0-10, 5-20) and one alone (30-40), over two steps
    s = tbench.busy_summary([(30.0, 40.0), (0.0, 10.0), (5.0, 20.0)], steps=2)
    assert s["busy_s_per_step"] == pytest.approx(30e-6 / 2)
    assert s["kernels_per_step"] == 1.5 and s["span_s_per_step"] == pytest.approx(40e-6 / 2)
    with pytest.raises(ValueError, match="recorded no kernel"):
        tbench.busy_summary([], steps=2)


def test_busy_time_from_real_profiler_events():
    """The profiler plumbing on the CPU's own events: busy time within the span, one op at a time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(64, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            torch.mm(x, x)
    intervals = tbench.device_intervals(prof, DeviceType.CPU)
    assert len([e for e in prof.events() if e.name == "aten::mm"]) == 3
    s = tbench.busy_summary(intervals, steps=3)
    assert 0 < s["busy_s_per_step"] <= s["span_s_per_step"] and s["kernels_per_step"] >= 1


def test_a_busy_reader_that_fails_leaves_the_figures_standing():
    work = tbench.build_workload(SPEC, "eager", 4, "cpu")

    def broken() -> dict:
        raise AssertionError("No activities specified for the profiler")

    work.busy = broken
    row = bench.measure_workload(lambda: work, TINY, metrics=("train",))
    assert bench.is_measured(row["train"]) and row["infer"] is None and row["latency_ms"] is None
    assert row["busy"] == {"error": "AssertionError: No activities specified for the profiler"}


@pytest.mark.parametrize("has_bf16", [False, True])
def test_matmul_peaks_time_what_applies_on_the_cpu(monkeypatch, has_bf16):
    monkeypatch.setattr(tbench, "MATMUL_N", 64)
    monkeypatch.setattr(tbench, "cpu_has_bf16", lambda: has_bf16)
    dtypes = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b, out: dtypes.append(a.dtype) or real_mm(a, b, out=out))
    peaks = tbench.matmul_peaks("cpu", TINY)
    assert peaks["float32"]["n"] == 64 and peaks["float32"]["median"] > 0
    assert peaks["tf32"] == {"not_run": "not applicable on the CPU (TF32 is a GPU tensor-core format)"}
    assert "not_run" in peaks["float16"]
    assert bench.is_measured(peaks["bfloat16"]) == has_bf16
    calls = TINY.warmup + TINY.iters * TINY.repeats
    assert dtypes == [torch.float32] * calls + ([torch.bfloat16] * calls if has_bf16 else [])


def test_the_tf32_peak_turns_tf32_on_for_its_matmuls_only(monkeypatch):
    seen = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b, out: seen.append(torch.backends.cuda.matmul.allow_tf32)
                        or real_mm(a, b, out=out))
    before = torch.backends.cuda.matmul.allow_tf32
    tbench.matmul_peak("cpu", TINY, n=32, precision="tf32")
    tbench.matmul_peak("cpu", TINY, n=32, precision="float32")
    calls = TINY.warmup + TINY.iters * TINY.repeats
    assert seen == [True] * calls + [False] * calls and torch.backends.cuda.matmul.allow_tf32 == before
    with pytest.raises(ValueError, match="valid choices: float32, tf32, bfloat16, float16"):
        tbench.matmul_peak("cpu", TINY, n=32, precision="fp8")


def test_worker_times_only_the_metrics_asked_for(tmp_path):
    out = tmp_path / "torch.json"
    assert tbench.main(["--model", "resnet8", "--variants", "eager", "--batch-size", "4", "--iters", "1",
                        "--repeats", "2", "--warmup", "1", "--min-time", "0", "--metrics", "train",
                        "--json-out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["train"]["n"] == 2 and row["infer"] is None and row["latency_ms"] is None
    assert "busy" not in row  # no GPU profile on the CPU


def test_the_sync_counter_puts_each_sync_in_the_step_it_follows():
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(syncs_before: int) -> None:
        for _ in range(syncs_before):
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        model(torch.randn(3, 4)).sum().backward()
        opt.step()

    with pytest.warns(UserWarning, match="an unrelated warning"):
        with syncs.SyncCounter() as counter:
            for n in (2, 0, 1, 0):
                step(n)
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
            warnings.warn("an unrelated warning", UserWarning, stacklevel=1)  # passed on, not counted
    assert counter.per_step == [2, 0, 1, 0] and counter.after_last == 1
    opt.step()  # the hook is gone
    assert counter.per_step == [2, 0, 1, 0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_counting_syncs_without_cuda_is_one_line(tmp_path, capsys):
    assert errors.run(syncs.main, ["--json-out", str(tmp_path / "s.json"), "--", "--model", "resnet8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: counting host synchronisations needs CUDA (torch.cuda.set_sync_debug_mode); "
                   "torch.cuda.is_available() is False here"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_busy_on_cuda_is_within_the_steps_wall_time():
    work = tbench.build_workload(SPEC, "eager", 32, "cuda")
    busy = work.busy()
    assert busy["kernels_per_step"] > 10 and 0 < busy["busy_s_per_step"] <= busy["span_s_per_step"]
