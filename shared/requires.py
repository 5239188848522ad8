"""What each ``make`` target imports, checked before it runs on a machine's own Python (``SYSTEM_PYTHON=1``).

    python -m shared.requires TARGET... [--framework torch|keras] [--variants torch,onnxruntime] [--backend jax]

Fails with one line naming every missing package (docs/gpu.md). Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys

from shared import errors
from shared.backends import split_label
from shared.process import FRAMEWORKS

# The import name of each package, for the error message (pip names differ for a few).
PIP_NAMES = {"PIL": "pillow", "yaml": "pyyaml"}

COMMON = ("numpy",)
TORCH = ("torch", "safetensors")
TRAIN_TORCH = (*TORCH, "tqdm", "tensorboard")
ONNX = ("onnx", "onnxruntime")
KERAS_BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def keras_modules(backend: str | None) -> tuple[str, ...]:
    """Keras and its backend's package (``KERAS_BACKEND``, default tensorflow)."""
    backend = backend or os.environ.get("KERAS_BACKEND") or "tensorflow"
    return ("keras", KERAS_BACKENDS.get(backend, backend), "safetensors", "tqdm")


def framework_modules(framework: str, backend: str | None) -> tuple[str, ...]:
    return TORCH if framework == "torch" else keras_modules(backend)


def bench_modules(variants: str | None, backend: str | None) -> tuple[str, ...]:
    """The packages of the labels that ``--variants`` selects (``shared.bench.parse_variants``), the exporters,
    and PyTorch (it counts the FLOPs and times the matmul peak in every run)."""
    from shared.bench.catalog import default_selection, parse_variants

    chosen = {fw: vs for fw, vs in (parse_variants(variants) if variants else default_selection()).items() if vs}
    mods: list[str] = ["tqdm", *TORCH]
    for fw, vs in chosen.items():
        if fw == "onnxruntime":
            mods += ONNX
            mods += [m for v in vs for m in framework_modules(v.removesuffix("_export"), backend)]
        else:
            framework, pinned = split_label(fw)
            mods += framework_modules(framework, pinned or backend)
    return tuple(dict.fromkeys(mods))


def needed(target: str, framework: str = "torch", variants: str | None = None,
           backend: str | None = None) -> tuple[str, ...]:
    """The import names ``make <target>`` needs on a machine's own Python."""
    both = (*TORCH, *keras_modules(backend))
    table: dict[str, tuple[str, ...]] = {
        "train-torch": TRAIN_TORCH,
        "train-keras": (*keras_modules(backend), "tensorboard"),
        "export": (*framework_modules(framework, backend), *ONNX, *(("tf2onnx",) if framework == "keras" else ())),
        "infer": ("onnxruntime", "PIL"),
        "onnx-parity": (*framework_modules(framework, backend), *ONNX),
        "summary": (*framework_modules(framework, backend), *(("torchinfo",) if framework == "torch" else ())),
        "data": (),
        "bench-data": TORCH,
        # the GPU report's Keras and ONNX Runtime rows say "not run" where their packages are missing
        "gpu-report": TRAIN_TORCH,
        "gpu-full-run": TRAIN_TORCH,
        "lint": ("ruff",),
        "format": ("ruff",),
        "test": (*both, *ONNX, "pytest"),
        "test-all": (*both, *ONNX, "pytest"),
        "test-slow": (*both, *ONNX, "pytest"),
        "test-mutants": (*both, *ONNX, "pytest"),
    }
    if target == "bench":
        return (*COMMON, *bench_modules(variants, backend))
    # compare, convert, ablation and anything new: both frameworks, as the venv has them
    return (*COMMON, *table.get(target, (*both, *ONNX)))


def missing(modules: tuple[str, ...]) -> list[str]:
    """The modules among ``modules`` that this interpreter cannot find (in order, once each)."""
    out = []
    for name in dict.fromkeys(modules):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken parent package, or a module set to None
            found = False
        if not found:
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = errors.ArgumentParser(prog="python -m shared.requires", description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="*", help="make targets (none: nothing to check)")
    p.add_argument("--framework", default="torch", choices=FRAMEWORKS)
    p.add_argument("--variants", default=None, help="the bench's --variants")
    p.add_argument("--backend", default=None, help="the Keras backend (default: KERAS_BACKEND or tensorflow)")
    args = p.parse_args(argv)
    try:
        gaps = {t: missing(needed(t, args.framework, args.variants, args.backend)) for t in args.targets}
    except ValueError as e:  # a bad --variants
        raise errors.UserError(str(e)) from None
    gaps = {t: m for t, m in gaps.items() if m}
    if gaps:
        names = sorted({PIP_NAMES.get(m, m) for m in sum(gaps.values(), [])})
        where = f"{sys.executable} (Python {platform.python_version()})"
        hint = " (or choose BENCH_VARIANTS=torch,onnxruntime:torch_export)" if "bench" in gaps else ""
        raise errors.UserError(f"make {' '.join(gaps)} SYSTEM_PYTHON=1 needs the package(s) {', '.join(names)}, "
                         f"which {where} cannot import; install them{hint}, or drop SYSTEM_PYTHON=1 to use the .venv")
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main))
