"""ResNet v1 blocks in Keras 3, as functions over tensors (keras-hub's manner), matching ``pytorch_impl/blocks.py``
name for name: every conv and BN is a layer named by its canonical torchvision module path
(``shared.names.keras_name``: ``layer2.0.conv1`` -> ``layer2_0_conv1``), and a block's final ReLU carries the
block's own name. How each choice matches PyTorch is in docs/models.md.

``seed`` (an int, or None for Keras' own unseeded draw) seeds every initializer of a model, each layer with its
own seed derived from the layer's name: a model is reproducible without touching any process-wide state.
"""

from __future__ import annotations

import math
import zlib

import keras
from keras import layers, ops

from shared.names import keras_name
from shared.spec import BlockSpec

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # = 1 - torch's momentum 0.1


def layer_seed(seed: int | None, name: str) -> int | None:
    """The initializer seed of layer ``name`` in a model seeded with ``seed``."""
    return None if seed is None else zlib.crc32(f"{seed}:{name}".encode()) & 0x7FFFFFFF


def conv_initializer(seed: int | None = None) -> keras.initializers.Initializer:
    """torchvision's ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal", seed=seed)


def apply_batch_norm(x, name: str):
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=keras_name(name))(x)


def apply_conv(x, filters: int, kernel: int, stride: int, name: str, seed: int | None = None):
    """A bias-free convolution padded as PyTorch pads it (``kernel // 2`` on every side).

    TF's ``padding="same"`` pads only bottom/right at stride 2, so a strided convolution gets an explicit
    ``ZeroPadding2D`` and ``padding="valid"``; at stride 1, ``"same"`` with an odd kernel is symmetric.
    """
    pad = kernel // 2
    init = conv_initializer(layer_seed(seed, name))
    if stride == 1 or pad == 0:
        return layers.Conv2D(filters, kernel, stride, padding="same" if pad else "valid", use_bias=False,
                             kernel_initializer=init, name=keras_name(name))(x)
    x = layers.ZeroPadding2D(pad, name=keras_name(f"{name}.pad"))(x)
    return layers.Conv2D(filters, kernel, stride, padding="valid", use_bias=False, kernel_initializer=init,
                         name=keras_name(name))(x)


@keras.saving.register_keras_serializable(package="resnet_xf")
class ShortcutZeroPad(layers.Layer):
    """Option A: subsample with the block's stride and append zero channels; no parameters. (A layer, not a
    function: it is one named operation, shown as one row, with a config of its own.)"""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
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


def apply_shortcut(x, b: BlockSpec, seed: int | None = None):
    """The shortcut branch of block ``b`` on its input ``x``: identity, option A's zero-pad, or a 1x1
    convolution + BN projection named ``downsample.0`` / ``downsample.1`` (options B/C)."""
    name = f"{b.name}.downsample"
    if b.shortcut == "projection":
        x = apply_conv(x, b.out_channels, 1, b.stride, f"{name}.0", seed)
        return apply_batch_norm(x, f"{name}.1")
    if b.shortcut == "zeropad":
        return ShortcutZeroPad(b.in_channels, b.out_channels, b.stride, name=keras_name(name))(x)
    return x


def _merge(out, x, b: BlockSpec, seed: int | None):
    """The main path's ``out`` plus the shortcut of the input ``x`` (residual blocks only), then the block's ReLU."""
    if b.residual:
        out = layers.Add(name=keras_name(f"{b.name}.add"))([out, apply_shortcut(x, b, seed)])
    return layers.ReLU(name=keras_name(b.name))(out)


def apply_basic_block(x, b: BlockSpec, seed: int | None = None):
    """Two 3x3 convolutions; a BlockSpec with shortcut ``none`` is the plain twin (no shortcut, no add)."""
    out = apply_conv(x, b.planes, 3, b.stride, f"{b.name}.conv1", seed)
    out = layers.ReLU(name=keras_name(f"{b.name}.relu"))(apply_batch_norm(out, f"{b.name}.bn1"))
    out = apply_batch_norm(apply_conv(out, b.out_channels, 3, 1, f"{b.name}.conv2", seed), f"{b.name}.bn2")
    return _merge(out, x, b, seed)


def apply_bottleneck_block(x, b: BlockSpec, seed: int | None = None):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision), 1x1 expand by 4; plain twin with shortcut ``none``."""
    out = apply_batch_norm(apply_conv(x, b.planes, 1, 1, f"{b.name}.conv1", seed), f"{b.name}.bn1")
    out = layers.ReLU(name=keras_name(f"{b.name}.relu1"))(out)
    out = apply_batch_norm(apply_conv(out, b.planes, 3, b.stride, f"{b.name}.conv2", seed), f"{b.name}.bn2")
    out = layers.ReLU(name=keras_name(f"{b.name}.relu2"))(out)
    out = apply_batch_norm(apply_conv(out, b.out_channels, 1, 1, f"{b.name}.conv3", seed), f"{b.name}.bn3")
    return _merge(out, x, b, seed)


APPLY_BLOCK = {"basic": apply_basic_block, "bottleneck": apply_bottleneck_block}
BLOCK_NAMES = {"basic": "BasicBlock", "bottleneck": "Bottleneck"}  # the block's name in summaries, as torch's class
