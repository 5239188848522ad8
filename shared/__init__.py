"""Framework-neutral: the core both frameworks build on and the tools that compare them; imports neither torch nor
tensorflow (docs/README.md, "Layout").
"""
