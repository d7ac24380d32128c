"""
Strict mode: no silent gradient breaks.

Every way a differentiable rollout can lose its gradient without an error is detected at the call that loses it:

- a control or setter given a tensor that tracks gradients in a scene built without `SimOptions(requires_grad=True)`;
- `gs.from_torch(..., detach=True)` of a tensor that tracks gradients, and a control input that is a detached copy of a
  tracked tensor (`.detach()`, `.item()`, `.tolist()`, `.data`, `.numpy()`, recorded where they happen by
  `detach_watch`, or a tensor sharing the storage of a tracked local of the caller);
- a list of tracked tensors given to a control (Genesis builds a new tensor from it, outside the graph);
- a differentiable getter called under `torch.no_grad()` / `torch.inference_mode()` during a rollout whose inputs
  track gradients;
- a getter whose gradient is not supported (`catalog`: "read, outside the graph (reported)") called by the user in grad mode in a
  differentiable scene: it returns the stock value, reported once per call site and rollout;
- a setter whose gradient is not supported (`catalog`: "input, gradient dropped (reported)") given a tracked tensor;
- backward after `scene.reset()`, backward twice, backward after `scene.destroy()`.

`set_mode("warn")` (default) issues a `GradientBreakWarning` pointing at the user's line, `set_mode("raise")` raises a
`GradientBreakError`, `set_mode("off")` disables the checks. The environment variable `GENESIS_GRAD_PATCH_MODE` sets the
initial mode. Every break is also recorded (`events`), with the inputs each step took and the getters each state read
served, for `genesis_grad_patch.doctor` to explain a loss afterwards.

This module is the public face of strict mode. The machinery is split by concern: `breaks` (the mode, the kinds of
break, the record), `input_checks` (the services the replacements call), `backward_checks` (backward misuse),
`detach_watch` (detaches recorded where they happen). The checks are services called by the one replacement of each
Genesis method (`replacements.py`), not wrappers around it.
"""

from ._impl import records
from ._impl.breaks import (
    MODE_ENV_VAR,
    MODES,
    BreakEvent,
    BreakKind,
    GradientBreakError,
    GradientBreakWarning,
    InputRecord,
    Location,
    _mode_from_env,
    clear_events,
    events,
    get_mode,
    input_records,
    read_getters,
    set_mode,
    user_frame,
)
from ._impl.input_checks import report_approximate_gradient, report_non_differentiable_read

# The kinds of break by their former names (`strict.CUT_AT_DETACH` is `BreakKind.CUT_AT_DETACH`).
SCENE_NOT_DIFFERENTIABLE = BreakKind.SCENE_NOT_DIFFERENTIABLE
CUT_AT_DETACH = BreakKind.CUT_AT_DETACH
CUT_AT_CONVERSION = BreakKind.CUT_AT_CONVERSION
READ_UNDER_NO_GRAD = BreakKind.READ_UNDER_NO_GRAD
NON_DIFFERENTIABLE_GETTER = BreakKind.NON_DIFFERENTIABLE_GETTER
DROPPED_INPUT = BreakKind.DROPPED_INPUT
APPROXIMATE_GRADIENT = BreakKind.APPROXIMATE_GRADIENT
APPROXIMATE_CONTACT = BreakKind.APPROXIMATE_CONTACT
UNCONVERGED_SOLVE = BreakKind.UNCONVERGED_SOLVE
CUT_AT_RESET = BreakKind.CUT_AT_RESET
READ_BEFORE_STEP = BreakKind.READ_BEFORE_STEP

has_tracked_inputs = records.has_tracked_inputs

__all__ = [
    "MODES",
    "MODE_ENV_VAR",
    "BreakEvent",
    "BreakKind",
    "GradientBreakError",
    "GradientBreakWarning",
    "InputRecord",
    "Location",
    "_mode_from_env",
    "clear_events",
    "events",
    "get_mode",
    "has_tracked_inputs",
    "input_records",
    "read_getters",
    "report_approximate_gradient",
    "report_non_differentiable_read",
    "set_mode",
    "user_frame",
]
