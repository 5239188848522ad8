"""ResNet v1 building blocks in Keras 3, matching ``pytorch_impl/blocks.py`` name for name.

Blocks are small builders that wire standard Keras layers into a functional graph (as
keras-hub's ResNet does), so every conv/BN is a top-level layer named by its canonical torchvision
module path through ``shared.names.keras_name`` (``layer2.0.conv1`` -> ``layer2_0_conv1``) and
``model.summary()`` shows every shape. Builders take canonical paths; only the layer constructors
see Keras names. The block's final ReLU carries the block's own name: its output is the block's.

Matching PyTorch numerically:
* PyTorch pads symmetrically; TF's ``padding="same"`` pads only bottom/right at stride 2. Strided
  convolutions therefore get an explicit ``ZeroPadding2D`` and ``padding="valid"``. At stride 1,
  ``"same"`` with an odd kernel pads symmetrically and is used as is (one layer fewer).
* BatchNorm: ``epsilon=1e-5`` (torch's default) and ``momentum=0.9`` (Keras' momentum is the weight
  of the old statistic, 1 - torch's 0.1).
* No bias on convolutions followed by BN; He-normal (fan_out) kernels as torchvision.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from shared.names import keras_name
from shared.spec import BlockSpec, check_zero_pad

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # = 1 - torch's momentum 0.1


def conv_initializer() -> keras.initializers.Initializer:
    """torchvision's ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def batch_norm(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=keras_name(name))


def conv(filters: int, kernel: int, stride: int, name: str) -> list[layers.Layer]:
    """A bias-free convolution padded as PyTorch pads it (``kernel // 2`` on every side)."""
    pad = kernel // 2
    if stride == 1 or pad == 0:
        padding = "same" if pad else "valid"
        return [
            layers.Conv2D(filters, kernel, stride, padding=padding, use_bias=False,
                          kernel_initializer=conv_initializer(), name=keras_name(name))
        ]
    return [
        layers.ZeroPadding2D(pad, name=keras_name(f"{name}.pad")),
        layers.Conv2D(filters, kernel, stride, padding="valid", use_bias=False,
                      kernel_initializer=conv_initializer(), name=keras_name(name)),
    ]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, name: str = "conv") -> list[layers.Layer]:
    del in_planes  # Keras infers it; kept so the signature mirrors PyTorch's
    return conv(out_planes, 3, stride, name)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, name: str = "conv") -> list[layers.Layer]:
    del in_planes
    return conv(out_planes, 1, stride, name)


def apply(seq: list[layers.Layer], x):
    for layer in seq:
        x = layer(x)
    return x


@keras.saving.register_keras_serializable(package="resnet_xf")
class ShortcutZeroPad(layers.Layer):
    """Option A: subsample with the block's stride and append zero channels; no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        check_zero_pad(in_channels, out_channels, stride)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def call(self, x):
        if self.stride != 1:
            x = x[:, :: self.stride, :: self.stride, :]
        pad = self.out_channels - self.in_channels
        if pad:
            x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, pad]])
        return x

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        s = self.stride
        h = None if h is None else math.ceil(h / s)
        w = None if w is None else math.ceil(w / s)
        return (n, h, w, self.out_channels)

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels,
                "out_channels": self.out_channels, "stride": self.stride}


class ShortcutProjection:
    """Options B/C: 1x1 convolution + BN, named ``downsample.0`` / ``downsample.1``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, name: str = "downsample"):
        self.layers = conv1x1(in_channels, out_channels, stride, name=f"{name}.0") + [
            batch_norm(f"{name}.1")
        ]

    def __call__(self, x):
        return apply(self.layers, x)


def make_shortcut(b: BlockSpec):
    """The shortcut of a block (None for an identity shortcut or a plain block)."""
    name = f"{b.name}.downsample"
    if b.shortcut == "projection":
        return ShortcutProjection(b.in_channels, b.out_channels, b.stride, name=name)
    if b.shortcut == "zeropad":
        return ShortcutZeroPad(b.in_channels, b.out_channels, b.stride, name=keras_name(name))
    return None


class _Block:
    """What both blocks share: the shortcut, added before the final ReLU (skipped by the plain twin)."""

    def __init__(self, b: BlockSpec, main: list[layers.Layer]) -> None:
        self.residual = b.residual
        self.main = main
        self.downsample = make_shortcut(b)
        self.add = layers.Add(name=keras_name(f"{b.name}.add"))
        self.out = layers.ReLU(name=keras_name(b.name))

    def __call__(self, x):
        out = apply(self.main, x)
        if self.residual:
            short = x if self.downsample is None else self.downsample(x)
            out = self.add([out, short])
        return self.out(out)


class BasicBlock(_Block):
    """Two 3x3 convolutions; a BlockSpec with shortcut ``none`` is the plain twin (no shortcut, no add)."""

    expansion = 1

    def __init__(self, b: BlockSpec) -> None:
        super().__init__(b, [
            *conv3x3(b.in_channels, b.planes, b.stride, name=f"{b.name}.conv1"),
            batch_norm(f"{b.name}.bn1"),
            layers.ReLU(name=keras_name(f"{b.name}.relu")),
            *conv3x3(b.planes, b.out_channels, name=f"{b.name}.conv2"),
            batch_norm(f"{b.name}.bn2"),
        ])


class Bottleneck(_Block):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, b: BlockSpec) -> None:
        super().__init__(b, [
            *conv1x1(b.in_channels, b.planes, name=f"{b.name}.conv1"),
            batch_norm(f"{b.name}.bn1"),
            layers.ReLU(name=keras_name(f"{b.name}.relu1")),
            *conv3x3(b.planes, b.planes, b.stride, name=f"{b.name}.conv2"),
            batch_norm(f"{b.name}.bn2"),
            layers.ReLU(name=keras_name(f"{b.name}.relu2")),
            *conv1x1(b.planes, b.out_channels, name=f"{b.name}.conv3"),
            batch_norm(f"{b.name}.bn3"),
        ])


BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": Bottleneck}
