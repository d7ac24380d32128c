"""
One replacement per Genesis method, built from the catalog.

Each public method of the catalog gets a single function in place of the stock one. It decides from the call's origin
(`callers.py`) and one flag of the solver what to do, calls strict mode's services when strict mode is on
(`input_checks`), and calls the implementation of the method's concern (`control`, `params`, `getters`), or the stock
method. The common cases are decided first, in a front with the stock method's own signature (`signatures.py`): a scene
built without `requires_grad` and no input tracking gradients, Genesis's own calls, reads of a rollout that tracks
nothing. They cost a few attribute tests and the stock call; the other calls go on to the full replacement below.
"""

import sys
from collections.abc import Callable
from functools import wraps
from importlib import import_module
from inspect import signature

import torch

from .. import catalog
from ..catalog import ENTITY, SOLVER, Method, Status
from . import breaks, callers, detach_watch, input_checks, patching, records, signatures, tape_guards
from .callers import Origin
from .input_checks import arguments, detached_args, tracked_check

_origin = callers.get
_tracked_epochs = records.tracked_epochs
_set_origin = callers.set_origin
_reset_origin = callers.reset
_GENESIS = Origin.GENESIS
# Where a full replacement finds the frame of the call: above the front that called it.
_CALLER = 2

# Entity methods Genesis tapes (`@tracked`): a call that raises must be taken off the tape again (tape_guards).
_TAPED = frozenset((*catalog.CONTROLS, *catalog.TAPED_STATE_SETTERS))

# The fronts (see `signatures.front`): `_gp_slow` is the full replacement, `_gp_stock` the stock method.
_ENTITY_FRONT = """\
    if {self}._solver._requires_grad:
        if _gp_replay:
            _gp_from = _gp_origin()
            if _gp_from is _gp_GENESIS:
                return _gp_stock({self}, {call})
            if {untracked}:
                return _gp_run({self}, _gp_from, {call})
    elif {untracked}:
        return _gp_stock({self}, {call})
    return _gp_slow({self}, {call})
"""
_SOLVER_FRONT = """\
    if {self}._requires_grad:
        _gp_from = _gp_origin()
        if _gp_from is _gp_GENESIS and not _gp_parameter and {untracked_tensors}:
            return _gp_stock({self}, {call})
    elif {untracked}:
        return _gp_stock({self}, {call})
    return _gp_slow({self}, {call})
"""
_READ_FRONT = """\
    if {self}._requires_grad:
        _gp_sim = {self}._sim
        if _gp_epochs.get(id(_gp_sim)) == _gp_sim._grad_epoch:
            return _gp_slow({self}, {call})
    return _gp_stock({self}, {call})
"""
_UNSUPPORTED_READ_FRONT = """\
    if _gp_breaks.checking and SOLVER._requires_grad and _gp_origin() is None and _gp_grad_enabled():
        return _gp_slow({self}, {call})
    return _gp_stock({self}, {call})
"""


def _fronted(stock: Callable, slow: Callable, kind: str, body: str, **names) -> Callable:
    """The front of `slow` with `stock`'s signature (`body` is one of the `_*_FRONT` above, `kind` its name)."""
    namespace = {
        "_gp_stock": stock,
        "_gp_slow": slow,
        "_gp_origin": _origin,
        "_gp_GENESIS": _GENESIS,
        "_gp_epochs": _tracked_epochs,
        "_gp_breaks": breaks,
        "_gp_grad_enabled": torch.is_grad_enabled,
        **{f"_gp_{key}": value for key, value in names.items()},
    }
    return signatures.front(stock, kind, body, namespace)


def _entity_input(row: Method, stock: Callable) -> Callable:
    sig = signature(stock)
    names = tuple(sig.parameters)[1:]
    tracked_in = tracked_check(names)
    name = row.name
    unsupported = row.status is Status.UNSUPPORTED_INPUT
    category = "dropping" if unsupported else "taped"
    taped = name in _TAPED

    def run(self, origin: Origin | None, *args, **kwargs):
        """
        A call in a differentiable scene, not unsupported nor Genesis's replay, whose tracked inputs (if any) were
        checked and recorded already: the stock method, its solver call marked as Genesis's own, taken off the tape
        again if it raises.

        The front calls it directly for an untracked input (the steady state of a policy loop): an input of the user's
        needs looking at only while a detach is on record or its line was not scanned in this rollout (what
        `_detached_source` could name).
        """
        # The origin set by hand, not `callers.calling_as`: `run` is on a policy loop's every call, and a context
        # manager costs a generator and two more calls.
        token = _set_origin(_GENESIS)
        try:
            # Genesis replays its tape with taping off, or calls for itself: nothing to check.
            if origin is _GENESIS or not self._update_tgt_while_set:
                return stock(self, *args, **kwargs)
            if origin is None and breaks.checking:
                frame = sys._getframe(_CALLER)
                sim = self._solver._sim
                if detach_watch.has_cuts() or not input_checks.scanned_in(frame, sim._grad_epoch):
                    input_checks.check_inputs(
                        type(self).__name__, name, category, self._solver, arguments(names, args, kwargs), frame, True
                    )
            if not taped:
                return stock(self, *args, **kwargs)
            # `@tracked` tapes the call, then runs it: a call that raises is taken off the tape again.
            pending = dict(self._tgt)
            try:
                return stock(self, *args, **kwargs)
            except BaseException:
                self._tgt = pending
                raise
        finally:
            _reset_origin(token)

    @wraps(stock)
    def replacement(self, *args, **kwargs):
        """The calls the front does not take: a tracked input (any scene), or an unsupported method in a differentiable
        scene."""
        solver = self._solver
        if not solver._requires_grad:
            # An input tracks gradients (the front took the others).
            if breaks.checking and _origin() is None:
                owner = type(self).__name__
                frame = sys._getframe(_CALLER)
                input_checks.check_inputs(owner, name, category, solver, arguments(names, args, kwargs), frame, True)
            # The value alone: no gradient can reach it, and a tracked tensor reaching a Genesis setter kernel compiles
            # a variant with gradient pointers under the same kernel-cache key, on which the next untracked call
            # segfaults (stock 1.4.5, `set_dofs_armature`). Reported here: the solver method the stock entity method
            # calls is Genesis's call.
            args, kwargs = detached_args(args, kwargs)
            with callers.calling_as(_GENESIS):
                return stock(self, *args, **kwargs)
        origin = _origin()
        if origin is _GENESIS and not unsupported:
            # Genesis replaying its tape at the step (once per taped call and step), or calling for itself: the stock
            # method, whose solver calls are Genesis's too.
            return stock(self, *args, **kwargs)
        tracked = tracked_in(args, kwargs)
        if unsupported:
            if tracked:
                # The gradient is dropped anyway, and some of Genesis's kernels crash on a tensor that tracks gradients
                # (`set_dofs_armature`, a segfault in a differentiable scene): they get the value alone.
                if breaks.checking and origin is None:
                    frame = sys._getframe(_CALLER)
                    input_checks.check_inputs(
                        type(self).__name__, name, category, solver, arguments(names, args, kwargs), frame, True
                    )
                args, kwargs = detached_args(args, kwargs)
            with callers.calling_as(_GENESIS):
                return stock(self, *args, **kwargs)
        if not tracked or origin is _GENESIS or not self._update_tgt_while_set:
            return run(self, origin, *args, **kwargs)
        # The plugin's own calls (a routed solver call) were checked where the user made them: recorded only.
        if breaks.checking:
            frame = sys._getframe(_CALLER)
            input_checks.check_inputs(
                type(self).__name__, name, category, solver, arguments(names, args, kwargs), frame, origin is None
            )
        records.note_tracked(solver._sim)
        bound = sig.bind(self, *args, **kwargs).arguments
        if taped:
            tape_guards.refuse_bad_indices(
                name, bound.get("dofs_idx_local"), bound.get("envs_idx"), "dof", self.n_dofs, solver.n_envs
            )
        tape_guards.refuse_unusable_values(name, bound.values())
        return run(self, Origin.PLUGIN, *args, **kwargs)

    return _fronted(stock, replacement, "entity", _ENTITY_FRONT, replay=not unsupported, run=run)


def _solver_input(row: Method, stock: Callable, impl: Callable | None) -> Callable:
    names = tuple(signature(stock).parameters)[1:]
    name = row.name
    unsupported = row.status is Status.UNSUPPORTED_INPUT
    category = "dropping" if unsupported else "solver"
    parameter = row.status is Status.DIFFERENTIABLE_PARAMETER
    impl = stock if impl is None else impl

    @wraps(stock)
    def replacement(self, *args, **kwargs):
        """The calls the front does not take: a tracked input (any scene), the user's or the plugin's call in a
        differentiable scene, or a parameter."""
        if not self._requires_grad:
            # An input tracks gradients (the front took the others).
            if breaks.checking and _origin() is None:
                frame = sys._getframe(_CALLER)
                input_checks.check_inputs(
                    type(self).__name__, name, category, self, arguments(names, args, kwargs), frame, True
                )
            # The value alone (see the entity-level replacement).
            args, kwargs = detached_args(args, kwargs)
            return stock(self, *args, **kwargs)
        origin = _origin()
        if origin is _GENESIS:
            # The solver half of an entity method (checked at the entity), or Genesis's own call: the stock method,
            # except that parameters are taped whoever sets them.
            if parameter:
                return impl(self, *args, **kwargs)
            # A tensor tracks gradients (the front took the others): the value alone. The tape (Genesis's `@tracked`)
            # holds the tracked tensor; the stock zero-copy writers would write it as is into a cached view of the
            # field, which then tracks gradients, and the next plain write to that view fails ("a leaf Variable that
            # requires grad is being used in an in-place operation").
            args, kwargs = detached_args(args, kwargs)
            return stock(self, *args, **kwargs)
        if breaks.checking and origin is None:
            input_checks.check_inputs(
                type(self).__name__, name, category, self, arguments(names, args, kwargs), sys._getframe(_CALLER), True
            )
        if unsupported:
            args, kwargs = detached_args(args, kwargs)
        return impl(self, *args, **kwargs)

    return _fronted(stock, replacement, "solver", _SOLVER_FRONT, parameter=parameter)


def _refused_input(row: Method, stock: Callable, unsupported: Callable) -> Callable:
    """A setter whose gradient is not supported: a tracked input in a differentiable scene is refused at the call."""
    from . import params

    call = row.call
    tracked_in = tracked_check(tuple(signature(stock).parameters)[1:])

    @wraps(stock)
    def replacement(self, *args, **kwargs):
        solver = self._solver if row.owner == ENTITY else self
        if solver._requires_grad and torch.is_grad_enabled() and _origin() is not _GENESIS and tracked_in(args, kwargs):
            params.refuse_tracked(call, row.note, args, kwargs)
        return unsupported(self, *args, **kwargs)

    return replacement


def _differentiable_read(row: Method, stock: Callable, impl: Callable, differentiable_for: Callable | None) -> Callable:
    name = row.name

    @wraps(stock)
    def replacement(self, *args, **kwargs):
        """A read in a differentiable scene during a rollout with a tracked input (the front takes the others: off-grad,
        or nothing of the rollout tracks gradients, so the state depends on nothing to differentiate, the stock value is
        exact and no graph is built, nor is a read under no_grad reported: it cuts nothing)."""
        origin = _origin()
        if origin is _GENESIS:
            # Genesis's own reads (sensors, viewer, recorders) keep stock values in its buffers.
            return stock(self, *args, **kwargs)
        if not torch.is_grad_enabled():
            out = stock(self, *args, **kwargs)
            if breaks.checking and origin is None:
                if differentiable_for is None or differentiable_for(self, *args, **kwargs):
                    input_checks.report_read_under_no_grad(self, name)
            return out
        if not self.is_active:
            return stock(self, *args, **kwargs)
        out = impl(self, *args, **kwargs)
        if breaks.checking and origin is None:
            input_checks.note_read(self, name, out)
        return out

    return _fronted(stock, replacement, "read", _READ_FRONT)


def _unsupported_read(row: Method, stock: Callable) -> Callable:
    name = row.name
    entity_level = row.owner == ENTITY
    cause = f"'{name}' returns a tensor outside the autograd graph ({row.note})."

    @wraps(stock)
    def replacement(self, *args, **kwargs):
        """The user's read in grad mode in a differentiable scene, strict mode on (the front takes the others)."""
        solver = self._solver if entity_level else self
        input_checks.report_non_differentiable_read(solver, f"{type(self).__name__}.{name}", cause)
        # The solver getter the entity getter calls is Genesis's call, not the user's.
        with callers.calling_as(_GENESIS):
            return stock(self, *args, **kwargs)

    solver = "{self}._solver" if entity_level else "{self}"
    return _fronted(stock, replacement, "unsupported_read", _UNSUPPORTED_READ_FRONT.replace("SOLVER", solver))


def _input(row: Method, stock: Callable, impl: Callable | None) -> Callable:
    """An input or parameter setter: the entity-level replacement, or the solver-level one around `impl`."""
    return _entity_input(row, stock) if row.owner == ENTITY else _solver_input(row, stock, impl)


def _refused(row: Method, stock: Callable, impl: Callable | None) -> Callable:
    """A setter whose tracked input is refused: untracked calls take the path of an unsupported input."""
    return _refused_input(row, stock, _input(Method(row.owner, row.name, Status.UNSUPPORTED_INPUT), stock, impl))


def _read(row: Method, stock: Callable, impl: Callable | None) -> Callable:
    from . import getters

    return _differentiable_read(row, stock, impl, getters.DIFFERENTIABLE_FOR.get(row.name))


# How each status of a public row is replaced: (builder, patch group). A builder takes the row, the stock method and
# the implementation the row's module gives (`implementation(row, stock)`, None for the stock method itself).
_BUILDERS = {
    Status.DIFFERENTIABLE_INPUT: (_input, "core"),
    Status.DIFFERENTIABLE_PARAMETER: (_input, "core"),
    Status.UNSUPPORTED_INPUT: (_input, "core"),
    Status.REFUSED_INPUT: (_refused, "core"),
    Status.DIFFERENTIABLE_READ: (_read, "core"),
    Status.UNSUPPORTED_READ: (lambda row, stock, impl: _unsupported_read(row, stock), "strict"),
}


def install(strict: bool = False) -> None:
    """
    Replace every public method of the catalog that the plugin implements (once each): the row's status picks the
    replacement, the row's module (`control`, `params`, `getters`, `input_checks`) gives the implementation.

    With `strict`, replace only those that exist for strict mode alone (the unsupported reads, reported).
    """
    from .genesis_api import RigidEntity, RigidSolver

    owners = {ENTITY: RigidEntity, SOLVER: RigidSolver}
    for row in catalog.ROWS:
        cls = owners.get(row.owner)
        if cls is None or not row.replaced or row.status is Status.MACHINERY or not hasattr(cls, row.name):
            continue
        build, group = _BUILDERS[row.status]
        if (group == "strict") != strict:
            continue
        stock = getattr(cls, row.name)
        impl = import_module(f"{__package__}.{row.module}").implementation(row, stock)
        patching.patch(cls, row.name, build(row, stock, impl), group=group)
