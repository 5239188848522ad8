"""Numerical parity between the PyTorch and the Keras ResNet, each run in its own process.

One side draws random weights (every parameter; the BN closing each residual branch calibrated on the
batch, so activations stay O(1)-O(30) at any depth), writes canonical safetensors and runs a batch; the
other side loads that file and runs the same batch (NCHW vs NHWC). The outputs are compared with numpy:

* **eval mode** (``check.py``): logits and every stage's output (``shared.names.stage_names``), each
  against ``1e-4 * max(1, max|a|)`` of its own values in float32 (or 10x float32's own error there,
  where larger); when a stage diverges, a second pass captures every canonical layer up to it and names
  the first layer that diverges.
* **train mode** (``step.py``): one SGD step (lr, momentum, PyTorch-style coupled weight decay) in
  float64 from identical weights on the same batch; the updated parameters and BN running statistics
  are compared, the running variances after torch's unbiased-estimator gap.

Modules: ``randomize`` (weights and calibration law), ``run`` (jobs, worker processes), ``check``,
``step``, ``report``; ``python -m shared.harness.parity --model resnet50`` is the command line.
Framework work runs in ``python -m pytorch_impl.parity JOB.json`` / ``keras_impl.parity``.
This package imports neither torch nor tensorflow.
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
