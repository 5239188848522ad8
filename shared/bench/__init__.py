"""Speed benchmarks: training and inference images/s, batch-1 latency, GFLOP/s and the real training loops, per
framework, Keras backend and fast path (``python -m shared.bench``; docs/bench.md names each module's job).

Imports no framework: each one runs in its own process.
"""

from shared.bench.catalog import (
    BASELINE,
    DESCRIPTIONS,
    LABELS,
    LOOP_VARIANT,
    VARIANTS,
    parse_frameworks,
    parse_variants,
)
from shared.bench.run import BenchConfig, add_ratios, failed_rows, resolve_device, run_bench, run_framework
from shared.bench.timing import (
    DEFAULTS,
    MIN_TIME,
    TimingPlan,
    first_line,
    is_measured,
    rate,
    ratio,
    summarize,
    time_latency,
    time_throughput,
)
from shared.bench.workers import (
    METRICS,
    Workload,
    measure_workload,
    parse_worker_args,
    run_variants,
    worker_main,
    worker_parser,
)

__all__ = ["BASELINE", "DEFAULTS", "DESCRIPTIONS", "LABELS", "LOOP_VARIANT", "METRICS", "MIN_TIME", "VARIANTS",
           "BenchConfig", "TimingPlan", "Workload", "add_ratios", "failed_rows", "first_line", "is_measured",
           "measure_workload", "parse_frameworks", "parse_variants", "parse_worker_args", "rate", "ratio",
           "resolve_device", "run_bench", "run_framework", "run_variants", "summarize", "time_latency",
           "time_throughput", "worker_main", "worker_parser"]
