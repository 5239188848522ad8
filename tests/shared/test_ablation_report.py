"""The ablation table and plots from hand-made run folders (fixtures in tmp dirs, not results)."""

import json

import pytest
from matplotlib.image import imread

from shared.ablation.report import (
    best_epoch,
    build_report,
    curve_lines,
    findings,
    format_seconds,
    summarize_run,
    write_report,
)
from shared.runs import write_metrics
from shared.spec import get_spec
from tests.oracles import CIFAR, IMAGENET
from tests.shared.ablation_fixtures import write_run


def test_params_are_counted_from_the_weight_file(tmp_path):
    row, _ = summarize_run(write_run(tmp_path / "r20", get_spec("resnet20"), "torch", [0.3, 0.5]))
    assert row["params"] == CIFAR["resnet20"]
    row, _ = summarize_run(write_run(tmp_path / "p20", get_spec("plain20"), "keras", [0.3]))
    assert row["params"] == CIFAR["resnet20"]  # option A: the plain twin has the same count
    row, _ = summarize_run(write_run(tmp_path / "r34", get_spec("resnet34"), "torch", [0.3]))
    assert (row["params"], row["non_trainable"]) == IMAGENET["resnet34"]
    row, _ = summarize_run(write_run(tmp_path / "r50", get_spec("resnet50", num_classes=2), "keras", [0.3]))
    assert row["params"] == IMAGENET["resnet50"][0] - 2048 * 998 - 998  # 2-class head instead of 1000


def test_best_val_acc_is_the_first_maximum_of_metrics():
    rows = [{"epoch": e, "val_acc": v} for e, v in zip((1, 2, 3, 4), (0.2, 0.6, 0.6, 0.5))]
    assert best_epoch(rows) == (0.6, 2)
    assert best_epoch([]) is None


def test_inconsistent_run_folder_is_refused(tmp_path):
    run = write_run(tmp_path / "r", get_spec("resnet20"), "torch", [0.3, 0.5])
    write_metrics(run, [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.1, "val_loss": 1.0, "val_acc": 0.9,
                         "lr": 0.1, "seconds": 1.0, "images_per_s": 1.0}])
    with pytest.raises(ValueError, match="differs from results.json"):
        summarize_run(run)


def test_findings_follow_the_table():
    def row(model, acc):
        spec = get_spec(model)
        return {"model": model, "framework": "torch", "layout": spec.layout, "depth": spec.depth,
                "finished": True, "best_val_acc": acc}

    out = findings([row("plain20", 0.90), row("plain56", 0.85), row("resnet20", 0.91), row("resnet56", 0.93)])
    assert "torch: plain-56 is worse than plain-20 (best val error 15.00% vs 10.00%)" in out
    assert "torch: residual-56 is better than residual-20 (best val error 7.00% vs 9.00%)" in out
    assert "torch: residual-56 is better than plain-56 (best val error 7.00% vs 15.00%)" in out
    assert "torch: residual-20 is better than plain-20 (best val error 9.00% vs 10.00%)" in out


def test_format_seconds():
    assert (format_seconds(42.12), format_seconds(125), format_seconds(3723.4)) == ("42.1s", "2m05s", "1h02m03s")


def test_report_files_from_fixture_runs(tmp_path):
    runs = tmp_path / "runs"
    accs = {"plain20": [0.2, 0.4, 0.35], "resnet20": [0.3, 0.5, 0.6], "plain56": [0.1, 0.3, 0.3],
            "resnet56": [0.3, 0.55, 0.7]}
    cells = []
    for model, val in accs.items():
        for fw in ("torch", "keras"):
            write_run(runs / f"{model}-{fw}", get_spec(model), fw, val, test_acc=val[-1] - 0.01)
            cells.append((model, fw, runs / f"{model}-{fw}"))
    cells.append(("plain110", "torch", None))  # a cell that never ran
    report, curves = build_report(cells, dataset="synthetic", epochs=3, seed=0, batch_size=None,
                                  hardware=["CPU: test CPU (2 cores), no GPU"], git_commit="abc",
                                  generated="now", paper="the paper says")
    paths = write_report(report, curves, tmp_path / "out", "ablation-cifar10-synthetic")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "ablation-cifar10-synthetic.md", "ablation-cifar10-synthetic.json",
        "ablation-cifar10-synthetic-error.png", "ablation-cifar10-synthetic-loss.png"}
    data = json.loads(paths["json"].read_text())
    assert data["synthetic"] is True and data["complete"] is False and data["epochs"] == 3
    by_cell = {(r["model"], r["framework"]): r for r in data["cells"]}
    assert by_cell[("plain110", "torch")]["status"] == "missing"
    r = by_cell[("resnet56", "keras")]
    assert (r["best_val_acc"], r["best_epoch"], r["test_acc"], r["params"]) == (0.7, 3, 0.69, CIFAR["resnet56"])
    assert by_cell[("plain20", "torch")]["best_epoch"] == 2
    md = paths["md"].read_text()
    assert "synthetic data" in md and "Epochs per cell: **3**" in md and "CPU: test CPU (2 cores), no GPU" in md
    assert "| resnet56 | residual | keras | A | 853,018 | 70.00% | 3 | 69.00% | 12.0s |" in md
    assert "| plain110 | plain | torch | — | — | not run |" in md and "**Incomplete**: 8 of 9" in md
    assert "![error](ablation-cifar10-synthetic-error.png)" in md
    for kind in ("error", "loss"):
        img = imread(paths[kind])
        assert img.shape[1] > 2 * img.shape[0]  # the plain and residual panels side by side


def test_plot_panels_are_the_papers_fig6_layout(tmp_path):
    """Plain nets left, residual nets right (He et al. 2015, Fig. 6): each panel holds only its layout's
    runs, every depth of that layout, and the curves are the runs' own metrics (error = 1 - accuracy)."""
    runs = tmp_path / "runs"
    accs = {"plain20": [0.4, 0.6], "plain56": [0.3, 0.5], "resnet20": [0.45, 0.65], "resnet56": [0.5, 0.7]}
    cells = []
    for model, val in accs.items():
        write_run(runs / model, get_spec(model), "torch", val, test_acc=val[-1])
        cells.append((model, "torch", runs / model))
    _, curves = build_report(cells, dataset="synthetic", epochs=2, seed=0, batch_size=None, hardware=[],
                             git_commit=None, generated="now")
    panels = curve_lines(curves, kind="error")
    assert list(panels) == ["plain", "residual"]
    assert {line["label"].split()[0] for line in panels["plain"]} == {"plain20", "plain56"}
    assert {line["label"].split()[0] for line in panels["residual"]} == {"resnet20", "resnet56"}
    val56 = next(line for line in panels["plain"] if line["label"] == "plain56 torch val")
    assert val56["x"] == [1, 2] and val56["y"] == pytest.approx([70.0, 50.0])
    loss = curve_lines(curves, kind="loss")
    assert [line["what"] for line in loss["residual"]] == ["train loss", "train loss"]
    with pytest.raises(ValueError, match="valid choices: error, loss"):
        curve_lines(curves, kind="accuracy")
