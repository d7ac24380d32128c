"""
Who is calling a replaced Genesis method: the user, the plugin on the user's behalf, or Genesis itself (its own work,
or one Genesis method calling another for the user).

The answer decides what a replacement does (route a solver-level control to the entities, check and report an input,
make a read differentiable), so it must be cheap and exact: a context variable set by the callers that know, never an
inspection of stack frames. Each thread (the viewer's, the user's) sees its own value.
"""

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from . import signatures


class Origin(enum.Enum):
    """Who a call to a replaced method comes from; `None` (the default) is the user."""

    #: The plugin calls Genesis for a user call it has already checked (a solver-level control split into entity
    #: calls, `control.py`): record the tracked inputs, do not report them again.
    PLUGIN = "plugin"
    #: Genesis's own work: its step (sensors, viewer, recorders, the tape it replays), its reverse pass, and the calls
    #: one Genesis method makes to another on the user's behalf (`entity.control_dofs_position` calls
    #: `solver.control_dofs_position` once the entity-level replacement has checked the user's call): the stock path,
    #: nothing reported again.
    GENESIS = "genesis"


_origin: ContextVar[Origin | None] = ContextVar("genesis_grad_patch_origin", default=None)

get = _origin.get
set_origin = _origin.set
reset = _origin.reset


@contextmanager
def calling_as(origin: Origin) -> Iterator[None]:
    """Run the block as `origin` (e.g. the plugin reading state on the user's behalf)."""
    token = _origin.set(origin)
    try:
        yield
    finally:
        _origin.reset(token)


# The wrapper, with the signature of the method it wraps (`signatures.front`: no packing of the arguments per step).
_RUNS_GENESIS = """\
    if not _gp_differentiable({self}) or _gp_get() is _gp_genesis:
        return _gp_inner({self}, {call})
    _gp_token = _gp_set(_gp_genesis)
    try:
        return _gp_inner({self}, {call})
    finally:
        _gp_reset(_gp_token)
"""


def runs_genesis(inner: Callable, differentiable: Callable | None = None) -> Callable:
    """
    Wrap a Genesis method that reads state for Genesis's own use, so that the getters it calls take the stock path.

    A sensor writes `get_links_pos` results into buffers that live across steps, the viewer's mouse interaction reads
    `link.get_vel()` of any link: differentiable results would put autograd history (and the whole rollout's graph)
    into Genesis's buffers, and raise or warn at every step for getters without a gradient.

    `differentiable(self)`, if given, tells whether the origin matters for this call: the step of a scene built without
    `requires_grad` reads stock values whoever calls, and skips setting it (an `operator.attrgetter` of the flag: called
    at every step, it runs no Python frame). Inside Genesis's own work the variable is set already. The wrapper has the
    signature of `inner` (`signatures.front`).
    """
    differentiable = differentiable or (lambda _: True)
    namespace = {
        "_gp_inner": inner,
        "_gp_differentiable": differentiable,
        "_gp_genesis": Origin.GENESIS,
        "_gp_get": _origin.get,
        "_gp_set": _origin.set,
        "_gp_reset": _origin.reset,
    }
    return signatures.front(inner, "runs_genesis", _RUNS_GENESIS, namespace)
