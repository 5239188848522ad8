"""ResNet v1 building blocks in PyTorch, with torchvision's module names.

Post-activation (conv -> BN -> ReLU, add, then ReLU) as in He et al. 2015. The Bottleneck puts its
stride on the 3x3 convolution, as torchvision does ("ResNet v1.5"): the 1x1 that precedes it would
otherwise discard 3/4 of the input positions before looking at them.
"""

from __future__ import annotations

import torch
from torch import nn


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
        if out_channels < in_channels:
            raise ValueError(
                f"ShortcutZeroPad cannot shrink channels ({in_channels} -> {out_channels}); "
                "use ShortcutProjection (option B/C)"
            )
        if stride < 1:
            raise ValueError(f"stride must be >= 1; got {stride}")
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


def make_shortcut(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The shortcut module for a BlockSpec's ``shortcut`` (None for identity or plain)."""
    if kind == "projection":
        return ShortcutProjection(in_channels, out_channels, stride)
    if kind == "zeropad":
        return ShortcutZeroPad(in_channels, out_channels, stride)
    if kind in ("identity", "none"):
        return None
    raise ValueError(f"unknown shortcut {kind!r}; valid choices: projection, zeropad, identity, none")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; ``residual=False`` is the plain twin (no shortcut, no add)."""

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: str = "identity",
        residual: bool = True,
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        if not residual:
            shortcut = "none"
        elif shortcut == "identity" and (stride != 1 or in_planes != out):
            raise ValueError(
                f"identity shortcut needs equal shapes; got {in_planes}->{out} channels, stride "
                f"{stride}: use 'zeropad' or 'projection'"
            )
        self.residual = residual
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = make_shortcut(shortcut, in_planes, out, stride)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4; plain twin with ``residual=False``."""

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: str = "identity",
        residual: bool = True,
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        if not residual:
            shortcut = "none"
        elif shortcut == "identity" and (stride != 1 or in_planes != out):
            raise ValueError(
                f"identity shortcut needs equal shapes; got {in_planes}->{out} channels, stride "
                f"{stride}: use 'zeropad' or 'projection'"
            )
        self.residual = residual
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_planes, out, stride)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


BLOCK_TYPES: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
