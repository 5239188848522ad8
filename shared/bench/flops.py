"""Achieved GFLOP/s and the share of the float32 matmul peak, for every row of a benchmark (docs/bench.md).

The FLOPs per image are counted once, in the PyTorch process, and serve every row: both frameworks run the same
convolutions.
"""

from __future__ import annotations

from typing import Any

from shared.bench.timing import is_measured

MATMUL_N = 2048
CUDA_PEAK_N = 8192  # the GPU report's peaks: a 2048^3 matmul is too small to fill a large GPU's tensor cores
# The GPU report's matmul peaks: float32 with TF32 off, float32 inputs with TF32 on (CUDA only), bf16 and fp16.
PEAK_PRECISIONS = ("float32", "tf32", "bfloat16", "float16")
# metric -> the FLOPs-per-image entry it is multiplied by
PER_IMAGE = {"train": "train", "infer": "forward"}


def matmul_flops(n: int = MATMUL_N) -> float:
    """FLOPs of one n x n x n matmul (a multiply and an add per term)."""
    return 2.0 * n**3


def achieved(images_per_s: float, gflop_per_image: float, peak_gflops: float | None) -> dict[str, float | None]:
    """``{"gflops": ..., "pct_peak": ...}`` of a figure in images/s."""
    gflops = images_per_s * gflop_per_image
    return {"gflops": gflops, "pct_peak": 100 * gflops / peak_gflops if peak_gflops else None}


def peak_gflops(peak: Any) -> float | None:
    """The measured peak's median GFLOP/s, or None when it failed or was not measured."""
    return peak["median"] / 1e9 if is_measured(peak) else None


def add_compute(rows: list[dict[str, Any]], flops: dict[str, Any] | None, peak: Any) -> None:
    """Set ``row["compute"][metric] = {"gflops", "pct_peak"}`` for the measured train/infer figures."""
    top = peak_gflops(peak)
    for row in rows:
        row["compute"] = {}
        if not flops or "error" in flops:
            continue
        for metric, kind in PER_IMAGE.items():
            if is_measured(row.get(metric)):
                row["compute"][metric] = achieved(row[metric]["median"], flops[kind] / 1e9, top)


def add_loop_compute(loops: dict[str, dict[str, Any]], flops: dict[str, Any] | None, peak: Any) -> None:
    """The same for the training loops' images/s."""
    for loop in loops.values():
        if flops and "error" not in flops and is_measured(loop):
            loop["compute"] = achieved(loop["median"], flops["train"] / 1e9, peak_gflops(peak))
