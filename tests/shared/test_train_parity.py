"""Training parity: PyTorch and Keras take the same SGD steps.

1. The update rule, exactly: torch.optim.SGD and keras_impl.optim.TorchSGD applied to the same parameters and
   the same gradient sequence (momentum 0.9, a large coupled weight decay, an lr drop half-way) end at the same
   parameters to float32 precision. Keras' own SGD (momentum folded with the lr, ``v = mu v - lr g``) is
   measured beside it: identical while the lr is constant, off after the drop.
2. The whole training step, end to end: the torch CLI and the Keras CLI (``model.fit`` on each Keras backend)
   start from one safetensors file (identical initial weights), see identical batches (``--no-augment``: the
   training split in order) and take 20 SGD steps with the recipe (lr 0.1, momentum 0.9, weight decay 1e-4,
   lr/10 at steps 10 and 15). Their loss curves agree within the stated tolerance.
3. Weight decay, where it shows: conv kernels followed by BN are scale-invariant, so the loss gradient is
   orthogonal to them and their scale moves (to first order) only through weight decay. The kernels' scale
   after 20 steps agrees between the frameworks to a small fraction of what weight decay moves it, measured
   by a torch run with decay off (``tests/no_weight_decay.py``): a trainer that drops the decay fails.

Every framework runs in its own subprocess; this process imports neither.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.io import load_weights
from tests.conftest import run_code, run_module

# Tolerances of the 20-step run (measured on this CPU: first loss equal to 1e-7, max loss difference 2.3e-3
# relative, every tensor's 20-step displacement equal to 1.1%). Training at lr 0.1 amplifies float32 rounding:
# torch against itself with the initial weights perturbed by 1e-6 (relative) drifts by the same order.
FIRST_LOSS_RTOL = 1e-5
LOSS_RTOL = 1e-2
DISPLACEMENT_RTOL = 5e-2
STEPS = 20
# |kernel scale difference| / (scale change of weight decay): measured 3e-5 (tensorflow), 2.1e-2 (jax), 0 (the torch
# backend) against 1 for a run with decay off. Decay without momentum's gain (Keras' decoupled form) shrinks by about
# wd * sum(lr) = 1.1e-4 instead of the measured 4.4e-4: off by about 0.75.
SCALE_RTOL = 0.2
KERAS_BACKENDS = ("tensorflow", "jax", "torch")

TORCH_RULE = """
import sys, numpy as np, torch
d = np.load(sys.argv[1])
params = [torch.nn.Parameter(torch.from_numpy(d[f"p{i}"].copy())) for i in range(int(d["n"]))]
opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=float(d["wd"]))
out = {}
for t, lr in enumerate(d["lrs"]):
    for g in opt.param_groups:
        g["lr"] = float(lr)
    for i, p in enumerate(params):
        p.grad = torch.from_numpy(d[f"g{t}_{i}"].copy())
    opt.step()
    out |= {f"t{t}/p{i}": p.detach().numpy().copy() for i, p in enumerate(params)}
np.savez(sys.argv[2], **out)
"""

KERAS_RULE = """
import sys, numpy as np, keras
from keras_impl.optim import TorchSGD
d = np.load(sys.argv[1])
n, wd = int(d["n"]), float(d["wd"])
out = {}
for tag, opt in (("torch_sgd", TorchSGD(0.1, momentum=0.9, weight_decay=wd)),
                 ("keras_sgd", keras.optimizers.SGD(0.1, momentum=0.9))):
    params = [keras.Variable(d[f"p{i}"].copy()) for i in range(n)]
    opt.build(params)
    for t, lr in enumerate(d["lrs"]):
        opt.learning_rate.assign(float(lr))
        grads = [d[f"g{t}_{i}"] for i in range(n)]
        if tag == "keras_sgd":  # coupled weight decay added by hand: only the momentum rule differs
            grads = [g + wd * keras.ops.convert_to_numpy(p) for g, p in zip(grads, params)]
        opt.apply_gradients(zip(grads, params))
        out |= {f"{tag}/t{t}/p{i}": keras.ops.convert_to_numpy(p) for i, p in enumerate(params)}
np.savez(sys.argv[2], **out)
"""


def _python(code: str, *args: str) -> None:
    run_code(code, *args, timeout=600)


def test_update_rule_matches_torch_sgd_across_an_lr_drop(tmp_path):
    rng = np.random.default_rng(0)
    shapes = [(8, 4, 3, 3), (8,), (10, 8)]
    steps, drop = 12, 6
    data = {"n": len(shapes), "wd": 0.05, "lrs": np.array([0.1] * drop + [0.01] * (steps - drop))}
    data |= {f"p{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    data |= {f"g{t}_{i}": rng.standard_normal(s).astype(np.float32) for t in range(steps)
             for i, s in enumerate(shapes)}
    np.savez(tmp_path / "in.npz", **data)
    _python(TORCH_RULE, str(tmp_path / "in.npz"), str(tmp_path / "torch.npz"))
    _python(KERAS_RULE, str(tmp_path / "in.npz"), str(tmp_path / "keras.npz"))
    ref, ker = np.load(tmp_path / "torch.npz"), np.load(tmp_path / "keras.npz")

    def gap(tag: str, t: int) -> float:
        return max(np.abs(ker[f"{tag}/t{t}/p{i}"] - ref[f"t{t}/p{i}"]).max() for i in range(len(shapes)))

    moved = max(np.abs(ref[f"t{steps - 1}/p{i}"] - data[f"p{i}"]).max() for i in range(len(shapes)))
    for t in range(steps):  # TorchSGD: torch's steps throughout, to float32 precision
        assert gap("torch_sgd", t) < 1e-5 * moved, f"step {t}: TorchSGD differs by {gap('torch_sgd', t):.2e}"
    for t in range(drop):  # Keras' own SGD: the same while the lr is constant ...
        assert gap("keras_sgd", t) < 1e-5 * moved, f"step {t}: Keras SGD differs by {gap('keras_sgd', t):.2e}"
    # ... and off after the drop: its velocity still carries the old lr.
    assert gap("keras_sgd", steps - 1) > 1e-2 * moved, "Keras SGD unexpectedly equals torch SGD"


INIT = """
import sys, torch
from pytorch_impl.resnet import build_model
from pytorch_impl.weights import get_weights
from shared.io import save_weights
from shared.spec import get_spec
spec = get_spec(sys.argv[1])
torch.manual_seed(1)
save_weights(sys.argv[2], get_weights(build_model(spec), spec), {"spec": spec.to_json()})
"""


class ParityRuns(dict):
    """Run folders by name, each trained on first use and kept for the module: ``init`` (the shared weights),
    ``torch``, ``torch-no-decay`` and one per Keras backend (``model.fit``). A test that names one backend
    (``-k tensorflow``, the mutant suite) trains only what it reads."""

    def __init__(self, tmp: Path) -> None:
        from datasets import load_prepared

        super().__init__(init=tmp / "init.safetensors")
        self.tmp = tmp
        load_prepared("synthetic", tmp / "data")
        _python(INIT, "resnet8", str(self["init"]))
        self.args = ["--dataset", "synthetic", "--data-dir", str(tmp / "data"), "--model", "resnet8", "--batch-size",
                     "32", "--iters", str(STEPS), "--init", str(self["init"]), "--no-augment", "--trace-steps",
                     str(STEPS), "--no-progress", "--device", "cpu"]

    def __missing__(self, name: str) -> Path:
        out = self.tmp / name
        if name == "torch":
            run_module("pytorch_impl.train", *self.args, "--out", out)
        elif name == "torch-no-decay":
            run_module("tests.no_weight_decay", "pytorch_impl.train", *self.args, "--out", out)
        elif name in KERAS_BACKENDS:
            run_module("keras_impl.train", *self.args, "--out", out, env={"KERAS_BACKEND": name})
        else:
            raise KeyError(name)
        self[name] = out
        return out


@pytest.fixture(scope="module")
def parity_runs(tmp_path_factory) -> ParityRuns:
    return ParityRuns(tmp_path_factory.mktemp("parity"))


@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_twenty_sgd_steps_give_the_same_loss_curve(parity_runs, backend):
    t = json.loads((parity_runs["torch"] / "steps.json").read_text())
    k = json.loads((parity_runs[backend] / "steps.json").read_text())
    assert t["lr"] == k["lr"] == pytest.approx([0.1] * 10 + [0.01] * 5 + [0.001] * 5)
    lt, lk = np.array(t["loss"]), np.array(k["loss"])
    assert len(lt) == len(lk) == STEPS
    assert lt[-1] < 0.7 * lt[0]  # it trained
    np.testing.assert_allclose(lk[0], lt[0], rtol=FIRST_LOSS_RTOL)
    np.testing.assert_allclose(lk, lt, rtol=LOSS_RTOL)


@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_twenty_sgd_steps_move_every_tensor_the_same_way(parity_runs, backend):
    """Each parameter's and BN statistic's 20-step displacement agrees (a wrong BN momentum or weight decay
    rule would move the running statistics or the weights differently)."""
    init, _ = load_weights(parity_runs["init"])
    a, _ = load_weights(parity_runs["torch"] / "last.safetensors")
    b, _ = load_weights(parity_runs[backend] / "last.safetensors")
    assert set(a) == set(b) == set(init)
    for key in a:
        moved = np.linalg.norm(a[key] - init[key])
        assert moved > 0, key
        assert np.linalg.norm(b[key] - a[key]) <= DISPLACEMENT_RTOL * moved, key


def kernel_scale_change(run: Path, reference: Path) -> float:
    """``<w - w_ref, w_ref> / |w_ref|^2`` over every conv and fc kernel: the relative change of the kernels'
    scale of ``run`` against ``reference`` (weight decay shrinks every kernel toward 0)."""
    w, _ = load_weights(run / "last.safetensors")
    ref, _ = load_weights(reference / "last.safetensors")
    kernels = [k for k in ref if k.endswith(".weight") and ref[k].ndim > 1]
    num = sum(float(np.vdot(w[k].astype(np.float64) - ref[k], ref[k])) for k in kernels)
    return num / sum(float(np.vdot(ref[k].astype(np.float64), ref[k])) for k in kernels)


@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_twenty_sgd_steps_shrink_the_kernels_as_torchs_weight_decay(parity_runs, backend):
    """The recipe's weight decay (1e-4) is applied the torch way: the Keras run's kernels end at torch's scale,
    while a run without decay ends measurably larger (the test would fail for a trainer that drops it)."""
    t = json.loads((parity_runs["torch"] / "steps.json").read_text())
    decay = 1e-4 * sum(t["lr"])  # shrink of plain SGD (no momentum gain): a floor for the measured effect
    no_decay = kernel_scale_change(parity_runs["torch-no-decay"], parity_runs["torch"])
    assert no_decay > decay, f"weight decay moved torch's kernels by {no_decay:.2e}, expected > {decay:.2e}"
    gap = kernel_scale_change(parity_runs[backend], parity_runs["torch"])
    assert abs(gap) <= SCALE_RTOL * no_decay, (
        f"{backend}: kernel scale differs from torch's by {gap:.2e}; weight decay moves it by {no_decay:.2e}")
