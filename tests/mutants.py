"""Mutant suite: each entry breaks one cross-framework convention in a copy of the tree, and the test
named next to it must then fail. It proves the harness is sensitive to the mistakes it claims to catch.

``python -m tests.mutants [--only NAME,...] [--out results]`` (``make test-mutants``):

1. copies the tracked tree (``git ls-files``) to a temporary folder;
2. for each mutant, runs its named test there unmutated first (once per test): it must pass, or a "kill"
   would prove nothing;
3. replaces ``old`` by ``new`` in ``path`` (``old`` must occur exactly once), runs the
   named test in its own pytest process, and restores the file. The mutant is *killed* when pytest
   reports a failing test (exit status 1); an import or collection error (status 2-4) means the edit
   broke the code rather than the convention, and counts as not killed;
4. writes ``mutants.md`` and ``mutants.json`` (mutant -> killed by which test) to ``--out`` after every
   mutant (a run stopped early reports what it ran, and names the rest), and exits 1 unless every mutant
   was killed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shared import errors, process
from shared.markdown import table
from shared.process import ROOT

COMPARE_E2E = "tests/shared/test_compare.py::test_make_compare_resnet20_end_to_end"
SGD_RULE = "tests/shared/test_train_parity.py::test_update_rule_matches_torch_sgd_across_an_lr_drop"
DDP_STEPS = "tests/torch/test_train.py::test_ddp_two_cpu_processes_with_gloo_take_the_steps_of_one_process"
FAST_STEP = "tests/torch/test_train.py::test_amp_and_channels_last_act_inside_the_training_step"
TRAIN_DECAY = "tests/shared/test_train_parity.py::test_twenty_sgd_steps_shrink_the_kernels_as_torchs_weight_decay"


@dataclass(frozen=True)
class Mutant:
    name: str
    covers: str  # the convention it breaks
    path: str
    old: str
    new: str
    test: str  # the pytest node id that must fail


MUTANTS: tuple[Mutant, ...] = (
    Mutant("stride2-same-padding", "stride-2 padding: TF 'same' pads bottom/right only, torch pads symmetrically",
           "keras_impl/blocks.py", "    if stride == 1 or pad == 0:\n", "    if True:\n", COMPARE_E2E),
    Mutant("bn-epsilon-keras-default", "BN epsilon 1e-5 (Keras' default is 1e-3)",
           "keras_impl/blocks.py", "BN_EPSILON = 1e-5", "BN_EPSILON = 1e-3", COMPARE_E2E),
    Mutant("bn-momentum-keras-default", "BN momentum: Keras 0.9 = 1 - torch's 0.1 (Keras' default is 0.99)",
           "keras_impl/blocks.py", "BN_MOMENTUM = 0.9 ", "BN_MOMENTUM = 0.99 ", COMPARE_E2E),
    Mutant("running-var-biased-prediction", "running-variance estimator: torch's unbiased n/(n-1) update",
           "shared/harness/parity/step.py", "predicted = (b - (1 - BN_MOMENTUM) * old) / (n - 1)",
           "predicted = (b - (1 - BN_MOMENTUM) * old) / n",
           "tests/shared/test_compare.py::test_running_variance_gap_is_predicted_from_torchs_unbiased_update"),
    Mutant("weight-decay-decoupled", "weight decay: torch couples it into the gradient before momentum",
           "keras_impl/optim.py",
           "            g = ops.add(g, ops.multiply(ops.cast(self.torch_weight_decay, variable.dtype), variable))",
           "            self.assign_sub(variable, ops.multiply(ops.multiply(lr, ops.cast(self.torch_weight_decay, "
           "variable.dtype)), variable))", SGD_RULE),
    Mutant("keras-weight-decay-zero", "weight decay: the Keras trainer's optimizer gets the recipe's 1e-4",
           "keras_impl/train.py", "plan.momentum, weight_decay=plan.weight_decay,",
           "plan.momentum, weight_decay=0.0,",
           f"{TRAIN_DECAY}[tensorflow]"),
    Mutant("torch-weight-decay-zero", "weight decay: the torch trainer's optimizer gets the recipe's 1e-4",
           "pytorch_impl/train.py", "make_sgd(model, plan.lr, plan.momentum, weight_decay=plan.weight_decay,",
           "make_sgd(model, plan.lr, plan.momentum, weight_decay=0.0,",
           "tests/torch/test_train_contract.py::test_learns_and_leaves_a_complete_run_folder"),
    Mutant("ddp-not-wrapped", "DDP: the ranks all-reduce their gradients (DistributedDataParallel)",
           "pytorch_impl/train.py", "net = nn.parallel.DistributedDataParallel(model, device_ids=ids)", "net = model",
           DDP_STEPS),
    Mutant("torch-autocast-off", "fast path: --amp runs the training forward under autocast",
           "pytorch_impl/train.py", "    with ctx.autocast():\n        logits = model(ctx.prepare_input(x))\n",
           "    with contextlib.nullcontext():\n        logits = model(ctx.prepare_input(x))\n",
           f"{FAST_STEP}[amp-channels-last]"),
    Mutant("torch-channels-last-off", "fast path: --channels-last puts the model's parameters in channels_last",
           "pytorch_impl/train.py", "model = model.to(memory_format=torch.channels_last)",
           "model = model.to(memory_format=torch.contiguous_format)", f"{FAST_STEP}[amp-channels-last]"),
    Mutant("torch-compile-skipped", "fast path: --compile trains through torch.compile's module",
           "pytorch_impl/train.py",
           "net = torch.compile(net, mode=mode, dynamic=False)", "net = net",
           "tests/torch/test_train.py::test_torch_compile_trains_through_compiled_graphs"),
    Mutant("keras-jit-off", "fast path: --jit compiles the Keras steps with XLA",
           "keras_impl/backend_table.py", "return True if self.always_jit else bool(jit)",
           "return True if self.always_jit else False",
           "tests/keras/test_train.py::test_jit_compiles_the_steps_with_xla"),
    Mutant("momentum-dampened", "momentum form: torch's buf = mu*buf + g (no dampening)",
           "keras_impl/optim.py", "new_buf = ops.add(ops.multiply(buf, mu), g)",
           "new_buf = ops.add(ops.multiply(buf, mu), ops.multiply(g, 1 - mu))", SGD_RULE),
    Mutant("lr-milestones-shifted", "lr milestones at 50% and 75% of the run (32k/48k of 64k)",
           "shared/recipes.py", 'schedule="step", milestones=(0.5, 0.75)', 'schedule="step", milestones=(0.5, 0.8)',
           "tests/shared/test_recipes.py::test_paper_cifar_recipe_in_iterations"),
    Mutant("warmup-shortened", "ResNet-110 warm-up: lr 0.01 for 400 iterations",
           "shared/recipes.py", "WARMUP_ITERS = 400", "WARMUP_ITERS = 40",
           "tests/shared/test_recipes.py::test_deep_cifar_models_warm_up_at_lr_over_10_for_400_iterations"),
    Mutant("option-a-zeros-first", "option A: zero channels appended after the input's channels",
           "keras_impl/blocks.py", "x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, pad]])",
           "x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [pad, 0]])", COMPARE_E2E),
    Mutant("kernel-transpose-swapped", "conv kernel transpose torch (out,in,kh,kw) -> Keras (kh,kw,in,out)",
           "shared/names.py", '_TO_KERAS = {"conv": (2, 3, 1, 0)', '_TO_KERAS = {"conv": (3, 2, 1, 0)', COMPARE_E2E),
    Mutant("beta-not-transferred", "BN beta (and every bias) transferred across frameworks",
           "keras_impl/weights.py", "        var.assign(value.astype(var.dtype))",
           "        if w.key.endswith(\".bias\"):\n            continue\n        var.assign(value.astype(var.dtype))",
           COMPARE_E2E),
    # Deep-only: one BN beta of resnet56's last block stays at Keras' zero init. A bound that grew with the
    # activations passed it; the parity test of resnet56 fails its layer3 stage by a factor of > 30.
    Mutant("deep-beta-not-transferred", "bias and beta transfer, deep blocks only (resnet56 layer3.8.bn2)",
           "keras_impl/weights.py", "        var.assign(value.astype(var.dtype))",
           "        if w.key == 'layer3.8.bn2.bias':\n            continue\n"
           "        var.assign(value.astype(var.dtype))",
           "tests/shared/test_compare.py::test_parity_within_bound[resnet56-torch2keras]"),
    Mutant("normalize-mean-std-swapped", "normalization (x/255 - mean)/std in the torch loader",
           "pytorch_impl/data.py", "x = x.div_(255.0).sub_(self.mean).div_(self.std)",
           "x = x.div_(255.0).sub_(self.std).div_(self.mean)",
           "tests/shared/test_data_frameworks.py::test_frameworks_give_identical_batches"),
    Mutant("dataset-std-sample", "normalization constants: population std of the training split",
           "datasets/prepared.py", "std = np.sqrt(np.maximum(ss / count - mean * mean, 0.0))",
           "std = np.sqrt(np.maximum(ss / (count - 1) - mean * mean, 0.0))",
           "tests/shared/test_data.py::test_cifar10_manifest"),
    Mutant("eval-padding-weighted", "evaluation over several devices: the images padding a batch weigh 0",
           "keras_impl/data.py", "weights = np.concatenate([weights, np.zeros(extra, np.float32)])",
           "weights = np.concatenate([weights, np.ones(extra, np.float32)])",
           "tests/keras/test_data.py::"
           "test_an_evaluation_batch_that_does_not_split_over_the_devices_is_padded_with_weight_zero"),
    Mutant("processes-feed-whole-batches", "several JAX processes: each feeds its own slice of the global batch",
           "keras_impl/data.py", "return slice(self.index * per, (self.index + 1) * per)", "return slice(0, size)",
           "tests/keras/test_data.py::test_each_process_feeds_its_own_slice_of_every_global_batch"),
    Mutant("keras-enqueuer-replay", "input to fit: no Keras enqueuer (it replays prefetched batches)",
           "keras_impl/data.py", "super().__init__(workers=1, use_multiprocessing=False)",
           "super().__init__(workers=2, use_multiprocessing=False)",
           "tests/shared/test_train_parity.py::test_twenty_sgd_steps_give_the_same_loss_curve[jax]"),
    Mutant("crop-offsets-narrowed", "random crop offsets uniform over 0..2*pad",
           "shared/data.py", "dy = rng.integers(0, 2 * pad + 1, size=m)", "dy = rng.integers(0, 2 * pad, size=m)",
           "tests/shared/test_data_frameworks.py::test_augmentation_statistics_agree"),
)


def tracked_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f and (root / f).is_file()]


def copy_tree(root: Path, dest: Path) -> None:
    for rel in tracked_files(root):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)


def check_applies(mutant: Mutant, root: Path = ROOT) -> str:
    """The mutated text of ``mutant.path``; ``old`` must occur exactly once (else the list is stale)."""
    text = (root / mutant.path).read_text()
    n = text.count(mutant.old)
    if n != 1:
        raise ValueError(f"mutant {mutant.name!r}: {mutant.old!r} occurs {n} times in {mutant.path}; "
                         "update the mutant to the current code")
    return text.replace(mutant.old, mutant.new)


def run_test(tree: Path, node: str, timeout: int) -> tuple[int, float, str]:
    start = time.perf_counter()
    env = process.child_env(MPLBACKEND="Agg", PYTHONPATH=str(tree))  # the mutated copy, not this tree, is imported
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", node, "-x", "-q", "-p", "no:cacheprovider",
                               "-m", "not slow or slow"], cwd=tree, capture_output=True, text=True,
                              timeout=timeout, env=env)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        rc, tail = -1, ["timed out"]
    return rc, time.perf_counter() - start, tail[0] if tail else ""


def markdown(rows: list[dict], pending: list[str] = ()) -> str:
    killed = sum(r["killed"] for r in rows)
    body = [[r["name"], r["covers"], f"`{r['path']}`", f"`{r['test']}`",
             "killed" if r["killed"] else f"**survived** ({r['detail']})", f"{r['seconds']:.0f}"] for r in rows]
    lines = ["# Mutant suite", "", f"{killed} of {len(rows)} mutants killed (`make test-mutants`).", "",
             *table(["mutant", "convention it breaks", "edited file", "killed by", "result", "s"], body, "lllllr")]
    if pending:
        lines += ["", f"Not run (the run stopped before them): {', '.join(pending)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = errors.ArgumentParser(prog="python -m tests.mutants", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="comma-separated mutant names, run in that order (default: all)")
    p.add_argument("--out", default="results", help="folder for mutants.md/.json (default: results)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per pytest process")
    args = p.parse_args(argv)
    chosen = list(MUTANTS)
    if args.only:
        names = {m.name for m in MUTANTS}
        wanted = args.only.split(",")
        bad = [n for n in wanted if n not in names]
        if bad:
            raise errors.UserError(f"unknown mutant {bad[0]!r}; valid choices: {', '.join(sorted(names))}")
        by_name = {m.name: m for m in MUTANTS}
        chosen = [by_name[n] for n in dict.fromkeys(wanted)]  # in the order given
    for m in chosen:
        check_applies(m)
    out = Path(args.out)
    rows: list[dict] = []
    baseline: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(ROOT, tree)
        for i, m in enumerate(chosen, 1):
            if m.test not in baseline:  # each test first passes unmutated, just before its first mutant
                rc, secs, tail = run_test(tree, m.test, args.timeout)
                print(f"baseline {m.test}: exit {rc} in {secs:.0f}s", flush=True)
                if rc != 0:
                    raise SystemExit(f"error: {m.test} fails on the unmutated tree ({tail}); a mutant it 'kills' "
                                     "proves nothing. Fix the test first.")
                baseline[m.test] = True
            target = tree / m.path
            original = target.read_text()
            target.write_text(check_applies(m, tree))
            try:
                rc, secs, tail = run_test(tree, m.test, args.timeout)
            finally:
                target.write_text(original)
            killed = rc == 1
            survived = {0: "the test still passes", -1: "timed out"}
            detail = tail if killed else survived.get(rc, f"pytest exit {rc}: {tail}")
            row = {**asdict(m), "killed": killed, "exit": rc, "seconds": secs, "detail": detail}
            row.pop("old"), row.pop("new")
            rows.append(row)
            print(f"[{i}/{len(chosen)}] {m.name}: {'killed' if killed else 'SURVIVED'} by {m.test} "
                  f"({secs:.0f}s; {detail})", flush=True)
            write_report(out, rows, [n.name for n in chosen[i:]])  # after every mutant: a stopped run still reports
    print(f"wrote {out / 'mutants.md'}")
    survived = [r["name"] for r in rows if not r["killed"]]
    if survived:
        print(f"survived: {', '.join(survived)}", file=sys.stderr)
    return 1 if survived else 0


def write_report(out: Path, rows: list[dict], pending: list[str]) -> None:
    from shared.io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "mutants.json", {"mutants": rows, "killed": sum(r["killed"] for r in rows),
                                             "total": len(rows), "not_run": pending})
    atomic_write_text(out / "mutants.md", markdown(rows, pending))

if __name__ == "__main__":
    sys.exit(errors.run(main))
