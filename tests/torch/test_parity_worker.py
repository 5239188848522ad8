"""pytorch_impl.parity: hooks capture outputs before the in-place ReLU overwrites them; BN counts."""

from __future__ import annotations

import torch

from pytorch_impl.optim import make_sgd
from pytorch_impl.parity import bn_counts, layer_outputs
from pytorch_impl.resnet import build_model
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
