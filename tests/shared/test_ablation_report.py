"""The ablation table and plots from hand-made run folders (fixtures in tmp dirs, not results), and its
statistics over seeds against a hand computation."""

import json
import math

import pytest
from matplotlib.image import imread

from shared.ablation import published
from shared.ablation.markdown import format_seconds
from shared.ablation.plots import curve_lines
from shared.ablation.report import best_epoch, build_report, summarize_run, write_report
from shared.ablation.stats import questions
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


def test_the_papers_comparisons():
    def cell(model, fw="torch"):
        spec = get_spec(model)
        return {"model": model, "framework": fw, "layout": spec.layout, "depth": spec.depth}

    cells = [cell(m, fw) for fw in ("torch", "keras") for m in ("plain20", "resnet20", "plain56", "resnet56")]
    out = [(fw, kind, a["model"], b["model"], paper) for fw, kind, a, b, paper in questions(cells)]
    assert out[:4] == [("torch", "plain: deeper vs shallower", "plain20", "plain56", "worse"),
                       ("torch", "residual: deeper vs shallower", "resnet20", "resnet56", "better"),
                       ("torch", "residual vs plain", "plain20", "resnet20", "better"),
                       ("torch", "residual vs plain", "plain56", "resnet56", "better")]
    assert [o[0] for o in out] == ["torch"] * 4 + ["keras"] * 4


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
            cells.append((model, fw, 0, runs / f"{model}-{fw}"))
    cells.append(("plain110", "torch", 0, None))  # a cell that never ran
    report, curves = build_report(cells, dataset="synthetic", epochs=3, seeds=[0], batch_size=None,
                                  hardware=["CPU: test CPU (2 cores), no GPU"], git_commit="abc",
                                  generated="now", paper="the paper says", published=published.CIFAR10,
                                  dataset_task="synthetic")
    paths = write_report(report, curves, tmp_path / "out", "ablation-cifar10-synthetic")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "ablation-cifar10-synthetic.md", "ablation-cifar10-synthetic.json",
        "ablation-cifar10-synthetic-error.png", "ablation-cifar10-synthetic-loss.png"}
    data = json.loads(paths["json"].read_text())
    assert data["synthetic"] is True and data["complete"] is False and data["epochs"] == 3 and data["seeds"] == [0]
    by_run = {(r["model"], r["framework"]): r for r in data["runs"]}
    assert by_run[("plain110", "torch")]["status"] == "missing"
    r = by_run[("resnet56", "keras")]
    assert (r["best_val_acc"], r["best_epoch"], r["test_acc"], r["params"]) == (0.7, 3, 0.69, CIFAR["resnet56"])
    assert by_run[("plain20", "torch")]["best_epoch"] == 2
    cell = next(c for c in data["cells"] if (c["model"], c["framework"]) == ("resnet56", "keras"))
    assert cell["n"] == 1 and cell["best_val_acc"]["mean"] == 0.7 and cell["best_val_acc"]["std"] is None
    md = paths["md"].read_text()
    assert "synthetic data" in md and "Epochs per cell: **3**" in md and "CPU: test CPU (2 cores), no GPU" in md
    assert ("| resnet56 | residual | keras | A | 853,018 | 1 | 70.00% ± n/a (1 seed) | 69.00% ± n/a (1 seed) "
            "| 0.6667 ± n/a (1 seed) | 12.0s |") in md
    assert "| 0 | resnet56 | keras | 70.00% | 3 | 69.00% | 2.0000 → 0.6667 | 12.0s |" in md
    assert "| 0 | plain110 | torch | not run |" in md and "**Incomplete**: 8 of 9" in md
    # one seed: the comparison has its difference and direction, no interval
    assert ("| torch | plain-56 vs plain-20 | worse | 40.00 | 30.00 | -10.00 pp | n/a (1 seed) | — | — | 1 of 1 "
            "| one seed: as the paper |") in md
    assert "| resnet56 | 31.00 (1 seed) | 31.00 (1 seed) | 6.97 | 7.40 ± 0.27 | 6.61 |" in md
    assert "ran on **synthetic**, not CIFAR-10" in md
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
        for seed, shift in enumerate((0.0, 0.1, -0.04)):  # three seeds around the base curve
            run = write_run(runs / f"seed-{seed}" / model, get_spec(model), "torch", [v + shift for v in val],
                            test_acc=val[-1], seed=seed)
            cells.append((model, "torch", seed, run))
    _, curves = build_report(cells, dataset="synthetic", epochs=2, seeds=[0, 1, 2], batch_size=None, hardware=[],
                             git_commit=None, generated="now")
    panels = curve_lines(curves, kind="error")
    assert list(panels) == ["plain", "residual"]
    assert {line["label"].split()[0] for line in panels["plain"]} == {"plain20", "plain56"}
    assert {line["label"].split()[0] for line in panels["residual"]} == {"resnet20", "resnet56"}
    val56 = next(line for line in panels["plain"] if line["label"] == "plain56 torch val")
    # error = 100 (1 - acc): seeds at 70/60/74 (epoch 1) and 50/40/54 (epoch 2)
    assert val56["x"] == [1, 2] and val56["n"] == 3
    assert val56["y"] == pytest.approx([(70 + 60 + 74) / 3, (50 + 40 + 54) / 3])
    assert val56["lo"] == pytest.approx([60.0, 40.0]) and val56["hi"] == pytest.approx([74.0, 54.0])
    loss = curve_lines(curves, kind="loss")
    assert [line["what"] for line in loss["residual"]] == ["train loss", "train loss"]
    with pytest.raises(ValueError, match="valid choices: error, loss"):
        curve_lines(curves, kind="accuracy")


# Statistics over seeds, against a hand computation -----------------------------------------------------
# Three seeds: a t-test has df = 2, where Student's t has a closed form: F(t) = 1/2 + t / (2 sqrt(t^2 + 2)).
# So the two-sided p is 1 - |t| / sqrt(t^2 + 2), and the 0.975 quantile solves t^2 = 2 q^2 / (1 - q^2), q = 0.95.
T975_DF2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))  # 4.3027 (tables: 4.303)


def _p_df2(t: float) -> float:
    return 1 - abs(t) / math.sqrt(t * t + 2)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


# best val acc, test acc, final training loss of each cell for seeds 0, 1, 2
SEEDED = {
    "plain20": ([0.80, 0.82, 0.78], [0.79, 0.80, 0.77], [0.50, 0.45, 0.55]),
    "plain56": ([0.70, 0.75, 0.79], [0.69, 0.76, 0.78], [0.70, 0.60, 0.52]),
    "resnet20": ([0.85, 0.88, 0.83], [0.84, 0.85, 0.85], [0.40, 0.42, 0.41]),
    "resnet56": ([0.88, 0.83, 0.90], [0.87, 0.84, 0.91], [0.30, 0.44, 0.28]),
}


@pytest.fixture
def seeded_report(tmp_path):
    runs = []
    for model, (val, test, loss) in SEEDED.items():
        for seed in range(3):
            run = write_run(tmp_path / f"seed-{seed}" / model, get_spec(model), "torch", [val[seed] - 0.1, val[seed]],
                            test_acc=test[seed], seed=seed, losses=[1.5, loss[seed]])
            runs.append((model, "torch", seed, run))
    report, curves = build_report(runs, dataset="digits", epochs=2, seeds=[0, 1, 2], batch_size=None,
                                  hardware=[], git_commit=None, generated="now", published=published.CIFAR10,
                                  dataset_task="digits")
    return report, curves


def test_cell_spread_is_the_hand_computed_mean_and_sample_std(seeded_report):
    report, _ = seeded_report
    for cell in report["cells"]:
        for key, values in zip(("best_val_acc", "test_acc", "train_loss_last"), SEEDED[cell["model"]]):
            mean, std = _mean_std(values)
            s = cell[key]
            assert s["n"] == 3 and s["mean"] == pytest.approx(mean, abs=1e-12) and s["std"] == pytest.approx(std)
            assert (s["min"], s["max"]) == (min(values), max(values)), (cell["model"], key)


def test_comparisons_are_the_hand_computed_paired_t_tests(seeded_report):
    report, _ = seeded_report
    by = {(c["metric"], c["a"], c["b"]): c for c in report["comparisons"]}
    assert len(by) == 12  # 4 comparisons x 3 metrics
    for (metric, a, b), c in by.items():
        k = ("best_val_acc", "test_acc", "train_loss_last").index(metric)
        xa, xb = SEEDED[a][k], SEEDED[b][k]
        d = [y - x for x, y in zip(xa, xb)]
        mean_d, sd_d = _mean_std(d)
        se = sd_d / math.sqrt(3)
        t = mean_d / se
        assert c["test"] == "paired" and c["seeds"] == [0, 1, 2] and c["df"] == 2
        assert c["mean_a"] == pytest.approx(sum(xa) / 3) and c["mean_b"] == pytest.approx(sum(xb) / 3)
        assert c["diff"] == pytest.approx(mean_d) and c["t"] == pytest.approx(t)
        assert c["p"] == pytest.approx(_p_df2(t))
        assert c["ci95"] == pytest.approx([mean_d - T975_DF2 * se, mean_d + T975_DF2 * se])
        # the paper: deeper plain worse, deeper residual better, residual better than plain (lower loss = better)
        better = b.startswith("resnet")
        sign = (1 if better else -1) * (-1 if metric == "train_loss_last" else 1)
        assert c["paper"] == ("better" if better else "worse") and c["expected_sign"] == sign
        assert c["holds"] == sum(x * sign > 1e-4 for x in d) and c["paired"] == 3
    # spelled out for one: plain-56 vs plain-20, best val acc: d = -0.10, -0.07, +0.01 -> 2 of 3 seeds
    c = by[("best_val_acc", "plain20", "plain56")]
    assert c["holds"] == 2 and c["diff"] == pytest.approx(-0.16 / 3)
    assert c["verdict"] == "not settled (the 95% CI includes 0)"
    assert by[("best_val_acc", "plain20", "resnet20")]["verdict"] == "as the paper"  # d = .05 .06 .05


def test_comparison_table_and_spread_in_the_markdown(seeded_report, tmp_path):
    report, curves = seeded_report
    md = write_report(report, curves, tmp_path / "out", "ablation-cifar10-digits")["md"].read_text()
    mean, std = _mean_std(SEEDED["plain56"][0])
    assert f"| plain56 | plain | torch | A | 853,018 | 3 | {100 * mean:.2f} ± {100 * std:.2f}% (70.00–79.00) |" in md
    key = ("best_val_acc", "plain20", "plain56")
    c = next(c for c in report["comparisons"] if (c["metric"], c["a"], c["b"]) == key)
    lo, hi = c["ci95"]
    assert (f"| torch | plain-56 vs plain-20 | worse | 80.00 | 74.67 | -5.33 pp "
            f"| [{100 * lo:+.2f}, {100 * hi:+.2f} pp] | {c['p']:.3f} | paired t | 2 of 3 "
            "| not settled (the 95% CI includes 0) |") in md
    assert "| resnet20 | 15.33 ± 0.58 (n = 3) | 8.75 | 8.51 ± 0.22 | 8.27 |" in md  # test error beside published
    assert "mean of 3 seeds" not in md  # (that is the plots' title)
    img = imread(tmp_path / "out" / "ablation-cifar10-digits-error.png")
    assert img.shape[1] > 2 * img.shape[0]


def test_welch_when_the_seeds_do_not_pair():
    """Equal variances and n = 2 each: Welch's df is exactly 2, so the closed form above applies."""
    from shared.ablation.stats import compare

    c = compare({0: 0.5, 1: 0.7}, {2: 0.75, 3: 0.95}, expected_sign=1)
    se = math.sqrt(0.02 / 2 + 0.02 / 2)
    t = 0.25 / se
    assert c["test"] == "welch" and c["paired"] == 0 and c["holds"] == 0
    assert c["df"] == pytest.approx(2) and c["t"] == pytest.approx(t) and c["p"] == pytest.approx(_p_df2(t))
    assert c["ci95"] == pytest.approx([0.25 - T975_DF2 * se, 0.25 + T975_DF2 * se])
    one = compare({0: 0.5}, {0: 0.6}, expected_sign=1)
    assert one["test"] is None and one["ci95"] is None and one["verdict"] == "one seed: as the paper"
    flat = compare({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5}, expected_sign=1)  # the same difference in both seeds
    assert flat["test"] is None and flat["note"].startswith("no spread") and flat["holds"] == 0
