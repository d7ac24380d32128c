"""
Strict mode's core: the mode, the kinds of gradient break, where the user's code is, and the record of breaks that
`genesis_grad_patch.doctor` reads. The checks that find breaks are in `input_checks` and `backward_checks`.
"""

import enum
import itertools
import linecache
import os
import sys
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

import genesis as gs
import torch

from . import records

if TYPE_CHECKING:
    from .genesis_api import Simulator

MODES = ("warn", "raise", "off")
MODE_ENV_VAR = "GENESIS_GRAD_PATCH_MODE"


class BreakKind(str, enum.Enum):
    """How a gradient was lost: recorded in each `BreakEvent`, named by the doctor."""

    SCENE_NOT_DIFFERENTIABLE = "scene_not_differentiable"
    CUT_AT_DETACH = "cut_at_detach"
    CUT_AT_CONVERSION = "cut_at_conversion"
    READ_UNDER_NO_GRAD = "read_under_no_grad"
    NON_DIFFERENTIABLE_GETTER = "non_differentiable_getter"
    DROPPED_INPUT = "dropped_input"
    APPROXIMATE_GRADIENT = "approximate_gradient"
    APPROXIMATE_CONTACT = "approximate_contact"
    UNCONVERGED_SOLVE = "unconverged_solve"
    CUT_AT_RESET = "cut_at_reset"
    READ_BEFORE_STEP = "read_before_step"

    def __str__(self) -> str:
        return self.value


class GradientBreakWarning(UserWarning):
    """A call that silently cuts the gradient of a differentiable rollout (strict mode "warn")."""


class GradientBreakError(gs.GenesisException, RuntimeError):
    """A call that would silently cut the gradient of a differentiable rollout (strict mode "raise")."""


def _mode_from_env() -> str:
    mode = os.environ.get(MODE_ENV_VAR, "warn").strip().lower() or "warn"
    if mode not in MODES:
        warnings.warn(f"{MODE_ENV_VAR}={mode!r} is not one of {MODES}: using 'warn'.", RuntimeWarning, stacklevel=2)
        mode = "warn"
    return mode


_mode: str = _mode_from_env()
# Whether the strict group is installed (`install(strict=False)` or `uninstall(groups=("strict",))` take it out).
_enabled: bool = True
# What every replacement tests first: strict mode is on and installed. Kept in sync by `set_mode` and `set_enabled`.
checking: bool = _mode != "off"


def _sync() -> None:
    global checking
    checking = _enabled and _mode != "off"


def set_enabled(enabled: bool) -> None:
    """Turn the strict services of the shared replacements on or off (the strict patch group)."""
    global _enabled
    _enabled = enabled
    _sync()


class _ModeScope:
    """Returned by `set_mode`: the mode is already set; used as a context manager, it restores the previous one."""

    def __init__(self, previous: str) -> None:
        self.previous = previous

    def __enter__(self) -> "_ModeScope":
        return self

    def __exit__(self, *exc) -> None:
        global _mode
        _mode = self.previous
        _sync()

    def __repr__(self) -> str:
        return f"<strict mode {_mode!r} (was {self.previous!r})>"


def set_mode(mode: str) -> _ModeScope:
    """
    Set how gradient breaks are reported: "warn" (default), "raise" or "off".

    Parameters
    ----------
    mode : str
        "warn" issues a `GradientBreakWarning` at the user's line, "raise" raises a `GradientBreakError`, "off" runs no
        check at all.

    Returns
    -------
    scope : context manager
        The mode is set on return; `with set_mode("off"): ...` restores the previous mode when the block exits, e.g. to
        read a value for logging under `torch.no_grad()` without a warning.
    """
    global _mode
    if mode not in MODES:
        raise ValueError(f"Unknown strict mode {mode!r}: expected one of {MODES}.")
    previous, _mode = _mode, mode
    _sync()
    return _ModeScope(previous)


def get_mode() -> str:
    """The current strict mode: "warn", "raise" or "off"."""
    return _mode


# ------------------------------------------------------------------------------------------------------------------
# Where the user's code is: the first frame outside Genesis, the plugin and torch.
# ------------------------------------------------------------------------------------------------------------------

# The package's directory (this module is in its private `_impl`): the public modules' frames are the plugin's too.
_PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_GENESIS_DIR = os.path.dirname(os.path.abspath(gs.__file__)) + os.sep
_INTERNAL_DIRS = (_GENESIS_DIR, os.path.dirname(os.path.abspath(torch.__file__)) + os.sep, _PLUGIN_DIR)
_internal_files: dict[str, bool] = {}


def is_internal_file(filename: str) -> bool:
    """Whether a code file is Genesis's, torch's or the plugin's (looked up once per file)."""
    internal = _internal_files.get(filename)
    if internal is None:
        internal = not filename.startswith("<") and os.path.abspath(filename).startswith(_INTERNAL_DIRS)
        _internal_files[filename] = internal
    return internal


def user_frame(frame: FrameType | None = None) -> FrameType | None:
    """The first frame from `frame` (the caller's by default) outwards that is outside genesis/, torch/, the plugin."""
    frame = sys._getframe(1) if frame is None else frame
    while frame is not None and is_internal_file(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


@dataclass(frozen=True)
class Location:
    """A line of the user's code."""

    filename: str
    lineno: int
    source: str = ""

    @classmethod
    def of(cls, frame: FrameType | None) -> "Location":
        if frame is None:
            return cls("<unknown>", 0)
        filename, lineno = frame.f_code.co_filename, frame.f_lineno
        return cls(filename, lineno, linecache.getline(filename, lineno, frame.f_globals).strip())

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno}"

    def short(self) -> str:
        return f"{os.path.basename(self.filename)}:{self.lineno}"


# ------------------------------------------------------------------------------------------------------------------
# Records: breaks, the inputs each step took and the getters each read served. Read by the doctor.
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class BreakEvent:
    """One detected gradient break."""

    seq: int
    kind: str
    call: str
    location: Location
    message: str
    cause: str = ""
    fix: str = ""
    step: int | None = None
    epoch: int | None = None
    sim: Callable[[], Any] | None = field(default=None, repr=False)
    # For a break tied to no scene: (simulator weakref, rollout, step) of every live scene when it happened.
    rollouts: tuple = field(default=(), repr=False)
    # What the break cut off: grad_fn nodes or leaf tensors of the tracked values that were lost, for the doctor to
    # tell which parameters the break starved.
    sources: tuple = field(default=(), repr=False)

    def to_dict(self) -> dict:
        return {
            "kind": str(self.kind),
            "call": self.call,
            "location": str(self.location),
            "source": self.location.source,
            "step": self.step,
            "cause": self.cause,
            "fix": self.fix,
            "message": self.message,
        }


@dataclass(frozen=True)
class InputRecord:
    """A tracked tensor taped as the input of a step by a control or setter call."""

    call: str
    arg: str
    step: int
    filename: str
    lineno: int

    @property
    def location(self) -> Location:
        # Built on demand: recording runs at every control call of a differentiable rollout.
        return Location(self.filename, self.lineno, linecache.getline(self.filename, self.lineno).strip())


_MAX_EVENTS = 512
_events: deque = deque(maxlen=_MAX_EVENTS)
_seq = itertools.count()

READ_GETTERS_ATTR = "_grad_patch_getters"  # ReadNodeBackward -> [(getter, filename, lineno)]


def events(sim: "Simulator | None" = None, epoch: int | None = None) -> list[BreakEvent]:
    """
    The recorded breaks, oldest first.

    Parameters
    ----------
    sim : Simulator, optional
        Keep the breaks of this simulator's rollout `epoch`, including the breaks tied to no scene (`gs.from_torch`)
        made while that rollout was under way.
    epoch : int, optional
        The rollout (`sim._grad_epoch`) to keep. Defaults to the simulator's current one.
    """
    if sim is None:
        return list(_events)
    epoch = sim._grad_epoch if epoch is None else epoch
    kept = []
    for event in _events:
        if event.sim is not None:
            if event.sim() is sim and event.epoch == epoch:
                kept.append(event)
        elif any(ref() is sim and rollout_epoch == epoch for ref, rollout_epoch, _ in event.rollouts):
            kept.append(event)
    return kept


def clear_events() -> None:
    """Forget every recorded break."""
    _events.clear()


def input_records(sim: "Simulator", epoch: int) -> dict[int, InputRecord]:
    """The tracked inputs taped during a rollout of `sim`, keyed by the id of the tensor."""
    record = records.peek_sim(sim)
    return {} if record is None else record.inputs.get(epoch, {})


def read_getters(node) -> list[tuple[str, Location]]:
    """The getters a read node (`ReadNodeBackward`) served, with the user's line of each call."""
    return [
        (name, Location(filename, lineno, linecache.getline(filename, lineno).strip()))
        for name, filename, lineno in getattr(node, READ_GETTERS_ATTR, ())
    ]


def _record(
    kind: BreakKind, call: str, location: Location, cause: str, fix: str, message: str, sim=None, step=None, sources=()
) -> BreakEvent:
    event = BreakEvent(
        seq=next(_seq),
        kind=kind,
        call=call,
        location=location,
        message=message,
        cause=cause,
        fix=fix,
        step=step,
        epoch=None if sim is None else sim._grad_epoch,
        sim=None if sim is None else weakref.ref(sim),
        rollouts=() if sim is not None else _live_rollouts(),
        sources=tuple(sources),
    )
    _events.append(event)
    return event


def _live_rollouts() -> tuple:
    rollouts = []
    for scene_ref in list(getattr(gs, "_scene_registry", ())):
        sim = getattr(scene_ref(), "_sim", None)
        if sim is not None:
            rollouts.append((weakref.ref(sim), sim._grad_epoch, sim.cur_step_global + 1))
    return tuple(rollouts)


def report(
    kind: BreakKind,
    call: str,
    frame: FrameType | None,
    cause: str,
    fix: str,
    sim=None,
    step=None,
    sources=(),
    warn: bool = True,
    record: bool = True,
):
    """Record a break (unless `record` is False), then warn or raise at the user's line according to the mode (unless
    `warn` is False)."""
    location = Location.of(frame)
    code = f" `{location.source}`" if location.source else ""
    message = f"Gradient break at {location}{code}: {cause} {fix}"
    if record:
        _record(kind, call, location, cause, fix, message, sim, step, sources_of(sources))
    if not warn:
        return
    if _mode == "raise":
        raise GradientBreakError(message)
    if frame is None:
        warnings.warn(message, GradientBreakWarning, stacklevel=3)
        return
    module_globals = frame.f_globals
    warnings.warn_explicit(
        message,
        GradientBreakWarning,
        location.filename,
        location.lineno,
        module=module_globals.get("__name__"),
        registry=module_globals.setdefault("__warningregistry__", {}),
        # The module's loader finds the line of code to show (notebooks, zip imports). Code with no file (`python -c`,
        # stdin) has the built-in importer as `__main__`'s loader, whose `get_source` raises ImportError.
        module_globals=None if location.filename.startswith("<") else module_globals,
    )


def sources_of(values: Iterable) -> list:
    """The graph nodes (or leaf tensors) that tracked values come from."""
    sources = []
    for value in values:
        for tensor in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                sources.append(tensor if tensor.grad_fn is None else tensor.grad_fn)
            elif not isinstance(tensor, torch.Tensor) and tensor is not None:
                sources.append(tensor)  # already a node or a leaf
    return sources


def clear() -> None:
    """Forget every break (used by `uninstall`)."""
    _events.clear()
