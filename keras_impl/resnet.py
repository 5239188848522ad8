"""ResNet (and its plain twin) in Keras 3, a functional model built from a shared ModelSpec; NHWC (docs/models.md)."""

from __future__ import annotations

import contextlib
import math
import sys

import keras
from keras import layers

from keras_impl.blocks import APPLY_BLOCK, apply_batch_norm, apply_conv, layer_seed
from shared.names import keras_name
from shared.spec import ModelSpec, get_spec


def dense_initializers(fan_in: int, seed: int | None = None) -> dict:
    """PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / math.sqrt(fan_in)
    return {
        "kernel_initializer": keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform",
                                                                 seed=layer_seed(seed, "fc.weight")),
        "bias_initializer": keras.initializers.RandomUniform(-bound, bound, seed=layer_seed(seed, "fc.bias")),
    }


@contextlib.contextmanager
def recursion_room(frames: int):
    """Python's recursion limit raised to at least ``frames`` while the block runs, and put back after.

    Keras maps a functional graph with a recursive walk (a frame per layer); ResNet-1202's ~4,200 layers go far
    past Python's default of 1,000 frames. Only building needs it: calling, saving and training do not recurse.
    """
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, frames))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def ResNet(spec: ModelSpec, input_shape: tuple | None = None, seed: int | None = None) -> keras.Model:
    """A functional ResNet whose layers are named by the canonical torchvision module paths.

    ``input_shape`` defaults to (None, None, C): any spatial size, as in PyTorch. ``seed`` seeds every
    initializer (``keras_impl.blocks.layer_seed``).
    """
    inputs = keras.Input(shape=input_shape or (None, None, spec.in_channels), name="input")
    w = spec.stem_width
    x = apply_conv(inputs, w, 7 if spec.stem == "imagenet" else 3, 2 if spec.stem == "imagenet" else 1, "conv1", seed)
    x = layers.ReLU(name="relu")(apply_batch_norm(x, "bn1"))
    if spec.stem == "imagenet":
        # torch pads max-pooling with -inf; after a ReLU every value is >= 0, so zeros are equivalent.
        x = layers.ZeroPadding2D(1, name=keras_name("maxpool.pad"))(x)
        x = layers.MaxPooling2D(3, 2, padding="valid", name="maxpool")(x)
    apply_block = APPLY_BLOCK[spec.block]
    for b in spec.blocks():
        x = apply_block(x, b, seed)
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    # Logits in float32 even under a mixed-precision policy, so the softmax/loss stay stable.
    outputs = layers.Dense(spec.num_classes, name="fc", dtype="float32",
                           **dense_initializers(spec.feature_dim, seed))(x)
    with recursion_room(1000 + 20 * len(spec.blocks())):
        return keras.Model(inputs, outputs, name=spec.name)


def build_model(spec: ModelSpec | str, input_shape: tuple | None = None, seed: int | None = None,
                **overrides) -> keras.Model:
    """A ResNet from a spec or a registry name (``num_classes``/``shortcut`` overrides allowed)."""
    if isinstance(spec, str):
        spec = get_spec(spec, **overrides)
    elif overrides:
        spec = spec.with_overrides(**overrides)
    return ResNet(spec, input_shape, seed)
