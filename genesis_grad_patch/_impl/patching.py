"""
Reversible attribute replacement: every patch keeps the exact object it replaced, for `uninstall()`.

Patches belong to a group ("core" or "strict"), so that strict mode's own patches can be taken out alone. Each Genesis
method is replaced once (see `replacements.py`): reverting a group puts back exactly what it replaced.
"""

from collections.abc import Callable
from typing import Any

_MISSING = object()

# (owner, name) -> (the attribute found in the owner's own namespace before patching, or _MISSING if it was inherited
# or absent; the patch group). Insertion order is kept so that reverting runs in the reverse order of patching.
_originals: dict[tuple[Any, str], tuple[Any, str]] = {}


def patch(owner: Any, name: str, new: Any, group: str = "core") -> None:
    """Replace `owner.name` by `new`, remembering what `owner` itself held (once per attribute)."""
    key = (owner, name)
    if key in _originals:
        raise RuntimeError(f"{owner!r}.{name} is already replaced: each Genesis method has one replacement.")
    _originals[key] = (vars(owner).get(name, _MISSING), group)
    setattr(owner, name, new)


# (owner, name) -> what `original` resolved, while patched: replacements call it at every step.
_resolved: dict[tuple[Any, str], Any] = {}


def original(owner: Any, name: str) -> Callable:
    """Return the attribute `owner.name` as it resolved before patching (inherited attributes included)."""
    key = (owner, name)
    found = _resolved.get(key)
    if found is not None:
        return found
    saved = _originals.get(key)
    if saved is not None and saved[0] is not _MISSING:
        found = saved[0]
    else:
        found = next((vars(base)[name] for base in _bases(owner) if name in vars(base)), None)
        if found is None:
            found = getattr(owner, name)
    if saved is not None:
        _resolved[key] = found
    return found


def _bases(owner: Any) -> list:
    return type.mro(owner)[1:] if isinstance(owner, type) else []


def revert(groups: tuple[str, ...] | None = None) -> None:
    """Put back every attribute replaced by the given groups (all by default), in the reverse order of patching."""
    for key, (saved, group) in reversed(list(_originals.items())):
        if groups is not None and group not in groups:
            continue
        owner, name = key
        if saved is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, saved)
        del _originals[key]
        _resolved.pop(key, None)


def restore(owner: Any, name: str) -> None:
    """Put back the one attribute `owner.name` if it is replaced (for patches scoped to less than the install)."""
    saved = _originals.pop((owner, name), None)
    if saved is None:
        return
    if saved[0] is _MISSING:
        delattr(owner, name)
    else:
        setattr(owner, name, saved[0])
    _resolved.pop((owner, name), None)


def is_patched(group: str | None = None) -> bool:
    """Whether any patch (of `group`, if given) is currently applied."""
    return any(group is None or g == group for _, g in _originals.values())


def replaced() -> list[tuple[Any, str, str]]:
    """(owner, name, group) of every replaced attribute."""
    return [(owner, name, group) for (owner, name), (_, group) in _originals.items()]
