"""The harness (docs/harness.md): side-by-side summaries (``summary``), their comparison (``compare``) and numerical
parity across frameworks (``parity``). Imports neither torch nor tensorflow/keras.
"""
