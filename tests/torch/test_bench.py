"""PyTorch benchmark variants: each times what it claims (a real SGD step, eval without gradient,
the memory format and precision it names), and failures become reasons, not crashes."""

from __future__ import annotations

import json

import pytest
import torch

from pytorch_impl import bench as tbench
from shared import bench
from shared.bench import TimingPlan
from shared.spec import get_spec

SPEC = get_spec("resnet8")
TINY = TimingPlan(batch_size=4, iters=1, repeats=2, warmup=1, latency_iters=2)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("variant", ["eager", "channels_last", "autocast"])
def test_train_step_is_an_sgd_step_and_inference_changes_nothing(variant):
    work = tbench.build_workload(SPEC, variant, 4, "cpu")
    model = work.model
    before = _state(model)
    work.train_step()
    assert model.training
    after = _state(model)
    for name in ("conv1.weight", "fc.bias", "bn1.running_mean"):  # weights and BN statistics move
        assert not torch.equal(before[name], after[name]), name
    with torch.no_grad():
        out = work.infer_step()
    assert not model.training and out.shape == (4, SPEC.num_classes) and not out.requires_grad
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in after.items())
    assert work.latency_step().shape == (1, SPEC.num_classes)


def test_channels_last_and_autocast_do_what_they_say():
    cl = tbench.build_workload(SPEC, "channels_last", 4, "cpu")
    assert cl.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert cl.info["memory_format"] == "channels_last"
    amp = tbench.build_workload(SPEC, "autocast", 4, "cpu")
    assert amp.infer_step().dtype == torch.bfloat16  # bfloat16 autocast on CPU
    assert tbench.low_precision("cuda") == torch.float16
    eager = tbench.build_workload(SPEC, "eager", 4, "cpu")
    assert eager.infer_step().dtype == torch.float32


def test_a_failing_torch_compile_is_reported_with_its_reason(monkeypatch):
    def broken_compile(*_a, **_k):
        raise RuntimeError("inductor needs a working C++ compiler\nlong details")

    monkeypatch.setattr(torch, "compile", broken_compile)
    row = bench.measure_workload(lambda: tbench.build_workload(SPEC, "compile", 4, "cpu"), TINY)
    reason = "RuntimeError: inductor needs a working C++ compiler"
    assert row["error"] == reason and all(row[m] == {"error": reason} for m in bench.METRICS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="device 'cuda' requested but torch.cuda.is_available"):
        tbench.build_workload(SPEC, "eager", 4, "cuda")


def test_export_failure_becomes_a_reason(monkeypatch, tmp_path):
    import pytorch_impl.export

    def broken(*_a, **_k):
        raise ValueError("dynamic batch unsupported")

    monkeypatch.setattr(pytorch_impl.export, "export_onnx", broken)
    assert tbench.export_for_ort(SPEC, tmp_path / "m.onnx") == {
        "error": "export failed: ValueError: dynamic batch unsupported"}


def test_worker_cli_writes_positive_figures(tmp_path):
    out = tmp_path / "torch.json"
    assert tbench.main(["--model", "resnet8", "--variants", "eager,autocast", "--batch-size", "4", "--iters", "1",
                        "--repeats", "2", "--warmup", "1", "--latency-iters", "2", "--json-out", str(out),
                        "--flops"]) == 0
    result = json.loads(out.read_text())
    assert result["flops"] == tbench.count_flops(SPEC) and "peak" not in result
    assert result["framework"] == "torch" and result["versions"]["torch"] == torch.__version__
    assert [r["variant"] for r in result["rows"]] == ["eager", "autocast"]
    for row in result["rows"]:
        assert row["error"] is None
        for metric in bench.METRICS:
            assert row[metric]["n"] == 2 and row[metric]["min"] > 0


def test_flop_counter_gives_the_resnet20_figures():
    # 0.081 GFLOP forward (~41M multiply-adds, He et al. 2015 count ~41M for ResNet-20) and 3x that to train.
    flops = tbench.count_flops(get_spec("resnet20"))
    assert round(flops["forward"] / 1e9, 3) == 0.081
    assert round(flops["train"] / 1e9, 3) == 0.242
    assert flops["train"] == pytest.approx(3 * flops["forward"], rel=0.01)  # backward = 2x forward for convs


def test_matmul_peak_counts_two_flops_per_multiply_add(monkeypatch):
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b, out: calls.append(a.shape) or real_mm(a, b, out=out))
    peak = tbench.matmul_peak("cpu", TINY, n=64)
    assert calls[0] == (64, 64) and len(calls) == TINY.warmup + TINY.iters * TINY.repeats
    assert peak["steps"] == TINY.iters and peak["median"] > 0
