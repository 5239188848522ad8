"""ResNet v1 building blocks in PyTorch, with torchvision's module names (docs/models.md).

Post-activation, with the bottleneck's stride on its 3x3 convolution, as in torchvision ("ResNet v1.5").
"""

from __future__ import annotations

import torch
from torch import nn

from shared.spec import BlockSpec


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1; no bias because a BatchNorm follows."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution; no bias because a BatchNorm follows."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ShortcutZeroPad(nn.Module):
    """Option A: subsample with the block's stride and append zero channels; no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        pad = self.out_channels - self.in_channels
        if pad:
            # F.pad pads the last dims first: (W_l, W_r, H_t, H_b, C_front, C_back)
            x = nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class ShortcutProjection(nn.Sequential):
    """Options B/C: 1x1 convolution + BN; a Sequential so its keys are ``downsample.0/.1``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


def make_shortcut(b: BlockSpec) -> nn.Module | None:
    """The shortcut module of a block (None for an identity shortcut or a plain block)."""
    if b.shortcut == "projection":
        return ShortcutProjection(b.in_channels, b.out_channels, b.stride)
    if b.shortcut == "zeropad":
        return ShortcutZeroPad(b.in_channels, b.out_channels, b.stride)
    return None


class _Block(nn.Module):
    """What both blocks share: the shortcut, added before the final ReLU (skipped by the plain twin)."""

    def __init__(self, b: BlockSpec) -> None:
        super().__init__()
        self.residual = b.residual
        self.relu = nn.ReLU(inplace=True)

    def merge(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The main path's ``out`` plus the shortcut of the input ``x`` (residual blocks only), then ReLU."""
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class BasicBlock(_Block):
    """Two 3x3 convolutions; a BlockSpec with shortcut ``none`` is the plain twin (no shortcut, no add)."""

    def __init__(self, b: BlockSpec) -> None:
        super().__init__(b)
        self.conv1 = conv3x3(b.in_channels, b.planes, b.stride)
        self.bn1 = nn.BatchNorm2d(b.planes)
        self.conv2 = conv3x3(b.planes, b.out_channels)
        self.bn2 = nn.BatchNorm2d(b.out_channels)
        self.downsample = make_shortcut(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.merge(self.bn2(self.conv2(out)), x)


class Bottleneck(_Block):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4; plain twin with shortcut ``none``."""

    def __init__(self, b: BlockSpec) -> None:
        super().__init__(b)
        self.conv1 = conv1x1(b.in_channels, b.planes)
        self.bn1 = nn.BatchNorm2d(b.planes)
        self.conv2 = conv3x3(b.planes, b.planes, b.stride)
        self.bn2 = nn.BatchNorm2d(b.planes)
        self.conv3 = conv1x1(b.planes, b.out_channels)
        self.bn3 = nn.BatchNorm2d(b.out_channels)
        self.downsample = make_shortcut(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.merge(self.bn3(self.conv3(out)), x)


BLOCK_TYPES: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
