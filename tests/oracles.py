"""Independent numbers the tests assert (torchvision, He et al. 2015 Table 6); never computed here."""

# torchvision trainable parameters at 1000 classes, and BN running-statistic elements.
IMAGENET = {
    "resnet18": (11_689_512, 9_600),
    "resnet34": (21_797_672, 17_024),
    "resnet50": (25_557_032, 53_120),
    "resnet101": (44_549_160, 105_344),
    "resnet152": (60_192_808, 151_424),
}
# CIFAR ResNets, option A, 10 classes; the paper's Table 6 rounds them to 0.27M ... 19.4M.
CIFAR = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
}
PAPER_TABLE6_MILLIONS = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85,
                         "resnet110": 1.7, "resnet1202": 19.4}
