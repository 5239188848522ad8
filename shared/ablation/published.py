"""Published numbers that the ablation's report prints beside its own, each with its source (docs/ablation.md).

Each value is copied from the place its ``where`` names; they are reference points, not targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Source:
    """One publication's numbers: ``values`` maps a registry model name to the number as the source prints it."""

    name: str
    where: str
    values: dict[str, str]


@dataclass(frozen=True)
class Published:
    """The numbers published for one ablation's task: what they measure, their sources, and notes."""

    task: str
    metric: str
    sources: tuple[Source, ...]
    notes: tuple[str, ...] = field(default=())


HE_2015 = "Deep Residual Learning for Image Recognition, arXiv:1512.03385"

CIFAR10 = Published(
    task="CIFAR-10", metric="test error (%)",
    sources=(
        Source("He et al. 2015, Table 6", f"{HE_2015}, Table 6 (ResNet-110: best of 5 runs, mean ± std in brackets)",
               {"resnet20": "8.75", "resnet32": "7.51", "resnet44": "7.17", "resnet56": "6.97",
                "resnet110": "6.43 (6.61 ± 0.16)", "resnet1202": "7.93"}),
        Source("nabla0001/resnet, mean ± std of 5 runs",
               "github.com/nabla0001/resnet, README 'Test performance' (commit 6f6b418); the paper's recipe",
               {"resnet20": "8.51 ± 0.22", "resnet56": "7.40 ± 0.27", "resnet110": "7.14 ± 0.20",
                "plain20": "9.78 ± 0.13", "plain56": "12.95 ± 0.22"}),
        Source("akamaster/pytorch_resnet_cifar10, one run",
               "github.com/akamaster/pytorch_resnet_cifar10, README table (commit 820f98c); trains on all 50,000 "
               "training images, without a validation split",
               {"resnet20": "8.27", "resnet32": "7.37", "resnet44": "6.90", "resnet56": "6.61", "resnet110": "6.32",
                "resnet1202": "6.18"}),
    ),
    notes=("The paper gives the plain nets' errors only as curves (Fig. 6): plain-56 has higher training and test "
           "error than plain-20. nabla0001 reads them off the graph as about 9% (plain-20) and 13% (plain-56).",),
)

CIFAR100 = Published(
    task="CIFAR-100", metric="test error (%)",
    sources=(
        Source("chenyaofo/pytorch-cifar-models",
               "github.com/chenyaofo/pytorch-cifar-models, README 'Model Zoo / CIFAR-100' (commit d1c8e99b): "
               "top-1 accuracy 68.83% and 72.63%, with option-B shortcuts",
               {"resnet20": "31.17", "resnet56": "27.37"}),
        Source("bearpaw/pytorch-classification", "github.com/bearpaw/pytorch-classification, README 'Results / CIFAR'",
               {"resnet110": "28.86"}),
    ),
    notes=("He et al. 2015 train no CIFAR-100 model; no plain-net numbers are published for it.",),
)

IMAGENET = Published(
    task="ImageNet", metric="top-1 error, 10-crop, validation (%)",
    sources=(
        Source("He et al. 2015, Tables 2 and 3", f"{HE_2015}, Table 2 (plain and option A) and Table 3 (B, ResNet-50)",
               {"plain18": "27.94", "plain34": "28.54", "resnet18": "27.88", "resnet34": "25.03 (A), 24.52 (B)",
                "resnet50": "22.85"}),
    ),
    notes=("The paper trains no plain-50 and no cats_vs_dogs model: the cats_vs_dogs ablation asks the paper's "
           "question of a 2-class task, and its errors are not comparable with these.",),
)
