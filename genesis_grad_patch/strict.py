"""
Strict mode: no silent gradient breaks.

Every way a differentiable rollout can lose its gradient without an error is detected at the call that loses it:

- a control or setter given a tensor that tracks gradients in a scene built without `SimOptions(requires_grad=True)`;
- `gs.from_torch(..., detach=True)` of a tensor that tracks gradients, and a control input that is a detached copy of a
  tracked tensor (the output of such a conversion, or a tensor sharing the storage of a tracked local of the caller);
- a list of tracked tensors given to a control (Genesis builds a new tensor from it, outside the graph);
- a differentiable getter called under `torch.no_grad()` / `torch.inference_mode()` during a rollout whose inputs
  track gradients;
- a getter whose gradient is not supported (`get_links_acc`, `get_dofs_force`, `get_contacts`, the velocity of a link
  that is not a free base, ...) called by the user in grad mode in a differentiable scene: it returns the stock value,
  reported once per call site and rollout (Genesis's own calls, e.g. its sensors', are not reported);
- a setter whose gradient is not supported (`set_qpos`, `set_dofs_position`, gains, masses, external wrenches, ...)
  given a tracked tensor in a differentiable scene;
- backward after `scene.reset()`, backward twice, backward after `scene.destroy()` (raised in place of Genesis's own
  errors, or of no error at all for a destroyed scene).

`set_mode("warn")` (default) issues a `GradientBreakWarning` pointing at the user's line, `set_mode("raise")` raises a
`GradientBreakError`, `set_mode("off")` disables the checks. The environment variable `GENESIS_GRAD_PATCH_MODE` sets the
initial mode. Every break is also recorded (see `events`), with the inputs each step took and the getters each state
read served, for `genesis_grad_patch.doctor` to explain a loss afterwards.

Off-grad cost: a wrapper checks the mode, the solver's `_requires_grad` flag and whether an argument tracks gradients,
then calls the wrapped method. Nothing else runs unless a check fails or the scene is differentiable.
"""

import itertools
import linecache
import os
import sys
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import wraps
from inspect import signature
from types import FrameType
from typing import TYPE_CHECKING, Any

import genesis as gs
import numpy as np
import torch

from . import patching

if TYPE_CHECKING:
    from genesis.engine.simulator import Simulator

MODES = ("warn", "raise", "off")
MODE_ENV_VAR = "GENESIS_GRAD_PATCH_MODE"

# Kinds of break, as recorded in events and named by the doctor.
SCENE_NOT_DIFFERENTIABLE = "scene_not_differentiable"
CUT_AT_DETACH = "cut_at_detach"
CUT_AT_CONVERSION = "cut_at_conversion"
READ_UNDER_NO_GRAD = "read_under_no_grad"
NON_DIFFERENTIABLE_GETTER = "non_differentiable_getter"
DROPPED_INPUT = "dropped_input"
APPROXIMATE_GRADIENT = "approximate_gradient"


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


class _ModeScope:
    """Returned by `set_mode`: the mode is already set; used as a context manager, it restores the previous one."""

    def __init__(self, previous: str) -> None:
        self.previous = previous

    def __enter__(self) -> "_ModeScope":
        return self

    def __exit__(self, *exc) -> None:
        global _mode
        _mode = self.previous

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
    return _ModeScope(previous)


def get_mode() -> str:
    """The current strict mode: "warn", "raise" or "off"."""
    return _mode


# ------------------------------------------------------------------------------------------------------------------
# Where the user's code is: the first frame outside Genesis, the plugin and torch.
# ------------------------------------------------------------------------------------------------------------------

_PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_GENESIS_DIR = os.path.dirname(os.path.abspath(gs.__file__)) + os.sep
_INTERNAL_DIRS = (_GENESIS_DIR, os.path.dirname(os.path.abspath(torch.__file__)) + os.sep, _PLUGIN_DIR)
_internal_files: dict[str, bool] = {}


def _is_internal_file(filename: str) -> bool:
    internal = _internal_files.get(filename)
    if internal is None:
        internal = not filename.startswith("<") and os.path.abspath(filename).startswith(_INTERNAL_DIRS)
        _internal_files[filename] = internal
    return internal


def user_frame(frame: FrameType | None = None) -> FrameType | None:
    """The first frame from `frame` (the caller's by default) outwards that is outside genesis/, torch/, the plugin."""
    frame = sys._getframe(1) if frame is None else frame
    while frame is not None and _is_internal_file(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


# The plugin's own machinery: its calls are made on the user's behalf, and were checked where the user made them.
_PLUGIN_MODULES = frozenset(
    f"genesis_grad_patch.{name}" for name in ("compat", "control", "doctor", "getters", "gradcheck", "strict")
)


def _is_internal_caller(frame: FrameType) -> bool:
    """Whether Genesis itself or the plugin's machinery made a call."""
    name = frame.f_globals.get("__name__", "")
    return name.startswith("genesis.") or name in _PLUGIN_MODULES


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
            "kind": self.kind,
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

_INPUTS_ATTR = "_grad_patch_inputs"  # sim -> {epoch: {id(tensor): InputRecord}}
_READ_GETTERS_ATTR = "_grad_patch_getters"  # ReadNodeBackward -> [(getter, filename, lineno)]
_STATE_CACHE_ATTR = "_grad_patch_state_cache"  # getters.py: solver -> ((step, rollout), state read at that step)
_TRACKED_ATTR = "_grad_patch_tracked_epoch"  # sim -> the last epoch in which a tracked input was taped
_RESET_AT_ATTR = "_grad_patch_reset_at"  # sim -> Location of the last reset
_BACKWARD_AT_ATTR = "_grad_patch_backward_at"  # sim -> (epoch, Location) of the last backward

# Tensors returned by `gs.from_torch(..., detach=True)` of a tracked tensor: id -> (weakref, Location, source).
_detached: dict[int, tuple] = {}
# Call sites whose caller's locals were scanned for the tracked source of a detached input: (file, line) -> rollout.
_scanned_sites: dict[tuple[str, int], int] = {}


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
    return sim.__dict__.get(_INPUTS_ATTR, {}).get(epoch, {})


def read_getters(node) -> list[tuple[str, Location]]:
    """The getters a read node (`ReadNodeBackward`) served, with the user's line of each call."""
    return [
        (name, Location(filename, lineno, linecache.getline(filename, lineno).strip()))
        for name, filename, lineno in getattr(node, _READ_GETTERS_ATTR, ())
    ]


def has_tracked_inputs(sim: "Simulator") -> bool:
    """Whether a tracked tensor was taped as an input during the current rollout of `sim`."""
    return sim.__dict__.get(_TRACKED_ATTR) == sim._grad_epoch


def _record(
    kind: str, call: str, location: Location, cause: str, fix: str, message: str, sim=None, step=None, sources=()
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


def _report(kind: str, call: str, frame: FrameType | None, cause: str, fix: str, sim=None, step=None, sources=()):
    """Record a break, then warn or raise at the user's line according to the mode."""
    location = Location.of(frame)
    code = f" `{location.source}`" if location.source else ""
    message = f"Gradient break at {location}{code}: {cause} {fix}"
    _record(kind, call, location, cause, fix, message, sim, step, _sources(sources))
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
        module_globals=module_globals,
    )


def report_approximate_gradient(call: str, cause: str, fix: str, sim: "Simulator") -> None:
    """Report, at the user's line, a call after which the rollout's gradient is only approximate (see params.py)."""
    if _mode == "off":
        return
    _report(APPROXIMATE_GRADIENT, call, user_frame(sys._getframe(2)), cause, fix, sim, _step_of(sim))


def _sources(values: Iterable) -> list:
    """The graph nodes (or leaf tensors) that tracked values come from."""
    sources = []
    for value in values:
        for tensor in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                sources.append(tensor if tensor.grad_fn is None else tensor.grad_fn)
            elif not isinstance(tensor, torch.Tensor) and tensor is not None:
                sources.append(tensor)  # already a node or a leaf
    return sources


# ------------------------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------------------------


def _tracks(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, (list, tuple)):
        return any(isinstance(item, torch.Tensor) and item.requires_grad for item in value)
    return False


_Tensor = torch.Tensor


def _any_tracked(args: tuple, kwargs: dict) -> bool:
    """Whether an argument tracks gradients: the off-grad fast path, so exact class checks first and no calls."""
    for values in (args, kwargs.values()) if kwargs else (args,):
        for value in values:
            cls = value.__class__
            if cls is _Tensor:
                if value.requires_grad:
                    return True
            elif cls is list or cls is tuple:
                for item in value:
                    if isinstance(item, _Tensor) and item.requires_grad:
                        return True
            elif isinstance(value, _Tensor) and value.requires_grad:
                return True
    return False


def _storage_span(value) -> tuple[int, int] | None:
    """The memory range a tensor's storage (or a numpy array's buffer) spans, or None if it has none."""
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        start, size = storage.data_ptr(), storage.nbytes()
    elif isinstance(value, np.ndarray):
        start, size = value.__array_interface__["data"][0], value.nbytes
    else:
        return None
    return (start, start + size) if start and size else None


def _detached_source(value, frame: FrameType | None, epoch: int):
    """
    If `value` looks like a detached copy of a tracked tensor, return (how it was cut, the tracked source).

    "As far as can be seen at the call": the output of `gs.from_torch(..., detach=True)`, or memory shared with a
    tracked tensor among the caller's local variables (`x.detach()`, `x.data`, `x.detach().numpy()` all share it).
    """
    from .detach_watch import registered

    entry = registered(value)
    if entry is not None:
        return (entry[3] if len(entry) > 3 else f"gs.from_torch(..., detach=True) at {entry[1]}"), entry[2]
    if frame is None or not isinstance(value, (torch.Tensor, np.ndarray)):
        return None
    # The caller's locals are scanned once per call site and rollout: a detach at a line shows at its first call, and
    # a module-level loop would otherwise scan every global of the script at every step.
    site = (frame.f_code.co_filename, frame.f_lineno)
    if _scanned_sites.get(site) == epoch:
        return None
    _scanned_sites[site] = epoch
    span = _storage_span(value)
    if span is None:
        return None
    device = value.device if isinstance(value, torch.Tensor) else torch.device("cpu")
    for name, local in frame.f_locals.items():
        if not (isinstance(local, torch.Tensor) and local.requires_grad and local.device == device):
            continue
        local_span = _storage_span(local)
        if local_span is not None and local_span[0] < span[1] and span[0] < local_span[1]:
            kind = "a detached copy" if isinstance(value, torch.Tensor) else "a numpy view"
            return f"{kind} of the tracked tensor `{name}`", local
    return None


# Inputs Genesis tapes and differentiates in a differentiable scene (entity level).
CONTROLS = ("control_dofs_force", "control_dofs_velocity", "control_dofs_position", "control_dofs_position_velocity")
TAPED_SETTERS = ("set_pos", "set_quat", "set_dofs_velocity", "set_mass")
# Setters that take state or parameters without any gradient path: a tracked input is dropped.
# Dof parameters: set on an entity or on the solver alike, never differentiated.
# Dof parameters differentiated by the plugin (params.py), on entities and on the solver.
PARAMETER_SETTERS = (
    "set_dofs_kp",
    "set_dofs_kv",
    "set_dofs_damping",
    "set_dofs_armature",
    "set_dofs_stiffness",
    "set_qpos",
    "set_dofs_position",
    "set_links_mass",
    "set_links_inertia",
    "set_links_COM",
)
_DOF_PARAMETER_SETTERS = (
    "set_dofs_act_gain",
    "set_dofs_act_bias",
    "set_dofs_force_range",
    "set_dofs_limit",
    "set_dofs_frictionloss",
)
DROPPING_ENTITY_SETTERS = (
    *_DOF_PARAMETER_SETTERS,
    "set_dofs_invweight",
    "set_links_invweight",
    "set_friction_ratio",
    "set_friction",
    "apply_links_external_wrench",
)
# At solver level only the PD and force controls are differentiable (the plugin routes them to the entities).
DROPPING_SOLVER_SETTERS = (
    "set_dofs_velocity",
    "set_base_links_pos",
    "set_base_links_quat",
    "set_links_pos",
    "set_links_quat",
    *_DOF_PARAMETER_SETTERS,
    "apply_links_external_wrench",
)
# Getters of state whose gradient is supported neither by Genesis nor by the plugin: their tensors are detached.
NON_DIFFERENTIABLE_ENTITY_GETTERS = (
    "get_links_acc",
    "get_links_acc_ang",
    "get_dofs_force",
    "get_dofs_control_force",
    "get_dofs_acc",
    "get_contacts",
    "get_links_net_contact_force",
    "get_mass_mat",
    "get_kinetic_energy",
    "get_potential_energy",
    "get_total_energy",
    "get_AABB",
    "get_verts",
    "get_jacobian",
)
NON_DIFFERENTIABLE_SOLVER_GETTERS = (
    "get_links_acc",
    "get_links_acc_ang",
    "get_dofs_force",
    "get_dofs_control_force",
    "get_dofs_actuator_force",
    "get_dofs_acc",
    "get_mass_mat",
    "get_kinetic_energy",
    "get_potential_energy",
    "get_total_energy",
    "get_AABB",
    "get_links_root_COM",
    "get_geoms_pos",
    "get_geoms_quat",
)
# Entity getters that return a differentiable solver getter's result (see getters.py).
_ENTITY_ROUTES = frozenset(
    {
        "get_pos",
        "get_quat",
        "get_vel",
        "get_ang",
        "get_qpos",
        "get_dofs_position",
        "get_dofs_velocity",
        "get_links_pos",
        "get_links_quat",
        "get_links_vel",
        "get_links_ang",
        "wrapper",  # gs.assert_built
    }
)

_FIX_SCENE = "Build the scene with `gs.options.SimOptions(requires_grad=True)` to differentiate through it."
_FIX_NOT_DIFFERENTIABLE = (
    "Only `control_dofs_position/velocity/position_velocity/force`, the entity setters `set_pos`, `set_quat`, "
    "`set_dofs_velocity`, the dof parameters `set_dofs_kp/kv/damping/armature/stiffness` and the initial "
    "configuration (`set_qpos`, `set_dofs_position`) carry gradients into a differentiable scene; drive the dofs through one of them, or pass "
    "`.detach()` explicitly if no gradient is meant to flow."
)


def _step_of(sim: "Simulator") -> int:
    """The step an input given now is applied in, counted as `StepNode` counts (1 for the first `scene.step()`)."""
    return sim.cur_step_global + 1


def _record_input(sim: "Simulator", tensor: torch.Tensor, call: str, arg: str, frame: FrameType | None) -> None:
    epoch = sim._grad_epoch
    by_epoch = sim.__dict__.setdefault(_INPUTS_ATTR, {})
    if epoch not in by_epoch:
        for old in [e for e in by_epoch if e < epoch - 1]:
            del by_epoch[old]
        by_epoch[epoch] = {}
    user = user_frame(frame)
    filename, lineno = (user.f_code.co_filename, user.f_lineno) if user is not None else ("<unknown>", 0)
    by_epoch[epoch][id(tensor)] = InputRecord(call, arg, _step_of(sim), filename, lineno)
    sim.__dict__[_TRACKED_ATTR] = epoch


# Values a detach can hand to a control: tensors, arrays (`.numpy()`), Python numbers and lists (`.item()`, `.tolist()`).
_CUT_KINDS = (torch.Tensor, np.ndarray, float, list, tuple)


def _check_inputs(owner: str, name: str, category: str, solver, arguments: Iterable, frame: FrameType, report: bool):
    """Check (and, in a differentiable scene, record) the inputs of one control or setter call."""
    sim = solver._sim
    requires_grad = solver._requires_grad
    call = f"{owner}.{name}"
    user = user_frame(frame)
    for arg, value in arguments:
        if _tracks(value):
            if not requires_grad and category != "dropping":
                if report:
                    _report(
                        SCENE_NOT_DIFFERENTIABLE,
                        call,
                        user,
                        f"'{name}' got a tensor that tracks gradients ('{arg}'), but the scene was built without "
                        "`SimOptions(requires_grad=True)`: Genesis uses its value only, and no gradient will reach it.",
                        _FIX_SCENE,
                        sim,
                        _step_of(sim),
                        (value,),
                    )
            elif category == "dropping":
                if report:
                    _report(
                        DROPPED_INPUT if requires_grad else SCENE_NOT_DIFFERENTIABLE,
                        call,
                        user,
                        f"'{name}' got a tensor that tracks gradients ('{arg}'), but its gradient is not supported by "
                        "Genesis nor by genesis-grad-patch: the value is used and the gradient is dropped.",
                        _FIX_NOT_DIFFERENTIABLE,
                        sim,
                        _step_of(sim),
                        (value,),
                    )
            elif not isinstance(value, torch.Tensor):
                if report:
                    _report(
                        CUT_AT_CONVERSION,
                        call,
                        user,
                        f"'{name}' got a {type(value).__name__} of tensors that track gradients ('{arg}'): Genesis "
                        "converts it to a new tensor outside the autograd graph.",
                        f"Pass one tensor instead, e.g. `{arg}=torch.stack([...])`.",
                        sim,
                        _step_of(sim),
                        (value,),
                    )
            elif category != "solver":
                _record_input(sim, value, call, arg, user)
        elif requires_grad and category != "dropping" and isinstance(value, _CUT_KINDS) and report:
            found = _detached_source(value, user, sim._grad_epoch)
            if found is not None:
                how, source = found
                _report(
                    CUT_AT_DETACH,
                    call,
                    user,
                    f"'{name}' got '{arg}' = {how}: it does not track gradients, so the rollout is cut from what "
                    "produced it.",
                    "Pass the tracked tensor itself (drop the `.detach()` / `.item()` / `.tolist()` / `.data` / `.numpy()` / "
                    "`detach=True`).",
                    sim,
                    _step_of(sim),
                    (source,),
                )


def _arguments(names: tuple[str, ...], args: tuple, kwargs: dict):
    """(name, value) of each argument of a call, self excluded; positional names come from the signature."""
    yield from zip(names, args, strict=False)
    yield from kwargs.items()


def _detached_args(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The arguments with every tensor that tracks gradients detached."""

    def cut(value):
        return value.detach() if isinstance(value, torch.Tensor) and value.requires_grad else value

    return tuple(cut(value) for value in args), {key: cut(value) for key, value in kwargs.items()}


def _entity_input(name: str, inner: Callable, category: str) -> Callable:
    names = tuple(signature(inner).parameters)[1:]
    dropping = category == "dropping"

    @wraps(inner)
    def wrapper(self, *args, **kwargs):
        solver = self._solver
        if dropping and solver._requires_grad and _mode == "off":
            # Their gradient is dropped anyway, and some of Genesis's kernels crash on a tensor that tracks gradients
            # (`set_dofs_armature`, a segfault in a differentiable scene): they get the value alone.
            args, kwargs = _detached_args(args, kwargs)
            return inner(self, *args, **kwargs)
        if solver._requires_grad:
            # Genesis replays the tape of a differentiable scene with taping off: those calls are not the user's.
            if _mode == "off" or not self._update_tgt_while_set:
                return inner(self, *args, **kwargs)
        elif _mode == "off" or not _any_tracked(args, kwargs):
            return inner(self, *args, **kwargs)
        frame = sys._getframe(1)
        arguments = _arguments(names, args, kwargs)
        _check_inputs(type(self).__name__, name, category, solver, arguments, frame, not _is_internal_caller(frame))
        if dropping and solver._requires_grad:
            args, kwargs = _detached_args(args, kwargs)
        return inner(self, *args, **kwargs)

    return wrapper


def _solver_input(name: str, inner: Callable, category: str) -> Callable:
    names = tuple(signature(inner).parameters)[1:]
    # `control._solver_control` runs the stock method for calls made by Genesis and routes user calls to the entities,
    # telling them apart by the caller's frame, which this wrapper hides: it makes that choice itself.
    from genesis.engine.solvers.rigid.rigid_solver import RigidSolver

    stock = patching.original(RigidSolver, name) if name in CONTROLS else inner

    @wraps(inner)
    def wrapper(self, *args, **kwargs):
        # Off-grad, the control wrapper runs the stock method whoever calls: nothing to choose.
        if not self._requires_grad and (_mode == "off" or not _any_tracked(args, kwargs)):
            return inner(self, *args, **kwargs)
        frame = sys._getframe(1)
        if frame.f_globals.get("__name__", "").startswith("genesis."):
            return stock(self, *args, **kwargs)
        if _mode != "off":
            _check_inputs(type(self).__name__, name, category, self, _arguments(names, args, kwargs), frame, True)
        if category == "dropping" and self._requires_grad:
            # See `_entity_input`: the value alone.
            args, kwargs = _detached_args(args, kwargs)
        return inner(self, *args, **kwargs)

    return wrapper


def _read_node(solver, tensor) -> Any:
    """The read node a getter's output comes from: the one of the state the getters cache, or a few views away."""
    cached = solver.__dict__.get(_STATE_CACHE_ATTR)
    node = getattr(cached[1].qpos, "grad_fn", None) if cached is not None else None
    if node is not None and type(node).__name__ == "ReadNodeBackward":
        return node
    node = getattr(tensor, "grad_fn", None)
    for _ in range(8):
        if node is None:
            return None
        if type(node).__name__ == "ReadNodeBackward":
            return node
        nexts = [fn for fn, _ in node.next_functions if fn is not None]
        node = nexts[0] if len(nexts) == 1 else None
    return None


def _getter_caller(frame: FrameType) -> FrameType | None:
    """The user's frame that asked for a getter, or None if Genesis called it for its own purposes."""
    while frame is not None and frame.f_code.co_filename.startswith(_GENESIS_DIR):
        if frame.f_code.co_name not in _ENTITY_ROUTES:
            return None
        frame = frame.f_back
    if frame is None or _is_internal_caller(frame):
        return None
    return user_frame(frame)


def _differentiable_getter(name: str, inner: Callable) -> Callable:
    from .getters import genesis_is_running

    @wraps(inner)
    def wrapper(self, *args, **kwargs):
        # Genesis's own reads (sensors, viewer) take the stock path and are nothing to report.
        if _mode == "off" or not self._requires_grad or genesis_is_running():
            return inner(self, *args, **kwargs)
        out = inner(self, *args, **kwargs)
        sim = self._sim
        if torch.is_grad_enabled():
            # Named for the doctor only where there is something to explain: a rollout with tracked inputs (and its
            # initial state, read before the first of them). A stock value (a getter without a gradient, reported
            # where it was read) served no read node.
            named = out.requires_grad and (has_tracked_inputs(sim) or sim._cur_substep_global < sim._substeps)
            node = _read_node(self, out) if named else None
            if node is not None:
                user = _getter_caller(sys._getframe(1))
                if user is not None:
                    # On the node itself (a custom Function's context takes attributes): it lives as long as the graph.
                    entry = (name, user.f_code.co_filename, user.f_lineno)
                    getters = node.__dict__.setdefault(_READ_GETTERS_ATTR, [])
                    if entry not in getters:
                        getters.append(entry)
        elif has_tracked_inputs(sim):
            user = _getter_caller(sys._getframe(1))
            if user is not None:
                how = "torch.inference_mode()" if torch.is_inference_mode_enabled() else "torch.no_grad()"
                _report(
                    READ_UNDER_NO_GRAD,
                    f"{type(self).__name__}.{name}",
                    user,
                    f"'{name}' was called under `{how}` during a rollout whose inputs track gradients: the state it "
                    "returns is outside the autograd graph, so a loss or a policy input computed from it gets no "
                    "gradient through the simulation.",
                    "Read it with gradients enabled (outside the `no_grad` block). If the value is only logged, "
                    "read it under `with genesis_grad_patch.set_mode('off'):`.",
                    sim,
                    sim.cur_step_global,
                )
        return out

    return wrapper


# Call sites of non-differentiable reads already reported: (file, line, getter) -> (simulator weakref, rollout).
_reported_reads: dict[tuple[str, int, str], tuple] = {}

_FIX_NON_DIFFERENTIABLE_READ = (
    "Build the loss from differentiable getters (get_qpos, get_dofs_position, get_dofs_velocity, get_links_pos, "
    "get_links_quat, get_pos, get_quat, the velocity of a free base, ...). If the value is only observed, read it under "
    "`torch.no_grad()`."
)


# The plugin's getter machinery between a getter call and the report: skipped to find who called the getter.
_GETTER_MODULES = frozenset({__name__, "genesis_grad_patch.getters"})


def _reads_caller(frame: FrameType | None) -> FrameType | None:
    """The user's frame behind a getter call, skipping the plugin's getter machinery; None if Genesis made the call."""
    while frame is not None and frame.f_globals.get("__name__") in _GETTER_MODULES:
        frame = frame.f_back
    return None if frame is None else _getter_caller(frame)


def report_non_differentiable_read(solver, name: str, cause: str) -> None:
    """
    Report a getter call whose result is outside the autograd graph, made by the user in grad mode.

    The value itself stays available (stock Genesis returns it too, and code that only logs it is valid): "warn" issues
    one `GradientBreakWarning` per call site and rollout (a loop reading it every step warns once), "raise" raises a
    `GradientBreakError` at every call, "off" says nothing. Calls made by Genesis itself are never reported.

    Parameters
    ----------
    solver : RigidSolver
        The solver read.
    name : str
        The getter called, e.g. "RigidEntity.get_links_acc".
    cause : str
        Why the value is outside the graph.
    """
    if _mode == "off":
        return
    user = _reads_caller(sys._getframe(1))
    if user is None:
        return
    sim = solver._sim
    site = (user.f_code.co_filename, user.f_lineno, name)
    reported = _reported_reads.get(site)
    if _mode == "warn" and reported is not None and reported[0]() is sim and reported[1] == sim._grad_epoch:
        return
    _reported_reads[site] = (weakref.ref(sim), sim._grad_epoch)
    _report(
        NON_DIFFERENTIABLE_GETTER,
        name,
        user,
        f"{cause} The value returned is the stock one, outside the autograd graph: a loss computed from it gets no "
        "gradient.",
        _FIX_NON_DIFFERENTIABLE_READ,
        sim,
        sim.cur_step_global,
    )


def _non_differentiable_getter(name: str, inner: Callable, entity_level: bool) -> Callable:
    from .getters import genesis_is_running

    @wraps(inner)
    def wrapper(self, *args, **kwargs):
        solver = self._solver if entity_level else self
        if _mode == "off" or not solver._requires_grad or not torch.is_grad_enabled() or genesis_is_running():
            return inner(self, *args, **kwargs)
        frame = sys._getframe(1)
        # The entity getter is reported where the user called it; the solver getter it calls is Genesis's call.
        if not _is_internal_caller(frame):
            report_non_differentiable_read(
                solver,
                f"{type(self).__name__}.{name}",
                f"'{name}' returns a tensor outside the autograd graph (its gradient is supported neither by Genesis "
                "nor by genesis-grad-patch).",
            )
        return inner(self, *args, **kwargs)

    return wrapper


def _from_torch(inner: Callable) -> Callable:
    @wraps(inner)
    def from_torch(tensor, *args, **kwargs):
        out = inner(tensor, *args, **kwargs)
        detach = kwargs.get("detach", args[2] if len(args) > 2 else False)
        if _mode == "off" or not detach or not isinstance(tensor, torch.Tensor) or not tensor.requires_grad:
            return out
        user = user_frame(sys._getframe(1))
        location = Location.of(user)
        key = id(out)
        _detached[key] = (
            weakref.ref(out, lambda _, key=key: _detached.pop(key, None)),
            location,
            _sources((tensor,))[0],
        )
        _report(
            CUT_AT_DETACH,
            "gs.from_torch",
            user,
            "`gs.from_torch(..., detach=True)` was given a tensor that tracks gradients: the result is cut from the "
            "autograd graph, so nothing computed from it (a control input, a loss) reaches what produced it.",
            "Drop `detach=True` (the default keeps the graph), or pass the torch tensor to Genesis directly.",
            None,
            None,
            (tensor,),
        )
        return out

    return from_torch


# ------------------------------------------------------------------------------------------------------------------
# Backward misuse: clearer errors than Genesis's, raised where they can be explained.
# ------------------------------------------------------------------------------------------------------------------


def _backward_error(frame: FrameType | None, cause: str, fix: str) -> GradientBreakError:
    location = Location.of(user_frame(frame))
    code = f" `{location.source}`" if location.source else ""
    return GradientBreakError(f"Gradient break at {location}{code}: {cause} {fix}")


def _reverse_step(inner: Callable) -> Callable:
    @wraps(inner)
    def reverse_step(self: "Simulator", step: int, epoch: int):
        if _mode == "off":
            return inner(self, step, epoch)
        frame = sys._getframe(1)
        scene = self._scene
        if scene is None or getattr(scene, "_sim", None) is not self:
            # Stock Genesis runs the reverse pass anyway when something else keeps the simulator alive (an entity).
            raise _backward_error(
                frame,
                "backward was called on a rollout of a scene destroyed since (`scene.destroy()`): its simulation and "
                "tape are gone, so the gradient cannot be computed.",
                "Call `loss.backward()` before destroying the scene.",
            )
        if epoch != self._grad_epoch:
            reset_at = self.__dict__.get(_RESET_AT_ATTR)
            where = f" at {reset_at}" if reset_at is not None else ""
            raise _backward_error(
                frame,
                f"backward was called on a rollout of a scene that has been reset since (`scene.reset()`{where}): the "
                "reset discarded the rollout's tape.",
                "Call `loss.backward()` before `scene.reset()`.",
            )
        if not self._is_backward_ready or self.cur_step_global < step:
            last = self.__dict__.get(_BACKWARD_AT_ATTR)
            where = f" (first backward at {last[1]})" if last is not None and last[0] == epoch else ""
            raise _backward_error(
                frame,
                f"backward was called twice on the same rollout{where}: the first backward pass rewound the "
                f"simulation and consumed the tape of the steps it went through, `retain_graph=True` does not keep it.",
                "Differentiate each rollout once: sum the losses first (`(loss_a + loss_b).backward()`) or use "
                "`torch.autograd.grad(loss, inputs)` once, or call `scene.reset()` and roll out again before the next "
                "backward.",
            )
        self.__dict__[_BACKWARD_AT_ATTR] = (epoch, Location.of(user_frame(frame)))
        return inner(self, step, epoch)

    return reverse_step


def _reset_grad(inner: Callable) -> Callable:
    @wraps(inner)
    def reset_grad(self: "Simulator"):
        inner(self)
        if self._requires_grad and _mode != "off":
            self.__dict__[_RESET_AT_ATTR] = Location.of(user_frame(sys._getframe(1)))

    return reset_grad


# ------------------------------------------------------------------------------------------------------------------


def install() -> None:
    """Wrap the Genesis calls that can silently cut a gradient (after the other patches, which they wrap)."""
    # Genesis internals are imported here, after the version check of `genesis_grad_patch.install`.
    from genesis.engine.entities.rigid_entity.rigid_entity import RigidEntity
    from genesis.engine.simulator import Simulator
    from genesis.engine.solvers.rigid.rigid_solver import RigidSolver

    from .getters import GETTERS

    for name in CONTROLS:
        patching.patch(RigidEntity, name, _entity_input(name, getattr(RigidEntity, name), "control"))
        patching.patch(RigidSolver, name, _solver_input(name, getattr(RigidSolver, name), "solver"))
    for name in PARAMETER_SETTERS:
        patching.patch(RigidEntity, name, _entity_input(name, getattr(RigidEntity, name), "taped"))
        patching.patch(RigidSolver, name, _solver_input(name, getattr(RigidSolver, name), "solver"))
    for name in TAPED_SETTERS:
        patching.patch(RigidEntity, name, _entity_input(name, getattr(RigidEntity, name), "taped"))
    for name in DROPPING_ENTITY_SETTERS:
        if hasattr(RigidEntity, name):
            patching.patch(RigidEntity, name, _entity_input(name, getattr(RigidEntity, name), "dropping"))
    for name in DROPPING_SOLVER_SETTERS:
        if hasattr(RigidSolver, name):
            patching.patch(RigidSolver, name, _solver_input(name, getattr(RigidSolver, name), "dropping"))
    for name in GETTERS:
        patching.patch(RigidSolver, name, _differentiable_getter(name, getattr(RigidSolver, name)))
    for name in NON_DIFFERENTIABLE_ENTITY_GETTERS:
        if hasattr(RigidEntity, name):
            patching.patch(RigidEntity, name, _non_differentiable_getter(name, getattr(RigidEntity, name), True))
    for name in NON_DIFFERENTIABLE_SOLVER_GETTERS:
        if hasattr(RigidSolver, name):
            patching.patch(RigidSolver, name, _non_differentiable_getter(name, getattr(RigidSolver, name), False))
    if hasattr(gs, "from_torch"):
        patching.patch(gs, "from_torch", _from_torch(gs.from_torch))
    patching.patch(Simulator, "reverse_step", _reverse_step(Simulator.reverse_step))
    patching.patch(Simulator, "reset_grad", _reset_grad(Simulator.reset_grad))
