"""pytorch_impl.parity: hooks capture outputs before the in-place ReLU overwrites them; BN counts; calibration."""

from __future__ import annotations

import torch

from pytorch_impl.optim import make_sgd
from pytorch_impl.parity import bn_counts, calibrate_bn, layer_outputs
from pytorch_impl.resnet import build_model
from pytorch_impl.weights import get_weights, set_weights
from shared.harness.parity.randomize import calibrated_layers, randomize_arrays
from shared.spec import get_spec


def test_layer_outputs_are_pre_relu_and_logits_match_the_model():
    model = build_model(get_spec("resnet20")).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = layer_outputs(model, x, ["bn1", "layer1.0"])
    assert out["bn1"].min() < 0 <= out["layer1.0"].min()  # the in-place ReLU did not overwrite bn1's capture
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out["logits"]), model(x), atol=1e-6)


def test_bn_counts_are_batch_times_spatial():
    model = build_model(get_spec("resnet18"))
    counts = bn_counts(model, torch.zeros(2, 3, 64, 64))
    assert counts["bn1"] == 2 * 32 * 32 and counts["layer4.1.bn2"] == 2 * 2 * 2


def test_make_sgd_uses_coupled_weight_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(2.0)
    opt = make_sgd(model, 0.1, 0.9, 0.05)
    model.weight.grad = torch.tensor([[0.5]])
    opt.step()
    assert torch.allclose(model.weight, torch.tensor([[2.0 - 0.1 * (0.5 + 0.05 * 2.0)]]))


def _randomized(name: str, seed: int = 0):
    spec = get_spec(name)
    model = build_model(spec)
    set_weights(model, spec, randomize_arrays(spec, get_weights(model, spec), seed))
    return model


def test_calibration_without_perturbation_is_torchs_own_train_mode_batch_norm(monkeypatch):
    """Calibrated with factor 1, eval mode normalizes each BN by its input's batch statistics: exactly what
    torch's BatchNorm2d does in train mode, an independent implementation of the same statistics."""
    from pytorch_impl import parity

    monkeypatch.setattr(parity, "calibrated_stats", lambda mean, var, rng: (mean.astype("float32"),
                                                                           var.astype("float32")))
    model = _randomized("resnet20")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    parity.calibrate_bn(model, x, seed=0)
    with torch.no_grad():
        calibrated = model.eval()(x)
        batch_stats = model.train()(x)
    torch.testing.assert_close(calibrated, batch_stats, rtol=1e-4, atol=1e-4)


def test_calibration_keeps_resnet110_small_and_each_bn_near_its_input():
    model = _randomized("resnet110")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exploded = model.eval()(x).abs().max()
    untouched = model.layer3[17].bn1.running_var.clone()
    calibrate_bn(model, x, seed=0, layers=calibrated_layers(get_spec("resnet110")))  # as the harness does
    assert torch.equal(model.layer3[17].bn1.running_var, untouched)  # inside a branch: random statistics
    deep = model.layer3[17].bn2
    seen = {}
    handle = deep.register_forward_pre_hook(lambda _m, inp: seen.setdefault("x", inp[0].detach().clone()))
    with torch.no_grad():
        logits = model.eval()(x)
    handle.remove()
    assert exploded > 1e6 and logits.abs().max() < 100  # random statistics explode; calibrated ones do not
    mean, var = seen["x"].mean((0, 2, 3)), seen["x"].var((0, 2, 3), unbiased=False)
    ratio = deep.running_var / var
    assert ratio.min() >= 0.7 - 1e-4 and ratio.max() <= 1.4 + 1e-4 and ratio.std() > 0.05  # a random factor
    assert ((deep.running_mean - mean).abs() / var.sqrt()).max() < 1.5  # N(0, 0.2) of the std
