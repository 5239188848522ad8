"""The recipes and the one per-iteration lr schedule, against the paper's numbers (He et al. 2015, Sec. 4.2)."""

import math

import pytest

from shared.recipes import CATS_VS_DOGS, CIFAR, make_plan, recipe_for
from shared.spec import get_spec

CIFAR_TRAIN = 45_000  # the paper's 45k/5k train/val split


def test_paper_cifar_recipe_in_iterations():
    plan = make_plan(recipe_for("cifar10", get_spec("resnet20")), CIFAR_TRAIN)
    # Paper: batch 128, lr 0.1, momentum 0.9, wd 1e-4, /10 at 32k and 48k, stop at 64k.
    assert (plan.batch_size, plan.lr, plan.momentum, plan.weight_decay) == (128, 0.1, 0.9, 1e-4)
    assert (plan.total_iters, plan.milestones, plan.warmup_iters) == (64_000, (32_000, 48_000), 0)
    assert plan.iters_per_epoch == 351 and plan.epochs == 183  # 64000 / 351 = 182.3 epochs
    assert sum(plan.iters_in_epoch(e) for e in range(plan.epochs)) == 64_000
    assert plan.iters_in_epoch(182) == 64_000 - 182 * 351
    assert [plan.lr_at(i) for i in (0, 31_999, 32_000, 47_999, 48_000, 63_999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_epochs_scale_the_milestones_proportionally():
    plan = make_plan(CIFAR, CIFAR_TRAIN, epochs=10)
    assert plan.total_iters == 3510 and plan.epochs == 10
    assert plan.milestones == (1755, 2633)  # 0.75 * 3510 = 2632.5 rounds up
    assert make_plan(CIFAR, CIFAR_TRAIN, iters=64_000).milestones == (32_000, 48_000)


def test_deep_cifar_models_warm_up_at_lr_over_10_for_400_iterations():
    for name in ("resnet110", "resnet1202", "plain110"):
        plan = make_plan(recipe_for("cifar10", get_spec(name)), CIFAR_TRAIN)
        assert plan.warmup_iters == 400
        assert (plan.lr_at(0), plan.lr_at(399), plan.lr_at(400)) == pytest.approx((0.01, 0.01, 0.1))
    assert recipe_for("cifar10", get_spec("resnet56")).warmup_iters == 0
    assert recipe_for("cats_vs_dogs", get_spec("resnet50")).warmup_iters == 0


def test_overrides_and_cats_vs_dogs_cosine():
    plan = make_plan(CIFAR, 2000, batch_size=100, lr=0.05, iters=40)
    assert (plan.iters_per_epoch, plan.epochs, plan.milestones) == (20, 2, (20, 30))
    assert plan.lr_at(19) == 0.05 and plan.lr_at(20) == pytest.approx(0.005)
    cat = make_plan(recipe_for("cats_vs_dogs", get_spec("resnet34", num_classes=2)), 18_000)
    assert (cat.batch_size, cat.epochs, cat.iters_per_epoch, cat.schedule) == (64, 30, 281, "cosine")
    assert cat.lr_at(0) == CATS_VS_DOGS.lr
    assert cat.lr_at(cat.total_iters // 2) == pytest.approx(CATS_VS_DOGS.lr / 2, rel=1e-3)
    assert cat.lr_at(cat.total_iters - 1) < 1e-6
    assert all(math.isfinite(cat.lr_at(i)) for i in range(0, cat.total_iters, 97))


def test_plan_round_trips_through_json_dict():
    plan = make_plan(recipe_for("cifar10", get_spec("resnet110")), CIFAR_TRAIN, epochs=3)
    assert type(plan).from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize("kwargs,match", [
    ({"epochs": 1, "iters": 5}, "not both"),
    ({"batch_size": 5000}, "larger than the 2000 training images"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"lr": -1.0}, "lr must be > 0"),
])
def test_bad_overrides_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_plan(CIFAR, 2000, **kwargs)


def test_unknown_dataset_lists_choices():
    choices = "cifar10, cifar100, cifar100_coarse, synthetic, synthetic_cifar, cats_vs_dogs, digits"
    with pytest.raises(ValueError, match=f"valid choices: {choices}$"):
        recipe_for("imagenet", get_spec("resnet50"))
