"""The GPU report and the full-run command without a GPU: the budget stops the plan cleanly, missing packages
give "not run" rows, the bound rule, the sync and projection arithmetic checked by hand, and both commands end
to end on the CPU (each measurement in its own process)."""

from __future__ import annotations

import json
import math
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from shared import bench, process
from shared.bench import bound, full_run, gpu_plan, gpu_report
from shared.bench.gpu_plan import Budget, GpuConfig, Item
from shared.errors import UserError
from tests.blocked_imports import blocked_env, blocked_python
from tests.conftest import ROOT, run_module

GPU_MISSING = ("tensorflow", "keras", "onnxscript", "onnxruntime")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def fake_item(name: str, seconds: float, clock: Clock, needs: tuple[str, ...] = (),
              cuda_only: bool = False) -> Item:
    """An item that takes ``seconds`` of the clock, or is killed at ``timeout`` (its row then fails)."""
    rows = [{"id": name, "kind": "step", "status": "planned", "reason": ""}]

    def run(timeout: float) -> list[dict]:
        clock.t += min(seconds, timeout)
        ok = seconds <= timeout
        return [{**rows[0], "status": "measured" if ok else "failed",
                 "reason": "" if ok else "timed out after 1 s: python ..."}]

    return Item(name, rows, run, needs, cuda_only)


# The plan runner ------------------------------------------------------------------------------------------------
def test_a_budget_that_allows_only_the_first_rows_lists_the_rest_as_not_run():
    clock = Clock()
    items = [fake_item(f"item{i}", 10, clock) for i in range(5)]
    rows = gpu_plan.run_plan(items, Budget(25, clock), "cuda", say=lambda _: None)
    assert [(r["id"], r["status"], r["reason"]) for r in rows] == [
        ("item0", "measured", ""), ("item1", "measured", ""),
        ("item2", "not run", gpu_plan.STOPPED),  # started with 5 s left and stopped at the deadline
        ("item3", "not run", "budget"), ("item4", "not run", "budget")]
    assert clock.t == 125.0  # nothing ran after the deadline
    assert [r["item_s"] for r in rows[:3]] == [10.0, 10.0, 5.0]


def test_an_item_starts_only_with_enough_budget_left():
    clock = Clock()
    items = [fake_item("a", 16, clock), fake_item("b", 1, clock)]
    rows = gpu_plan.run_plan(items, Budget(16 + gpu_plan.MIN_START_S - 0.5, clock), "cuda", say=lambda _: None)
    assert [(r["status"], r["reason"]) for r in rows] == [("measured", ""), ("not run", "budget")]


def test_missing_packages_and_cuda_only_items_are_not_run_rows_even_with_budget_left():
    clock = Clock()
    items = [fake_item("keras", 1, clock, needs=("keras", "surely_not_a_module_x1")),
             fake_item("syncs", 1, clock, cuda_only=True), fake_item("torch", 1, clock)]
    rows = gpu_plan.run_plan(items, Budget(100, clock), "cpu", say=lambda _: None)
    assert rows[0]["status"] == "not run"
    assert rows[0]["reason"].endswith("surely_not_a_module_x1, which this Python cannot import")
    assert (rows[1]["status"], rows[1]["reason"]) == ("not run", "not applicable on the CPU (CUDA only)")
    assert rows[2]["status"] == "measured" and clock.t == 101.0  # only the runnable item took time


def test_an_item_that_raises_fails_its_rows_and_the_plan_goes_on():
    clock = Clock()

    def boom(_timeout):
        raise RuntimeError("no such file\nmore")

    items = [Item("bad", [{"id": "bad", "kind": "step"}], boom), fake_item("next", 1, clock)]
    rows = gpu_plan.run_plan(items, Budget(100, clock), "cuda", say=lambda _: None)
    assert (rows[0]["status"], rows[0]["reason"]) == ("failed", "RuntimeError: no such file")
    assert rows[1]["status"] == "measured"


def test_the_plan_runs_the_headline_rows_first_and_lists_every_row_once(tmp_path):
    gc = GpuConfig(device="cuda", budget_s=360)
    items = gpu_plan.build_plan(gc, tmp_path)
    names = [i.name for i in items]
    assert names[:5] == ["matmul peaks (float32, tf32, bfloat16, float16)",
                         "torch resnet20 steps (eager, amp_channels_last, amp_compile)",
                         "torch resnet20 amp_channels_last host synchronisations",
                         "torch resnet50 steps (eager, amp_channels_last, amp_compile)",
                         "torch resnet20 amp_compile training loop"]
    ids = [r["id"] for i in items for r in i.rows]
    assert len(ids) == len(set(ids))
    for model in gpu_plan.CIFAR_MODELS:  # every model of the issue in every variant, step and real loop
        for variant in gpu_plan.TORCH_VARIANTS:
            assert f"torch/{model}/{variant}/step" in ids and f"torch/{model}/{variant}/loop" in ids
    assert {"keras-jax/resnet20/jit_compile/loop", "keras-torch/resnet20/eager/loop"} <= set(ids)
    keras = [i for i in items if i.name.startswith("keras-jax")]
    assert all(i.needs == ("keras", "jax") for i in keras)


def test_loop_flags_are_the_trainers_and_cuda_graphs_only_on_cuda():
    assert bench.catalog.torch_train_flags("amp_compile", "cuda") == [
        "--amp", "--channels-last", "--compile", "--compile-mode", "reduce-overhead"]
    assert bench.catalog.torch_train_flags("amp_compile", "cpu") == ["--amp", "--channels-last", "--compile"]
    assert bench.catalog.torch_train_flags("eager", "cuda") == []
    with pytest.raises(ValueError, match="valid choices: eager"):
        bench.catalog.torch_train_flags("fast", "cuda")


def test_a_child_gets_the_keras_backend_it_asks_for_even_where_the_default_is_missing(monkeypatch):
    """make exports KERAS_BACKEND=tensorflow; on a machine without TensorFlow a keras-jax child must still start."""
    import shared.backends as backends

    real = backends.importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda n: None if n == "tensorflow" else real(n))
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert process.child_env(KERAS_BACKEND="jax")["KERAS_BACKEND"] == "jax"
    with pytest.raises(UserError, match="needs the 'tensorflow' package"):
        process.child_env()


# Host synchronisations --------------------------------------------------------------------------------------
def test_sync_summary_separates_the_planned_reads_from_the_rest():
    # 42 steps; warm-up 2; the trainer reads after every 10th step, counted in the next step (10, 20, 30, 40)
    per_step = [7, 3] + [0] * 40
    for k in (10, 20, 30, 40):
        per_step[k] = 1
    per_step[15] = 2  # two unplanned syncs in step 15
    s = gpu_plan.sync_summary({"per_step": per_step, "check_every": 10, "after_last_step": 4}, warmup=2)
    assert (s["steps"], s["syncs"], s["planned"], s["unplanned"]) == (40, 6, 4, 2)
    assert s["per_step"] == 6 / 40 and s["max_in_a_step"] == 2 and s["warmup_syncs"] == 10
    assert s["histogram"] == {"0": 35, "1": 4, "2": 1}
    with pytest.raises(ValueError, match="starts after step 50"):
        gpu_plan.sync_summary({"per_step": per_step, "check_every": 10}, warmup=50)


# The bound rule -------------------------------------------------------------------------------------------------
def test_the_bound_rule_input_then_launch_then_memory_or_compute():
    step = 4e-3  # seconds
    assert bound.verdict(loop_over_step=0.7, step_s=step, busy_s=step)["bound"] == "input-bound"
    launch = bound.verdict(step_s=step, busy_s=0.3 * step)
    assert launch["bound"] == "launch-bound" and "30% of the step" in launch["why"]
    # busy 90%; 0.242 GFLOP x 128 per step in 3.6 ms = 8.6 TFLOP/s: 1.1% of an 800 TFLOP/s peak
    mem = bound.verdict(step_s=step, busy_s=0.9 * step, flop_per_step=0.242e9 * 128, peak_flops=800e12,
                        peak_name="float16")
    assert mem["bound"] == "memory-bound" and "1% of the float16 peak" in mem["why"]
    comp = bound.verdict(step_s=step, busy_s=step, flop_per_step=0.6 * 800e12 * step, peak_flops=800e12)
    assert comp["bound"] == "compute-bound" and "60%" in comp["why"]
    assert bound.verdict(loop_over_step=0.9, step_s=step)["bound"] is None  # 0.9 is not below; no profile
    assert bound.verdict(step_s=step, busy_s=step)["bound"] is None  # busy, but no FLOPs to compare


def _step(model, variant, train, busy=None, batch=128, precision="float16"):
    return {"id": f"torch/{model}/{variant}/step", "kind": "step", "framework": "torch", "model": model,
            "variant": variant, "batch_size": batch, "precision": precision, "status": "measured",
            "train": bench.summarize([train]), "busy": busy, "flops": {"train": 0.242e9, "forward": 0.081e9}}


def test_derive_and_targets_say_why_a_target_is_missed():
    peak = {"id": "p", "kind": "peak", "precision": "float16", "status": "measured",
            "peak": bench.summarize([800e12])}
    step = _step("resnet20", "amp_compile", 30_000, busy={"busy_s_per_step": 2.0e-3, "kernels_per_step": 640})
    loop = {**step, "id": "torch/resnet20/amp_compile/loop", "kind": "loop", "train": None,
            "loop": {**bench.summarize([27_000]), "with_eval": bench.summarize([25_000])}}
    r50 = {**_step("resnet50", "amp_channels_last", 3_200, batch=256), "flops": {"train": 12.3e9}}
    rows = [peak, step, loop, r50]
    gpu_report.derive(rows)
    step_s = 128 / 30_000
    assert step["busy_share"] == pytest.approx(2.0e-3 / step_s)  # 47%: below 80%
    assert step["verdict"]["bound"] == "launch-bound"
    assert step["compute"]["flops"] == pytest.approx(30_000 * 0.242e9)
    assert step["compute"]["pct_peak"] == pytest.approx(100 * 30_000 * 0.242e9 / 800e12)
    assert loop["loop_over_step"] == pytest.approx(0.9) and loop["verdict"]["bound"] == "launch-bound"
    on_gpu = {t["row"]: t for t in gpu_report.targets(rows, "cuda")}
    missed = on_gpu["torch/resnet20/amp_compile/loop"]
    assert (missed["measured"], missed["met"], missed["bound"]) == (25_000, False, "launch-bound")
    assert missed["why"].startswith("launch-bound: the GPU computes 47% of the step")
    assert on_gpu["torch/resnet50/amp_channels_last/step"]["met"] is True
    on_cpu = gpu_report.targets(rows, "cpu")
    assert [t["met"] for t in on_cpu] == [None, None, None]  # a CPU figure is not held to a GPU target


# The full run's projection ----------------------------------------------------------------------------------------
def test_the_projection_against_a_hand_computation():
    # 25 iterations at batch 4, 10 per epoch: epochs of 10, 10 and 5 iterations; the run took 10 s in all.
    plan = {"iters_per_epoch": 10, "total_iters": 25, "batch_size": 4}
    rows = [{"seconds": 5.0, "images_per_s": 20.0},  # 40 images in 2.0 s of training (compiling), 3.0 s validating
            {"seconds": 1.5, "images_per_s": 40.0},  # 1.0 s training, 0.5 s validating
            {"seconds": 1.0, "images_per_s": 40.0}]  # 20 images: 0.5 s training, 0.5 s validating
    p = full_run.projection(rows, plan, wall_s=10.0)
    # steady: (1.0 + 0.5) s / 15 iterations = 0.1 s per iteration, (0.5 + 0.5) / 2 = 0.5 s per validation pass;
    # one-off: 10 - (25 x 0.1 + 3 x 0.5) = 6 s
    assert (p.t_iter, p.t_val, p.one_off, p.steady_epochs) == pytest.approx((0.1, 0.5, 6.0, 2))
    assert p.wall(25) == pytest.approx(10.0)  # the run itself
    assert p.wall(100) == pytest.approx(6 + 100 * 0.1 + 10 * 0.5)  # = 21 s
    assert p.wall(64_000) == pytest.approx(6 + 6_400 + 6_400 * 0.5)  # = 9,606 s
    one = full_run.projection(rows[:1], {**plan, "total_iters": 10}, wall_s=7.0)
    assert (one.t_iter, one.t_val, one.one_off, one.steady_epochs) == pytest.approx((0.2, 3.0, 2.0, 0))


def test_summary_and_ladder_of_the_full_run():
    assert full_run.ladder(Fraction(1, 64)) == [Fraction(1, 2**k) for k in (6, 5, 4, 3, 2, 1, 0)]
    assert full_run.ladder(Fraction(1, 3)) == [Fraction(1, 3), Fraction(2, 3), 1]
    assert full_run.ladder(Fraction(1)) == [1]
    proj = {"t_iter": 0.1, "t_val": 0.5, "one_off": 6.0, "iters_per_epoch": 10, "steady_epochs": 2}
    run = {"fraction": "1/4", "iters": 25, "status": "measured", "wall_s": 10.0, "projection": proj}
    full = {"total_iters": 100, "batch_size": 4, "iters_per_epoch": 10, "epochs": 10}
    s = full_run.summarize_run([run], full)
    assert s["kind"] == "projected" and s["wall_s"] == pytest.approx(21.0)
    assert s["images_per_s"] == pytest.approx(400 / 21.0)
    assert s["steady_images_per_s_with_eval"] == pytest.approx(400 / (100 * 0.1 + 10 * 0.5))
    assert s["steady_train_images_per_s"] == pytest.approx(40.0)
    whole = {**run, "fraction": "1", "iters": 100, "wall_s": 23.5}
    assert full_run.summarize_run([run, whole], full)["wall_s"] == 23.5  # measured, not projected
    # the next run: the whole recipe is projected at 21 s, x1.15 = 24.15 s
    chosen, passed = full_run.choose_next(run, [Fraction(1, 4), Fraction(1)], 100, remaining_s=24.0)
    assert chosen is None and passed[0]["projected_s"] == pytest.approx(21.0)
    assert full_run.choose_next(run, [Fraction(1, 4), Fraction(1)], 100, remaining_s=24.2)[0] == 1


def test_the_full_run_says_why_from_the_gpu_reports_step(tmp_path):
    peak = {"id": "torch/matmul/float16/peak", "kind": "peak", "precision": "float16", "status": "measured",
            "peak": bench.summarize([800e12])}
    step = _step("resnet20", "amp_compile", 30_000, busy={"busy_s_per_step": 4.0e-3, "kernels_per_step": 9})
    (tmp_path / "gpu-nvidia-h100.json").write_text(json.dumps({"rows": [peak, step]}))
    # 20,000 img/s against a 30,000 img/s step: 0.67x, below 0.9x
    why = full_run.why_from_gpu_report(tmp_path, "nvidia-h100", "resnet20", "amp_compile", 20_000)
    assert why.startswith("input-bound: the real loop runs at 0.67x") and "gpu-nvidia-h100.json" in why
    # at the step's speed, the step's own bound: busy 94% of its 4.27 ms at 7.7 TFLOP/s, 1% of the peak
    why = full_run.why_from_gpu_report(tmp_path, "nvidia-h100", "resnet20", "amp_compile", 30_000)
    assert why.startswith("memory-bound: the GPU computes 94% of the step")
    assert full_run.why_from_gpu_report(tmp_path, "nvidia-h100", "resnet56", "amp_compile", 1.0) is None
    assert full_run.why_from_gpu_report(tmp_path, "cpu", "resnet20", "amp_compile", 1.0) is None


def test_full_run_targets_are_met_missed_or_not_held_on_a_cpu():
    summary = {"kind": "projected", "wall_s": 320.0, "steady_images_per_s_with_eval": 28_000.0}
    rows = full_run.target_rows(summary, cpu=False)
    assert [r[3] for r in rows] == ["missed (projected)", "met (projected)"]
    assert [r[3] for r in full_run.target_rows(summary, cpu=True)] == ["CPU figure: not held to the GPU target"] * 2
    assert rows[0][2] == "320.0 s" and full_run.target_rows(summary, cpu=True)[0][2] == "320.0 s CPU"


# End to end on the CPU ----------------------------------------------------------------------------------------------
def make(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True,
                          timeout=600, env=env)


def _check_complete(report: dict, planned: list[str]) -> None:
    assert report["cpu"] is True and report["device"]["label"] == "cpu"
    assert [r["id"] for r in report["rows"]] == planned  # every planned row, once, in plan order
    for row in report["rows"]:
        assert row["status"] in ("measured", "failed", "not run") and row["device"] == "cpu"
        assert row["status"] == "measured" or row["reason"]


def test_gpu_report_on_a_machine_without_keras_or_onnxruntime_through_make(tmp_path):
    """A tiny budget on the CPU, with SYSTEM_PYTHON=1 and the GPU machine's missing packages blocked."""
    env = blocked_python(tmp_path / "py", GPU_MISSING)
    out = tmp_path / "out"
    proc = make(env, "gpu-report", "SYSTEM_PYTHON=1", f"VENV={tmp_path / 'no-venv'}", "DEVICE=cpu", "BUDGET=6",
                f"OUT={out}", f"DATA_DIR={tmp_path / 'data'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu-cpu.json").read_text())
    planned = [r["id"] for i in gpu_plan.build_plan(GpuConfig(device="cpu", budget_s=6), tmp_path) for r in i.rows]
    _check_complete(report, planned)
    rows = {r["id"]: r for r in report["rows"]}
    for row_id in ("keras-jax/resnet20/jit_compile/step", "keras-torch/resnet20/eager/loop"):
        assert rows[row_id]["status"] == "not run" and rows[row_id]["reason"].startswith("needs keras,")
    assert rows["onnxruntime/resnet50/torch_export/infer"]["reason"].startswith("needs onnxruntime,")
    assert rows["torch/resnet20/amp_channels_last/syncs"]["reason"] == "not applicable on the CPU (CUDA only)"
    assert rows["torch/plain56/amp_compile/loop"]["reason"] == "budget"
    text = (out / "gpu-cpu.md").read_text()
    assert text.startswith("# GPU report, run on the CPU (every figure here is a CPU figure, marked CPU)")
    assert "- `torch/plain56/amp_compile/loop`: not run: budget" in text
    assert "`keras-jax/resnet20/jit_compile/step`: not run: needs keras," in text
    assert not (tmp_path / "no-venv").exists()


def test_full_run_with_a_budget_too_small_for_any_run_says_so_through_make(tmp_path):
    env = blocked_python(tmp_path / "py", GPU_MISSING)
    proc = make(env, "gpu-full-run", "SYSTEM_PYTHON=1", f"VENV={tmp_path / 'no-venv'}", "DEVICE=cpu", "BUDGET=1",
                f"OUT={tmp_path / 'out'}", f"DATA_DIR={tmp_path / 'data'}", "FRACTION=1/32000", "MODEL=resnet8",
                "GPU_ARGS=--dataset synthetic --variant eager")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr  # no figure: the command fails, cleanly
    report = json.loads((tmp_path / "out" / "full-run-cpu.json").read_text())
    assert report["cpu"] and report["summary"] == {"kind": "none", "wall_s": None}
    assert [(r["fraction"], r["status"], r["iters"]) for r in report["runs"]] == [("1/32000", "failed", 2)]
    assert "stopped at the budget's deadline" in report["runs"][0]["reason"]
    text = (tmp_path / "out" / "full-run-cpu.md").read_text()
    assert "run on the CPU" in text and "**No run finished**" in text


def test_onnxruntime_row_without_onnxscript_uses_the_torchscript_exporter(tmp_path, monkeypatch):
    """A GPU machine has no onnxscript: the ONNX Runtime row still runs (the exporter falls back), not a crash."""
    monkeypatch.setenv("PYTHONPATH", blocked_env(tmp_path / "py", ("onnxscript", "tensorflow", "keras"))["PYTHONPATH"])
    gc = GpuConfig(device="cpu", budget_s=600, iters=1, repeats=2, warmup=1, min_time=0.0, echo=False)
    item = gpu_plan.onnxruntime_item(gc, tmp_path, "resnet8", 2)
    assert item.rows[0]["command"].startswith("python -m pytorch_impl.bench --model resnet8 --device cpu --variants ''")
    [row] = item.run(600)
    assert row["status"] == "measured" and row["infer"]["n"] == 2 and row["infer"]["median"] > 0, row["reason"]
    assert row["provider"] == "cpu" and row["info"]["export_s"] > 0
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "resnet8.onnx")).metadata_props}
    assert "torchscript" in meta["exporter"]  # onnxscript was out of reach in the export process


@pytest.mark.parametrize("args,message", [
    (["--first-fraction", "2"], "--first-fraction must be in (0, 1]; got 2"),
    (["--first-fraction", "x"], "--first-fraction must be a fraction such as 1/64"),
    (["--variant", "turbo"], "unknown torch variant 'turbo'; valid choices: eager"),
    (["--dataset", "cifar10"], "unknown --dataset 'cifar10'; valid choices: synthetic, synthetic_cifar"),
])
def test_full_run_bad_arguments_are_one_line_errors(args, message, tmp_path):
    proc = run_module("shared.bench.full_run", *args, "--out", tmp_path, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args,message", [
    (["--variants", "eager,turbo"], "unknown torch variant 'turbo'; valid choices: eager"),
    (["--keras-backends", "mxnet"], "unknown Keras backend 'mxnet'; valid choices: tensorflow, jax, torch"),
    (["--models", "resnet21"], "unknown model 'resnet21'"),
    (["--loop-epochs", "1"], "--loop-epochs must be >= 2"),
    (["--budget", "0"], "--budget must be seconds > 0; got 0"),
    (["--device", "tpu"], "unknown device 'tpu'; valid choices: cpu, cuda"),
])
def test_gpu_report_bad_arguments_are_one_line_errors(args, message, tmp_path):
    proc = run_module("shared.bench.gpu", *args, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_gpu_report_measures_the_first_rows_on_the_cpu(tmp_path):
    """A budget that allows the first items of a small plan: their rows have figures, the rest say budget."""
    env = blocked_env(tmp_path / "py", GPU_MISSING)
    out = tmp_path / "out"
    run_module("shared.bench.gpu", "--device", "cpu", "--budget", "150", "--out", out, "--data-dir",
               tmp_path / "data", "--models", "resnet8", "--variants", "eager", "--dataset", "synthetic",
               "--batch-size", "50", "--imagenet-batch-size", "1", "--loop-epochs", "2", "--iters", "1",
               "--repeats", "2", "--warmup", "1", "--min-time", "0", env=env, timeout=900)
    report = json.loads((out / "gpu-cpu.json").read_text())
    rows = {r["id"]: r for r in report["rows"]}
    peak = rows["torch/matmul/float32/peak"]
    assert peak["status"] == "measured" and peak["peak"]["n"] == 2048 and peak["peak"]["median"] > 0
    step = rows["torch/resnet8/eager/step"]
    assert step["status"] == "measured" and step["train"]["n"] == 2 and "infer" not in step
    assert step["compute"]["flops"] == pytest.approx(step["train"]["median"] * step["flops"]["train"])
    assert step["command"].startswith("python -m pytorch_impl.bench --model resnet8 --device cpu --variants eager")
    loop = rows["torch/resnet8/eager/loop"]
    if loop["status"] == "measured":  # a loaded machine may spend the budget before it
        assert loop["loop"]["epochs"] == 2 and loop["loop_over_step"] == pytest.approx(
            loop["loop"]["median"] / step["train"]["median"])
        assert "--dataset synthetic" in loop["command"]
    assert report["rows"][-1]["status"] == "not run"  # the budget ran out before the end of the plan
    line = next(ln for ln in (out / "gpu-cpu.md").read_text().splitlines() if ln.startswith("| resnet8 | eager |"))
    assert f"{step['train']['median']:.3g} (" in line and " CPU |" in line


@pytest.mark.slow
def test_full_run_projects_the_recipe_from_a_tiny_fraction_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    run_module("shared.bench.full_run", "--device", "cpu", "--budget", "240", "--out", out, "--data-dir",
               tmp_path / "data", "--dataset", "synthetic", "--model", "resnet8", "--batch-size", "100",
               "--variant", "eager", "--first-fraction", "1/1600", timeout=900)
    report = json.loads((out / "full-run-cpu.json").read_text())
    first = report["runs"][0]
    assert (first["fraction"], first["iters"], first["status"]) == ("1/1600", 40, "measured")
    assert len(first["epochs"]) == 2  # 20 iterations per epoch
    best = max((r for r in report["runs"] if r["status"] == "measured"), key=lambda r: Fraction(r["fraction"]))
    # the projection again, by hand, from the JSON's own epochs and wall time
    plan, rows = best["plan"], best["epochs"]
    iters = [min(20, plan["total_iters"] - 20 * e) for e in range(len(rows))]
    train = [n * 100 / r["images_per_s"] for n, r in zip(iters, rows, strict=True)]
    t_iter = sum(train[1:]) / sum(iters[1:])
    t_val = sum(r["seconds"] - t for r, t in zip(rows[1:], train[1:], strict=True)) / (len(rows) - 1)
    one_off = best["wall_s"] - sum(iters) * t_iter - len(rows) * t_val
    expected = one_off + 64_000 * t_iter + math.ceil(64_000 / 20) * t_val
    assert report["summary"]["kind"] == "projected"
    assert report["summary"]["wall_s"] == pytest.approx(expected, rel=1e-9)
    text = (out / "full-run-cpu.md").read_text()
    assert f"**PROJECTED, not measured: {expected:,.1f} s CPU for the whole recipe**" in text
    assert Path(out / "full-run-cpu.md").is_file()
