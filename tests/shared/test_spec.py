"""ModelSpec, registry and canonical names: pure Python, no framework."""

import pytest

from shared.names import (
    canonical_layers,
    canonical_name,
    canonical_weights,
    keras_name,
    to_keras_layout,
    to_torch_layout,
)
from shared.spec import MODEL_NAMES, BlockSpec, cifar_spec, get_spec, imagenet_spec
from tests.oracles import CIFAR, IMAGENET


def test_registry_has_every_model_and_its_plain_twin():
    for depth in (20, 32, 44, 56, 110, 1202, 18, 34, 50, 101, 152):
        assert f"resnet{depth}" in MODEL_NAMES and f"plain{depth}" in MODEL_NAMES
    assert set(MODEL_NAMES) >= set(CIFAR) | set(IMAGENET)


def test_paper_defaults():
    assert get_spec("resnet56").shortcut == "A" and get_spec("resnet56").layers == (9, 9, 9)
    assert get_spec("resnet34").shortcut == "B" and get_spec("resnet34").layers == (3, 4, 6, 3)
    assert get_spec("resnet50").block == "bottleneck" and get_spec("plain50").residual is False
    assert get_spec("resnet110").depth == 110 and get_spec("resnet152").depth == 152
    assert get_spec("resnet20", num_classes=7).num_classes == 7
    assert get_spec("resnet26").layers == (4, 4, 4)  # any 6n+2 depth works


@pytest.mark.parametrize("depth", [21, 0, 7, 19, "20"])
def test_cifar_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ValueError, match=r"6n\+2.*got"):
        cifar_spec(depth)


def test_errors_name_value_and_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet20"):
        get_spec("resnet19")
    with pytest.raises(ValueError, match="unknown shortcut 'D'.*A, B, C"):
        get_spec("resnet20", shortcut="D")
    with pytest.raises(ValueError, match="num_classes.*got 0"):
        get_spec("resnet20", num_classes=0)
    with pytest.raises(ValueError, match="ImageNet depth.*got 35"):
        imagenet_spec(35)


def test_option_a_cannot_shrink_channels():
    spec = cifar_spec(20)
    with pytest.raises(ValueError, match=r"option A zero-pads channels and cannot shrink them \(64 -> 32\)"):
        spec.with_overrides(widths=(16, 64, 32))


def test_shortcut_kinds_per_option():
    kinds = {o: [b.shortcut for b in get_spec("resnet20", shortcut=o).blocks()] for o in "ABC"}
    assert kinds["A"] == ["identity"] * 3 + ["zeropad"] + ["identity"] * 2 + ["zeropad"] + ["identity"] * 2
    assert kinds["B"] == [k.replace("zeropad", "projection") for k in kinds["A"]]
    assert kinds["C"] == ["projection"] * 9
    assert {b.shortcut for b in get_spec("plain20").blocks()} == {"none"}
    # ResNet-50's first block changes width (64 -> 256) at stride 1: a projection under option B.
    assert get_spec("resnet50").blocks()[0].shortcut == "projection"


def test_a_block_checks_its_resolved_shortcut_once_for_both_frameworks():
    assert BlockSpec("layer2.0", 16, 32, 32, 2, "zeropad").residual
    assert not BlockSpec("layer2.0", 16, 32, 32, 2, "none").residual
    with pytest.raises(ValueError, match=r"layer2\.0: identity shortcut needs equal shapes; got 16->32 channels"):
        BlockSpec("layer2.0", 16, 32, 32, 2, "identity")
    with pytest.raises(ValueError, match=r"option A zero-pads channels and cannot shrink them \(32 -> 16\)"):
        BlockSpec("layer2.0", 32, 16, 16, 2, "zeropad")
    with pytest.raises(ValueError, match=r"unknown shortcut kind 'A'; valid choices: identity, zeropad"):
        BlockSpec("layer1.0", 16, 16, 16, 1, "A")


def test_canonical_names_are_torchvision_keys():
    keys = [w.key for w in canonical_weights(get_spec("resnet18"))]
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer2.0.downsample.0.weight" in keys and "layer2.0.downsample.1.running_var" in keys
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert len(keys) == len(set(keys))
    w = {w.key: w for w in canonical_weights(get_spec("resnet18"))}
    assert w["bn1.running_mean"].keras_path == "bn1/moving_mean" and not w["bn1.running_mean"].trainable
    assert w["layer1.0.conv1.weight"].keras_path == "layer1_0_conv1/kernel"
    names = [layer.name for layer in canonical_layers(get_spec("resnet20"))]
    assert "layer2.0.downsample" in names and "maxpool" not in names


def test_layout_transposes_round_trip():
    import numpy as np

    conv = np.arange(2 * 3 * 5 * 7).reshape(2, 3, 5, 7)  # (out, in, kh, kw)
    k = to_keras_layout("conv", conv)
    assert k.shape == (5, 7, 3, 2) and k[4, 6, 2, 1] == conv[1, 2, 4, 6]
    assert (to_torch_layout("conv", k) == conv).all()
    dense = np.arange(6).reshape(2, 3)
    assert to_keras_layout("linear", dense).shape == (3, 2)
    assert (to_torch_layout("linear", to_keras_layout("linear", dense)) == dense).all()


def test_spec_json_round_trip():
    spec = get_spec("resnet50", num_classes=2)
    from shared.spec import ModelSpec

    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_keras_names_are_a_bijection_of_module_paths():
    for model in ("resnet20", "resnet50", "plain18"):
        paths = [layer.name for layer in canonical_layers(get_spec(model))]
        names = [keras_name(p) for p in paths]
        assert len(set(names)) == len(paths) and not any("." in n for n in names)
        assert [canonical_name(n) for n in names] == paths
    assert keras_name("layer2.0.downsample.0") == "layer2_0_downsample_0"
    with pytest.raises(ValueError, match="no '_'"):
        keras_name("layer_2")
