"""
Differentiable state getters.

`RigidSolver.get_state()` is already part of the autograd graph of a differentiable scene: its tensors are the outputs
of a read node of the current step (`genesis.grad.bridge.ReadNode`), and the reverse pass hands their gradients to the
solver. The getters below return tensors of such a state, so autograd carries their gradients back to it. Besides
`get_state()`'s tensors, the state holds the dof positions and centers of mass that forward kinematics writes: their
gradients go to those fields' gradients, and Genesis's reverse of forward kinematics, which every reversed step runs,
carries them back to qpos (no kinematics is redone in torch). Entity getters (`get_qpos`, `get_pos`, `get_quat`,
`get_vel`, ...) call these solver getters and so need no patch of their own.

The state is read once per step however many getters are called: the cache is keyed by the step and the rollout, and
any solver setter drops it (through Genesis's own mutation notifications). Each getter returns its own tensor, as stock
does: an in-place edit of one result changes neither the cached state nor what the next getter returns.

The functions below are the implementations the getters' replacements (`replacements.py`) call when a read must be
differentiable: a differentiable scene, grad mode, a rollout with a tracked input, and not Genesis reading for itself
(sensors, the viewer's mouse interaction and recorders keep the results in their own buffers; `callers.py` tells
those calls apart).

A getter whose result is not a function of the differentiable state (the velocity of a link that is not a free base)
returns the stock value and reports the break through strict mode: a `GradientBreakWarning` once per call site and
rollout, a `GradientBreakError` in "raise" mode.
"""

import weakref
from operator import attrgetter

import genesis as gs
import torch

from . import callers, control, input_checks, kernels, params, patching, records
from .genesis_api import (
    RigidSolver,
    Scene,
    StateChange,
    Subscriber,
    indices_to_mask,
    link_ref_frame,
    offset_world_shift,
    qd_to_torch,
    select_links_offset,
)
from .genesis_api import geom as gu

# Where Genesis reads state for itself: the build and the reset (geometry caches), and the step, whose scene-level
# method runs the recorders (which log values, never differentiate them), the simulation step (sensors, couplers) and
# the viewer's per-step update (its plugins, the mouse interaction). `Simulator.step` runs only inside these and inside
# the reverse pass (which replays steps from a checkpoint: `tape_guards` sets the variable there), so it is not wrapped
# itself: one call layer fewer per step. A scene built without `requires_grad` reads stock values whoever calls: its
# steps skip the variable.
_GENESIS_READERS = (
    (Scene, "build", None),
    (Scene, "reset", None),
    (Scene, "step", attrgetter("_sim._requires_grad")),
)


def _drop_cache(solver_ref: weakref.ref) -> None:
    solver = solver_ref()
    if solver is not None:
        records.of_solver(solver).state_cache = None


def read_state(solver: RigidSolver):
    """Return the differentiable state of the current step, reading it at most once per step."""
    sim = solver._sim
    key = (sim.cur_step_global, sim._grad_epoch)
    record = records.of_solver(solver)
    cached = record.state_cache
    if cached is not None and cached[0] == key:
        return cached[1]
    if record.state_subscriber is None:
        solver_ref = weakref.ref(solver)
        record.state_subscriber = Subscriber(to=frozenset(StateChange), callback=lambda *_: _drop_cache(solver_ref))
        solver.subscribe(record.state_subscriber)
    state = _read_getter_state(solver)
    record.state_cache = (key, state)
    if params.pending_configuration(solver) and state.qpos.requires_grad:
        # Read between a tracked configuration setter and the step that tapes it: a backward before that step would
        # leave the tracked value without its gradient. Checked when the gradient reaches the read (rare: a hook).
        solver_ref = weakref.ref(solver)
        state.qpos.register_hook(lambda grad: input_checks.report_read_before_step(solver_ref()))
    return state


class GetterState:
    """
    The part of a `RigidSolverState` that carries gradient back into the rigid solver, and what forward kinematics
    derives from it.

    `KinematicSolver.add_grad_from_state`, which the rigid solver inherits, reads the gradients of `qpos`, `dofs_vel`,
    `links_pos` and `links_quat` only: the `dofs_acc` and `friction_ratio` of a full state would be copied, taped and
    given a gradient that nothing reads, on every step a getter is called. The dof positions and the centers of mass
    (`dofs.pos`, `links.i_pos`, `links.root_COM`) are what forward kinematics computes from those: their gradients are
    added to the solver's gradient fields too, and the reverse of the step's forward kinematics, which Genesis runs
    anyway, carries them back to `qpos`.
    """

    __slots__ = (
        "scene",
        "_s_global",
        "qpos",
        "dofs_vel",
        "links_pos",
        "links_quat",
        "dofs_pos",
        "links_i_pos",
        "links_root_COM",
    )

    @property
    def grad_tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name, _, _ in _STATE_FIELDS)

    @property
    def s_global(self) -> int:
        return self._s_global


# The fields of a `GetterState`: (name, the solver array it is read from, that array's gradient). The first four are
# those `KinematicSolver.add_grad_from_state` reads from a full state.
_STATE_FIELDS = tuple(
    (name, attrgetter(array), attrgetter(array + ".grad"))
    for name, array in (
        ("qpos", "rigid_info.qpos"),
        ("dofs_vel", "dyn_state.dofs.vel"),
        ("links_pos", "dyn_state.links.pos"),
        ("links_quat", "dyn_state.links.quat"),
        ("dofs_pos", "dyn_state.dofs.pos"),
        ("links_i_pos", "dyn_state.links.i_pos"),
        ("links_root_COM", "dyn_state.links.root_COM"),
    )
)
# The fields forward kinematics writes besides those four: without zero-copy, the plugin's kernel adds their gradients.
_KINEMATICS_FIELDS = _STATE_FIELDS[4:]


def _read_getter_state(solver: RigidSolver) -> GetterState:
    """
    The fields of a `GetterState`, as torch copies of the solver arrays, registered as a state read at this step.

    Same registration as `get_state()` (read node of the current step, gradients handed back by `add_grad_from_state`),
    but a few tensor copies cost far less than the launch of a kernel with six array arguments on the CPU backend.
    """
    solver.update_forward_pos()
    state = GetterState()
    state.scene, state._s_global = solver._scene, solver.sim.cur_step_global
    for name, array_of, _ in _STATE_FIELDS:
        setattr(state, name, qd_to_torch(array_of(solver), transpose=True).clone(memory_format=torch.contiguous_format))
    solver._queried_states.append(state)
    return state


def add_grad_from_state(self: RigidSolver, state) -> None:
    """
    `RigidSolver.add_grad_from_state` (once per state read, per reversed step): the gradients of a getter state added
    to the solver's gradient fields, through their zero-copy views (two kernel launches without zero-copy).

    The stock method launches a kernel given four fresh tensors, which re-binds every array of the solver state it
    takes (~150 us on CPU). Any other state (a `get_state()` of the user's) goes to the stock method.
    """
    if not isinstance(state, GetterState):
        return patching.original(RigidSolver, "add_grad_from_state")(self, state)
    if not gs.use_zerocopy:
        # No torch view of the fields to add to: Genesis's kernel for the first four, the plugin's for the others.
        patching.original(RigidSolver, "add_grad_from_state")(self, state)
        grads = (getattr(state, name) for name, _, _ in _KINEMATICS_FIELDS)
        grads = [torch.zeros_like(tensor) if tensor.grad is None else tensor.grad for tensor in grads]
        kernels.kernel_add_kinematics_grad(*grads, self.dyn_state, self.rigid_config)
        return
    for name, _, grad_of in _STATE_FIELDS:
        grad = getattr(state, name).grad
        if grad is not None:
            # (n_envs, n, ...) as read, (n, n_envs, ...) as stored.
            records.view(self, name + ".grad", grad_of).add_(grad.transpose(0, 1))


def _own(tensor: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """
    `tensor` as a tensor of its own if it is a view of `source`, a tensor of the cached state.

    Stock getters return copies. A view of the cached state would let the caller's in-place edit (zeroing a velocity
    for logging) change what the next getter of the step returns and the tensor whose gradient the reverse pass hands
    to the solver. Only the selected slice is copied, and only when it is a view (advanced indexing already copies).
    """
    return tensor.clone() if tensor is source or tensor._base is source else tensor


def _select(solver: RigidSolver, tensor: torch.Tensor, envs_idx, idx) -> torch.Tensor:
    """Index a (n_envs, n, ...) state tensor exactly as the stock getters index their fields, as a tensor of its own."""
    out = tensor[indices_to_mask(envs_idx, idx)]
    return _own(out[0] if solver.n_envs == 0 else out, tensor)


def _free_base_dofs(solver: RigidSolver) -> dict[int, int]:
    """Base link of each free joint -> its first dof."""
    record = records.of_solver(solver)
    if record.free_base_dofs is None:
        record.free_base_dofs = {
            joint.link.idx: joint.dof_start
            for entity in solver.entities
            for joint in entity.joints
            if joint.type == gs.JOINT_TYPE.FREE
        }
    return record.free_base_dofs


def _free_root_dofs(solver: RigidSolver, links_idx) -> torch.Tensor | None:
    """
    The first dof of each requested link, or None if one of them is not the body of a free joint.

    Only the body of a free joint has its velocity in the differentiable state (its dofs); the velocity of any other
    link comes from the solver's forward velocity pass, outside the graph.
    """
    # The link indices are read on the host: `indices_to_mask` puts a list of 2 or more on `gs.device`, which a host
    # `arange` cannot be indexed with on CUDA, and a device round trip would synchronize every getter call.
    links = control.indices_on_host(links_idx, solver.n_links, "links_idx")
    free_dofs = _free_base_dofs(solver)
    if any(i_l not in free_dofs for i_l in links):
        return None
    return torch.tensor([free_dofs[i_l] for i_l in links], dtype=torch.long, device=gs.device)


# ------------------------------------------------------------------------------------------------------------------
# The differentiable getters (called by their replacements when the read must be differentiable).
# ------------------------------------------------------------------------------------------------------------------


def _stock_read(self: RigidSolver, name: str, cause: str, *args, **kwargs) -> torch.Tensor:
    """The stock value of a getter call that cannot be differentiable, reported as a gradient break (strict mode)."""
    if callers.get() is None:
        input_checks.report_non_differentiable_read(self, name, cause)
    return patching.original(RigidSolver, name)(self, *args, **kwargs)


def get_qpos(self: RigidSolver, qs_idx=None, envs_idx=None):
    return _select(self, read_state(self).qpos, envs_idx, qs_idx)


def get_dofs_velocity(self: RigidSolver, dofs_idx=None, envs_idx=None):
    return _select(self, read_state(self).dofs_vel, envs_idx, dofs_idx)


def get_dofs_position(self: RigidSolver, dofs_idx=None, envs_idx=None):
    return _select(self, read_state(self).dofs_pos, envs_idx, dofs_idx)


def get_links_pos(self: RigidSolver, links_idx=None, envs_idx=None, *, ref=link_ref_frame.link_origin, relative=False):
    ref_frame = self._sanitize_ref_frame(ref)
    state = read_state(self)
    if ref_frame != link_ref_frame.link_origin:
        # As stock: the offset only applies to the link origin, and a link's COM is stored relative to its root's.
        com = state.links_root_COM if ref_frame == link_ref_frame.root_COM else state.links_root_COM + state.links_i_pos
        return _select(self, com, envs_idx, links_idx)
    tensor = state.links_pos[indices_to_mask(envs_idx, links_idx)]
    idx = links_idx if isinstance(links_idx, int) else slice(None)
    if relative and not self._links_offset_pos_is_identity[idx].all():
        quat = state.links_quat[indices_to_mask(envs_idx, links_idx)]
        offset_pos = select_links_offset(self._links_offset_pos, links_idx, envs_idx)
        offset_quat = select_links_offset(self._links_offset_quat, links_idx, envs_idx)
        tensor = tensor - offset_world_shift(offset_pos, offset_quat, quat)
    return _own(tensor[0] if self.n_envs == 0 else tensor, state.links_pos)


def get_links_quat(self: RigidSolver, links_idx=None, envs_idx=None, *, relative=False):
    links_quat = read_state(self).links_quat
    tensor = links_quat[indices_to_mask(envs_idx, links_idx)]
    idx = links_idx if isinstance(links_idx, int) else slice(None)
    if relative and not self._links_offset_quat_is_identity[idx].all():
        offset_quat = select_links_offset(self._links_offset_quat, links_idx, envs_idx)
        tensor = gu.transform_quat_by_quat(gu.inv_quat(offset_quat), tensor)
    return _own(tensor[0] if self.n_envs == 0 else tensor, links_quat)


def _free_base_velocity(solver: RigidSolver, dofs: torch.Tensor, links_idx, envs_idx):
    """World linear velocity of the link origin, and world angular velocity, of free base links (n_envs, n, 3)."""
    state = read_state(solver)
    dofs = dofs[:, None] + torch.arange(6, device=gs.device)
    dofs_vel = state.dofs_vel[indices_to_mask(envs_idx)][:, dofs]
    # A free joint holds its linear velocity in the world frame, and its angular velocity in the body frame.
    quat = state.links_quat[indices_to_mask(envs_idx, links_idx)]
    return dofs_vel[..., :3], gu.transform_by_quat(dofs_vel[..., 3:], quat)


_LINK_VEL_CAUSE = (
    "'{name}' of a link that is not the base of a free-floating entity is not differentiable: only a free base has its "
    "velocity in the differentiable state (its dofs)."
)


def get_links_vel(self: RigidSolver, links_idx=None, envs_idx=None, *, ref=link_ref_frame.link_origin, relative=False):
    args = (links_idx, envs_idx)
    if self._sanitize_ref_frame(ref, has_root_COM=False) != link_ref_frame.link_origin:
        cause = f"'get_links_vel(ref={ref})' is not differentiable: only the velocity of the link origin is."
        return _stock_read(self, "get_links_vel", cause, *args, ref=ref, relative=relative)
    dofs = _free_root_dofs(self, links_idx)
    if dofs is None:
        cause = _LINK_VEL_CAUSE.format(name="get_links_vel")
        return _stock_read(self, "get_links_vel", cause, *args, ref=ref, relative=relative)
    tensor, ang = _free_base_velocity(self, dofs, links_idx, envs_idx)
    idx = links_idx if isinstance(links_idx, int) else slice(None)
    if relative and not self._links_offset_pos_is_identity[idx].all():
        # The authored origin moves with the body: transport the velocity by 'omega x d', as the stock getter does.
        quat = read_state(self).links_quat[indices_to_mask(envs_idx, links_idx)]
        offset_pos = select_links_offset(self._links_offset_pos, links_idx, envs_idx)
        offset_quat = select_links_offset(self._links_offset_quat, links_idx, envs_idx)
        tensor = tensor - ang.cross(offset_world_shift(offset_pos, offset_quat, quat), dim=-1)
    return tensor[0] if self.n_envs == 0 else tensor


def get_links_ang(self: RigidSolver, links_idx=None, envs_idx=None):
    dofs = _free_root_dofs(self, links_idx)
    if dofs is None:
        return _stock_read(self, "get_links_ang", _LINK_VEL_CAUSE.format(name="get_links_ang"), links_idx, envs_idx)
    _, tensor = _free_base_velocity(self, dofs, links_idx, envs_idx)
    return tensor[0] if self.n_envs == 0 else tensor


def _link_velocity_is_differentiable(self: RigidSolver, links_idx=None, envs_idx=None, **kwargs) -> bool:
    ref = kwargs.get("ref", link_ref_frame.link_origin)
    if self._sanitize_ref_frame(ref, has_root_COM=False) != link_ref_frame.link_origin:
        return False
    return _free_root_dofs(self, links_idx) is not None


# Getters whose result is differentiable only for some arguments: a read of the others under no_grad loses nothing.
DIFFERENTIABLE_FOR = {
    "get_links_vel": _link_velocity_is_differentiable,
    "get_links_ang": _link_velocity_is_differentiable,
}

GETTERS = {
    "get_qpos": get_qpos,
    "get_dofs_position": get_dofs_position,
    "get_dofs_velocity": get_dofs_velocity,
    "get_links_pos": get_links_pos,
    "get_links_quat": get_links_quat,
    "get_links_vel": get_links_vel,
    "get_links_ang": get_links_ang,
}


def implementation(row, stock):
    """The catalog's hook: the differentiable getter of a solver read."""
    return GETTERS[row.name]


def install() -> None:
    for owner, name, differentiable in _GENESIS_READERS:
        patching.patch(owner, name, callers.runs_genesis(getattr(owner, name), differentiable))
    patching.patch(RigidSolver, "add_grad_from_state", add_grad_from_state)
