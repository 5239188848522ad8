"""ModelSpec, the one framework-neutral definition of a ResNet and its plain twin, and the registry (docs/models.md).

``pytorch_impl`` and ``keras_impl`` build their models from a :class:`ModelSpec`; neither re-derives depth rules.
Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

STEMS = ("cifar", "imagenet")
BLOCKS = ("basic", "bottleneck")
SHORTCUTS = ("A", "B", "C")
EXPANSION = {"basic": 1, "bottleneck": 4}

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
IMAGENET_LAYERS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines one network's architecture.

    ``widths`` are the per-stage ``planes`` (the 3x3 width); a stage's output has
    ``planes * expansion`` channels. ``residual=False`` gives the plain twin: the same layers
    with every shortcut (and so every projection) removed.
    """

    name: str
    stem: str
    block: str
    layers: tuple[int, ...]
    widths: tuple[int, ...]
    shortcut: str
    residual: bool = True
    num_classes: int = 10
    input_size: int = 32
    in_channels: int = 3

    def __post_init__(self) -> None:
        _check_choice("stem", self.stem, STEMS)
        _check_choice("block", self.block, BLOCKS)
        _check_choice("shortcut", self.shortcut, SHORTCUTS)
        if len(self.layers) != len(self.widths) or not self.layers:
            raise ValueError(
                f"layers and widths must be non-empty and of equal length; got layers={self.layers}, "
                f"widths={self.widths}"
            )
        if any(n < 1 for n in self.layers):
            raise ValueError(f"every stage needs at least one block; got layers={self.layers}")
        if any(w < 1 for w in self.widths):
            raise ValueError(f"every stage width must be >= 1; got widths={self.widths}")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1; got {self.num_classes!r}")
        if self.input_size < 1 or self.in_channels < 1:
            raise ValueError(
                f"input_size and in_channels must be >= 1; got {self.input_size}, {self.in_channels}"
            )
        self.blocks()  # every block checks its own shapes (option A cannot shrink channels, ...)

    # Derived quantities --------------------------------------------------------------------
    @property
    def expansion(self) -> int:
        return EXPANSION[self.block]

    @property
    def stem_width(self) -> int:
        return 16 if self.stem == "cifar" else 64

    @property
    def feature_dim(self) -> int:
        return self.widths[-1] * self.expansion

    @property
    def depth(self) -> int:
        """Weighted layers: the stem conv, every conv on the main path, and the classifier."""
        per_block = 2 if self.block == "basic" else 3
        return 2 + per_block * sum(self.layers)

    @property
    def layout(self) -> str:
        return "plain" if not self.residual else "residual"

    def blocks(self) -> list[BlockSpec]:
        """Every block in forward order, with its canonical name and shapes."""
        out: list[BlockSpec] = []
        in_ch = self.stem_width
        for s, (n, planes) in enumerate(zip(self.layers, self.widths), start=1):
            for b in range(n):
                stride = 2 if (b == 0 and s > 1) else 1
                out_ch = planes * self.expansion
                changes = stride != 1 or in_ch != out_ch
                if not self.residual:
                    shortcut = "none"
                elif self.shortcut == "C" or (self.shortcut == "B" and changes):
                    shortcut = "projection"
                elif changes:
                    shortcut = "zeropad"
                else:
                    shortcut = "identity"
                out.append(BlockSpec(f"layer{s}.{b}", in_ch, planes, out_ch, stride, shortcut))
                in_ch = out_ch
        return out

    def with_overrides(self, **kwargs: Any) -> ModelSpec:
        """A copy with some fields replaced; ``None`` values are ignored (CLI defaults)."""
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return dataclasses.replace(self, **kwargs) if kwargs else self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"], d["widths"] = list(self.layers), list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        d = dict(d)
        d["layers"], d["widths"] = tuple(d["layers"]), tuple(d["widths"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


SHORTCUT_KINDS = ("identity", "zeropad", "projection", "none")


@dataclass(frozen=True)
class BlockSpec:
    """One residual (or plain) block, resolved by :meth:`ModelSpec.blocks`: its canonical name, shapes and
    ``shortcut`` kind (identity, zeropad, projection, or none for the plain twin). Both frameworks' blocks
    are built from it as it is; the checks below are the only ones."""

    name: str
    in_channels: int
    planes: int
    out_channels: int
    stride: int
    shortcut: str

    def __post_init__(self) -> None:
        _check_choice("shortcut kind", self.shortcut, SHORTCUT_KINDS)
        if self.stride < 1:
            raise ValueError(f"{self.name}: stride must be >= 1; got {self.stride}")
        if self.shortcut == "zeropad" and self.out_channels < self.in_channels:
            raise ValueError(f"{self.name}: shortcut option A zero-pads channels and cannot shrink them "
                             f"({self.in_channels} -> {self.out_channels}); use shortcut 'B' or 'C' (a projection)")
        if self.shortcut == "identity" and (self.stride != 1 or self.in_channels != self.out_channels):
            raise ValueError(
                f"{self.name}: identity shortcut needs equal shapes; got {self.in_channels}->{self.out_channels} "
                f"channels, stride {self.stride}: use 'zeropad' or 'projection'"
            )

    @property
    def residual(self) -> bool:
        """False for the plain twin's blocks: no shortcut, no addition."""
        return self.shortcut != "none"


def _check_choice(what: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid choices: {', '.join(map(str, choices))}")


# Builders --------------------------------------------------------------------------------------
def cifar_spec(
    depth: int, *, residual: bool = True, shortcut: str = "A", num_classes: int = 10
) -> ModelSpec:
    """The CIFAR ResNet of the paper (Sec. 4.2): 6n+2 layers, widths 16/32/64, option A."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR depth must be 6n+2 with n >= 1 (e.g. {', '.join(map(str, CIFAR_DEPTHS))}); "
            f"got {depth!r}"
        )
    n = (depth - 2) // 6
    prefix = "resnet" if residual else "plain"
    return ModelSpec(
        name=f"{prefix}{depth}",
        stem="cifar",
        block="basic",
        layers=(n, n, n),
        widths=(16, 32, 64),
        shortcut=shortcut,
        residual=residual,
        num_classes=num_classes,
        input_size=32,
    )


def imagenet_spec(
    depth: int, *, residual: bool = True, shortcut: str = "B", num_classes: int = 1000
) -> ModelSpec:
    """ResNet-18/34/50/101/152 (Table 1), torchvision's v1.5 layout (stride on the 3x3)."""
    if depth not in IMAGENET_LAYERS:
        raise ValueError(
            f"ImageNet depth must be one of {', '.join(map(str, IMAGENET_LAYERS))}; got {depth!r}"
        )
    block, layers = IMAGENET_LAYERS[depth]
    prefix = "resnet" if residual else "plain"
    return ModelSpec(
        name=f"{prefix}{depth}",
        stem="imagenet",
        block=block,
        layers=layers,
        widths=(64, 128, 256, 512),
        shortcut=shortcut,
        residual=residual,
        num_classes=num_classes,
        input_size=224,
    )


def _registry() -> dict[str, ModelSpec]:
    reg: dict[str, ModelSpec] = {}
    for residual in (True, False):
        for d in CIFAR_DEPTHS:
            s = cifar_spec(d, residual=residual)
            reg[s.name] = s
        for d in IMAGENET_LAYERS:
            s = imagenet_spec(d, residual=residual)
            reg[s.name] = s
    return reg


REGISTRY: dict[str, ModelSpec] = _registry()
MODEL_NAMES: tuple[str, ...] = tuple(REGISTRY)


def get_spec(
    name: str,
    *,
    num_classes: int | None = None,
    shortcut: str | None = None,
    input_size: int | None = None,
) -> ModelSpec:
    """Look a model up by name; ``resnetN`` / ``plainN`` with any CIFAR depth 6n+2 also works.

    Unset (``None``) overrides keep the registry's defaults, so CLI defaults never override them.
    """
    if name in REGISTRY:
        spec = REGISTRY[name]
    else:
        spec = None
        for prefix, residual in (("resnet", True), ("plain", False)):
            rest = name[len(prefix):] if isinstance(name, str) and name.startswith(prefix) else ""
            if rest.isdigit() and int(rest) not in IMAGENET_LAYERS:
                depth = int(rest)
                if (depth - 2) % 6 == 0 and depth >= 8:
                    spec = cifar_spec(depth, residual=residual)
        if spec is None:
            raise ValueError(
                f"unknown model {name!r}; valid choices: {', '.join(MODEL_NAMES)} "
                "(or resnetN/plainN for any CIFAR depth N = 6n+2)"
            )
    return spec.with_overrides(num_classes=num_classes, shortcut=shortcut, input_size=input_size)
