"""What limits a training step, from what the GPU report measures: input-, launch-, memory- or compute-bound.

The rule and its thresholds (:data:`INPUT_SHARE`, :data:`BUSY_SHARE`, :data:`PEAK_SHARE`) are explained in
docs/gpu.md ("Where a target is missed, why").
"""

from __future__ import annotations

from typing import Any

INPUT_SHARE = 0.9  # loop images/s over step images/s
BUSY_SHARE = 0.8  # GPU-busy seconds over the step's seconds
PEAK_SHARE = 0.5  # FLOP/s while busy over the matmul peak of the step's precision
BOUNDS = ("input-bound", "launch-bound", "memory-bound", "compute-bound")


def verdict(*, step_s: float | None = None, busy_s: float | None = None, loop_over_step: float | None = None,
            flop_per_step: float | None = None, peak_flops: float | None = None,
            peak_name: str = "matmul") -> dict[str, Any]:
    """``{"bound", "why"}`` for one step (``step_s`` seconds, ``busy_s`` of them with a kernel running,
    ``flop_per_step`` FLOPs against the ``peak_flops`` FLOP/s of its precision); ``loop_over_step`` is the real
    loop's speed over the step's, when there is a loop. ``bound`` is None where the figures cannot say."""
    if loop_over_step is not None and loop_over_step < INPUT_SHARE:
        return {"bound": "input-bound",
                "why": f"the real loop runs at {loop_over_step:.2f}x its own step on a resident batch "
                       f"(< {INPUT_SHARE}): the input pipeline, evaluation or host reads take the rest"}
    if busy_s is None or not step_s:
        return {"bound": None, "why": "no GPU profile (CPU, or the profiler failed)"}
    share = busy_s / step_s
    if share < BUSY_SHARE:
        return {"bound": "launch-bound",
                "why": f"the GPU computes {100 * share:.0f}% of the step (< {100 * BUSY_SHARE:.0f}%) and waits for "
                       "kernel launches the rest of the time"}
    if not (flop_per_step and peak_flops):
        return {"bound": None, "why": f"the GPU computes {100 * share:.0f}% of the step; no FLOP count or peak to "
                                      "tell memory from compute"}
    achieved = flop_per_step / busy_s / peak_flops
    if achieved < PEAK_SHARE:
        return {"bound": "memory-bound",
                "why": f"the GPU computes {100 * share:.0f}% of the step, but its kernels reach "
                       f"{100 * achieved:.0f}% of the {peak_name} peak while busy (< {100 * PEAK_SHARE:.0f}%): "
                       "they wait on memory"}
    return {"bound": "compute-bound",
            "why": f"the GPU computes {100 * share:.0f}% of the step at {100 * achieved:.0f}% of the {peak_name} "
                   "peak"}
