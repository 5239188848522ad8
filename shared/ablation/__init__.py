"""The plain-vs-residual ablation: ``run`` trains the cells, ``report`` writes the tables and plots."""
