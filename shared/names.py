"""Canonical layer and parameter names (torchvision's ``state_dict`` keys) and the one bijection between the two
frameworks: Keras layer ``layer2_0_conv1`` is module ``layer2.0.conv1`` (docs/models.md).

Every weight file the frameworks exchange is keyed by canonical names, in the PyTorch layout; the only layout
transposes live here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy only for type hints; the functions below accept any array with .transpose
    import numpy as np

    from shared.spec import ModelSpec

# kind -> (torch parameter/buffer name, keras weight name, is_trainable)
WEIGHTS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "conv": (("weight", "kernel", True),),
    "bn": (
        ("weight", "gamma", True),
        ("bias", "beta", True),
        ("running_mean", "moving_mean", False),
        ("running_var", "moving_variance", False),
    ),
    "linear": (("weight", "kernel", True), ("bias", "bias", True)),
}

# torch conv (out, in, kh, kw) -> keras (kh, kw, in, out); torch linear (out, in) -> keras (in, out)
_TO_KERAS = {"conv": (2, 3, 1, 0), "linear": (1, 0)}
_TO_TORCH = {"conv": (3, 2, 0, 1), "linear": (1, 0)}


def keras_name(path: str) -> str:
    """The Keras layer name of a canonical module path (``layer2.0.conv1`` -> ``layer2_0_conv1``).

    Valid on every Keras backend (the PyTorch backend refuses ``.`` in names).
    """
    if "_" in path:
        raise ValueError(f"canonical module paths hold no '_' (torchvision's never do); got {path!r}")
    return path.replace(".", "_")


def canonical_name(name: str) -> str:
    """The inverse of :func:`keras_name`: a Keras layer name back to its module path."""
    return name.replace("_", ".")


@dataclass(frozen=True)
class Layer:
    """A canonical layer: its module path and its kind."""

    name: str
    kind: str

    @property
    def keras_name(self) -> str:
        """The name of this layer in the Keras model."""
        return keras_name(self.name)


@dataclass(frozen=True)
class Weight:
    """One tensor of the model under both of its names."""

    key: str  # canonical = torch state_dict key
    layer: str  # canonical module path of the layer
    keras_name: str  # keras weight name within the layer
    kind: str
    trainable: bool

    @property
    def keras_path(self) -> str:
        """The Keras variable path (``layer2_0_conv1/kernel``)."""
        return f"{keras_name(self.layer)}/{self.keras_name}"


def canonical_layers(spec: ModelSpec) -> list[Layer]:
    """Every named layer of the model, in forward order, derived from the spec alone.

    Both frameworks' summaries report exactly these rows; a block row is the block's output.
    """
    rows = [Layer("conv1", "conv"), Layer("bn1", "bn")]
    if spec.stem == "imagenet":
        rows.append(Layer("maxpool", "maxpool"))
    convs = 2 if spec.block == "basic" else 3
    for blk in spec.blocks():
        for i in range(1, convs + 1):
            rows += [Layer(f"{blk.name}.conv{i}", "conv"), Layer(f"{blk.name}.bn{i}", "bn")]
        if blk.shortcut == "projection":
            rows += [Layer(f"{blk.name}.downsample.0", "conv"), Layer(f"{blk.name}.downsample.1", "bn")]
        elif blk.shortcut == "zeropad":
            rows.append(Layer(f"{blk.name}.downsample", "zeropad"))
        rows.append(Layer(blk.name, "block"))
    rows += [Layer("avgpool", "avgpool"), Layer("fc", "linear")]
    return rows


def canonical_weights(spec: ModelSpec) -> list[Weight]:
    """Every parameter and BN running statistic, canonical key and Keras name side by side."""
    out = []
    for layer in canonical_layers(spec):
        for torch_name, keras_name, trainable in WEIGHTS.get(layer.kind, ()):
            out.append(
                Weight(f"{layer.name}.{torch_name}", layer.name, keras_name, layer.kind, trainable)
            )
    return out


def check_weight_keys(spec: ModelSpec, arrays: dict) -> None:
    """A ValueError unless ``arrays`` holds exactly the canonical weights of ``spec`` (both frameworks' loaders
    check it here, before any tensor is touched)."""
    expected = {w.key for w in canonical_weights(spec)}
    missing, unexpected = expected - set(arrays), set(arrays) - expected
    if missing or unexpected:
        raise ValueError(f"weights do not match {spec.name}: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")


def stage_names(spec: ModelSpec) -> list[str]:
    """Names whose outputs a parity report compares: the stem, every stage, the logits."""
    return ["bn1"] + [f"layer{s}" for s in range(1, len(spec.layers) + 1)] + ["fc"]


def stage_output_layer(spec: ModelSpec, stage: str) -> str:
    """The canonical layer whose output is ``stage``'s output (``layer2`` -> its last block)."""
    if stage.startswith("layer") and "." not in stage:
        s = int(stage[len("layer"):])
        return f"{stage}.{spec.layers[s - 1] - 1}"
    return stage


def to_keras_layout(kind: str, array: np.ndarray) -> np.ndarray:
    """A canonical (PyTorch-layout) array in the layout Keras stores it."""
    perm = _TO_KERAS.get(kind)
    return array if perm is None or array.ndim != len(perm) else array.transpose(perm)


def to_torch_layout(kind: str, array: np.ndarray) -> np.ndarray:
    """A Keras-layout array in the canonical (PyTorch) layout."""
    perm = _TO_TORCH.get(kind)
    return array if perm is None or array.ndim != len(perm) else array.transpose(perm)


def count_params(spec: ModelSpec, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """(trainable, non_trainable) element counts of a canonical-key -> shape mapping."""
    trainable = non_trainable = 0
    by_key = {w.key: w for w in canonical_weights(spec)}
    for key, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        if by_key[key].trainable:
            trainable += n
        else:
            non_trainable += n
    return trainable, non_trainable
