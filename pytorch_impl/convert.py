"""PyTorch side of weight conversion: native checkpoints (``.pt``/``.pth``) <-> canonical safetensors.

    python -m pytorch_impl.convert export --spec JSON --out W.safetensors (--src FILE | --random SEED
                                          | --init | --pretrained TAG [--weights-file FILE])
    python -m pytorch_impl.convert import --spec JSON --src W.safetensors --out FILE(.pt | .safetensors)

Driven by ``python -m export.transfer`` (docs/harness.md, "Weight transfer"); ``keras_impl/convert.py`` is its mirror.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from pytorch_impl.resnet import build_model
from pytorch_impl.weights import get_weights, set_weights
from shared import errors
from shared.cli import convert_main
from shared.harness.parity.randomize import randomize_arrays
from shared.io import atomic_write, load_weights, save_weights
from shared.names import canonical_weights
from shared.spec import ModelSpec

NATIVE_SUFFIXES = (".pt", ".pth")
_WRAPPERS = ("model", "state_dict", "model_state_dict", "model_state")
_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / torch.compile wrappers
PRETRAINED_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def _state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "conv1.weight" not in obj:
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict):
                return _state_dict(obj[key], path)
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path} holds no state_dict (expected a dict of tensors or one under {_WRAPPERS})")
    out = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def read_native(path: str | os.PathLike, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Canonical arrays from a .safetensors file or a PyTorch state_dict / training checkpoint."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_weights(path)[0]
    if path.suffix not in NATIVE_SUFFIXES:
        raise ValueError(
            f"unknown PyTorch weight file {path}; expected one of .safetensors, {', '.join(NATIVE_SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types, with torch's whole message
        raise ValueError(f"cannot read PyTorch weight file {path}: truncated or corrupt ({type(e).__name__}); "
                         "write it again") from e
    state = _state_dict(obj, path)
    expected = {w.key for w in canonical_weights(spec)}
    unexpected = sorted(k for k in set(state) - expected if not k.endswith("num_batches_tracked"))
    missing = sorted(expected - set(state))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match {spec.name} (shortcut {spec.shortcut}, {spec.num_classes} classes): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return {k: state[k].detach().cpu().float().numpy() for k in sorted(expected)}


def write_native(path: str | os.PathLike, spec: ModelSpec, arrays: dict[str, np.ndarray], source: str = "") -> Path:
    """Load ``arrays`` into a model (validating every key and shape), then save .pt or .safetensors."""
    path = Path(path)
    model = build_model(spec)
    set_weights(model, spec, arrays)
    if path.suffix == ".safetensors":
        return save_weights(path, get_weights(model, spec),
                            {"spec": spec.to_json(), "framework": "torch", "source": source})
    if path.suffix not in NATIVE_SUFFIXES:
        raise ValueError(f"unknown PyTorch output {path}; expected one of .safetensors, {', '.join(NATIVE_SUFFIXES)}")
    state = model.state_dict()
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def pretrained_file(spec: ModelSpec, tag: str = "IMAGENET1K_V1") -> tuple[str, Path]:
    """(download URL, torch hub cache path) of torchvision's weights for ``spec``."""
    from torchvision.models import get_model_weights

    if (spec.name not in PRETRAINED_MODELS or spec.shortcut != "B" or spec.stem != "imagenet"
            or tuple(spec.widths) != (64, 128, 256, 512)):
        raise ValueError(
            f"torchvision has ImageNet weights only for the option-B residual models "
            f"{', '.join(PRETRAINED_MODELS)}; got {spec.name} with shortcut {spec.shortcut}"
        )
    enum = get_model_weights(spec.name)
    try:
        weights = enum[tag]
    except KeyError:
        raise ValueError(
            f"unknown pretrained weights {tag!r} for {spec.name}; valid choices: {', '.join(w.name for w in enum)}"
        ) from None
    return weights.url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def pretrained_arrays(spec: ModelSpec, tag: str = "IMAGENET1K_V1", weights_file: str | None = None,
                      download: bool = True) -> dict[str, np.ndarray]:
    """torchvision's ImageNet weights as canonical arrays.

    Looks at ``weights_file`` when given, else the torch hub cache, else downloads into the cache.
    When ``spec.num_classes`` is not 1000 the classifier keeps the fresh model's initialization.
    """
    url, cached = pretrained_file(spec.with_overrides(num_classes=1000), tag)
    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise FileNotFoundError(f"--weights-file {path} does not exist (the weights are at {url})")
    elif cached.is_file():
        path = cached
    elif not download:
        raise FileNotFoundError(f"no {cached.name} at {cached}; download {url} there or pass --weights-file")
    else:
        try:
            torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True)
        except Exception as e:  # URLError, HTTPError, hash mismatch...
            raise FileNotFoundError(
                f"could not download {url} ({e}); looked for {cached} (torch hub cache, set TORCH_HOME to move "
                f"it): download the file there or pass --weights-file PATH"
            ) from e
        path = cached
    full = read_native(path, spec.with_overrides(num_classes=1000))
    if spec.num_classes != 1000:
        fresh = get_weights(build_model(spec), spec)
        full["fc.weight"], full["fc.bias"] = fresh["fc.weight"], fresh["fc.bias"]
        print(f"note: {spec.num_classes} classes: the ImageNet classifier is replaced by a freshly initialized "
              "one", file=sys.stderr)
    return full


def init_arrays(spec: ModelSpec) -> dict[str, np.ndarray]:
    """The PyTorch model's own fresh initialization (seeded), as canonical arrays."""
    torch.manual_seed(0)
    return get_weights(build_model(spec), spec)


def random_arrays(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """Every weight and BN statistic random (``randomize_arrays``), shaped by the PyTorch model."""
    return randomize_arrays(spec, get_weights(build_model(spec), spec), seed)


def main(argv: list[str] | None = None) -> int:
    return convert_main("python -m pytorch_impl.convert", argv, read_native=read_native, write_native=write_native,
                        init_arrays=init_arrays, random_arrays=random_arrays, pretrained_arrays=pretrained_arrays)


if __name__ == "__main__":
    sys.exit(errors.run(main))
