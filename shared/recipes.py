"""Training recipes and the one per-iteration lr schedule that both frameworks follow (docs/training.md, "Recipes").

A :class:`Recipe` is what a paper prescribes, a :class:`Plan` that recipe resolved for one run; :meth:`Plan.lr_at`
gives the lr of every optimizer step. Imports neither torch nor tensorflow.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from shared.data import CIFAR_DATASETS, SYNTHETIC_DATASETS
from shared.spec import ModelSpec

SCHEDULES = ("step", "cosine")


@dataclass(frozen=True)
class Recipe:
    """A training recipe: SGD with momentum and torch-style (coupled) weight decay.

    Exactly one of ``iters``/``epochs`` gives the default length. ``milestones`` are fractions of the
    run at which a step schedule multiplies the lr by ``gamma``. Weight decay applies to every
    parameter (convolutions, BN scale and shift, classifier weight and bias), as
    ``torch.optim.SGD(model.parameters(), weight_decay=...)`` in the torchvision reference does.
    """

    name: str
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    iters: int | None = None
    epochs: int | None = None
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 0.1
    nesterov: bool = False
    reference: str = ""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid choices: {', '.join(SCHEDULES)}")
        if (self.iters is None) == (self.epochs is None):
            raise ValueError(f"recipe {self.name}: give exactly one of iters/epochs")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d


CIFAR = Recipe(
    name="cifar-paper", lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=128, iters=64_000,
    schedule="step", milestones=(0.5, 0.75), gamma=0.1,
    reference="He et al. 2015, Sec. 4.2: lr 0.1, /10 at 32k and 48k iterations, stop at 64k",
)
# cats_vs_dogs with ResNet-34/50 (128x128 images, 2 classes), trained from scratch: the ImageNet
# recipe of the paper (SGD 0.1 at batch 256, momentum 0.9, wd 1e-4) scaled linearly to batch 64
# (lr 0.025, Goyal et al. 2017), with a cosine decay over 30 epochs instead of the plateau-driven /10.
CATS_VS_DOGS = Recipe(
    name="cats_vs_dogs", lr=0.025, momentum=0.9, weight_decay=1e-4, batch_size=64, epochs=30,
    schedule="cosine", milestones=(), reference="ImageNet recipe (Sec. 3.4) scaled to batch 64, cosine decay",
)
# digits (1,078 training images of 32x32, datasets/digits.py): the paper's CIFAR recipe with the batch cut to 32, so
# that an epoch is 33 iterations instead of 8, the lr scaled linearly with it (0.1 x 32/128, Goyal et al. 2017),
# and a default length in epochs (64k iterations would be ~1,900 epochs of this small set).
DIGITS = dataclasses.replace(
    CIFAR, name="digits", lr=0.025, batch_size=32, iters=None, epochs=30,
    reference="He et al. 2015, Sec. 4.2 (CIFAR) at batch 32 with the lr scaled linearly; lr /10 at 50% and 75%",
)
RECIPES: dict[str, Recipe] = {**{name: CIFAR for name in (*CIFAR_DATASETS, *SYNTHETIC_DATASETS)},
                              "cats_vs_dogs": CATS_VS_DOGS, "digits": DIGITS}
WARMUP_ITERS = 400  # ResNet-110/1202 (Sec. 4.2)


def recipe_for(dataset: str, spec: ModelSpec) -> Recipe:
    """The default recipe of ``dataset`` for ``spec`` (with the lr 0.01 warm-up for CIFAR depth >= 110)."""
    if dataset not in RECIPES:
        raise ValueError(f"no recipe for dataset {dataset!r}; valid choices: {', '.join(RECIPES)}")
    recipe = RECIPES[dataset]
    if recipe is CIFAR and spec.stem == "cifar" and spec.depth >= 110:
        recipe = dataclasses.replace(recipe, warmup_iters=WARMUP_ITERS)
    return recipe


@dataclass(frozen=True)
class Plan:
    """A recipe resolved for one run; every length is in optimizer iterations (0-based)."""

    recipe: str
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    iters_per_epoch: int
    total_iters: int
    epochs: int
    schedule: str
    milestones: tuple[int, ...]
    gamma: float
    warmup_iters: int
    warmup_lr: float
    nesterov: bool = False

    def iters_in_epoch(self, epoch: int) -> int:
        """Optimizer steps in 0-based ``epoch`` (the last epoch may stop early, at ``total_iters``)."""
        return max(0, min(self.iters_per_epoch, self.total_iters - epoch * self.iters_per_epoch))

    def lr_at(self, iteration: int) -> float:
        """The learning rate of optimizer step ``iteration`` (0-based global iteration).

        Warm-up (constant ``warmup_lr``) for ``iteration < warmup_iters``; then ``step``: ``lr`` times
        ``gamma`` per milestone reached (``iteration >= m``), or ``cosine``: ``lr/2 (1 + cos(pi t/T))``.
        """
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0; got {iteration}")
        if iteration < self.warmup_iters:
            return self.warmup_lr
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1.0 + math.cos(math.pi * min(iteration, self.total_iters) / self.total_iters))
        return self.lr * self.gamma ** sum(iteration >= m for m in self.milestones)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        d["milestones"] = tuple(d["milestones"])
        return cls(**d)


def check_overrides(*, epochs: int | None = None, iters: int | None = None, batch_size: int | None = None,
                    lr: float | None = None) -> None:
    """A ValueError for overrides no recipe can take: ``--epochs`` with ``--iters``, a length or batch below 1, a
    learning rate that is not positive (what needs the data, a batch larger than the split, ``make_plan`` checks)."""
    if epochs is not None and iters is not None:
        raise ValueError(f"give --epochs or --iters, not both; got --epochs {epochs} --iters {iters}")
    for name, value in (("epochs", epochs), ("iters", iters), ("batch size", batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    if lr is not None and not lr > 0:
        raise ValueError(f"lr must be > 0; got {lr}")


def make_plan(recipe: Recipe, n_train: int, *, epochs: int | None = None, iters: int | None = None,
              batch_size: int | None = None, lr: float | None = None) -> Plan:
    """Resolve ``recipe`` for a training split of ``n_train`` images and the CLI overrides.

    ``epochs`` and ``iters`` are exclusive; without either the recipe's own length is used. Training
    drops the last incomplete batch, so an epoch is ``n_train // batch_size`` iterations.
    """
    check_overrides(epochs=epochs, iters=iters, batch_size=batch_size, lr=lr)
    batch_size = recipe.batch_size if batch_size is None else batch_size
    lr = recipe.lr if lr is None else lr
    ipe = n_train // batch_size
    if ipe < 1:
        raise ValueError(f"batch size {batch_size} is larger than the {n_train} training images")
    if epochs is not None:
        total = epochs * ipe
    elif iters is not None:
        total = iters
    elif recipe.iters is not None:
        total = recipe.iters
    else:
        total = recipe.epochs * ipe
    # Half-way values round up (2632.5 -> 2633), not to even as round() would.
    milestones = tuple(math.floor(f * total + 0.5) for f in recipe.milestones) if recipe.schedule == "step" else ()
    return Plan(
        recipe=recipe.name, lr=float(lr), momentum=recipe.momentum, weight_decay=recipe.weight_decay,
        batch_size=batch_size, iters_per_epoch=ipe, total_iters=total, epochs=math.ceil(total / ipe),
        schedule=recipe.schedule, milestones=milestones, gamma=recipe.gamma,
        warmup_iters=min(recipe.warmup_iters, total), warmup_lr=float(lr) * recipe.warmup_factor,
        nesterov=recipe.nesterov,
    )
