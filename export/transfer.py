"""Move weights between the PyTorch and the Keras ResNet through canonical safetensors (docs/harness.md).

    python -m export.transfer --from torch --to keras --model resnet34 --pretrained --out resnet34.weights.h5
    python -m export.transfer --from keras --to torch --src model.weights.h5 --model resnet20 --out model.pt
    python -m export.transfer --from torch --to keras --src runs/cifar10/resnet20/torch-.../ --out best.keras

Each framework runs in its own process; this module imports neither.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from shared import errors, process
from shared.io import check_writable, load_weights
from shared.process import FRAMEWORKS
from shared.spec import SHORTCUTS, ModelSpec, get_spec

SUFFIXES = {"torch": (".pt", ".pth", ".safetensors"), "keras": (".weights.h5", ".keras", ".safetensors")}


def _run(framework: str, *args: str) -> None:
    """``python -m <framework package>.convert args...``; a failure stops the command with the child's error."""
    try:
        process.call(framework, "convert", *args)
    except process.ChildError as e:
        raise errors.UserError(str(e)) from None


def resolve_source(src: str | None) -> tuple[str | None, dict | None]:
    """(weight file, spec dict or None) for ``--src``: a run folder gives its best weights and spec."""
    if src is None:
        return None, None
    path = Path(src)
    if path.is_dir():
        from shared.runs import read_run

        run = read_run(path)
        weights = run["best"] or run["last"]
        if weights is None:
            raise ValueError(f"run folder {path} has no best.safetensors or last.safetensors yet")
        return weights, run["config"].get("spec")
    if not path.exists():
        raise ValueError(f"--src {path} does not exist")
    if path.name.endswith(".safetensors"):
        meta = load_weights(path)[1]
        return str(path), json.loads(meta["spec"]) if "spec" in meta else None
    return str(path), None


def _check_suffix(path: str, framework: str, what: str) -> None:
    if not any(path.endswith(s) for s in SUFFIXES[framework]):
        raise ValueError(f"{what} {path} is not a {framework} weight file; expected one of "
                         f"{', '.join(SUFFIXES[framework])}")


def transfer(src_fw: str, dst_fw: str, out: str, spec: ModelSpec, *, src: str | None = None,
            random: int | None = None, init: bool = False, pretrained: str | None = None,
            weights_file: str | None = None) -> Path:
    """Source framework -> canonical safetensors -> target framework's ``out``, each in its own process."""
    spec_json = spec.to_json()
    _check_suffix(out, dst_fw, "--out")
    with tempfile.TemporaryDirectory(prefix="transfer-") as tmp:
        canonical = src if (src and src.endswith(".safetensors")) else None
        if canonical is None:
            if src:
                _check_suffix(src, src_fw, "--src")
            canonical = str(Path(tmp) / "canonical.safetensors")
            args = ["export", "--spec", spec_json, "--out", canonical]
            if src:
                args += ["--src", src]
            elif random is not None:
                args += ["--random", str(random)]
            elif pretrained:
                args += ["--pretrained", pretrained] + (["--weights-file", weights_file] if weights_file else [])
            elif init:
                args += ["--init"]
            _run(src_fw, *args)
        _run(dst_fw, "import", "--spec", spec_json, "--src", canonical, "--out", out)
    return Path(out)


def _parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(prog="python -m export.transfer", description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="src_fw", choices=FRAMEWORKS, required=True, help="source framework")
    p.add_argument("--to", dest="dst_fw", choices=FRAMEWORKS, required=True, help="target framework")
    p.add_argument("--out", required=True, help="output file (suffix picks the format)")
    p.add_argument("--src", default=None, help="checkpoint, .safetensors file or run folder")
    p.add_argument("--random", type=int, default=None, metavar="SEED", help="random weights and BN statistics")
    p.add_argument("--init", action="store_true", help="the source framework's fresh initialization")
    p.add_argument("--pretrained", nargs="?", const="IMAGENET1K_V1", default=None, metavar="TAG",
                   help="torchvision ImageNet weights (default tag IMAGENET1K_V1); --from torch only")
    p.add_argument("--weights-file", default=None, help="with --pretrained: a local copy of torchvision's file")
    p.add_argument("--model", default=None, help="registry name; default: the source's own spec")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--shortcut", choices=SHORTCUTS, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    check_writable(args.out, what="the converted weight file")
    sources = [args.src is not None, args.random is not None, args.init, args.pretrained is not None]
    if sum(sources) != 1:
        raise errors.UserError("give exactly one source: --src PATH, --random SEED, --init or --pretrained")
    if args.pretrained is not None and args.src_fw != "torch":
        raise errors.UserError("--pretrained takes torchvision's weights: use --from torch")
    if args.weights_file and args.pretrained is None:
        raise errors.UserError("--weights-file goes with --pretrained")
    try:
        weights, spec_dict = resolve_source(args.src)
        if args.model:
            spec = get_spec(args.model, num_classes=args.num_classes, shortcut=args.shortcut)
        elif spec_dict:
            spec = ModelSpec.from_dict(spec_dict).with_overrides(num_classes=args.num_classes,
                                                                  shortcut=args.shortcut)
        else:
            raise ValueError("the source carries no spec: name the model with --model")
        out = transfer(args.src_fw, args.dst_fw, args.out, spec, src=weights, random=args.random,
                      init=args.init, pretrained=args.pretrained, weights_file=args.weights_file)
    except ValueError as e:
        raise errors.UserError(str(e)) from None
    print(f"{spec.name}: {args.src_fw} -> {args.dst_fw}: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main))
