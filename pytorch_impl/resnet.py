"""ResNet (and its plain twin) in PyTorch, built from a shared ModelSpec (docs/models.md)."""

from __future__ import annotations

import torch
from torch import nn

from pytorch_impl.blocks import BLOCK_TYPES
from shared.spec import ModelSpec, get_spec


class ResNet(nn.Module):
    """One class for every registry model: CIFAR or ImageNet stem, basic or bottleneck blocks.

    Module names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample.0``,
    ``fc``), so torchvision's state_dicts load strictly into the option-B models.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        block = BLOCK_TYPES[spec.block]
        w = spec.stem_width
        if spec.stem == "imagenet":
            self.conv1 = nn.Conv2d(spec.in_channels, w, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(spec.in_channels, w, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if spec.stem == "imagenet" else None
        )
        stages: dict[str, list[nn.Module]] = {}
        for b in spec.blocks():
            stage = b.name.split(".")[0]
            stages.setdefault(stage, []).append(block(b))
        for stage, blocks in stages.items():
            self.add_module(stage, nn.Sequential(*blocks))
        self.layer_names = list(stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(spec.feature_dim, spec.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He et al. (2015) initialise convolutions as in their PReLU paper (He init, fan_out as
        # torchvision does); BN starts as the identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for stage in self.layer_names:
            x = getattr(self, stage)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.fc(torch.flatten(x, 1))


def build_model(spec: ModelSpec | str, **overrides) -> ResNet:
    """A ResNet from a spec or a registry name (``num_classes``/``shortcut`` overrides allowed)."""
    if isinstance(spec, str):
        spec = get_spec(spec, **overrides)
    elif overrides:
        spec = spec.with_overrides(**overrides)
    return ResNet(spec)
