"""PyTorch side of weight conversion: native checkpoints <-> canonical safetensors.

    python -m pytorch_impl.convert export --spec JSON --out W.safetensors (--src FILE | --random SEED
                                          | --init | --pretrained TAG [--weights-file FILE])
    python -m pytorch_impl.convert import --spec JSON --src W.safetensors --out FILE(.pt | .safetensors)

Native files: a ``state_dict`` saved with ``torch.save`` (``.pt``/``.pth``, read with
``weights_only=True``) or a training checkpoint holding one under ``model``/``state_dict``/
``model_state_dict``. ``--pretrained`` takes torchvision's ImageNet weights. The driver is
``python -m export.transfer``; ``keras_impl/convert.py`` is the mirror image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from pytorch_impl.resnet import build_model
from pytorch_impl.weights import get_weights, set_weights
from shared.harness.parity import randomize_arrays
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
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({e})") from e
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pytorch_impl.convert")
    p.add_argument("action", choices=("export", "import"))
    p.add_argument("--spec", required=True, help="ModelSpec as JSON")
    p.add_argument("--src", default=None)
    p.add_argument("--random", type=int, default=None, help="seed: random weights and BN statistics")
    p.add_argument("--init", action="store_true", help="the model's own fresh initialization")
    p.add_argument("--pretrained", default=None, help="torchvision weights tag, e.g. IMAGENET1K_V1")
    p.add_argument("--weights-file", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    spec = ModelSpec.from_dict(json.loads(args.spec))
    try:
        if args.action == "import":
            write_native(args.out, spec, load_weights(args.src)[0], source=str(args.src))
            return 0
        if args.pretrained:
            arrays = pretrained_arrays(spec, args.pretrained, args.weights_file)
            source = f"torchvision:{args.pretrained}"
        elif args.random is not None:
            model = build_model(spec)
            arrays, source = randomize_arrays(spec, get_weights(model, spec), args.random), f"random:{args.random}"
        elif args.init:
            torch.manual_seed(0)
            arrays, source = get_weights(build_model(spec), spec), "init"
        else:
            arrays, source = read_native(args.src, spec), str(args.src)
        write_native(args.out, spec, arrays, source=source)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
