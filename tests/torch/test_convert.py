"""Weight conversion through Keras, checked against torch and torchvision in this (torch-only) process.

The Keras side always runs in a subprocess (``python -m export.transfer`` / ``keras_impl.parity``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision

from pytorch_impl.resnet import build_model
from shared.harness.parity import randomize_arrays
from tests.conftest import run_module


def _random_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    from pytorch_impl.weights import get_weights, set_weights
    from shared.spec import get_spec

    spec = get_spec(name)
    model = build_model(spec)
    set_weights(model, spec, randomize_arrays(spec, get_weights(model, spec), seed))
    return model.state_dict()


def test_round_trip_torch_keras_torch_is_bit_identical(tmp_path):
    state = _random_state("resnet20", 7)
    torch.save(state, tmp_path / "a.pt")
    run_module("export.transfer", "--from", "torch", "--to", "keras", "--model", "resnet20",
               "--src", tmp_path / "a.pt", "--out", tmp_path / "b.weights.h5")
    run_module("export.transfer", "--from", "keras", "--to", "torch", "--model", "resnet20",
               "--src", tmp_path / "b.weights.h5", "--out", tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)
    keys = [k for k in state if not k.endswith("num_batches_tracked")]
    assert len(keys) == 19 + 19 * 4 + 2  # 19 convs, 19 BNs (4 tensors each), fc: every tensor compared
    for k in keys:
        assert torch.equal(state[k], back[k]), k


def _torchvision_checkpoint(torch_home, seed: int = 0) -> tuple[torch.nn.Module, str]:
    """A torchvision resnet18 with random weights and BN statistics, stored where the hub cache is."""
    torch.manual_seed(seed)
    tv = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    path = torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), path)
    return tv.eval(), str(path)


def test_pretrained_torchvision_file_becomes_a_keras_model_computing_the_same(tmp_path):
    tv, _ = _torchvision_checkpoint(tmp_path / "th")
    out = tmp_path / "r18.weights.h5"
    run_module("export.transfer", "--from", "torch", "--to", "keras", "--model", "resnet18", "--pretrained",
               "--out", out, env={"TORCH_HOME": str(tmp_path / "th")})
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x.transpose(0, 2, 3, 1))
    from shared.spec import get_spec

    job = {"spec": get_spec("resnet18").to_dict(), "weights": str(out),
           "forward": {"input": str(tmp_path / "x.npy"), "layers": [], "out": str(tmp_path / "k.npz")}}
    (tmp_path / "job.json").write_text(json.dumps({"jobs": [job], "report": str(tmp_path / "r.json")}))
    run_module("keras_impl.parity", tmp_path / "job.json")
    keras_logits = np.load(tmp_path / "k.npz")["logits"]
    with torch.no_grad():
        expected = tv(torch.from_numpy(x)).numpy()  # torchvision's own model: an independent oracle
    assert np.abs(expected).max() > 1.0
    assert np.abs(keras_logits - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


@pytest.mark.slow
def test_keras_file_formats_and_run_folder(tmp_path):
    state = _random_state("resnet20", 3)
    torch.save({"model": state, "epoch": 1}, tmp_path / "ckpt.pt")  # a training checkpoint wrapper
    run_module("export.transfer", "--from", "torch", "--to", "keras", "--model", "resnet20",
               "--src", tmp_path / "ckpt.pt", "--out", tmp_path / "m.keras")
    run = tmp_path / "run"
    run.mkdir()
    run_module("export.transfer", "--from", "keras", "--to", "keras", "--src", tmp_path / "m.keras",
               "--model", "resnet20", "--out", run / "best.safetensors")
    from shared.spec import get_spec

    (run / "config.json").write_text(json.dumps({"framework": "keras", "spec": get_spec("resnet20").to_dict()}))
    run_module("export.transfer", "--from", "keras", "--to", "torch", "--src", run, "--out", tmp_path / "back.pt")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    for k, v in state.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, back[k]), k
