"""Reversible attribute replacement: every patch keeps the exact object it replaced, for `uninstall()`."""

from collections.abc import Callable
from typing import Any

_MISSING = object()

# (owner, name) -> the attribute found in the owner's own namespace before patching, or _MISSING if it was inherited or
# absent. Insertion order is kept so that reverting runs in the reverse order of patching.
_originals: dict[tuple[Any, str], Any] = {}


def patch(owner: Any, name: str, new: Any) -> None:
    """Replace `owner.name` by `new`, remembering what `owner` itself held (idempotent per attribute)."""
    key = (owner, name)
    if key not in _originals:
        _originals[key] = vars(owner).get(name, _MISSING)
    setattr(owner, name, new)


def original(owner: Any, name: str) -> Callable:
    """Return the attribute `owner.name` as it resolved before patching (inherited attributes included)."""
    saved = _originals.get((owner, name), _MISSING)
    if saved is not _MISSING:
        return saved
    for base in type.mro(owner)[1:] if isinstance(owner, type) else ():
        if name in vars(base):
            return vars(base)[name]
    return getattr(owner, name)


def revert_all() -> None:
    """Put back every replaced attribute, and remove those the owner did not define itself."""
    for (owner, name), saved in reversed(list(_originals.items())):
        if saved is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, saved)
    _originals.clear()


def is_patched() -> bool:
    """Whether any patch is currently applied."""
    return bool(_originals)
