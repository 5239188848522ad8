"""ResNet (and its plain twin) in Keras 3, built from a shared ModelSpec; NHWC."""

from __future__ import annotations

import math
import sys

import keras
from keras import layers

from keras_impl.blocks import BLOCK_TYPES, apply, batch_norm, conv
from shared.names import keras_name
from shared.spec import ModelSpec, get_spec


def dense_initializers(fan_in: int) -> dict:
    """PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / math.sqrt(fan_in)
    return {
        "kernel_initializer": keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
        "bias_initializer": keras.initializers.RandomUniform(-bound, bound),
    }


def ResNet(spec: ModelSpec, input_shape: tuple | None = None) -> keras.Model:
    """A functional ResNet whose layers are named by the canonical torchvision module paths
    (``shared.names.keras_name``: ``layer2.0.conv1`` -> ``layer2_0_conv1``).

    ``input_shape`` defaults to (None, None, C): any spatial size, as in PyTorch.
    """
    # Keras walks the functional graph recursively (a few frames per layer); ResNet-1202 has ~4,200
    # layers, far past Python's default limit of 1,000 frames.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000 + 20 * len(spec.blocks())))
    inputs = keras.Input(shape=input_shape or (None, None, spec.in_channels), name="input")
    w = spec.stem_width
    if spec.stem == "imagenet":
        x = apply(conv(w, 7, 2, "conv1"), inputs)
    else:
        x = apply(conv(w, 3, 1, "conv1"), inputs)
    x = batch_norm("bn1")(x)
    x = layers.ReLU(name="relu")(x)
    if spec.stem == "imagenet":
        # torch pads max-pooling with -inf; after a ReLU every value is >= 0, so zeros are equivalent.
        x = layers.ZeroPadding2D(1, name=keras_name("maxpool.pad"))(x)
        x = layers.MaxPooling2D(3, 2, padding="valid", name="maxpool")(x)
    block = BLOCK_TYPES[spec.block]
    for b in spec.blocks():
        x = block(b)(x)
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    # Logits in float32 even under a mixed-precision policy, so the softmax/loss stay stable.
    outputs = layers.Dense(spec.num_classes, name="fc", dtype="float32",
                           **dense_initializers(spec.feature_dim))(x)
    return keras.Model(inputs, outputs, name=spec.name)


def build_model(spec: ModelSpec | str, input_shape: tuple | None = None, **overrides) -> keras.Model:
    """A ResNet from a spec or a registry name (``num_classes``/``shortcut`` overrides allowed)."""
    if isinstance(spec, str):
        spec = get_spec(spec, **overrides)
    elif overrides:
        spec = spec.with_overrides(**overrides)
    return ResNet(spec, input_shape)
