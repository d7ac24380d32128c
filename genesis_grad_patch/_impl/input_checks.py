"""
Strict mode's input and read checks: the services the replacements call (`check_inputs`, `note_read`, ...).

Each is called by the one replacement of a Genesis method (`replacements.py`) when strict mode is on, with the call's
origin already known (`callers.py`): no check inspects stack frames to decide anything, frames are only walked to
point a message at the user's line.
"""

import sys
import weakref
from collections.abc import Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import catalog
from . import breaks, detach_watch, records
from .breaks import BreakKind, Location, report, user_frame

if TYPE_CHECKING:
    from .genesis_api import Simulator


def tracks(value) -> bool:
    """Whether a value tracks gradients: a tensor that does, or a list or tuple holding one."""
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, (list, tuple)):
        return any(isinstance(item, torch.Tensor) and item.requires_grad for item in value)
    return False


_Tensor = torch.Tensor


# Arguments that index (dofs, links, geoms, environments): integers, which cannot track gradients.
INDEX_ARGUMENTS = frozenset(
    ("dofs_idx_local", "dofs_idx", "links_idx_local", "links_idx", "qs_idx_local", "qs_idx", "geoms_idx", "envs_idx")
)


def tracked_tensor(value) -> bool:
    """Whether a value is a tensor that tracks gradients (what `detached_args` detaches)."""
    return isinstance(value, _Tensor) and value.requires_grad


def tracked_check(names: tuple[str, ...]) -> Callable[[tuple, dict], bool]:
    """
    The test of one method's calls for an argument that tracks gradients, given the names of its parameters (self
    excluded): `check(args, kwargs)`.

    Index arguments (integers, which cannot track gradients) are skipped by position as well as by name, so that the
    check of a call costs one look at each value argument (Genesis passes the solver its indices positionally). The
    fronts (`signatures.py`) inline the same test.
    """
    values = tuple((i, name) for i, name in enumerate(names) if name not in INDEX_ARGUMENTS)
    if len(values) == 1:
        # One value argument (a target, a gain, a mass): no loop.
        ((i_value, value_name),) = values

        def check_one(args: tuple, kwargs: dict) -> bool:
            value = args[i_value] if len(args) > i_value else kwargs.get(value_name)
            if value.__class__ is _Tensor:
                return value.requires_grad
            return value is not None and tracks(value)

        return check_one

    def check(args: tuple, kwargs: dict) -> bool:
        n_args = len(args)
        for i, name in values:
            value = args[i] if i < n_args else kwargs.get(name)
            if value.__class__ is _Tensor:
                if value.requires_grad:
                    return True
            elif value is not None and tracks(value):
                return True
        return False

    return check


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
    entry = detach_watch.registered(value)
    if entry is not None:
        return entry.description, entry.source
    if frame is None or not isinstance(value, (torch.Tensor, np.ndarray)):
        return None
    # The caller's locals are scanned once per call site and rollout: a detach at a line shows at its first call, and
    # a module-level loop would otherwise scan every global of the script at every step. The site is the direct
    # caller's line (cheap); the user's frame is looked for only when it is scanned.
    site = (frame.f_code, frame.f_lineno)
    if _scanned_sites.get(site) == epoch:
        return None
    _scanned_sites[site] = epoch
    frame = user_frame(frame)
    if frame is None:
        return None
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


def _step_of(sim: "Simulator") -> int:
    """The step an input given now is applied in, counted as `StepNode` counts (1 for the first `scene.step()`)."""
    return sim.cur_step_global + 1


def _record_input(sim: "Simulator", tensor: torch.Tensor, call: str, arg: str, frame: FrameType | None) -> None:
    epoch = sim._grad_epoch
    by_epoch = records.of_sim(sim).inputs
    if epoch not in by_epoch:
        for old in [e for e in by_epoch if e < epoch - 1]:
            del by_epoch[old]
        by_epoch[epoch] = {}
    user = user_frame(frame)
    filename, lineno = (user.f_code.co_filename, user.f_lineno) if user is not None else ("<unknown>", 0)
    by_epoch[epoch][id(tensor)] = breaks.InputRecord(call, arg, _step_of(sim), filename, lineno)


_FIX_SCENE = "Build the scene with `gs.options.SimOptions(requires_grad=True)` to differentiate through it."


def _fix_not_differentiable() -> str:
    return (
        f"Only {catalog.supported_inputs_text()} (entity or solver) carry gradients into a differentiable scene; drive "
        "the model through one of them, or pass `.detach()` explicitly if no gradient is meant to flow."
    )


# Values a detach can hand to a control: tensors, arrays (`.numpy()`), Python numbers and lists (`.item()`, `.tolist()`).
_CUT_KINDS = (torch.Tensor, np.ndarray, float, list, tuple)


def check_inputs(owner: str, name: str, category: str, solver, arguments: Iterable, frame: FrameType, loud: bool):
    """
    Check (and, in a differentiable scene, record) the inputs of one control or setter call; report if `loud`.

    `category` is "taped" (an entity input or parameter: tracked inputs are recorded for the doctor), "solver" (a
    solver-level call: checked here, recorded by the entity calls it is routed to) or "dropping" (an unsupported
    input: its gradient is dropped).
    """
    sim = solver._sim
    for arg, value in arguments:
        if tracks(value):
            found = _tracked_input_break(name, arg, value, category, solver._requires_grad)
            if found is None:
                if category != "solver":
                    _record_input(sim, value, f"{owner}.{name}", arg, frame)
            elif loud:
                report(*found[:1], f"{owner}.{name}", user_frame(frame), *found[1:], sim, _step_of(sim), (value,))
        elif loud and solver._requires_grad and category != "dropping" and isinstance(value, _CUT_KINDS):
            found = _detached_source(value, frame, sim._grad_epoch)
            if found is not None:
                how, source = found
                cause = (
                    f"'{name}' got '{arg}' = {how}: it does not track gradients, so the rollout is cut from what "
                    "produced it."
                )
                fix = (
                    "Pass the tracked tensor itself (drop the `.detach()` / `.item()` / `.tolist()` / `.data` / "
                    "`.numpy()` / `detach=True`)."
                )
                user = user_frame(frame)
                report(BreakKind.CUT_AT_DETACH, f"{owner}.{name}", user, cause, fix, sim, _step_of(sim), (source,))


def _tracked_input_break(name: str, arg: str, value, category: str, requires_grad: bool) -> tuple | None:
    """(kind, cause, fix) of the break a tracked input makes, or None if its gradient is carried."""
    got = f"'{name}' got a tensor that tracks gradients ('{arg}')"
    if category == "dropping":
        kind = BreakKind.DROPPED_INPUT if requires_grad else BreakKind.SCENE_NOT_DIFFERENTIABLE
        cause = f"{got}, but its gradient is not supported by Genesis nor by genesis-grad-patch: the value is used and the gradient is dropped."
        return kind, cause, _fix_not_differentiable()
    if not requires_grad:
        cause = (
            f"{got}, but the scene was built without `SimOptions(requires_grad=True)`: Genesis uses its value only, "
            "and no gradient will reach it."
        )
        return BreakKind.SCENE_NOT_DIFFERENTIABLE, cause, _FIX_SCENE
    if not isinstance(value, torch.Tensor):
        cause = (
            f"'{name}' got a {type(value).__name__} of tensors that track gradients ('{arg}'): Genesis converts it to "
            "a new tensor outside the autograd graph."
        )
        return BreakKind.CUT_AT_CONVERSION, cause, f"Pass one tensor instead, e.g. `{arg}=torch.stack([...])`."
    return None


def arguments(names: tuple[str, ...], args: tuple, kwargs: dict):
    """(name, value) of each argument of a call, self excluded; positional names come from the signature."""
    yield from zip(names, args, strict=False)
    yield from kwargs.items()


def detached_args(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The arguments with every tensor that tracks gradients detached."""

    def cut(value):
        return value.detach() if isinstance(value, torch.Tensor) and value.requires_grad else value

    return tuple(cut(value) for value in args), {key: cut(value) for key, value in kwargs.items()}


def _read_node(solver, tensor):
    """The read node a getter's output comes from: the one of the state the getters cache, or a few views away."""
    cached = records.of_solver(solver).state_cache
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


def note_read(solver, name: str, out: torch.Tensor) -> None:
    """
    Name a differentiable read for the doctor: the getter and the user's line, on the read node the result comes from.

    Only where there is something to explain: a rollout with tracked inputs (and its initial state, read before the
    first of them).
    """
    sim = solver._sim
    if not (out.requires_grad and (records.has_tracked_inputs(sim) or sim._cur_substep_global < sim._substeps)):
        return
    node = _read_node(solver, out)
    if node is None:
        return
    user = user_frame(sys._getframe(2))
    if user is None:
        return
    # On the node itself (a custom Function's context takes attributes): it lives as long as the graph.
    entry = (name, user.f_code.co_filename, user.f_lineno)
    getters = node.__dict__.setdefault(breaks.READ_GETTERS_ATTR, [])
    if entry not in getters:
        getters.append(entry)


def report_read_under_no_grad(solver, name: str) -> None:
    """A differentiable getter read under no_grad during a rollout whose inputs track gradients."""
    sim = solver._sim
    if not records.has_tracked_inputs(sim):
        return
    how = "torch.inference_mode()" if torch.is_inference_mode_enabled() else "torch.no_grad()"
    report(
        BreakKind.READ_UNDER_NO_GRAD,
        f"{type(solver).__name__}.{name}",
        user_frame(sys._getframe(2)),
        f"'{name}' was called under `{how}` during a rollout whose inputs track gradients: the state it returns is "
        "outside the autograd graph, so a loss or a policy input computed from it gets no gradient through the "
        "simulation.",
        "Read it with gradients enabled (outside the `no_grad` block). If the value is only logged, read it under "
        "`with genesis_grad_patch.set_mode('off'):`.",
        sim,
        sim.cur_step_global,
    )


# Call sites whose caller's locals were scanned for the tracked source of a detached input: (code, line) -> rollout.
_scanned_sites: dict[tuple, int] = {}


def scanned_in(frame, epoch: int) -> bool:
    """Whether the call site of `frame` was scanned in rollout `epoch` (a scan is due otherwise)."""
    return _scanned_sites.get((frame.f_code, frame.f_lineno)) == epoch


# Call sites of non-differentiable reads already reported: (file, line, getter) -> (simulator weakref, rollout).
_reported_reads: dict[tuple[str, int, str], tuple] = {}


def _fix_non_differentiable_read() -> str:
    return (
        f"Build the loss from differentiable getters ({catalog.supported_reads_text()}; the velocity of a free base). "
        "If the value is only observed, read it under `torch.no_grad()`."
    )


def report_non_differentiable_read(solver, name: str, cause: str) -> None:
    """
    Report a getter call whose result is outside the autograd graph, made by the user in grad mode.

    The value itself stays available (stock Genesis returns it too, and code that only logs it is valid): "warn" issues
    one `GradientBreakWarning` per call site and rollout (a loop reading it every step warns once), "raise" raises a
    `GradientBreakError` at every call, "off" says nothing. The caller checked that the user made the call.

    Parameters
    ----------
    solver : RigidSolver
        The solver read.
    name : str
        The getter called, e.g. "RigidEntity.get_links_acc".
    cause : str
        Why the value is outside the graph.
    """
    if not breaks.checking:
        return
    user = user_frame(sys._getframe(1))
    if user is None:
        return
    sim = solver._sim
    site = (user.f_code.co_filename, user.f_lineno, name)
    reported = _reported_reads.get(site)
    if breaks.get_mode() == "warn" and reported is not None and reported[0]() is sim and reported[1] == sim._grad_epoch:
        return
    _reported_reads[site] = (weakref.ref(sim), sim._grad_epoch)
    report(
        BreakKind.NON_DIFFERENTIABLE_GETTER,
        name,
        user,
        f"{cause} The value returned is the stock one, outside the autograd graph: a loss computed from it gets no "
        "gradient.",
        _fix_non_differentiable_read(),
        sim,
        sim.cur_step_global,
    )


def report_read_before_step(solver) -> None:
    """At backward: report a state read made after a tracked configuration setter whose call no step has taped yet."""
    from . import params  # params imports this module

    setters = params.pending_configuration(solver) if solver is not None else []
    if not setters or not breaks.checking:
        return
    report(
        BreakKind.READ_BEFORE_STEP,
        "state getter",
        user_frame(sys._getframe(1)),
        f"backward reached a state read made after a tracked {', '.join(sorted(set(setters)))} and before any step: "
        "the call is handed its gradient by the step that tapes it, so the tracked value gets none from this "
        "backward.",
        "Step once before calling `backward()` (the state read before the step then passes its gradient on), or use "
        "the tracked value itself in the loss.",
        solver._sim,
        solver._sim.cur_step_global,
    )


def report_approximate_gradient(call: str, cause: str, fix: str, sim: "Simulator") -> None:
    """Report, at the user's line, a call after which the rollout's gradient is only approximate (see params.py)."""
    if not breaks.checking:
        return
    report(BreakKind.APPROXIMATE_GRADIENT, call, user_frame(sys._getframe(2)), cause, fix, sim, _step_of(sim))


def note_from_torch(tensor, out: torch.Tensor) -> None:
    """`gs.from_torch(..., detach=True)` of a tracked tensor: record the cut result and report it."""
    user = user_frame(sys._getframe(2))
    location = Location.of(user)
    detach_watch.record_cut(out, tensor, location, detach_watch.FROM_TORCH)
    report(
        BreakKind.CUT_AT_DETACH,
        "gs.from_torch",
        user,
        "`gs.from_torch(..., detach=True)` was given a tensor that tracks gradients: the result is cut from the "
        "autograd graph, so nothing computed from it (a control input, a loss) reaches what produced it.",
        "Drop `detach=True` (the default keeps the graph), or pass the torch tensor to Genesis directly.",
        None,
        None,
        (tensor,),
    )


def clear() -> None:
    """Forget the reported and scanned call sites (used by `uninstall`)."""
    _reported_reads.clear()
    _scanned_sites.clear()


def implementation(row, stock):
    """The catalog's hook: the methods without a gradient keep Genesis's implementation (strict mode reports them)."""
    return None
