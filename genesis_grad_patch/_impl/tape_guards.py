"""
Guards of the gradient tape: misuse that stock Genesis answers with a crash, a stale error or a silently wrong gradient
gets a clear error at the point of misuse, and leaves nothing behind.

- A tracked input given twice to the same dof or environment is refused: the field keeps the last duplicate, but the
  gradient read back from it cannot be split between the duplicates (all of it went to the first one).
- A taped call that raises (a target of the wrong length, say) is taken off the pending tape again: stock Genesis tapes
  it before running it, so every later `scene.step()`, even after `scene.reset()`, raised the same error again. (Done
  by the entity methods' replacement, `replacements.py`, around the stock call.)
- A taped input modified in place between its step and the backward pass is detected the way torch detects it (the
  tensor's version counter), since the reverse pass replays the step from the input's current value.
- A reverse pass that raises (a NaN gradient, say) leaves nothing behind: stock Genesis left the solver in backward
  mode, and the next clean rollout's gradient was silently all zeros.
- Double backward (`create_graph=True`) through a step is refused: the reverse pass is hand-written and has no
  gradient of its own (stock Genesis segfaults).
- A step run under `torch.no_grad()` in the middle of a differentiable rollout cuts the chain of step nodes; a later
  state read says so and names the steps, instead of torch's "can't retain_grad on Tensor that has requires_grad=False".
"""

import sys

import genesis as gs
import numpy as np
import torch

from . import breaks, callers, patching, records
from .genesis_api import Simulator, StepNode


def refuse_bad_indices(method: str, idx, envs_idx, unit: str, count: int, n_envs: int) -> None:
    """
    Refuse, for a tracked value, an index out of range or given twice, of the dofs (links, geoms, ...) or environments.

    Genesis 1.4.5 writes an out-of-range index wherever the kernel's address arithmetic takes it (another entity's
    dof, or memory past the field), and its gradient is read back from there. A duplicate is kept at its last value,
    but the gradient read back cannot be split between the duplicates: all of it went to the first entry. Solver calls
    arrive here split into entity calls.
    """
    for what, indices, n in ((unit, idx, count), ("environment", envs_idx, n_envs)):
        if indices is None or isinstance(indices, slice):
            continue
        # Indices given on the host (ints, lists, ranges, arrays: the usual policy loop) are checked there, without
        # touching the device; a tensor of indices is copied to the host once per call (pass host indices to avoid it).
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu()
        flat = np.asarray(indices if not isinstance(indices, range) else list(indices)).reshape(-1)
        if flat.dtype == np.bool_ or flat.size == 0:
            continue
        low, high = int(flat.min()), int(flat.max())
        if n == 0:
            gs.raise_exception(f"{method} got `envs_idx` in a scene built without `n_envs`: pass no `envs_idx`.")
        if low < 0 or high >= n:
            gs.raise_exception(
                f"{method} got {what} index {low if low < 0 else high} with a value that tracks gradients, out of "
                f"range: there {'is' if n == 1 else 'are'} {n} {what}{'' if n == 1 else 's'} (indices 0 to {n - 1})."
            )
        unique, counts = np.unique(flat, return_counts=True)
        if (counts > 1).any():
            gs.raise_exception(
                f"{method} got the same {what} index more than once ({unique[counts > 1].tolist()}) with a value that "
                f"tracks gradients: the {what} takes the last duplicate, but its gradient cannot be split "
                f"between the duplicates. Pass each {what} once."
            )


# Setters whose tracked values must be positive: a non-positive mass or inertia is no model, whatever its gradient.
_POSITIVE = {"set_links_mass": "mass", "set_mass": "mass"}
# Setters that take one value: Genesis compares it with its bounds as a Python number first, which a tensor of several
# values fails with "Boolean value of Tensor with more than one value is ambiguous".
_ONE_VALUE = {
    "set_friction": "one friction coefficient for all the entity's geoms",
    "set_geom_friction": "one friction coefficient for the geom",
}


def refuse_unusable_values(method: str, values) -> None:
    """Refuse a tracked value Genesis would use in part or not at all: complex (Genesis keeps the real part and the
    gradient of the imaginary one is lost), a non-positive mass (an unphysical model), or several values where the
    setter takes one."""
    for value in values:
        if not (isinstance(value, torch.Tensor) and value.requires_grad):
            continue
        if value.is_complex():
            gs.raise_exception(
                f"{method} got a complex tensor that tracks gradients: Genesis keeps its real part only. Pass a real "
                "tensor (`.real`, or the quantity you mean)."
            )
        if method in _ONE_VALUE and value.numel() != 1:
            gs.raise_exception(
                f"{method} takes {_ONE_VALUE[method]} (a float or a tensor of one element), got a tensor of shape "
                f"{tuple(value.shape)}. Per geom: `solver.set_geoms_friction(values, geoms_idx)`; per environment: "
                "`entity.set_friction_ratio`."
            )
        if method in _POSITIVE and bool((value.detach() <= 0.0).any()):
            gs.raise_exception(
                f"{method} got a {_POSITIVE[method]} <= 0 ({value.detach().min().item():g}) in a value that tracks "
                "gradients: the model is unphysical and its gradient meaningless. Keep it positive (e.g. optimize its "
                "logarithm and pass `log_mass.exp()`)."
            )


def drop_pending(solver, pending_parameters: list) -> None:
    """
    Drop the calls taped for a step that never came (at `scene.reset()`), reporting the tracked ones.

    Stock Genesis keeps the pending calls of its entities (`RigidEntity._tgt`) across `scene.reset()`: a velocity set
    before the reset was applied again at the first step of the next rollout in grad mode, but not under `no_grad`.
    `pending_parameters` are the parameter calls of the plugin (`params._Call`) that the reset drops with them: their
    values stay in the model, but no rollout differentiates them any more.
    """
    dropped = [(call.method, call.value) for call in pending_parameters if call.value is not None]
    for entity in solver.entities:
        for key, kwargs in entity._tgt.items():
            dropped += [(key[0], v) for v in kwargs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
        entity._tgt.clear()
    if dropped and breaks.checking and torch.is_grad_enabled():
        calls = ", ".join(sorted({method for method, _ in dropped}))
        breaks.report(
            breaks.BreakKind.CUT_AT_RESET,
            "scene.reset",
            breaks.user_frame(sys._getframe(1)),
            f"`scene.reset()` dropped tracked values given to {calls} after the last step and before any step used "
            "them: the next rollout's gradient does not reach them (a control or velocity is not applied at all, a "
            "model parameter keeps its value without its gradient).",
            "Call the setter after `scene.reset()`, before the first step of the rollout it belongs to.",
            solver._sim,
            0,
            [value for _, value in dropped],
        )


def _step_forward(stock):
    """`StepNode.forward` (once per step), saving the step's inputs."""

    def forward(ctx, sim, step, epoch, token, *inputs):
        token = stock(ctx, sim, step, epoch, token, *inputs)
        # Saved so that torch checks their version counters at backward: the reverse pass replays the step from the
        # inputs' current values.
        if inputs:
            ctx.save_for_backward(*inputs)
        return token

    return forward


def _step_backward(ctx, token_grad):
    if torch.is_grad_enabled():
        gs.raise_exception(
            "Double backward through a Genesis step is not supported (`create_graph=True`): the reverse pass of the "
            "simulation has no gradient of its own. Call `backward()` / `torch.autograd.grad()` without "
            "`create_graph=True`; the first-order gradient is exact."
        )
    try:
        _ = ctx.saved_tensors  # raises if an input was modified in place since the step
    except RuntimeError as error:
        if "inplace" not in str(error):
            raise
        gs.raise_exception(
            f"A control input taped at step {ctx.step - 1} (counted from 0 at the last reset) has been modified by an inplace operation since that step, so "
            f"the reverse pass would replay the step with another value. Pass a tensor that stays unchanged until "
            f"backward (e.g. `x.clone()`), or modify a copy. ({error})"
        )
    # The reverse pass is Genesis's own work: the steps it replays from a checkpoint (`Simulator.load_ckpt`) read the
    # state for Genesis (sensors) and re-apply the tape, like a forward `scene.step()`.
    token = callers.set_origin(callers.Origin.GENESIS)
    try:
        return patching.original(StepNode, "backward")(ctx, token_grad)
    except BaseException:
        # A reverse pass that raises (e.g. "Nan grad in qpos or dofs_vel") leaves the rigid solver in backward mode,
        # and every later forward step then ran the backward variants of its kernels: the next clean rollout got an
        # all-zero gradient. Put the solvers back in forward mode; the next `scene.reset()` clears the tape and grads.
        sim = ctx.sim()
        for solver in sim._active_solvers if sim is not None else ():
            if hasattr(solver, "_is_backward"):
                solver._is_backward = False
        raise
    finally:
        callers.reset(token)


def note_no_grad_step(sim: Simulator) -> None:
    """Remember a step of a differentiable rollout run under `torch.no_grad()` (called after it)."""
    records.of_sim(sim).no_grad_steps.append(sim.cur_step_global - 1)


def _track_state(self: Simulator, *tensors: torch.Tensor):
    if self._requires_grad and not self._grad_token.requires_grad:
        record = records.peek_sim(self)
        steps = record.no_grad_steps if record is not None else []
        where = f"steps {_ranges(steps)}" if steps else "a step"
        gs.raise_exception(
            f"Reading the state of a differentiable rollout in grad mode after {where} of it ran under "
            "`torch.no_grad()`: those steps have no autograd node, so no gradient can reach the inputs before them. "
            "Run every `scene.step()` of a differentiable rollout in grad mode (put only the policy's own "
            "computations under `no_grad`), read this state under `torch.no_grad()` too, or `scene.reset()` first."
        )
    return patching.original(Simulator, "track_state")(self, *tensors)


def _ranges(steps: list[int]) -> str:
    """'1-3, 7' for [1, 2, 3, 7]."""
    parts, start = [], steps[0]
    for prev, cur in zip(steps, [*steps[1:], None], strict=True):
        if cur != prev + 1:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = cur
    return ", ".join(parts)


def install() -> None:
    patching.patch(StepNode, "forward", staticmethod(_step_forward(StepNode.forward)))
    patching.patch(StepNode, "backward", staticmethod(_step_backward))
    patching.patch(Simulator, "track_state", _track_state)
