"""The benchmark: statistics, ratios, timing loops and failure reporting without any framework,
and a tiny end-to-end bench through the real CLI (each framework in its own process)."""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
import types

import pytest

from shared import bench
from shared.bench import TimingPlan, Workload, catalog, flops, report
from shared.bench import loops as bench_loops
from shared.bench import run as bench_run
from tests.conftest import run_module


# Statistics and ratios ------------------------------------------------------------------------
def test_summarize_gives_median_spread_and_quartiles():
    s = bench.summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s["median"], s["min"], s["max"], s["q1"], s["q3"], s["n"]) == (3.0, 1.0, 5.0, 2.0, 4.0, 5)
    even = bench.summarize([10.0, 30.0])
    assert (even["median"], even["q1"], even["q3"]) == (20.0, 15.0, 25.0)
    one = bench.summarize([7.5])
    assert one["median"] == one["min"] == one["max"] == one["q1"] == one["q3"] == 7.5


@pytest.mark.parametrize("values", [[], [1.0, 0.0], [1.0, -2.0], [float("nan")], [float("inf"), 1.0]])
def test_summarize_rejects_empty_and_non_positive_or_non_finite(values):
    with pytest.raises(ValueError):
        bench.summarize(values)


def test_ratios_are_row_median_over_torch_eager_median():
    def row(fw, variant, train, infer, provider=None):
        r = {"framework": fw, "variant": variant, "train": train, "infer": infer}
        return {**r, "provider": provider} if provider else r

    rows = [
        row("keras-jax", "jit_compile", bench.summarize([300.0]), bench.summarize([900.0])),
        row("torch", "eager", bench.summarize([100.0, 200.0, 150.0]), bench.summarize([600.0])),
        row("torch", "compile", {"error": "RuntimeError: no compiler"}, bench.summarize([1200.0])),
        row("onnxruntime", "torch_export", None, bench.summarize([300.0]), provider="cpu"),
    ]
    bench.add_ratios(rows)
    assert rows[0]["ratio"] == {"train": 2.0, "infer": 1.5}
    assert rows[1]["ratio"] == {"train": 1.0, "infer": 1.0}
    assert rows[2]["ratio"] == {"train": None, "infer": 2.0}  # a failed figure has no ratio
    assert rows[3]["ratio"] == {"train": None, "infer": 0.5}  # not applicable: no ratio


def test_no_ratio_without_a_measured_baseline():
    rows = [{"framework": "torch", "variant": "eager", "train": {"error": "x"}, "infer": {"error": "x"}},
            {"framework": "keras", "variant": "graph", "train": bench.summarize([5.0]), "infer": None}]
    bench.add_ratios(rows)
    assert rows[1]["ratio"] == {"train": None, "infer": None}


def test_parse_variants(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert bench.parse_variants("all") == {fw: list(v) for fw, v in bench.VARIANTS.items()}
    chosen = bench.parse_variants("torch:compile,keras,torch:compile,keras-jax:eager,onnxruntime:keras_export")
    assert chosen == {"torch": ["compile"], "keras-tensorflow": list(bench.VARIANTS["keras-tensorflow"]),
                      "keras-jax": ["eager"], "onnxruntime": ["keras_export"]}
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # keras = the backend BACKEND / KERAS_BACKEND names
    assert bench.parse_variants("keras:jit_compile") == {"keras-torch": ["jit_compile"]}
    with pytest.raises(ValueError, match="unknown framework 'jax'.*keras, torch, keras-tensorflow, keras-jax"):
        bench.parse_variants("jax")
    with pytest.raises(ValueError, match="unknown torch variant 'xla'.*eager, channels_last"):
        bench.parse_variants("torch:xla")
    with pytest.raises(ValueError, match="unknown keras-jax variant 'graph'; valid choices: jit_compile, eager"):
        bench.parse_variants("keras-jax:graph")


def test_frameworks_select_the_step_each_training_loop_runs():
    chosen = bench.parse_frameworks("keras-torch,torch,keras-jax,keras-tensorflow,onnxruntime")
    assert chosen == {"keras-torch": ["eager"], "torch": ["eager"], "keras-jax": ["jit_compile"],
                      "keras-tensorflow": ["graph"], "onnxruntime": ["torch_export", "keras_export"]}
    merged = catalog.merge(chosen, bench.parse_variants("torch:compile"))
    assert list(merged) == ["torch", "keras-tensorflow", "keras-jax", "keras-torch", "onnxruntime"]
    assert merged["torch"] == ["eager", "compile"]
    with pytest.raises(ValueError, match="no framework"):
        bench.parse_frameworks(",")


def test_loop_ratios_and_which_loops_are_profiled():
    loops = {"torch": bench.summarize([300.0, 320.0]), "keras-tensorflow": bench.summarize([200.0]),
             "keras-jax": bench.summarize([100.0]), "keras-torch": {"error": "RuntimeError: x"}}
    steps = {"torch": bench.summarize([310.0]), "keras-tensorflow": bench.summarize([210.0]),
             "keras-jax": bench.summarize([200.0])}
    best = bench_loops.add_loop_ratios(loops, steps)
    assert best == {"label": "keras-tensorflow", "ratio": pytest.approx(200 / 310)}
    assert loops["keras-jax"]["ratio_to_step"] == 0.5 and loops["keras-torch"]["ratio_to_step"] is None
    # jax misses its own step; the best Keras loop misses 0.8x torch, so it and torch are profiled too
    assert bench_loops.missed(loops, best) == ["keras-jax", "keras-tensorflow", "torch"]
    loops["keras-tensorflow"] = bench.summarize([300.0])
    best = bench_loops.add_loop_ratios(loops, steps)
    assert bench_loops.missed(loops, best) == ["keras-jax"]


def test_profile_table_names_where_the_time_goes(tmp_path):
    import cProfile

    def busy() -> float:
        return sum(i * i for i in range(300_000))

    def idle() -> None:
        time.sleep(0.01)

    prof = tmp_path / "p.prof"
    cProfile.runctx("busy(); idle()", {}, {"busy": busy, "idle": idle}, filename=str(prof))
    table = bench_loops.profile_table(prof, rows=3)
    names = [e["function"] for e in table["entries"]]
    assert any("(<genexpr>)" in n or "(busy)" in n for n in names[:2]), names
    assert table["entries"][0]["own_s"] >= table["entries"][1]["own_s"] > 0
    assert 0 < sum(e["own_pct"] for e in table["entries"]) <= 100.0 + 1e-9


def test_compute_columns_use_the_flop_count_and_the_measured_peak():
    rows = [{"framework": "torch", "variant": "eager", "train": bench.summarize([100.0]),
             "infer": bench.summarize([1000.0])}, {"framework": "x", "variant": "y", "train": None,
                                                   "infer": {"error": "e"}}]
    peak = bench.summarize([200e9])  # FLOP/s
    flops.add_compute(rows, {"forward": 0.081e9, "train": 0.242e9}, peak)
    assert rows[0]["compute"]["train"] == {"gflops": pytest.approx(24.2), "pct_peak": pytest.approx(12.1)}
    assert rows[0]["compute"]["infer"] == {"gflops": pytest.approx(81.0), "pct_peak": pytest.approx(40.5)}
    assert rows[1]["compute"] == {}
    assert flops.matmul_flops(2048) == 2 * 2048**3


def test_first_line_names_the_error_type():
    assert bench.first_line(RuntimeError("inductor failed\n  long traceback\n")) == "RuntimeError: inductor failed"
    assert bench.first_line(KeyError()) == "KeyError"
    assert bench.first_line("\n  XlaRuntimeError: bad\nmore") == "XlaRuntimeError: bad"


def test_settings_reject_non_positive_counts():
    with pytest.raises(ValueError, match="iters must be an integer >= 1; got 0"):
        TimingPlan(iters=0)


# Timing loops on steps of known duration -------------------------------------------------------
def test_throughput_and_latency_time_known_sleeps():
    calls = []

    def step():
        calls.append(1)
        time.sleep(0.3 if len(calls) == 1 else 0.02)  # the first call stands for compilation

    s = TimingPlan(batch_size=8, iters=3, repeats=2, warmup=2, latency_iters=3)
    values, first, steps = bench.time_throughput(step, lambda: None, s, images_per_step=8)
    assert steps == s.iters  # min_time 0: exactly iters
    assert len(calls) == s.warmup + s.iters * s.repeats
    assert first >= 0.3
    assert len(values) == 2 and all(250 < v <= 8 / 0.02 for v in values)  # 400 img/s at most
    calls.clear()
    values, _, _ = bench.time_latency(step, lambda: None, s)
    assert len(calls) == s.warmup + s.latency_iters * s.repeats
    assert all(20 <= v < 80 for v in values)  # milliseconds per call


def test_blocks_grow_to_the_minimum_time_and_say_how_many_steps_they_timed(monkeypatch):
    """On a clock that each step moves by exactly 5 ms (a GPU's ResNet-20 step), blocks grow from 3 steps to the
    first size that lasts 0.25 s, aimed 10% over."""
    from shared.bench import timing

    clock, calls = [0.0], []
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def step():
        calls.append(1)
        clock[0] += 0.005

    s = TimingPlan(batch_size=4, iters=3, repeats=2, warmup=1, latency_iters=1, min_time=0.25)
    values, _, steps = bench.time_throughput(step, lambda: None, s, images_per_step=4)
    grown = math.ceil(3 * 1.1 * 0.25 / 0.015)  # the 3-step trial lasted 15 ms; 55 in exact arithmetic, 56 in float
    assert steps == grown and steps * 0.005 >= s.min_time
    assert values == pytest.approx([4 / 0.005] * s.repeats)  # each block: `steps` steps of exactly 5 ms
    trial = len(calls) - s.warmup - s.repeats * steps  # the untimed trial blocks that found `steps`
    assert trial == 3 + grown
    row = bench.measure_workload(lambda: Workload(step, step, step), s)
    assert row["steps"]["train"] >= 50 and row["steps"]["latency_ms"] == 1
    with pytest.raises(ValueError, match="min_time must be seconds between 0 and 600; got -1"):
        TimingPlan(min_time=-1)


def test_sync_is_called_around_timed_blocks():
    events = []
    s = TimingPlan(batch_size=1, iters=2, repeats=2, warmup=1, latency_iters=1)
    bench.time_throughput(lambda: events.append("step"), lambda: events.append("sync"), s, 1)
    block = ["sync"] + ["step"] * s.iters + ["sync"]  # each timed block starts and ends synchronized
    assert events[-len(block) * s.repeats:] == block * s.repeats
    assert events.count("step") == s.warmup + s.iters * s.repeats


def test_measure_workload_keeps_failures_with_their_reason():
    cleaned = []

    def bad_infer():
        raise RuntimeError("XLA compilation failed\ndetails")

    work = Workload(lambda: time.sleep(0.001), bad_infer, lambda: time.sleep(0.001),
                    cleanup=lambda: cleaned.append(True))
    row = bench.measure_workload(lambda: work, TimingPlan(batch_size=4, iters=1, repeats=2, warmup=1,
                                                        latency_iters=2))
    assert bench.is_measured(row["train"]) and bench.is_measured(row["latency_ms"])
    assert row["infer"] == {"error": "RuntimeError: XLA compilation failed"}
    assert row["error"] == "RuntimeError: XLA compilation failed" and cleaned == [True]

    def cannot_build():
        raise ImportError("torch.compile needs a C++ compiler")

    row = bench.measure_workload(cannot_build, TimingPlan())
    assert all(row[m] == {"error": "ImportError: torch.compile needs a C++ compiler"} for m in bench.METRICS)


def test_inference_only_workload_leaves_training_not_applicable():
    work = Workload(None, lambda: None, lambda: None)
    row = bench.measure_workload(lambda: work, TimingPlan(batch_size=2, iters=1, repeats=1, warmup=1,
                                                        latency_iters=1))
    assert row["train"] is None and row["error"] is None and bench.is_measured(row["infer"])


def test_a_crashed_framework_process_keeps_done_rows_and_fails_the_rest(tmp_path, monkeypatch):
    script = (
        "import json, sys; out = sys.argv[1]; "
        "json.dump({'framework': 'torch', 'rows': [{'framework': 'torch', 'variant': 'eager', 'error': None}]}, "
        "open(out, 'w')); sys.stderr.write('loading...\\nRuntimeError: out of memory\\n'); sys.exit(3)"
    )
    monkeypatch.setattr(bench_run, "worker_command", lambda fw, cfg, variants, json_out: [
        sys.executable, "-c", script, str(json_out)])
    cfg = bench.BenchConfig("resnet8", "cpu", TimingPlan(), {}, tmp_path, echo=False)
    result = bench.run_framework("torch", cfg, ["eager", "compile"], tmp_path)
    assert [r["variant"] for r in result["rows"]] == ["eager", "compile"]
    assert result["rows"][0]["error"] is None
    reason = result["rows"][1]["error"]
    assert reason == "process exited with code 3: RuntimeError: out of memory"
    assert all(result["rows"][1][m] == {"error": reason} for m in bench.METRICS)


def test_markdown_table_shows_failures_and_not_applicable():
    rows = [
        {"framework": "torch", "variant": "eager", "train": bench.summarize([100.0, 120.0]),
         "infer": bench.summarize([400.0]), "latency_ms": bench.summarize([2.0]), "first_call_s": {"train": 0.5},
         "error": None},
        {"framework": "torch", "variant": "compile", "train": {"error": "E: a|b"}, "infer": {"error": "E: a|b"},
         "latency_ms": {"error": "E: a|b"}, "first_call_s": {}, "error": "E: a|b"},
        {"framework": "onnxruntime", "variant": "torch_export", "provider": "cpu", "train": None,
         "infer": bench.summarize([800.0]), "latency_ms": bench.summarize([1.0]), "first_call_s": {},
         "error": None},
    ]
    bench.add_ratios(rows)
    lines = report.markdown_table({"rows": rows}).splitlines()
    assert "| torch | eager | 110.0 (100.0–120.0) | 400.0 (400.0–400.0) | 2.00 (2.00–2.00) | 1.00× | 1.00× |" \
        in lines[2]
    assert "| failed | failed | failed |" in lines[3] and "failed: E: a\\|b" in lines[3]
    assert lines[4].startswith("| onnxruntime | torch_export (cpu) | n/a | 800.0") and "| — | 2.00× |" in lines[4]


# The real CLI -----------------------------------------------------------------------------------
def _check_report(report: dict, expected: dict[str, list[str]]) -> None:
    assert report["model"] == "resnet8" and report["device"] == "cpu"
    m = report["machine"]
    assert m["cpu"] and m["cores"] >= 1 and "gpu" in m
    assert len(m["load_average"]["start"]) == len(m["load_average"]["end"]) == 3
    for lib in ("torch", "tensorflow", "keras", "onnxruntime"):
        assert m["versions"][lib]
    assert report["settings"]["batch_size"] == 4 and report["settings"]["repeats"] == 2
    got = [(r["framework"], r["variant"]) for r in report["rows"] if r.get("provider") in (None, "cpu")]
    assert got == [(fw, v) for fw, vs in expected.items() for v in vs]
    base = next(r for r in report["rows"] if (r["framework"], r["variant"]) == ("torch", "eager"))
    for row in report["rows"]:
        if row["framework"] == "onnxruntime":
            assert row["train"] is None and row["ratio"]["train"] is None
        for metric in bench.METRICS:
            fig = row[metric]
            if fig is None:
                continue
            if "error" in fig:  # a failed figure carries a reason
                assert isinstance(fig["error"], str) and fig["error"].strip() and row["error"]
                continue
            assert fig["n"] == 2 and len(fig["values"]) == 2
            for key in ("median", "min", "max", "q1", "q3"):
                assert math.isfinite(fig[key]) and fig[key] > 0, (row["variant"], metric, key)
            assert fig["min"] <= fig["median"] <= fig["max"]
        for metric in ("train", "infer"):
            if bench.is_measured(row[metric]) and bench.is_measured(base[metric]):
                assert row["ratio"][metric] == pytest.approx(row[metric]["median"] / base[metric]["median"])
    assert base["ratio"] == {"train": 1.0, "infer": 1.0}


def test_tiny_bench_through_the_cli(tmp_path):
    variants = "torch:eager,torch:channels_last,torch:autocast,keras:eager,keras:graph,onnxruntime"
    proc = run_module("shared.bench", "--model", "resnet8", "--device", "cpu", "--batch-size", "4",
                      "--iters", "2", "--repeats", "2", "--warmup", "1", "--latency-iters", "2", "--min-time", "0.05",
                      "--variants", variants, "--loop-epochs", "0", "--out", tmp_path, timeout=600,
                      env={"KERAS_BACKEND": "tensorflow"})
    md, js = tmp_path / "bench-resnet8-cpu.md", tmp_path / "bench-resnet8-cpu.json"
    report = json.loads(js.read_text())
    expected = {"torch": ["eager", "channels_last", "autocast"], "keras-tensorflow": ["eager", "graph"],
                "onnxruntime": ["torch_export", "keras_export"]}
    _check_report(report, expected)
    # The fast paths this machine supports are measured, not failed (ONNX Runtime needs the exporters); bf16 autocast
    # on a CPU without native bf16 is a row that says why it did not run.
    from shared.bench.run import NO_BF16
    from shared.machine import cpu_has_bf16

    for row in report["rows"]:
        if row["variant"] == "autocast" and not cpu_has_bf16():
            assert row["error"] == NO_BF16
            continue
        assert row["error"] is None, (row["framework"], row["variant"], row["error"])
        assert row["steps"]["infer"] >= 2 and row["steps"].get("latency_ms") == 2  # >= --iters, reported
    assert report["settings"]["min_time"] == 0.05
    text = md.read_text()
    assert "| Framework | Variant | Train img/s |" in text and f"{report['machine']['cores']} CPU cores" in text
    assert report["flops"]["forward"] > 0 and report["peak"]["median"] > 0  # counted and timed in this run
    assert all(r["compute"]["infer"]["gflops"] > 0 for r in report["rows"] if r["error"] is None)
    assert sum(line.startswith("|") for line in proc.stdout.splitlines()) == 2 + len(report["rows"])  # printed
    assert f"wrote {md}" in proc.stdout


def _loops_through_the_cli(tmp_path, labels: tuple[str, ...]) -> tuple[dict, dict[str, float]]:
    run_module("shared.bench", "--model", "resnet8", "--device", "cpu", "--batch-size", "250", "--iters", "1",
               "--repeats", "2", "--warmup", "1", "--latency-iters", "1", "--min-time", "0",
               "--frameworks", ",".join(labels), "--loop-epochs", "2", "--no-profile", "--data-dir", tmp_path / "data",
               "--out", tmp_path, timeout=900)
    report = json.loads((tmp_path / "bench-resnet8-cpu.json").read_text())
    steps = {r["framework"]: r["train"]["median"] for r in report["rows"]}
    for label in labels:
        loop = report["loops"][label]
        assert loop["epochs"] == 2 and loop["n"] == 1 and loop["median"] > 0  # epoch 2 only: epoch 1 traces
        assert loop["ratio_to_step"] == pytest.approx(loop["median"] / steps[label])
        assert loop["compute"]["gflops"] == pytest.approx(loop["median"] * report["flops"]["train"] / 1e9)
    return report, steps


def test_the_torch_training_loop_beside_its_step_through_the_cli(tmp_path):
    report, _ = _loops_through_the_cli(tmp_path, ("torch",))
    assert [(r["framework"], r["variant"]) for r in report["rows"]] == [("torch", "eager")]
    assert "## Training loops" in (tmp_path / "bench-resnet8-cpu.md").read_text()


@pytest.mark.slow
def test_training_loops_beside_their_steps_through_the_cli(tmp_path):
    report, _ = _loops_through_the_cli(tmp_path, ("torch", "keras-jax"))
    got = [(r["framework"], r["variant"]) for r in report["rows"]]
    assert got == [("torch", "eager"), ("keras-jax", "jit_compile")]
    best = report["best_keras_loop"]
    assert best["label"] == "keras-jax"
    assert best["ratio"] == pytest.approx(report["loops"]["keras-jax"]["median"] / report["loops"]["torch"]["median"])
    text = (tmp_path / "bench-resnet8-cpu.md").read_text()
    assert "## Training loops" in text and "| keras-jax |" in text and "Best Keras training loop: keras-jax" in text


@pytest.mark.slow
def test_tiny_bench_every_variant(tmp_path):
    run_module("shared.bench", "--model", "resnet8", "--device", "cpu", "--batch-size", "4", "--iters", "2",
               "--repeats", "2", "--warmup", "1", "--latency-iters", "2", "--min-time", "0", "--out", tmp_path,
               "--loop-epochs", "0", timeout=1800, env={"KERAS_BACKEND": "tensorflow"})
    report = json.loads((tmp_path / "bench-resnet8-cpu.json").read_text())
    _check_report(report, {fw: list(v) for fw, v in bench.VARIANTS.items()})


@pytest.mark.parametrize("args,message", [
    (["--variants", "torch:xla"], "unknown torch variant 'xla'; valid choices: eager, channels_last"),
    (["--iters", "0"], "iters must be an integer >= 1; got 0"),
    (["--model", "resnet21"], "unknown model 'resnet21'"),
    (["--device", "tpu"], "unknown device 'tpu'; valid choices: cpu, cuda"),
])
def test_bad_arguments_are_one_line_errors(args, message, tmp_path):
    proc = run_module("shared.bench", *args, "--out", tmp_path, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine may have a GPU")
def test_cuda_requested_without_cuda_is_a_clear_error(tmp_path):
    proc = run_module("shared.bench", "--device", "cuda", "--out", tmp_path, check=False)
    assert proc.returncode == 2 and "device 'cuda' requested but PyTorch sees no CUDA device" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("has_bf16", [False, True])
def test_bf16_variants_are_not_run_on_a_cpu_that_would_emulate_bf16(monkeypatch, has_bf16):
    """Emulated bf16 measured 0.07-0.08x float32: on such a CPU the autocast / mixed_precision variants get a row
    saying why instead of a misleading figure; with native bf16 (or on a GPU) they run."""
    from types import SimpleNamespace

    from shared.bench import run

    monkeypatch.setattr(run, "cpu_has_bf16", lambda: has_bf16)
    for device in ("cpu", "cuda"):
        rows: list = []
        kept = run.without_emulated_bf16("torch", SimpleNamespace(device=device),
                                         ["eager", "autocast", "compile"], rows)
        emulated = device == "cpu" and not has_bf16
        assert kept == (["eager", "compile"] if emulated else ["eager", "autocast", "compile"])
        assert [(r["variant"], r["error"].startswith("not run: this CPU has no native bf16")) for r in rows] == (
            [("autocast", True)] if emulated else [])
        rows.clear()
        kept = run.without_emulated_bf16("keras-jax", SimpleNamespace(device=device), ["mixed_precision"], rows)
        assert kept == ([] if emulated else ["mixed_precision"]) and len(rows) == int(emulated)
