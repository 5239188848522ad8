"""The one timing loop of the project and its statistics: every speed figure is a step timed here (docs/bench.md).

Warm-up calls first, then ``repeats`` blocks of ``iters`` steps (more, until a block lasts ``min_time`` seconds),
with ``sync`` around each block so that queued device work is counted.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

DEFAULTS = {"batch_size": 128, "iters": 3, "repeats": 5, "warmup": 2, "latency_iters": 20}
MIN_TIME = 1.0  # seconds per timed throughput block (command-line default)
MAX_STEPS = 100_000


def first_line(error: BaseException | str) -> str:
    """``Type: first line of the message`` (what a report shows for a failed measurement)."""
    if isinstance(error, BaseException):
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def summarize(values: Iterable[float]) -> dict[str, float | int]:
    """Median, min, max and quartiles of per-repeat figures; every value must be finite and > 0."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no measurement to summarize")
    bad = [v for v in values if not math.isfinite(v) or v <= 0]
    if bad:
        raise ValueError(f"measurements must be positive and finite; got {bad}")
    q1, q3 = (statistics.quantiles(values, n=4, method="inclusive")[i] for i in (0, 2)) \
        if len(values) > 1 else (values[0], values[0])
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "q1": q1, "q3": q3, "n": len(values), "values": values}


def is_measured(metric: Any) -> bool:
    """True for a summary dict (as opposed to ``None`` = not applicable, or ``{"error": ...}``)."""
    return isinstance(metric, dict) and "median" in metric


def ratio(row_metric: Any, base_metric: Any) -> float | None:
    """Row median / baseline median (both images/s): >1 means faster than the baseline."""
    if not (is_measured(row_metric) and is_measured(base_metric)):
        return None
    return row_metric["median"] / base_metric["median"]


@dataclass(frozen=True)
class TimingPlan:
    """How long to measure: ``iters`` steps per timed block (more when a block would last less than
    ``min_time`` seconds; 0 = exactly ``iters``), ``repeats`` blocks, after ``warmup`` calls."""

    batch_size: int = DEFAULTS["batch_size"]
    iters: int = DEFAULTS["iters"]
    repeats: int = DEFAULTS["repeats"]
    warmup: int = DEFAULTS["warmup"]
    latency_iters: int = DEFAULTS["latency_iters"]
    min_time: float = 0.0

    def __post_init__(self) -> None:
        for name in ("batch_size", "iters", "repeats", "warmup", "latency_iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if not (isinstance(self.min_time, int | float) and 0 <= self.min_time <= 600):
            raise ValueError(f"min_time must be seconds between 0 and 600; got {self.min_time!r}")


def _no_sync() -> None:
    return None


def warm_up(step: Callable[[], Any], sync: Callable[[], None], calls: int) -> float:
    """Run ``calls`` steps; return the seconds of the first (tracing/compilation happen there)."""
    sync()
    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    for _ in range(calls - 1):
        step()
    sync()
    return first


def timed_block(step: Callable[[], Any], sync: Callable[[], None], steps: int) -> float:
    """Seconds of ``steps`` calls, the device synchronized before and after."""
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - t0


def block_steps(step: Callable[[], Any], sync: Callable[[], None], settings: TimingPlan) -> int:
    """Steps per timed block: ``settings.iters``, scaled up from one untimed trial block until a block
    lasts ``settings.min_time`` seconds (at most 100,000 steps)."""
    steps = settings.iters
    while settings.min_time > 0 and steps < MAX_STEPS:
        seconds = timed_block(step, sync, steps)
        if seconds >= settings.min_time:
            break
        # aim 10% over, and at most 100x per trial (a first block can be too quick to extrapolate)
        steps = min(MAX_STEPS, steps * 100, math.ceil(steps * 1.1 * settings.min_time / max(seconds, 1e-6)))
    return steps


def time_throughput(step: Callable[[], Any], sync: Callable[[], None], settings: TimingPlan,
                    images_per_step: float) -> tuple[list[float], float, int]:
    """Units/s (``images_per_step`` units per call) of each timed block, the first call's seconds and the
    steps per block (:func:`block_steps`)."""
    first = warm_up(step, sync, settings.warmup)
    steps = block_steps(step, sync, settings)
    values = [images_per_step * steps / timed_block(step, sync, steps) for _ in range(settings.repeats)]
    return values, first, steps


def time_latency(step: Callable[[], Any], sync: Callable[[], None],
                 settings: TimingPlan) -> tuple[list[float], float, int]:
    """Median milliseconds of single calls per timed block, the first call's seconds, and the calls per block
    (``settings.latency_iters``: each call is timed alone, so a block needs no minimum duration)."""
    first = warm_up(step, sync, settings.warmup)
    values = []
    for _ in range(settings.repeats):
        times = [timed_block(step, sync, 1) * 1e3 for _ in range(settings.latency_iters)]
        values.append(statistics.median(times))
    return values, first, settings.latency_iters


def rate(step: Callable[[], Any], units_per_step: float, settings: TimingPlan,
         sync: Callable[[], None] = _no_sync) -> dict[str, Any]:
    """:func:`time_throughput` as one summary: units/s with its spread, ``first_call_s`` and ``steps``."""
    values, first, steps = time_throughput(step, sync, settings, units_per_step)
    return {**summarize(values), "first_call_s": first, "steps": steps}


def interleaved_rates(steps: dict[str, Callable[[], Any]], units_per_step: float, settings: TimingPlan,
                      sync: Callable[[], None] = _no_sync) -> dict[str, dict[str, Any]]:
    """Units/s of each step, timed in alternating rounds (one block of each per round, ``settings.repeats``
    rounds), so that a busy machine slows all of them alike: one :func:`summarize` per step."""
    for step in steps.values():
        warm_up(step, sync, settings.warmup)
    counts = {name: block_steps(step, sync, settings) for name, step in steps.items()}
    values: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(settings.repeats):
        for name, step in steps.items():
            values[name].append(units_per_step * counts[name] / timed_block(step, sync, counts[name]))
    return {name: summarize(v) for name, v in values.items()}
