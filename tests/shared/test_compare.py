"""The harness end to end: side-by-side comparison, a broken side, parity both ways, a swapped mapping.

Framework work runs in subprocesses (``shared.harness.parity`` batches every case into three processes).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.harness.compare import compare_summaries
from shared.harness.parity import Case, run_parity_cases, to_nchw
from shared.spec import ModelSpec, get_spec
from tests.conftest import run_module
from tests.oracles import CIFAR, IMAGENET

# The ImageNet stem with bottleneck blocks and option-B projections at a width that checks in seconds: the code of
# resnet50, which the slow suite checks itself.
BOTTLENECK = ModelSpec("bottleneck8", "imagenet", "bottleneck", (1, 2, 1, 1), (8, 8, 16, 16), "B", input_size=64)
# The fast suite checks each code path once: basic blocks with option A both ways (resnet20), the deep CIFAR net
# (resnet56), the plain twin (plain20, keras2torch: the other direction on a second model) and the ImageNet stem with
# bottlenecks and projections (bottleneck8). Every other model and direction is the slow suite's (make test-all).
FAST_PARITY = (("resnet20", "torch2keras"), ("resnet20", "keras2torch"), ("resnet56", "torch2keras"),
               ("plain20", "keras2torch"), ("bottleneck8", "torch2keras"))
FAST_SPECS = {"bottleneck8": BOTTLENECK}
SLOW_PARITY = ("resnet32", "resnet44", "resnet110", "plain32", "plain44", "plain56", "plain110", "resnet34",
               "resnet101", "resnet152", "plain18", "plain50", "plain101", "plain152")
SLOW_DIRECTIONS = (("resnet56", "keras2torch"), ("plain20", "torch2keras"), ("resnet50", "torch2keras"),
                   ("resnet50", "keras2torch"),
                   ("resnet18", "torch2keras"), ("resnet18", "keras2torch"), ("plain34", "torch2keras"),
                   ("plain34", "keras2torch"))


def _swap_mean_var(layer: str):
    def tamper(arrays: dict) -> dict:
        arrays[f"{layer}.running_mean"], arrays[f"{layer}.running_var"] = (
            arrays[f"{layer}.running_var"], arrays[f"{layer}.running_mean"])
        return arrays
    tamper.key = f"swap {layer}"
    return tamper


def _unset(key: str):
    """The Keras side keeps its zero initialization for one bias (a transfer that skipped it)."""
    def tamper(arrays: dict) -> dict:
        arrays[key] = np.zeros_like(arrays[key])
        return arrays
    tamper.key = key
    return tamper


def _by_case(results: list[dict], cases: list[Case]) -> dict:
    return {(r["model"], r["direction"], c.tamper.key if c.tamper else None): r for r, c in zip(results, cases)}


# Tampered cases: a swapped BN mapping, and biases left unset where only one stage or the logits can see them
# (resnet56's last layer3 block is the deep-only bug that a bound growing with the activations let through).
TAMPERED = (("resnet20", _swap_mean_var("layer2.1.bn2")), ("resnet20", _unset("fc.bias")),
            ("resnet56", _unset("layer3.8.bn2.bias")))


@pytest.fixture(scope="module")
def fast_parity():
    """Four models, five directions, plus deliberately broken mappings: one batch of processes."""
    cases = [Case(FAST_SPECS.get(n) or get_spec(n), d) for n, d in FAST_PARITY]
    cases += [Case(get_spec(n), "torch2keras", tamper) for n, tamper in TAMPERED]
    return _by_case(run_parity_cases(cases), cases)


@pytest.mark.parametrize("name, direction", FAST_PARITY, ids=[f"{n}-{d}" for n, d in FAST_PARITY])
def test_parity_within_bound(fast_parity, name, direction):
    r = fast_parity[(name, direction, None)]
    check_parity(r, name)


def check_parity(r: dict, name: str) -> None:
    """A parity result within every bound: eval-mode outputs, the float64 SGD step, torch's running variance."""
    ev = r["eval"]
    lg = ev["logits"]
    assert lg["max_abs"] <= 1e-4 * max(1.0, lg["max_ref"]), lg
    # BN statistics calibrated on the batch: logits and every stage O(1)-O(10), so the bound stays ~1e-4 at
    # any depth (random statistics gave resnet56 logits of 3e4 and a bound of 3)
    assert 0.5 < lg["max_ref"] < 100
    assert all(s["ok"] and 1.0 < s["max_ref"] < 100 for s in ev["stages"]), ev["stages"]
    assert [s["stage"] for s in ev["stages"]][-1] == "fc" and ev["first_diverging_layer"] is None
    assert r["size"] == (32 if (FAST_SPECS.get(name) or get_spec(name)).stem == "cifar" else 64)
    tr = r["train"]
    assert tr["ok"] and tr["verdict"] == "pass" and tr["dtype"] == "float64", tr
    # Keras reports the loss through a float32 metric (the step itself used the float64 loss)
    assert abs(tr["loss"]["torch"] - tr["loss"]["keras"]) < 1e-6 * max(1, tr["loss"]["torch"])
    assert tr["params"]["max_update"] > 1e-3  # the step moved the weights...
    # ...by the same amount on both sides, in float64 (Keras keeps lr and momentum as float32 variables:
    # 0.1 is 1.5e-9 off, the floor of this comparison), far from what the step itself can resolve
    assert tr["params"]["rel_update_error"] < 1e-6
    assert tr["params"]["sensitivity"] < 1e-8
    rv = tr["running_var"]
    # torch's unbiased variance: the raw gap is real and equals m * var / (n - 1) up to float error
    assert rv["max_rel_raw"] > 1e-4
    assert rv["max_rel_raw"] == pytest.approx(rv["max_rel_predicted"], rel=1e-2)


def test_swapped_mapping_fails_and_names_the_layer(fast_parity):
    r = fast_parity[("resnet20", "torch2keras", "swap layer2.1.bn2")]
    assert not r["ok"] and not r["eval"]["ok"]
    assert not r["eval"]["logits"]["ok"]  # a negative "variance" even makes NaNs: no way to pass
    stages = {s["stage"]: s["ok"] for s in r["eval"]["stages"]}
    assert stages["bn1"] and stages["layer1"] and not stages["layer2"]
    assert r["eval"]["first_diverging_layer"]["name"] == "layer2.1.bn2"
    assert not r["train"]["ok"]


@pytest.mark.parametrize(("name", "key", "stage", "layer"), [
    ("resnet20", "fc.bias", "fc", "fc"),
    ("resnet56", "layer3.8.bn2.bias", "layer3", "layer3.8.bn2"),
])
def test_one_unset_bias_fails_with_a_wide_margin_and_is_named(fast_parity, name, key, stage, layer):
    r = fast_parity[(name, "torch2keras", key)]
    assert not r["ok"] and not r["eval"]["ok"]
    order = [s["stage"] for s in r["eval"]["stages"]]
    stages = {s["stage"]: s for s in r["eval"]["stages"]}
    assert all(stages[s]["ok"] for s in order[: order.index(stage)]) and not stages[stage]["ok"]
    assert stages[stage]["ratio"] > 30  # beta ~ N(0, 0.2) on O(10) activations: far beyond 1e-4 of them
    assert not r["eval"]["logits"]["ok"]
    fd = r["eval"]["first_diverging_layer"]
    assert fd["name"] == layer and fd["ratio"] > 30, fd


def test_to_nchw_transposes_keras_and_flattens_pooled():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # NHWC
    assert np.array_equal(to_nchw(x, "keras"), x.transpose(0, 3, 1, 2))
    assert np.array_equal(to_nchw(x, "torch"), x)
    assert to_nchw(np.zeros((2, 7, 1, 1)), "torch").shape == (2, 7)


@pytest.fixture(scope="module")
def resnet20_summaries(tmp_path_factory):
    d = tmp_path_factory.mktemp("summaries")
    run_module("pytorch_impl.summary", "--model", "resnet20", "--out", d / "torch.json")
    run_module("keras_impl.summary", "--model", "resnet20", "--out", d / "keras.json")
    # The wrong side: a real Keras summary of a model whose last stage is 48 wide instead of 64.
    wrong = get_spec("resnet20").with_overrides(widths=(16, 32, 48))
    job = {"jobs": [{"spec": wrong.to_dict(), "summary": str(d / "keras-wrong.json")}], "report": str(d / "r.json")}
    (d / "job.json").write_text(json.dumps(job))
    run_module("keras_impl.parity", d / "job.json")
    return d


def test_compare_marks_a_wrong_width_and_exits_nonzero(resnet20_summaries, tmp_path):
    d = resnet20_summaries
    args = ["--model", "resnet20", "--torch-summary", d / "torch.json", "--no-parity", "--out-dir", tmp_path]
    good = run_module("shared.harness.compare", *args, "--keras-summary", d / "keras.json", check=False)
    assert good.returncode == 0, good.stderr
    assert f"trainable params: torch {CIFAR['resnet20']:,} | keras {CIFAR['resnet20']:,} ✓" in good.stdout
    bad = run_module("shared.harness.compare", *args, "--keras-summary", d / "keras-wrong.json", check=False)
    assert bad.returncode == 1
    rows = lambda out: {line.split()[0]: line.rstrip()[-1] for line in out.splitlines()
                        if line.startswith(("layer", "conv1", "fc")) and line.rstrip()[-1] in "✓✗"}
    g, b = rows(good.stdout), rows(bad.stdout)
    assert set(g.values()) == {"✓"}
    assert b["layer1.0.conv1"] == b["layer2.2"] == "✓"
    assert b["layer3.0.conv1"] == b["layer3.2"] == b["fc"] == "✗"
    saved = json.loads((tmp_path / "resnet20.json").read_text())
    assert saved["ok"] is False and "layer3.0.conv1" in saved["comparison"]["mismatched_rows"]
    assert "| layer3.0.conv1 |" in (tmp_path / "resnet20.md").read_text()


def test_compare_summaries_joins_on_names(resnet20_summaries):
    t = json.loads((resnet20_summaries / "torch.json").read_text())
    k = json.loads((resnet20_summaries / "keras.json").read_text())
    cmp = compare_summaries(t, k)
    assert cmp["ok"] and cmp["totals_equal"] and not cmp["mismatched_rows"]
    k["layers"] = k["layers"][:-1]  # a row missing on one side does not match
    cmp = compare_summaries(t, k)
    assert not cmp["ok"] and cmp["mismatched_rows"] == ["fc"]
    with pytest.raises(ValueError, match="expected a torch summary"):
        compare_summaries(k, k)


def test_make_compare_resnet20_end_to_end(tmp_path):
    # resnet20 is shallow enough for a tight train step, so it is fatal here: a wrong BN momentum shows only there
    proc = run_module("shared.harness.compare", "--model", "resnet20", "--out-dir", tmp_path, "--strict-train-step",
                      check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"torch {CIFAR['resnet20']:,} | keras {CIFAR['resnet20']:,} ✓" in proc.stdout
    assert "parity torch→keras eval" in proc.stdout and "parity torch→keras train" in proc.stdout
    assert json.loads((tmp_path / "resnet20.json").read_text())["ok"] is True


@pytest.mark.slow
def test_make_compare_resnet34(tmp_path):
    import subprocess

    from tests.conftest import ROOT

    proc = subprocess.run(["make", "compare", "MODEL=resnet34"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trainable, stats = IMAGENET["resnet34"]
    assert f"trainable params: torch {trainable:,} | keras {trainable:,} ✓" in proc.stdout
    assert f"non-trainable params: torch {stats:,} | keras {stats:,} ✓" in proc.stdout


RESNET110_UNSET = ("bn1.bias", "layer1.0.bn1.bias", "layer2.9.bn2.bias", "layer3.17.bn2.bias", "fc.bias")


@pytest.mark.slow
def test_resnet110_one_unset_bias_anywhere_fails_and_is_named():
    """resnet110 with random statistics reached logits of 5.7e8 (a bound of 5.7e4); calibrated, every stage is
    O(10), and one bias left at zero anywhere (stem, first, middle, deepest block, classifier) fails by far."""
    spec = get_spec("resnet110")
    cases = [Case(spec)] + [Case(spec, "torch2keras", _unset(key)) for key in RESNET110_UNSET]
    results = _by_case(run_parity_cases(cases, train_step=None), cases)
    good = results[("resnet110", "torch2keras", None)]
    assert good["ok"] and good["eval"]["logits"]["max_ref"] < 100, good["eval"]
    for key in RESNET110_UNSET:
        r = results[("resnet110", "torch2keras", key)]
        fd = r["eval"]["first_diverging_layer"]
        assert not r["eval"]["ok"] and fd["name"] == key.removesuffix(".bias") and fd["ratio"] > 30, (key, fd)


@pytest.mark.slow
def test_parity_every_other_registry_model():
    cases = [Case(get_spec(n), d) for n in SLOW_PARITY for d in ("torch2keras", "keras2torch")]
    cases += [Case(get_spec(n), d) for n, d in SLOW_DIRECTIONS]
    results = run_parity_cases(cases)
    for r, case in zip(results, cases):
        if (case.spec.name, case.direction) in SLOW_DIRECTIONS:  # the fast suite's models, every check
            check_parity(r, case.spec.name)
    bad = [(r["model"], r["direction"], r["eval"]["logits"]) for r in results if not r["eval"]["ok"]]
    assert not bad, bad
    # The float64 SGD step passes wherever it can be judged; plain152 is chaotic even in float64.
    steps = {(r["model"], r["direction"]): r["train"]["verdict"] for r in results}
    assert all(v == "pass" for (m, _), v in steps.items() if m != "plain152"), steps
    assert all(v != "fail" for v in steps.values()), steps


def test_parity_ok_eval_always_train_step_on_request():
    from shared.harness.compare import parity_ok

    good_eval = {"eval": {"ok": True}, "train": {"ok": False}, "ok": False}
    assert parity_ok(good_eval) and not parity_ok(good_eval, strict_train_step=True)
    assert not parity_ok({"eval": {"ok": False}, "train": {"ok": True}, "ok": False})
    assert not parity_ok({"error": "worker crashed", "ok": False}) and parity_ok(None)


@pytest.mark.parametrize("torch_rule", ["unbiased", "biased"])
def test_running_variance_gap_is_predicted_from_torchs_unbiased_update(tmp_path, torch_rule):
    """The train-step check accounts for exactly torch's n/(n-1) running-variance update, computed here from
    the BN definition (running = (1 - m) * running + m * var, m = 0.1): the gap it predicts matches an
    unbiased torch side, and a torch side that used the biased estimate (no gap) is reported as a failure."""
    from shared.harness.parity import StepConfig, compare_train_step
    from shared.io import save_weights
    from shared.names import canonical_weights
    from tests.shared.ablation_fixtures import fixture_shapes

    spec = get_spec("resnet8")
    rng = np.random.default_rng(0)
    w0 = {k: rng.uniform(0.5, 2.0, s).astype(np.float32) for k, s in fixture_shapes(spec).items()}
    n = 8  # values per channel: small, so the unbiased factor 8/7 is far from 1
    w_t, w_k, counts = {}, {}, {}
    for w in canonical_weights(spec):
        layer, leaf = w.key.rsplit(".", 1)
        if leaf == "running_var":
            var = rng.uniform(0.5, 2.0, w0[w.key].shape)
            torch_var = var * n / (n - 1) if torch_rule == "unbiased" else var
            w_t[w.key] = (0.9 * w0[w.key] + 0.1 * torch_var).astype(np.float32)
            w_k[w.key] = (0.9 * w0[w.key] + 0.1 * var).astype(np.float32)
            counts[layer] = n
        else:
            step = rng.normal(0, 1e-2, w0[w.key].shape)
            w_t[w.key] = w_k[w.key] = (w0[w.key] + step).astype(np.float32)
    save_weights(tmp_path / "t.safetensors", w_t)
    save_weights(tmp_path / "k.safetensors", w_k)
    reports = {fw: {"train_step": {"loss": 2.0, "bn_counts": counts}} for fw in ("torch", "keras")}
    rv = compare_train_step(spec, w0, str(tmp_path / "t.safetensors"), str(tmp_path / "k.safetensors"), reports,
                            StepConfig())["running_var"]
    if torch_rule == "unbiased":
        assert rv["ok"] and rv["max_residual"] < 1e-6
        assert rv["max_rel_raw"] == pytest.approx(rv["max_rel_predicted"], rel=1e-4)
    else:
        assert not rv["ok"] and rv["max_rel_raw"] == 0


@pytest.mark.parametrize("probe_moves", [1e-12, 1e-1])
def test_a_step_is_failed_only_where_it_can_be_resolved(tmp_path, probe_moves):
    """A Keras update 1 % off fails when PyTorch's own probe step barely moves; when the probe (weights moved by
    1e-14) already moves the update by 10 %, the step is chaotic and reported as not resolvable instead."""
    from shared.harness.parity import StepConfig, compare_train_step
    from shared.io import save_weights
    from shared.names import canonical_weights
    from tests.shared.ablation_fixtures import fixture_shapes

    spec = get_spec("resnet8")
    rng = np.random.default_rng(0)
    w0 = {k: rng.uniform(0.5, 2.0, s) for k, s in fixture_shapes(spec).items()}
    trainable = {w.key for w in canonical_weights(spec) if w.trainable}
    step = {k: rng.normal(0, 1e-2, v.shape) if k in trainable else 0 * v for k, v in w0.items()}
    # running variances: Keras keeps the old value (biased batch variance == old), torch adds m * var / (n - 1)
    unbiased = {k: 0.1 * v / 7 if k.endswith("running_var") else 0 * v for k, v in w0.items()}
    files = {}
    for name, factor, gap in (("t", 1.0, 1), ("k", 1.01, 0), ("p", 1.0 + probe_moves, 1)):
        files[name] = str(tmp_path / f"{name}.safetensors")
        save_weights(files[name], {k: w0[k] + factor * step[k] + gap * unbiased[k] for k in w0})
    counts = {w.key.rsplit(".", 1)[0]: 8 for w in canonical_weights(spec) if w.key.endswith("running_var")}
    reports = {fw: {"train_step": {"loss": 2.0, "bn_counts": counts}} for fw in ("torch", "keras")}
    tr = compare_train_step(spec, w0, files["t"], files["k"], reports, StepConfig(), files["p"])
    assert tr["params"]["rel_update_error"] == pytest.approx(1e-2, rel=1e-3)
    assert tr["params"]["sensitivity"] == pytest.approx(probe_moves, rel=1e-3)
    assert tr["running_var"]["ok"] and tr["running_mean"]["ok"] and tr["loss"]["ok"]  # only the update is off
    if probe_moves < 1e-4:
        assert tr["verdict"] == "fail" and not tr["ok"]
    else:
        assert tr["verdict"] == "unresolvable" and tr["ok"] and not tr["params"]["ok"]
