"""Which ablations exist: each one's cells (plain and residual twins at two depths), its shortcut option, what the
paper says about it and the published numbers beside it (docs/ablation.md). Imports no framework.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.ablation import published
from shared.ablation.published import Published

# How each dataset is named by the published numbers (a report says when its dataset is not theirs).
TASKS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "cifar100_coarse": "CIFAR-100, 20 superclasses",
         "cats_vs_dogs": "cats_vs_dogs", "digits": "digits", "synthetic": "synthetic"}

PAPER_CIFAR = (
    "He et al. 2015, Sec. 4.2, Fig. 6 and Table 6 (CIFAR-10, 64k iterations ≈ 182 epochs): the deeper plain "
    "net is worse — plain-56 has higher training and test error than plain-20 — while the deeper residual "
    "net is better: ResNet-20 8.75% and ResNet-56 6.97% test error. At a few epochs or on another dataset "
    "the numbers above are not comparable to these; the direction is what the ablation checks."
)
PAPER_CIFAR100 = (
    "He et al. 2015 train no CIFAR-100 model. Public reimplementations of the same CIFAR ResNets report "
    "CIFAR-100 top-1 test accuracy of ResNet-20 68.83% and ResNet-56 72.63% (chenyaofo/pytorch-cifar-models, "
    "option-B shortcuts) and ResNet-110 71.14% (28.86% error, bearpaw/pytorch-classification); see docs/data.md. "
    "The paper's question (the deeper plain net is worse, the deeper residual net better) is what the ablation "
    "checks here."
)
PAPER_IMAGENET = (
    "He et al. 2015, Table 2 and 3 (ImageNet, top-1 10-crop validation error): plain-18 27.94%, plain-34 "
    "28.54% (deeper plain net worse), ResNet-18 27.88%, ResNet-34 25.03% (option A; 24.52% with B), "
    "ResNet-50 22.85%. The paper trains no plain-50 and no cats_vs_dogs model; this ablation transfers its "
    "question (does depth hurt the plain net and help the residual one?) to a 2-class task."
)


@dataclass(frozen=True)
class Ablation:
    """A named set of cells: the models (plain/residual twins at two depths), their shortcut option, what the
    paper says and the published numbers."""

    name: str
    dataset: str
    models: tuple[str, ...]
    shortcut: str
    paper: str
    published: Published


CIFAR_MODELS = ("plain20", "resnet20", "plain56", "resnet56")
ABLATIONS = {
    "cifar10": Ablation("cifar10", "cifar10", CIFAR_MODELS, "A", PAPER_CIFAR, published.CIFAR10),
    "cifar100": Ablation("cifar100", "cifar100", CIFAR_MODELS, "A", PAPER_CIFAR100, published.CIFAR100),
    "cats_vs_dogs": Ablation("cats_vs_dogs", "cats_vs_dogs", ("plain34", "resnet34", "plain50", "resnet50"), "B",
                             PAPER_IMAGENET, published.IMAGENET),
}
