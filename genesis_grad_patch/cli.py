"""The ``genesis-grad`` command moved to ``genesis_grad.cli``; this name keeps working."""

from genesis_grad.cli import main

__all__ = ["main"]
