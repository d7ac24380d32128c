"""
Detaches seen where they happen: strict mode's record of the values cut from a tracked tensor.

A control input that does not track gradients is a valid input, so the control call alone cannot tell a fresh target
from the output of `model(obs).detach()`, `torch.tensor([a.item(), b.item()])`, `x.tolist()`, `x.data`,
`x.detach().numpy()` or a helper that detaches. The torch methods that cut a tracked tensor from the graph register
their result (with the tracked source and the user's line), and so do the constructors that rebuild a tensor from such
a result; strict mode's input check then recognises it at the control call and names the cut (`BreakKind.CUT_AT_DETACH`),
and the doctor gives the parameters behind it that reason.

Only these few methods are wrapped, not every torch function: a `TorchFunctionMode` doing the same cost 16.8% of a
100-step unbatched rollout with a small MLP policy and two getters per step (77 -> 90 ms), the wrapped methods 0.4%
(measured side by side on the 2-core CPU machine). The wrappers do nothing more than the stock method unless strict mode
is on and the tensor tracks gradients. They are in place only while a differentiable scene is alive (from its build
until it is collected, `watch`): importing the plugin changes nothing in torch, and neither does a process that builds
only plain scenes. The constructors are wrapped from the first recorded cut on: before it there is
nothing a tensor could be rebuilt from, and Genesis calls `torch.tensor` at every step (its index masks), so a rollout
without cuts does not pay for the watch. (A constructor looked up before that, `from torch import tensor` run after the
plugin's import, is not watched; `torch.tensor(...)` always is.)

Arithmetic on a cut value is a cut too (`x.detach() * 0.5`, `torch.stack([a.detach(), b])`): from the first recorded
cut on, a `TorchFunctionMode` (on the thread that made the cut) records the untracked result of any torch operation
taking a recorded value, with the original cut's description. It costs one Python call per torch operation while it is
on, strict mode only (a 100-step arm rollout with an MLP policy, two getters a step, and its backward: +1.4%). A result
that tracks gradients (a policy fed a detached observation) is no cut and is not recorded. Arithmetic in numpy or on
Python numbers is not followed.
"""

import sys
import weakref
from collections import deque
from collections.abc import Callable
from functools import wraps
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from . import breaks, patching
from .genesis_api import torch_function_modes

# Tensor methods whose result is cut from the graph, and how a user would read the cut.
DETACHING = {
    "detach": "`.detach()`",
    "item": "`.item()`",
    "tolist": "`.tolist()`",
    "numpy": "`.numpy()`",
}
# Constructors that turn Python numbers, lists or arrays back into a tensor.
REBUILDING = ("tensor", "as_tensor", "from_numpy")


class Cut(NamedTuple):
    """A value cut from a tracked tensor: where, from what, and how the user would read the cut."""

    ref: Callable[[], Any]  # the cut value (a weak reference, or a closure for values that cannot have one)
    location: "breaks.Location"
    source: Any  # the graph node or leaf tensor the value was cut from
    how: str  # "`.detach()`", "`.item()` then `.tolist()`", ...

    @property
    def description(self) -> str:
        if self.how == FROM_TORCH:
            return f"{FROM_TORCH} at {self.location}"
        return f"{self.how} of a tracked tensor at {self.location}"


FROM_TORCH = "gs.from_torch(..., detach=True)"

# The record of cuts: id(value) -> Cut. Strict mode's per-process state, with `_strong_keys`; `clear` forgets it.
_cuts: dict[int, Cut] = {}
# Results that cannot be weakly referenced (Python floats, lists) are kept alive for their id to stay theirs, up to
# this many at a time: a loop logging `loss.item()` every step must not grow the record without bound.
_MAX_STRONG = 4096
_strong_keys: deque[int] = deque()
# Elements of a list looked at for a recorded number (a control input has one per dof).
_MAX_SCANNED = 64


# Whether strict mode is installed (`install`); whether torch's methods are wrapped (while a differentiable scene is
# alive, `watch`), and its constructors (from the first recorded cut on, `record_cut`).
_installed = False
_torch_wrapped = False
_watching_rebuilds = False
# The differentiable simulators alive since strict mode was installed: torch is wrapped while there is one.
_watched: "weakref.WeakSet" = weakref.WeakSet()


class _CutPropagation(TorchFunctionMode):
    """Records the untracked results of torch operations on recorded cuts, as the same cut."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Integer and boolean results (indices, masks: a nearest-point search on a detached position) carry no value
        # of the cut tensor to a control; nor do operations that take only the dtype, device or shape of an argument.
        if (
            _cuts
            and isinstance(out, torch.Tensor)
            and not out.requires_grad
            and out.is_floating_point()
            and func not in _METADATA_ONLY
        ):
            entry = _first_recorded(args[:1] if func in _SELF_ONLY else args)
            if entry is None and kwargs and func not in _SELF_ONLY:
                entry = _first_recorded(tuple(kwargs.values()))
            if entry is not None:
                _record_derived(out, entry)
        return out


# Operations whose tensor arguments other than the first give a dtype, a device or a shape, not values.
_SELF_ONLY = frozenset(
    getattr(torch.Tensor, name) for name in ("to", "type_as", "expand_as", "view_as", "reshape_as", "new_tensor")
)
# Operations whose result holds no value of any argument.
_METADATA_ONLY = frozenset(
    [getattr(torch, name) for name in ("zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like")]
    + [getattr(torch.Tensor, name) for name in ("new_zeros", "new_ones", "new_empty", "new_full")]
)


def _first_recorded(args: tuple) -> tuple | None:
    for arg in args:
        if isinstance(arg, torch.Tensor):
            entry = _cuts.get(id(arg))
            if entry is not None and entry.ref() is arg:
                return entry
        elif isinstance(arg, (list, tuple)) and arg and isinstance(arg[0], torch.Tensor):
            entry = _first_recorded(tuple(arg[:_MAX_SCANNED]))
            if entry is not None:
                return entry
    return None


def _record_derived(out: torch.Tensor, entry: Cut) -> None:
    key = id(out)
    if key not in _cuts:
        _cuts[key] = Cut(weakref.ref(out, lambda _, key=key: _cuts.pop(key, None)), *entry[1:])


_propagation: _CutPropagation | None = None


def has_cuts() -> bool:
    """Whether a cut is on record (what a value given to Genesis could come from)."""
    return bool(_cuts)


def record_cut(out, source: torch.Tensor, location: "breaks.Location", how: str) -> None:
    """Record `out`, a value cut from the tracked tensor `source` at the user's `location`, watching rebuilds and
    arithmetic on it from now on."""
    global _watching_rebuilds, _propagation
    key = id(out)
    try:
        ref = weakref.ref(out, lambda _, key=key: _cuts.pop(key, None))
    except TypeError:
        ref = lambda out=out: out  # noqa: E731 (a float or a list: kept alive while it is in the record)
        _strong_keys.append(key)
        if len(_strong_keys) > _MAX_STRONG:
            _cuts.pop(_strong_keys.popleft(), None)
    _cuts[key] = Cut(ref, location, breaks.sources_of((source,))[0], how)
    if _torch_wrapped and not _watching_rebuilds:
        _watching_rebuilds = True
        for name in REBUILDING:
            patching.patch(torch, name, _rebuilding(name), group="strict")
        _propagation = _CutPropagation()
        _propagation.__enter__()


def _register(out, source: torch.Tensor, how: str) -> None:
    record_cut(out, source, breaks.Location.of(breaks.user_frame(sys._getframe(2))), how)


def registered(value) -> Cut | None:
    """The record of a value cut from a tracked tensor (the value itself, or an element of a list of them)."""
    entry = _cuts.get(id(value))
    if entry is not None and entry.ref() is value:
        return entry
    # Python numbers from `.item()` / `.tolist()` are the only entries a list can hold: none recorded, nothing to scan.
    # The scan looks at the first elements only, so a long list (mesh data, say) costs nothing.
    if _strong_keys and isinstance(value, (list, tuple)):
        for item in value[:_MAX_SCANNED]:
            entry = registered(item)
            if entry is not None:
                return entry
    return None


def _internal_caller() -> bool:
    """Whether the wrapped method was called by Genesis, torch or the plugin (two frames up), not by the user."""
    return breaks.is_internal_file(sys._getframe(2).f_code.co_filename)


def _detaching(name: str):
    stock = getattr(torch.Tensor, name)
    how = DETACHING[name]

    @wraps(stock)
    def wrapper(self, *args, **kwargs):
        out = stock(self, *args, **kwargs)
        # Cheapest test first: Genesis calls these on untracked tensors at every step. Genesis's and the plugin's own
        # detaches of tracked tensors (the step token, once per step) are no user's cut either: the caller's file is
        # looked up first (known after its first call), without a call.
        if self.requires_grad:
            if breaks.checking and not breaks.is_internal_file(sys._getframe(1).f_code.co_filename):
                _register(out, self, how)
        elif _cuts and (entry := registered(self)) is not None and not _internal_caller():
            # `x.detach().numpy()`, `x.detach().tolist()`: the cut is carried on to the conversion.
            _register(out, entry.source, f"{entry.how} then {how}")
        return out

    return wrapper


def _data_property():
    stock = torch._C.TensorBase.data

    def get(self):
        out = stock.__get__(self)
        if self.requires_grad and breaks.checking and not _internal_caller():
            _register(out, self, "`.data`")
        return out

    def set_(self, value):
        stock.__set__(self, value)

    return property(get, set_, doc=stock.__doc__)


def _rebuilding(name: str):
    stock = getattr(torch, name)

    @wraps(stock)
    def wrapper(data, *args, **kwargs):
        out = stock(data, *args, **kwargs)
        # Nothing recorded (no user cut yet): nothing can be rebuilt from one.
        if _cuts and isinstance(data, (float, list, tuple, np.ndarray)) and not _internal_caller():
            entry = registered(data)
            if entry is not None and not out.requires_grad:
                _register(out, entry.source, f"a tensor rebuilt from {entry.how}")
        return out

    return wrapper


def install() -> None:
    """Strict mode is installed: torch is wrapped while a differentiable scene is alive (`watch`)."""
    global _installed
    _installed = True
    if _watched:
        _wrap_torch()


def watch(sim) -> None:
    """A differentiable simulator starts a rollout (its build, each `scene.reset()`): wrap torch's detaching methods
    while it, or another differentiable simulator, is alive. Importing the plugin alone changes nothing in torch, and a
    process that builds no differentiable scene never pays for the watch. (A cut made before the first differentiable
    scene is built is not seen; the control call's scan of the caller's locals still finds `.detach()` and `.data`.)"""
    if sim not in _watched:
        _watched.add(sim)
        weakref.finalize(sim, _unwatch_if_none_left)
    if _installed:
        _wrap_torch()


def _wrap_torch() -> None:
    global _torch_wrapped
    if not _torch_wrapped:
        _torch_wrapped = True
        for name in DETACHING:
            patching.patch(torch.Tensor, name, _detaching(name), group="strict")
        patching.patch(torch.Tensor, "data", _data_property(), group="strict")


def _unwatch_if_none_left() -> None:
    # Called as a simulator is collected, possibly before the `WeakSet` drops its dead reference: iterating yields the
    # live ones only.
    if next(iter(_watched), None) is None:
        _unwrap_torch()


def _unwrap_torch() -> None:
    """Put torch's methods and constructors back and forget the cuts (no scene left to give them to)."""
    global _torch_wrapped, _watching_rebuilds, _propagation
    for owner, names in ((torch.Tensor, (*DETACHING, "data")), (torch, REBUILDING)):
        for name in names:
            patching.restore(owner, name)
    _torch_wrapped = _watching_rebuilds = False
    if _propagation is not None:
        # Popped from the torch function stack if it is still there (a mode entered later by the user stays).
        stack = torch_function_modes()
        if stack and stack[-1] is _propagation:
            _propagation.__exit__(None, None, None)
        _propagation = None
    _cuts.clear()
    _strong_keys.clear()


def is_watching() -> bool:
    """Whether torch's detaching methods are wrapped now."""
    return _torch_wrapped


def clear() -> None:
    """Unwrap torch and forget every recorded detach (used when strict mode is taken out)."""
    global _installed
    _installed = False
    _unwrap_torch()


def forget_scenes() -> None:
    """Forget the differentiable scenes seen (used by `uninstall`; a scene is seen again at its next reset)."""
    _watched.clear()
