"""
What the plugin remembers per simulator and per rigid solver: one record each, kept beside Genesis's objects (keyed by
their `id`, dropped by a finalizer when the object goes), never as attributes on them, so that a destroyed scene takes
its records with it and `uninstall()` forgets everything at once (`clear`). The modules that fill a record own the
meaning of its fields; nothing else keeps per-scene state.

The per-step hooks look a record up at every step and substep: a plain dict keyed by `id` costs one lookup, a
`WeakKeyDictionary` makes a weak reference per lookup (about 0.4 us each on the 2-core CPU machines). An id cannot be
reused while its object lives, and the finalizer runs as the object is collected, before its id is free again.
"""

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SimRecord:
    """The plugin's bookkeeping of one simulator's differentiable rollouts."""

    #: Rollout (`sim._grad_epoch`) -> {id(tensor): InputRecord}: the tracked inputs taped, for the doctor.
    inputs: dict[int, dict[int, Any]] = field(default_factory=dict)
    #: Where the last `scene.reset()` was called (strict mode's backward-after-reset message).
    reset_at: Any = None
    #: (rollout, Location) of the last backward (strict mode's backward-twice message).
    backward_at: tuple | None = None
    #: Global steps of the current rollout that ran under `torch.no_grad()` (tape_guards).
    no_grad_steps: list[int] = field(default_factory=list)


@dataclass
class SolverRecord:
    """The plugin's state of one rigid solver: what the reverse pass replays, the parameter tape, the caches."""

    #: What each step ran with, for the reverse pass to write back (`replay.ReplayRecord`, made on first use).
    replay: Any = None
    #: The parameter setter calls since the last step (`params`), taped by the coming one.
    pending_parameters: list = field(default_factory=list)
    #: First substep of a taped step -> the parameter setter calls it ran after (`params`).
    taped_parameters: dict[int, list] = field(default_factory=dict)
    #: Whether a step was reversed since the last reset: only then are there parameter gradients to clear (`params`).
    reversed: bool = False
    #: Whether the current rollout tracks a friction coefficient or ratio: only then does the reverse pass need the
    #: contacts' friction gradients (`contact_friction`).
    friction_tracked: bool = False
    #: The configuration entries each dof moves (`params`).
    dofs_qs: list | None = None
    #: The subscriber that drops `state_cache` when Genesis changes the state (`getters`).
    state_subscriber: Any = None
    #: (the plane-curved contact pairs the plugin computes, or None if there are none), once looked up
    #: (`curved_contacts`).
    curved_pairs: tuple | None = None

    #: ((step, rollout), state read at that step): the getters read the state once per step.
    state_cache: tuple | None = None
    #: Base link of each free joint -> its first dof (`getters`).
    free_base_dofs: dict | None = None
    #: Dof index tuple -> how a solver-level control call splits over the entities (control).
    control_split: dict = field(default_factory=dict)
    #: What the steps of the current rollout left for `accuracy.report` (approximate contacts, unconverged solves).
    accuracy: Any = None
    #: Name -> zero-copy torch view of one of the solver's arrays (`view`).
    views: dict = field(default_factory=dict)
    #: The indices of all environments as a quadrants ndarray (the reverse kernels bind it once, see `reverse_pass`).
    envs_ndarray: Any = None


# id(object) -> (weak reference to it, its record).
_sims: dict[int, tuple[weakref.ref, SimRecord]] = {}
_solvers: dict[int, tuple[weakref.ref, SolverRecord]] = {}
# id(simulator) -> the last rollout (`sim._grad_epoch`) in which a tracked tensor was given to a control, setter or
# parameter, whatever the strict mode. Read by every getter call and step. An entry goes with its simulator (a
# finalizer); an id reused by a later simulator before that could only claim a tracked input where there is none,
# which costs a graph, not a gradient.
_tracked_epochs: dict[int, int] = {}
#: The same dict, for the per-step hooks that test `has_tracked_inputs` inline (one Python frame fewer per call).
tracked_epochs = _tracked_epochs


def _made(table: dict, obj, record):
    key, ref = id(obj), weakref.ref(obj)
    table[key] = (ref, record)
    # The finalizer holds the weak reference, not the record (which must not keep anything alive).
    weakref.finalize(obj, _drop, table, key, ref)
    return record


def _drop(table: dict, key: int, ref: weakref.ref) -> None:
    # Only the entry this finalizer was made for: `clear()` and a new record for the same object may have come since.
    entry = table.get(key)
    if entry is not None and entry[0] is ref:
        del table[key]


def of_sim(sim) -> SimRecord:
    """The record of a simulator, created on first use."""
    entry = _sims.get(id(sim))
    return _made(_sims, sim, SimRecord()) if entry is None else entry[1]


def of_solver(solver) -> SolverRecord:
    """The record of a rigid solver, created on first use."""
    entry = _solvers.get(id(solver))
    return _made(_solvers, solver, SolverRecord()) if entry is None else entry[1]


def view(solver, name: str, array_of: Callable[[Any], Any]):
    """
    A zero-copy torch view of the solver array `array_of(solver)`, made once per solver and kept in its record.

    Made in grad mode, wherever it is first asked for (the reverse pass runs without): Genesis caches the views
    `qd_to_torch` returns, and torch forbids writing in grad mode to a view created in no-grad mode.
    """
    views = of_solver(solver).views
    found = views.get(name)
    if found is None:
        from .genesis_api import qd_to_torch

        with torch.enable_grad():
            found = views[name] = qd_to_torch(array_of(solver), copy=False)
    return found


def peek_solver(solver) -> SolverRecord | None:
    """The record of a rigid solver if it has one (no allocation on the hot path)."""
    entry = _solvers.get(id(solver))
    return None if entry is None else entry[1]


def solver_records() -> list[tuple[Any, SolverRecord]]:
    """Every (rigid solver, record) alive."""
    return [(solver, record) for ref, record in list(_solvers.values()) if (solver := ref()) is not None]


def friction_tracked_anywhere() -> bool:
    """Whether some solver's current rollout tracks a friction (the reverse kernels are not told which solver runs)."""
    return any(record.friction_tracked for _, record in _solvers.values())


def peek_sim(sim) -> SimRecord | None:
    """The record of a simulator if it has one (no allocation on the hot path)."""
    entry = _sims.get(id(sim))
    return None if entry is None else entry[1]


def note_tracked(sim) -> None:
    """A tracked tensor was given to the current rollout of `sim`: its getters must build the graph from now on."""
    key = id(sim)
    if key not in _tracked_epochs:
        weakref.finalize(sim, _tracked_epochs.pop, key, None)
    _tracked_epochs[key] = sim._grad_epoch


def has_tracked_inputs(sim) -> bool:
    """Whether a tracked tensor was given to the current rollout of `sim` (whatever the strict mode)."""
    return _tracked_epochs.get(id(sim)) == sim._grad_epoch


def clear() -> None:
    """Forget every record and unsubscribe the plugin from every solver (used by `uninstall`)."""
    for solver, record in solver_records():
        for subscriber in (record.state_subscriber, getattr(record.replay, "subscriber", None)):
            if subscriber is not None:
                solver._subscribers.discard(subscriber)
    _sims.clear()
    _solvers.clear()
    _tracked_epochs.clear()
