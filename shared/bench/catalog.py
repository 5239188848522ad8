"""What the benchmark can run: the framework labels, their variants and processes, and the selection syntax.

Labels: ``torch``, ``keras-tensorflow``, ``keras-jax``, ``keras-torch``, ``onnxruntime``; ``keras`` alone is the
backend ``KERAS_BACKEND`` names (docs/bench.md, "Labels and variants").
"""

from __future__ import annotations

import importlib.util
import os

from shared.backends import BACKENDS, DEFAULT, KERAS_LABELS, framework_label, split_label

LABELS = ("torch", *KERAS_LABELS, "onnxruntime")
TRAINING = ("torch", *KERAS_LABELS)  # the labels with a training loop
MODULES = {"torch": "pytorch_impl.bench", **{k: "keras_impl.bench" for k in KERAS_LABELS},
           "onnxruntime": "export.bench_ort"}
# Each backend's variants, the first being the step exactly as its training loop compiles it.
KERAS_VARIANTS = {
    "tensorflow": ("graph", "eager", "jit_compile", "mixed_precision"),
    "jax": ("jit_compile", "eager", "mixed_precision"),
    "torch": ("eager", "jit_compile", "mixed_precision"),
}
VARIANTS: dict[str, tuple[str, ...]] = {
    "torch": ("eager", "channels_last", "compile", "autocast", "amp_channels_last", "amp_compile"),
    **{framework_label("keras", b): v for b, v in KERAS_VARIANTS.items()},
    "onnxruntime": ("torch_export", "keras_export"),
}
# The step variant that each training loop runs (its row's loop / step ratio divides by it).
LOOP_VARIANT = {label: VARIANTS[label][0] for label in TRAINING}
LOOP_MODULES = {"torch": "pytorch_impl.train", **{k: "keras_impl.train" for k in KERAS_LABELS}}
_MP = "policy mixed_bfloat16 on CPU / mixed_float16 on GPU"
DESCRIPTIONS = {
    ("torch", "eager"): "PyTorch eager, NCHW, float32 (the training loop's step)",
    ("torch", "channels_last"): "model and input in torch.channels_last (NHWC in memory)",
    ("torch", "compile"): "torch.compile (inductor); compilation excluded, shown as first call",
    ("torch", "autocast"): "torch.autocast: bfloat16 on CPU, float16 + GradScaler on CUDA",
    ("torch", "amp_channels_last"): "autocast (as above) with model and input in channels_last: the trainer's "
                                    "--amp --channels-last",
    ("torch", "amp_compile"): "autocast + channels_last + torch.compile, CUDA graphs on CUDA (mode reduce-overhead): "
                              "the trainer's --amp --channels-last --compile [--compile-mode reduce-overhead]",
    ("keras-tensorflow", "graph"): "Keras default on TensorFlow: tf.function graph, jit_compile=False "
                                   "(the training loop's step)",
    ("keras-tensorflow", "eager"): "Keras run_eagerly=True (no tf.function)",
    ("keras-tensorflow", "jit_compile"): "Keras jit_compile=True (XLA)",
    ("keras-tensorflow", "mixed_precision"): f"{_MP}, graph mode",
    ("keras-jax", "jit_compile"): "Keras default on JAX: the step under jax.jit (the training loop's step)",
    ("keras-jax", "eager"): "Keras run_eagerly=True (JAX op by op)",
    ("keras-jax", "mixed_precision"): f"{_MP}, jax.jit",
    ("keras-torch", "eager"): "Keras default on PyTorch: torch ops eagerly, jit_compile=False "
                              "(the training loop's step)",
    ("keras-torch", "jit_compile"): "Keras jit_compile=True: torch.compile of the step",
    ("keras-torch", "mixed_precision"): f"{_MP}, eager",
    ("onnxruntime", "torch_export"): "ONNX Runtime on the PyTorch export (NCHW), inference only",
    ("onnxruntime", "keras_export"): "ONNX Runtime on the Keras export (NHWC), inference only",
}
BASELINE = ("torch", "eager")
# What each torch variant is in ``pytorch_impl.train``'s flags (its real loop runs with them).
TORCH_TRAIN_FLAGS = {
    "eager": (), "channels_last": ("--channels-last",), "compile": ("--compile",), "autocast": ("--amp",),
    "amp_channels_last": ("--amp", "--channels-last"), "amp_compile": ("--amp", "--channels-last", "--compile"),
}
CUDA_GRAPHS = ("amp_compile",)  # compiled with mode="reduce-overhead" on CUDA: the step replays CUDA graphs


def torch_train_flags(variant: str, device: str) -> list[str]:
    """``pytorch_impl.train``'s flags for the torch step ``variant`` on ``device`` (cpu/cuda)."""
    if variant not in TORCH_TRAIN_FLAGS:
        raise ValueError(f"unknown torch variant {variant!r}; valid choices: {', '.join(TORCH_TRAIN_FLAGS)}")
    graphs = ["--compile-mode", "reduce-overhead"] if variant in CUDA_GRAPHS and device == "cuda" else []
    return [*TORCH_TRAIN_FLAGS[variant], *graphs]


def canonical(label: str) -> str:
    """``keras`` -> ``keras-<KERAS_BACKEND>``; any other label checked against :data:`LABELS`."""
    if label == "keras":  # whether its package is installed is checked where it runs (process.child_env)
        backend = os.environ.get("KERAS_BACKEND") or DEFAULT
        if backend not in BACKENDS:
            raise ValueError(f"unknown Keras backend {backend!r} (KERAS_BACKEND / make BACKEND=); "
                             f"valid choices: {', '.join(BACKENDS)}")
        return framework_label("keras", backend)
    if label not in VARIANTS:
        raise ValueError(f"unknown framework {label!r}; valid choices: keras, {', '.join(LABELS)}")
    return label


def backend_of(label: str) -> str | None:
    """The Keras backend of a ``keras-<backend>`` label, else None."""
    return split_label(label)[1] if label in KERAS_LABELS else None


def parse_variants(text: str | None) -> dict[str, list[str]]:
    """``"torch,keras-jax:eager,onnxruntime:torch_export"`` -> the selected variants per label.

    A bare label selects all its variants; ``None``/``"all"`` selects everything.
    """
    if text is None or text.strip() in ("", "all"):
        return {label: list(vs) for label, vs in VARIANTS.items()}
    chosen: dict[str, list[str]] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, variant = item.partition(":")
        label = canonical(name)
        if not variant:
            selected = list(VARIANTS[label])
        elif variant in VARIANTS[label]:
            selected = [variant]
        else:
            raise ValueError(f"unknown {label} variant {variant!r}; valid choices: {', '.join(VARIANTS[label])}")
        chosen.setdefault(label, [])
        chosen[label] += [v for v in selected if v not in chosen[label]]
    return chosen


def default_selection() -> dict[str, list[str]]:
    """Every variant of every label, Keras backends whose package is not installed left out."""
    return {label: list(vs) for label, vs in VARIANTS.items()
            if backend_of(label) is None or importlib.util.find_spec(backend_of(label)) is not None}


def parse_frameworks(text: str) -> dict[str, list[str]]:
    """``"torch,keras-jax,onnxruntime"`` -> each training label's loop step variant, and both ONNX Runtime rows."""
    chosen: dict[str, list[str]] = {}
    for name in (t.strip() for t in text.split(",") if t.strip()):
        label = canonical(name)
        chosen[label] = list(VARIANTS[label]) if label == "onnxruntime" else [LOOP_VARIANT[label]]
    if not chosen:
        raise ValueError(f"no framework in {text!r}; valid choices: keras, {', '.join(LABELS)}")
    return chosen


def merge(*selections: dict[str, list[str]]) -> dict[str, list[str]]:
    """The union of selections, in label order, each label's variants in first-seen order."""
    out: dict[str, list[str]] = {}
    for selection in selections:
        for label, variants in selection.items():
            out.setdefault(label, [])
            out[label] += [v for v in variants if v not in out[label]]
    return {label: out[label] for label in LABELS if label in out}
