"""The plain-vs-residual ablation (docs/ablation.md): ``run`` trains the cells, ``report`` writes tables and plots."""
