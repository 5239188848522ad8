"""The command line of both trainers (``python -m pytorch_impl.train``, ``python -m keras_impl.train``): one set
of flags, a few of which only one framework honours (docs/training.md). Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import argparse

from shared.data import DATASETS, LABELS
from shared.errors import ArgumentParser
from shared.spec import SHORTCUTS

TRUE = ("1", "true", "yes", "on", "y")
FALSE = ("0", "false", "no", "off", "n", "")
AMP_DTYPES = ("auto", "bfloat16", "float16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
STRATEGIES = ("auto", "default", "mirrored")
DEFAULT_MODEL, DEFAULT_DATASET = "resnet20", "cifar10"


def parse_bool(value: str | bool) -> bool:
    """``--amp``, ``--amp 1``, ``--amp true``... (the Makefile passes ``--amp $(AMP)``)."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise argparse.ArgumentTypeError(
        f"expected a boolean ({'/'.join(TRUE[:4])} or {'/'.join(FALSE[:4])}); got {value!r}")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except None (not given: the help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def train_arg_parser(prog: str, framework: str) -> ArgumentParser:
    """The flags both trainers accept (one command line for both)."""
    p = ArgumentParser(prog=prog, description=f"Train a ResNet with {framework} (the paper's recipe by default).",
                       formatter_class=_HelpFormatter)
    g = p.add_argument_group("model and data")
    # None: not given (a resume then says nothing about it); a new run takes DEFAULT_MODEL / DEFAULT_DATASET
    g.add_argument("--model", default=None, help=f"registry name (default {DEFAULT_MODEL}; resnet110, resnet34, "
                                                 "plain20, ...)")
    g.add_argument("--dataset", default=None, choices=DATASETS, help=f"prepared dataset (default {DEFAULT_DATASET})")
    g.add_argument("--labels", default=None, choices=tuple(LABELS["cifar100"]),
                   help="cifar100's label set: fine (100 classes) or coarse (20 superclasses: cifar100_coarse)")
    g.add_argument("--data-dir", default="data", help="where datasets are prepared (python -m datasets.prepare)")
    g.add_argument("--num-classes", type=int, default=None, help="default: the dataset's class count")
    g.add_argument("--shortcut", choices=SHORTCUTS, default=None, help="override the model's shortcut option")
    g = p.add_argument_group("recipe (defaults: the dataset's recipe, shared/recipes.py)")
    g.add_argument("--epochs", type=int, default=None, help="run length in epochs (lr milestones at 50%%/75%%)")
    g.add_argument("--iters", type=int, default=None, help="run length in iterations (CIFAR default 64000)")
    g.add_argument("--batch-size", type=int, default=None, help="global batch size (CIFAR 128)")
    g.add_argument("--lr", type=float, default=None, help="base learning rate (CIFAR 0.1)")
    g.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of every epoch's data plan")
    g.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="start from these canonical weights (.safetensors) instead of a random init")
    g.add_argument("--no-augment", action="store_true",
                   help="train on the training split in order, without shuffle or augmentation (parity checks)")
    g = p.add_argument_group("run folder")
    g.add_argument("--out", default=None, help="the run folder (default runs/<dataset>/<model>/<framework>-<time>)")
    g.add_argument("--resume", default=None, metavar="RUN", help="continue the run in this folder from its checkpoint")
    g.add_argument("--trace-steps", type=int, default=0, metavar="N",
                   help="also record the loss of the first N optimizer steps in steps.json")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (the per-epoch line stays)")
    g = p.add_argument_group("fast paths")
    g.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N / gpu")
    for flag, text in (("--amp", "mixed precision (bf16 on CPU, fp16 + loss scaling on GPU)"),
                       ("--compile", "torch.compile the model (torch)"),
                       ("--channels-last", "channels_last memory format (torch)"),
                       ("--jit", "XLA jit_compile the train/eval steps (keras)")):
        g.add_argument(flag, type=parse_bool, nargs="?", const=True, default=False, metavar="BOOL", help=text)
    g.add_argument("--amp-dtype", default="auto", choices=AMP_DTYPES,
                   help="torch --amp dtype: auto = bfloat16 on CPU, float16 + loss scaling on CUDA; bfloat16 on "
                        "GPUs that have it needs no loss scaling")
    g.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile mode for --compile; reduce-overhead replays CUDA graphs on GPUs")
    g.add_argument("--threads", type=int, default=None,
                   help="intra-op CPU threads of the framework (default: the framework's own choice)")
    g.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="N processes on this machine: torch DDP (one per GPU; gloo "
                        "with --device cpu); keras on the jax backend, joined by keras.distribution.initialize")
    g.add_argument("--strategy", default="auto", choices=STRATEGIES,
                   help="keras: tf.distribute strategy (auto = mirrored when more than one GPU is visible)")
    return p


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less ``--nproc N`` / ``--nproc=N``: the command each launched training process runs."""
    rest, skip = [], False
    for arg in argv:
        if not skip and not arg.startswith("--nproc"):
            rest.append(arg)
        skip = arg == "--nproc"
    return rest
