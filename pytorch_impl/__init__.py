"""PyTorch: the ResNets built from the shared ModelSpec with torchvision's names, their trainer and the PyTorch side
of every tool (docs/models.md, docs/training.md).
"""
