"""make bench-data: the report's verdict and table, and (slow) the whole command on a small CIFAR-10 fixture."""

from __future__ import annotations

import json

import pytest

from datasets import cifar
from datasets.bench import render, verdict
from datasets.fixtures import write_cifar10_python


def test_verdict_compares_pipeline_with_training():
    pipes = [{"framework": "torch", "train": True, "images_per_s": 5000.0},
             {"framework": "keras", "train": True, "images_per_s": 50.0}]
    training = [{"framework": "torch", "images_per_s": 400.0}, {"framework": "keras", "images_per_s": 300.0}]
    text = verdict(pipes, training)
    assert "torch: the augmenting pipeline delivers 5,000 images/s against 400" in text and "(keeps up)" in text
    assert "keras: the augmenting pipeline delivers 50 images/s against 300" in text and "DOES NOT keep up" in text
    assert verdict(pipes, []) == "Training throughput not measured: no verdict."
    report = {"data": "d", "batch_size": 128, "batches": 3, "cpu": "c", "cores": 2, "load_average": [0, 0, 0],
              "pipelines": pipes, "training": training, "verdict": text}
    md = render(report)
    assert "| torch | train (shuffle + pad/crop/flip + normalize) | 5,000 | 400 | 12x |" in md


@pytest.mark.slow
def test_bench_data_command(tmp_path, run):
    write_cifar10_python(tmp_path, 100, 50)
    cifar.prepare(tmp_path, "cifar10", val_size=100, download=False)  # 400 training images
    out = tmp_path / "bench"
    proc = run("datasets.bench", "--data-dir", tmp_path, "--batches", "5", "--skip-training", "--out", out)
    assert "wrote" in proc.stdout
    report = json.loads((out / "data.json").read_text())
    assert "CIFAR-10 prepared in" in report["data"]
    assert sorted((p["framework"], p["train"]) for p in report["pipelines"]) == [
        ("keras", False), ("keras", True), ("torch", False), ("torch", True), ("torch", True)]
    assert [p["threads_requested"] for p in report["pipelines"] if p["framework"] == "torch"] == [None, 1, None]
    for p in report["pipelines"]:  # 400 images: 3 full batches per epoch when training, 3 + 16 images in eval
        assert p["images_per_s"] > 0 and p["batch_size"] == 128
        assert p["images"] == (5 * 128 if p["train"] else 128 + 128 + 16 + 128 + 128)
    assert (out / "data.md").read_text().startswith("# Input pipeline throughput")
