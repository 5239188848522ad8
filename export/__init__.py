"""Exports, deployment checks and inference, driven from outside the frameworks (docs/export.md)."""
