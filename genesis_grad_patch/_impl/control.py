"""
Differentiable control inputs: PD targets on entities and on the solver, and tape hygiene for every control call.

Genesis already tapes the control calls of a differentiable scene (`@tracked` on the entity methods), replays them
when it rebuilds a checkpoint window, and gives the tracked tensors of each step to the autograd node of that step
(`genesis.grad.bridge.StepNode`). Its reverse pass also accumulates the gradients of the PD targets in
`dofs.ctrl_pos.grad` and `dofs.ctrl_vel.grad`; only the hand-over at `RigidEntity.process_input_grad` was missing.

A control target persists in its field until the next call that writes it, so the gradient accumulated in a target's
field while reversing belongs to the last call that wrote it. Reversing a step therefore reads and clears the fields
of every control call of that step, tracked or not: otherwise the gradient of steps driven by untracked calls leaks
into an earlier tracked input (the stale `ctrl_force.grad` of stock Genesis).
"""

from functools import wraps
from inspect import signature
from operator import attrgetter

import genesis as gs
import numpy as np
import torch

from . import callers, patching, records
from .genesis_api import RigidEntity, RigidSolver, broadcast_tensor
from .kernels import kernel_get_dofs_ctrl_pd_grad

# Control method -> (its target arguments, the gradient field each one reads).
CONTROL_TARGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "control_dofs_force": (("force", "force"),),
    "control_dofs_position": (("position", "position"),),
    "control_dofs_velocity": (("velocity", "velocity"),),
    "control_dofs_position_velocity": (("position", "position"), ("velocity", "velocity")),
}
# Taped calls that overwrite part of the state, handled by the same rule: the gradient of the state they overwrote, at
# the start of their step, belongs to them (tracked) or to no one (untracked: the overwritten value reaches nothing).
# Stock Genesis read, and so cut, it only for tracked inputs: an untracked `set_dofs_velocity` mid-rollout passed the
# gradient of the velocity it replaced on to the earlier steps (0.39 relative error on a 2-link arm).
VELOCITY_SETTERS: dict[str, tuple[tuple[str, str], ...]] = {"set_dofs_velocity": (("velocity", "dofs_vel"),)}
CONSUMED = CONTROL_TARGETS | VELOCITY_SETTERS


def _is_tracked(value) -> bool:
    return isinstance(value, torch.Tensor) and value.requires_grad


# Gradient field read by each control call and state setter -> where it lives in the solver.
_GRAD_FIELDS = {
    "force": attrgetter("dyn_state.dofs.ctrl_force.grad"),
    "position": attrgetter("dyn_state.dofs.ctrl_pos.grad"),
    "velocity": attrgetter("dyn_state.dofs.ctrl_vel.grad"),
    "dofs_vel": attrgetter("dyn_state.dofs.vel.grad"),
}
# Fields each call reads: a PD call wrote both targets (the one it was not given is set to zero), so an earlier value of
# either cannot reach any later step and the gradient accumulated in both belongs to this call.
_FIELDS_OF = {
    "control_dofs_force": ("force",),
    "set_dofs_velocity": ("dofs_vel",),
    "control_dofs_position": ("position", "velocity"),
    "control_dofs_velocity": ("position", "velocity"),
    "control_dofs_position_velocity": ("position", "velocity"),
}


def _consume_ctrl_grads(entity: RigidEntity, method: str, dofs_idx_local, envs_idx) -> dict[str, torch.Tensor]:
    """Read and clear the gradient fields written by one control call, in the layout of a full input of that call."""
    solver = entity._solver
    dofs_idx = entity._get_global_idx(dofs_idx_local, entity.n_dofs, entity._dof_start, unsafe=True)
    buffer, dofs_idx_, envs_idx_ = solver._sanitize_io_variables(None, dofs_idx, solver.n_dofs, "dofs_idx", envs_idx)
    if gs.use_zerocopy:
        # Indexing the zero-copy views of the gradient fields: a few tensor operations, no kernel launch (a launch given
        # fresh tensors re-binds every array of the solver state it takes, ~150 us on CPU).
        rows, cols = dofs_idx_[:, None], envs_idx_[None, :]
        grads = {}
        for field in _FIELDS_OF[method]:
            view = records.view(solver, field + ".grad", _GRAD_FIELDS[field])
            grad = view[rows, cols].T
            view[rows, cols] = 0.0
            grads[field] = grad if solver.n_envs > 0 else grad[0]
        return grads
    if method == "control_dofs_force":
        # Genesis's own kernel reads and clears `ctrl_force.grad`.
        solver.set_dofs_force_grad(dofs_idx, envs_idx, buffer)
        return {"force": buffer}
    if method == "set_dofs_velocity":
        # Genesis's own kernel reads and clears `dofs.vel.grad`, the gradient of the velocity at the start of the step.
        solver.set_dofs_velocity_grad(dofs_idx, envs_idx, buffer)
        return {"dofs_vel": buffer}
    velocity = torch.empty_like(buffer)
    batched = (buffer, velocity) if solver.n_envs > 0 else (buffer[None], velocity[None])
    kernel_get_dofs_ctrl_pd_grad(dofs_idx_, envs_idx_, *batched, solver.dyn_state, solver.rigid_config)
    return {"position": buffer, "velocity": velocity}


def grad_like(grad: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """
    Bring the gradient of a full input back to the input the user gave.

    The control writers bring their input to the shape of the selected environments and dofs with Genesis's
    `broadcast_tensor`, whose rules extend torch's (a vector of one value per environment is taken along the
    environments, for instance). The gradient of the input is the vector-Jacobian product of that very function, so it
    follows the same rules exactly: summed over the dimensions the input was broadcast along, cast back to its dtype and
    device. The upstream patch does the same (`_input_grad_like`).
    """
    if grad.shape == target.shape:
        # Nothing was broadcast (the usual call: one value per selected dof and environment): the product is the
        # identity, without a pass of the autograd engine per reversed call (about 80 us a step, measured).
        return grad.to(dtype=target.dtype, device=target.device)
    with torch.enable_grad():
        target_ = target.detach().requires_grad_()
        full = broadcast_tensor(target_, grad.dtype, grad.shape)
        (target_grad,) = torch.autograd.grad(full, target_, grad)
    return target_grad


def entity_process_input_grad(self: RigidEntity) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """
    Return the pairs (input, gradient) of the inputs this entity applied at the current step that track gradients.

    Replaces `RigidEntity.process_input_grad`: control calls are handled here, every other taped setter by the
    original method.
    """
    index = self._sim.cur_step_local - self._sim._steps_local
    taped = self._tgt_buffer[index]

    inputs_grad = []
    try:
        # One pass over the calls in reverse order, as the upstream patch does: a later call on the same dofs overwrote
        # an earlier one, so it takes the gradient and the earlier one gets zero, and a tensor given to several calls
        # gets its gradients in the same order in both.
        for key, kwargs in reversed(taped.items()):
            method = key[0]
            if method not in CONSUMED:
                # Every other taped setter goes through the original method, one call at a time.
                self._tgt_buffer[index] = {key: kwargs}
                inputs_grad += patching.original(RigidEntity, "process_input_grad")(self)
                continue
            grads = _consume_ctrl_grads(self, method, kwargs["dofs_idx_local"], kwargs["envs_idx"])
            for arg, field in CONSUMED[method]:
                target = kwargs.get(arg)
                if _is_tracked(target):
                    inputs_grad.append((target, grad_like(grads[field], target)))
    finally:
        self._tgt_buffer[index] = taped
    return inputs_grad


def indices_on_host(idx, size: int, name: str) -> tuple[int, ...]:
    """
    The indices given to a solver-level call, as a tuple of ints read on the host.

    None, ints, slices, ranges, lists and arrays are read without touching the device; only an index given as a device
    tensor is copied back, once per call, which the stock index sanitizer does as well.
    """
    if idx is None:
        return tuple(range(size))
    if isinstance(idx, slice):
        return tuple(range(size)[idx])
    values = idx.reshape(-1).tolist() if isinstance(idx, torch.Tensor) else np.asarray(idx).reshape(-1).tolist()
    if any(not 0 <= value < size for value in values):
        gs.raise_exception(f"Invalid '{name}': {values}, expected indices in [0, {size}).")
    return tuple(values)


# Index sets whose split is kept per solver.
_MAX_CONTROL_SPLITS = 64


def _control_split(solver: RigidSolver, dofs: tuple[int, ...]) -> list[tuple[RigidEntity, torch.Tensor, list[int]]]:
    """
    How a solver-level control call on `dofs` splits over the entities: (entity, columns of the input, local dofs).

    Computed on the host and cached per index set: a policy calling the same dofs every step pays it once, and the
    columns live on `gs.device` already, so the call itself makes no device-to-host copy and no synchronization.
    """
    cache = records.of_solver(solver).control_split
    split = cache.get(dofs)
    if split is None:
        split = []
        for entity in solver.entities:
            start, stop = entity.dof_start, entity.dof_start + entity.n_dofs
            cols = [i_col for i_col, i_d in enumerate(dofs) if start <= i_d < stop]
            if cols:
                local = [dofs[i_col] - start for i_col in cols]
                split.append((entity, torch.tensor(cols, dtype=torch.long, device=gs.device), local))
        if len(cache) >= _MAX_CONTROL_SPLITS:
            # A policy uses a few index sets; one drawing new ones every call must not grow the cache without bound.
            cache.clear()
        cache[dofs] = split
    return split


def _columns(value, cols: torch.Tensor, n_cols: int):
    """Select the dof columns of a control input, leaving inputs that broadcast over dofs untouched."""
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value, dtype=gs.tc_float, device=gs.device)
    if value.ndim > 0 and value.shape[-1] == n_cols:
        return value.index_select(-1, cols if cols.device == value.device else cols.to(value.device))
    return value


def _route_to_entities(solver: RigidSolver, method: str, targets: dict, dofs_idx, envs_idx) -> None:
    """Split a solver-level control call into entity calls, so that Genesis tapes it like any entity call."""
    dofs = indices_on_host(dofs_idx, solver.n_dofs, "dofs_idx")
    # The user's call was checked at the solver: the entity calls record their inputs without reporting again.
    with callers.calling_as(callers.Origin.PLUGIN):
        for entity, cols, local in _control_split(solver, dofs):
            entity_targets = {arg: _columns(value, cols, len(dofs)) for arg, value in targets.items()}
            getattr(entity, method)(**entity_targets, dofs_idx_local=local, envs_idx=envs_idx)


def solver_control(method: str, stock):
    """
    The implementation of a solver-level control in a differentiable scene: the call is split into entity calls.

    Genesis tapes entity calls only; split, a solver call is taped, replayed and differentiated like any entity call.
    """
    sig = signature(stock)
    target_args = [arg for arg, _ in CONTROL_TARGETS[method]]

    @wraps(stock)
    def routed(self: RigidSolver, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        targets = {arg: arguments[arg] for arg in target_args}
        _route_to_entities(self, method, targets, arguments["dofs_idx"], arguments["envs_idx"])

    return routed


def implementation(row, stock):
    """The catalog's hook: the solver-level controls are routed to the entities; the entity methods are Genesis's."""
    return solver_control(row.name, stock) if row.owner == "RigidSolver" else None


def install() -> None:
    patching.patch(RigidEntity, "process_input_grad", entity_process_input_grad)
