"""Numerical parity between the PyTorch and the Keras ResNet, each run in its own process (docs/harness.md, "Parity").

``randomize`` (weights and calibration law), ``run`` (jobs, worker processes), ``check`` (eval mode), ``step`` (one
SGD step in float64), ``report``; ``python -m shared.harness.parity --model resnet50`` is the command line.
Imports neither torch nor tensorflow.
"""

from shared.harness.parity.check import NOISE_FACTOR, REL_TOL, bound, diff_entry, to_nchw
from shared.harness.parity.randomize import calibrated_stats, make_batch, randomize_arrays
from shared.harness.parity.report import eval_line, render_markdown, train_line, worst_stage
from shared.harness.parity.run import DIRECTIONS, Case, default_size, run_parity, run_parity_cases
from shared.harness.parity.step import STEP_REL_TOL, StepConfig, compare_train_step

__all__ = [
    "DIRECTIONS", "NOISE_FACTOR", "REL_TOL", "STEP_REL_TOL", "Case", "StepConfig", "bound", "calibrated_stats",
    "compare_train_step", "default_size", "diff_entry", "eval_line", "make_batch", "randomize_arrays",
    "render_markdown", "run_parity", "run_parity_cases", "to_nchw", "train_line", "worst_stage",
]
