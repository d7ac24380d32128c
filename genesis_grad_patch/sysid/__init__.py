"""System identification moved to ``genesis_grad.sysid``; this name keeps working (same objects)."""

from importlib import import_module

_target = import_module("genesis_grad.sysid")
__all__ = list(_target.__all__)


def __getattr__(name: str):
    try:
        return getattr(_target, name)
    except AttributeError:
        # Submodules (``from genesis_grad_patch.sysid import trajectory``) resolve to the moved ones.
        return import_module(f"genesis_grad.sysid.{name}")
