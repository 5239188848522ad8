"""PyTorch models: the seed notebook's shape checks, parameter oracles, torchvision equality."""

import pytest
import torch
import torchvision

from pytorch_impl.blocks import BasicBlock, Bottleneck, ShortcutProjection, ShortcutZeroPad
from pytorch_impl.resnet import build_model
from shared.spec import MODEL_NAMES, BlockSpec, cifar_spec, get_spec
from tests.oracles import CIFAR, IMAGENET, PAPER_TABLE6_MILLIONS


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def n_stats(m):
    return sum(b.numel() for k, b in m.named_buffers() if k.endswith(("running_mean", "running_var")))


def test_seed_shape_checks():
    assert ShortcutZeroPad(16, 32, 2)(torch.randn(4, 16, 32, 32)).shape == (4, 32, 16, 16)
    assert ShortcutProjection(16, 32, 2)(torch.randn(4, 16, 32, 32)).shape == (4, 32, 16, 16)
    blk = BasicBlock(BlockSpec("block", 16, 32, 32, 2, "zeropad"))
    assert blk(torch.randn(2, 16, 32, 32)).shape == (2, 32, 16, 16)
    bott = Bottleneck(BlockSpec("block", 64, 16, 64, 2, "projection"))
    assert bott(torch.randn(2, 64, 32, 32)).shape == (2, 64, 16, 16)
    assert n_params(build_model(cifar_spec(20))) == CIFAR["resnet20"]  # the paper's 0.27M, Table 6
    with pytest.raises(ValueError, match="6n"):
        build_model(cifar_spec(21))
    assert build_model("resnet56")(torch.randn(4, 3, 32, 32)).shape == (4, 10)


def test_zero_pad_keeps_input_and_appends_zeros():
    x = torch.randn(2, 4, 6, 6)
    y = ShortcutZeroPad(4, 8, 2)(x)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2]) and not y[:, 4:].any()
    assert n_params(ShortcutZeroPad(4, 8, 2)) == 0


@pytest.mark.parametrize("name", [n for n in CIFAR if n != "resnet1202"])
def test_cifar_counts_match_paper(name):
    residual, plain = build_model(name), build_model(name.replace("resnet", "plain"))
    assert n_params(residual) == CIFAR[name] == n_params(plain)  # option A adds no parameter
    assert round(CIFAR[name] / 1e6, 2 if CIFAR[name] < 1e6 else 1) == PAPER_TABLE6_MILLIONS[name]


@pytest.mark.slow
def test_resnet1202_count():
    assert n_params(build_model("resnet1202")) == CIFAR["resnet1202"]


@pytest.mark.parametrize("name", list(IMAGENET))
def test_torchvision_state_dict_loads_strictly_and_agrees(name):
    ours, ref = build_model(name), getattr(torchvision.models, name)()
    assert (n_params(ours), n_stats(ours)) == IMAGENET[name]
    torch.manual_seed(0)
    with torch.no_grad():  # random BN statistics, so a swapped mapping cannot pass by accident
        for k, v in ref.state_dict().items():
            if k.endswith("running_var"):
                v.uniform_(0.5, 2.0)
            elif k.endswith("running_mean"):
                v.normal_(0, 0.2)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


def test_option_a_adds_no_parameter_and_b_c_add_projections():
    a, b, c = (build_model("resnet20", shortcut=o) for o in "ABC")
    assert n_params(a) == CIFAR["resnet20"]
    proj = lambda m: sum(n_params(mod) for n, mod in m.named_modules() if n.endswith("downsample"))
    assert proj(a) == 0 < proj(b) < proj(c)
    assert n_params(b) - n_params(a) == proj(b)
    # plain twins of option-B models lose exactly the projections
    assert n_params(build_model("resnet34")) - n_params(build_model("plain34")) == proj(build_model("resnet34"))


@pytest.mark.parametrize("name", ["resnet20", "plain20", "resnet18", "plain50"])
@pytest.mark.parametrize("shortcut", [None, "C"])
def test_every_parameter_gets_a_gradient_and_no_nan(name, shortcut):
    torch.manual_seed(0)
    model = build_model(name, shortcut=shortcut)
    size = 32 if get_spec(name).stem == "cifar" else 64
    out = model(torch.randn(2, 3, size, size))
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_registry_builds_every_model_lazily_cheap():
    # every registry entry builds (1202 and 152 included) and has the spec's depth of weighted layers
    for name in MODEL_NAMES:
        if name.endswith("1202"):
            continue
        m = build_model(name)
        convs = sum(1 for n, x in m.named_modules() if isinstance(x, torch.nn.Conv2d) and "downsample" not in n)
        assert convs + 1 == get_spec(name).depth, name
