"""
Differentiable model parameters: the gains, damping, armature and stiffness of the dofs, the mass, inertia and center of
mass of the links (hence `RigidEntity.set_mass`), the friction of the geoms, and the initial configuration (`set_qpos`,
`set_dofs_position`).

Genesis's reverse pass already differentiates every kernel that reads the model (`act_gain`, `act_bias`, `damping`,
`armature`, `stiffness` of `dyn_info.dofs`; `inertial_mass`, `inertial_i`, `inertial_pos` of `dyn_info.links`): only
the gradient storage is missing, since the build allocates those fields without it. In a scene built with
`requires_grad=True`, this module allocates them with gradient storage, tapes the parameter setters like control calls
(a value holds from the step it is set at until the next call that writes it), and hands the gradient the reverse pass
accumulated in each field to the tensor the user gave:

- `set_dofs_kp(kp)` writes `act_gain = kp`, `act_bias = (0, -kp, .)`: d loss / d kp = g(act_gain) - g(act_bias[1]);
- `set_dofs_kv(kv)` writes `act_bias[2] = -kv`: d loss / d kv = -g(act_bias[2]);
- `set_dofs_damping`, `set_dofs_armature`, `set_dofs_stiffness`, `set_links_mass`, `set_links_inertia`,
  `set_links_COM` write their field: the gradient is the field's;
- `set_links_mass(..., scale_inertia=True)` (what `RigidEntity.set_mass` calls) also writes I' = I m' / m, whose
  gradient goes to m' and, through the fields, to the earlier I and m.
- `set_geoms_friction`, `set_geom_friction` (entity, link and geom `set_friction`) and `set_geoms_friction_ratio`
  (entity `set_friction_ratio`) write the geoms' friction (shared by the environments) or friction ratio (per
  environment): `contact_friction.py` differentiates each contact's coefficient, and Genesis's autodiff of the narrow
  phase carries it on to these fields.

As for control targets, every call of a reversed step reads and clears the gradient of what it wrote, tracked or not,
so the gradient of the steps a later call drove never reaches an earlier value; what the steps before the first call
accumulated (the model's own values) is dropped at the next `scene.reset()`. The replay record (`replay.py`) gives each
replayed step the parameter values it ran with.

`set_qpos` / `set_dofs_position` (which stock Genesis does not tape) are taped the same way: the reverse of the step
they precede leaves d loss / d qpos of its start in `rigid_info.qpos.grad`, which they read and clear, so a tracked
initial configuration gets its gradient and an untracked one set between steps cuts the gradient of the configuration
it overwrote.

Refused with a clear error: a tracked armature, link mass, inertia or center of mass in a scene whose constraint rows
read their derived inverse weights (contacts, joint limits, friction losses, equalities: not differentiated); a
tracked configuration or inertial property set between steps (the link poses and inertias the previous step derived
from the overwritten value pass their gradient on to it, in Genesis 1.4.5's reverse pass: set it after
`scene.reset()`, before the first step); a tracked `set_dofs_position` of the rotational dofs of a free or ball joint
(their configuration is a quaternion: use `set_qpos`); and tracked torsional or rolling friction (off in differentiable
scenes), friction loss, joint limits and solver parameters (`refuse_tracked`, catalog status "input, tracked value refused": the
constraint solver's reverse pass does not differentiate them).
"""

import dataclasses
from functools import wraps
from inspect import signature
from typing import NamedTuple

import genesis as gs
import torch

from ..catalog import DOF_PARAMETERS, Status
from . import input_checks, patching, records, tape_guards
from .control import grad_like
from .genesis_api import RigidSolver, array_class, indices_to_mask, qd_to_torch

# Configuration setters: their gradient is that of `rigid_info.qpos` at the start of the step they precede.
CONFIGURATION_SETTERS = ("set_qpos", "set_dofs_position")
# Fields written by a setter but carrying no gradient of its own value: cleared with the rest (kp zeroes act_bias[0]).
_CLEARED = {"set_dofs_kp": (("act_bias", 0),)}
GRAD_FIELDS = frozenset(field for terms in DOF_PARAMETERS.values() for field, _, _ in terms)
# Link setter -> the field of `dyn_info.links` it writes (mass, inertia in the inertial frame, center of mass).
LINK_PARAMETERS = {
    "set_links_mass": "inertial_mass",
    "set_links_inertia": "inertial_i",
    "set_links_COM": "inertial_pos",
}
LINK_GRAD_FIELDS = frozenset(LINK_PARAMETERS.values())
# Geom setter -> (the geoms dataclass of the solver, its field): the friction coefficients, which act through the
# contacts' friction cones (`contact_friction.py` differentiates them there). Only the friction ratio is per environment.
GEOM_PARAMETERS = {
    "set_geoms_friction": ("dyn_info", "friction"),
    "set_geom_friction": ("dyn_info", "friction"),
    "set_geoms_friction_ratio": ("dyn_state", "friction_ratio"),
}


def _with_grad(data, shape, dtypes: dict):
    """
    `data` (a stock dataclass of arrays) with the fields of `dtypes` allocated afresh as the stock allocation does,
    plus gradient storage.

    The two layouts (with and without gradient storage) share one on-disk kernel cache safely: quadrants keys each
    ndarray a kernel reads by its gradient storage too (`_fast_caching/args_hasher.py`), and the fields a kernel does
    not read are not part of its launch (`tests/test_kernel_cache.py` runs both layouts from one cache, both orders).
    """
    values = {field.name: getattr(data, field.name) for field in dataclasses.fields(data)}
    values |= {name: array_class.V(dtype=dtype, shape=shape, needs_grad=True) for name, dtype in dtypes.items()}
    return type(data)(**values)


def _get_dofs_info(solver):
    """`array_class.get_dofs_info`, with gradient storage for the parameter fields of a differentiable scene."""
    info = patching.original(array_class, "get_dofs_info")(solver)
    if not solver._requires_grad:
        return info
    shape = (solver.n_dofs_, solver._B) if solver._options.batch_dofs_info else (solver.n_dofs_,)
    dtypes = {name: gs.qd_vec3 if name == "act_bias" else gs.qd_float for name in GRAD_FIELDS}
    return _with_grad(info, shape, dtypes)


def _get_links_info(solver):
    """`array_class.get_links_info`, with gradient storage for the inertial fields of a differentiable scene."""
    info = patching.original(array_class, "get_links_info")(solver)
    if not solver._requires_grad:
        return info
    shape = (solver.n_links_, solver._B) if solver._options.batch_links_info else solver.n_links_
    dtypes = {"inertial_mass": gs.qd_float, "inertial_i": gs.qd_mat3, "inertial_pos": gs.qd_vec3}
    return _with_grad(info, shape, dtypes)


def _get_geoms_info(solver, is_active=True):
    """`array_class.get_geoms_info`, with gradient storage for the friction coefficients of a differentiable scene."""
    info = patching.original(array_class, "get_geoms_info")(solver, is_active)
    if not (solver._requires_grad and is_active):
        return info
    return _with_grad(info, (solver.n_geoms_,), {"friction": gs.qd_float})


def _get_geoms_state(solver, is_active=True):
    """`array_class.get_geoms_state`, with gradient storage for the friction ratios of a differentiable scene."""
    state = patching.original(array_class, "get_geoms_state")(solver, is_active)
    if not (solver._requires_grad and is_active):
        return state
    return _with_grad(state, (solver.n_geoms_, solver._B), {"friction_ratio": gs.qd_float})


def _get_contact_data(solver, max_candidate_contacts, requires_grad):
    """`array_class.get_contact_data`, with gradient storage for the friction coefficient of each contact."""
    data = patching.original(array_class, "get_contact_data")(solver, max_candidate_contacts, requires_grad)
    if not requires_grad:
        return data
    shape = (max(max_candidate_contacts, 1), solver._B)
    return _with_grad(data, shape, {"friction": gs.qd_float})


def _has_grad(solver: RigidSolver) -> bool:
    return (
        solver._requires_grad
        and solver.dyn_info.dofs.damping.has_grad()
        and solver.dyn_info.links.inertial_mass.has_grad()
    )


def _field_grad(solver: RigidSolver, field: str, kind: str = "dofs") -> torch.Tensor:
    """Zero-copy view of a parameter field's gradient (`dyn_info.dofs`, `.links`, `.geoms` or `dyn_state.geoms`),
    environments first when batched."""
    owner = solver.dyn_state.geoms if field == "friction_ratio" else getattr(solver.dyn_info, kind)
    return qd_to_torch(getattr(owner, field).grad, transpose=True, copy=False)


def _mask(solver: RigidSolver, idx, envs_idx, kind: str = "dofs") -> tuple:
    """The index of dofs (or links) `idx` in a parameter field, with the environments when the field is batched."""
    if getattr(solver._options, f"batch_{kind}_info"):
        return indices_to_mask(envs_idx, idx)
    return indices_to_mask(idx)


def _qs_of_dofs(solver: RigidSolver) -> list[tuple[int, ...]]:
    """The configuration entries each dof moves: one for hinges, slides and free translations, the quaternion else."""
    record = records.of_solver(solver)
    qs = record.dofs_qs
    if qs is None:
        qs = [()] * solver.n_dofs
        for joint in solver.joints:
            for k in range(joint.n_dofs):
                if joint.type == gs.JOINT_TYPE.FREE and k >= 3:
                    qs[joint.dof_start + k] = tuple(range(joint.q_start + 3, joint.q_start + 7))
                elif joint.type == gs.JOINT_TYPE.SPHERICAL:
                    qs[joint.dof_start + k] = tuple(range(joint.q_start, joint.q_start + 4))
                else:
                    qs[joint.dof_start + k] = (joint.q_start + k,)
        record.dofs_qs = qs
    return qs


def _dofs_list(solver: RigidSolver, dofs_idx) -> list[int]:
    if dofs_idx is None:
        return list(range(solver.n_dofs))
    if isinstance(dofs_idx, slice):
        return list(range(*dofs_idx.indices(solver.n_dofs)))
    return torch.as_tensor(dofs_idx).reshape(-1).tolist()


def _consume_state(solver: RigidSolver, method: str, idx, envs_idx, tracked: bool) -> torch.Tensor:
    """Read, then clear, d loss / d qpos of the configuration entries one call wrote (qs for set_qpos, else dofs)."""
    view = qd_to_torch(solver.rigid_info.qpos.grad, transpose=True, copy=False)  # (B, n_qs)
    if method == "set_qpos":
        qs = idx if idx is not None else slice(None)
        mask = indices_to_mask(envs_idx, qs)
        grad = view[mask].clone()
        view[mask] = 0.0
    else:
        dofs_qs = [_qs_of_dofs(solver)[d] for d in _dofs_list(solver, idx)]
        grad = view[indices_to_mask(envs_idx, [q[0] for q in dofs_qs])].clone() if tracked else None
        view[indices_to_mask(envs_idx, [q for qs in dofs_qs for q in qs])] = 0.0
    return grad[0] if grad is not None and solver.n_envs == 0 else grad


def _link_values(solver: RigidSolver, field: str, links_idx, envs_idx) -> torch.Tensor:
    """A copy of the selected entries of an inertial field, in the layout of its gradient view."""
    view = qd_to_torch(getattr(solver.dyn_info.links, field), transpose=True, copy=True)
    return view[_mask(solver, links_idx, envs_idx, "links")].clone()


def _consume_link(solver: RigidSolver, call: "_Call") -> torch.Tensor:
    """
    Read, then clear, the gradient of the value one link call wrote.

    `set_links_mass(..., scale_inertia=True)` (what `RigidEntity.set_mass` calls) also writes I' = I m' / m, from the
    inertia I and the mass m it found: m' gets sum(g(I') * I' / m'), and the earlier values get theirs through the
    fields, g(I) = g(I') m' / m and g(m) = -sum(g(I') * I') / m.
    """
    mask = _mask(solver, call.idx, call.envs_idx, "links")
    view = _field_grad(solver, LINK_PARAMETERS[call.method], "links")
    grad = view[mask].clone()
    view[mask] = 0.0
    if call.extra is not None:
        mass_old, mass_new, inertia_new = call.extra
        g_inertia_view = _field_grad(solver, "inertial_i", "links")
        g_inertia = g_inertia_view[mask].clone()
        weighted = (g_inertia * inertia_new).sum(dim=(-2, -1))
        grad = grad + weighted / mass_new
        g_inertia_view[mask] = g_inertia * (mass_new / mass_old)[..., None, None]
        view[mask] = -weighted / mass_old
    return grad


def _consume_geom(solver: RigidSolver, call: "_Call") -> torch.Tensor:
    """Read, then clear, the gradient of the friction coefficients (or ratios, per environment) one geom call wrote."""
    _, field = GEOM_PARAMETERS[call.method]
    idx = [call.idx] if isinstance(call.idx, int) else call.idx
    view = _field_grad(solver, field, "geoms")
    mask = indices_to_mask(call.envs_idx, idx) if field == "friction_ratio" else indices_to_mask(idx)
    grad = view[mask].clone()
    view[mask] = 0.0
    return grad[0] if field == "friction_ratio" and solver.n_envs == 0 else grad


def _consume(solver: RigidSolver, call: "_Call") -> torch.Tensor:
    """Read, then clear, the gradient of the value one parameter call wrote, in the layout of its selection."""
    method, dofs_idx, envs_idx = call.method, call.idx, call.envs_idx
    if method in CONFIGURATION_SETTERS:
        return _consume_state(solver, method, dofs_idx, envs_idx, call.value is not None)
    if method in LINK_PARAMETERS:
        return _consume_link(solver, call)
    if method in GEOM_PARAMETERS:
        return _consume_geom(solver, call)
    mask = _mask(solver, dofs_idx, envs_idx)
    grad = None
    for field, component, sign in DOF_PARAMETERS[method]:
        view = _field_grad(solver, field)
        index = (*mask, ..., component) if component is not None else mask
        term = sign * view[index].clone()
        view[index] = 0.0
        grad = term if grad is None else grad + term
    for field, component in _CLEARED.get(method, ()):
        _field_grad(solver, field)[(*mask, ..., component)] = 0.0
    return grad


def _constraint_rows(solver: RigidSolver) -> list[str]:
    """
    What can add constraint rows: their regularization reads the inverse weights, derived from the armature and the
    inertial properties of the links, which Genesis 1.4.5's reverse pass does not differentiate.
    """
    rows = []
    if solver._enable_collision and solver.collider is not None and solver.collider._n_possible_pairs > 0:
        rows.append("collisions")
    if solver._enable_joint_limit and bool(torch.isfinite(qd_to_torch(solver.dyn_info.dofs.limit)).any()):
        rows.append("joint limits")
    if bool((qd_to_torch(solver.dyn_info.dofs.frictionloss) > 0.0).any()):
        rows.append("dof friction losses")
    if solver.n_equalities > 0:
        rows.append("equality constraints")
    return rows


_LINK_WHAT = {
    "set_links_mass": "link mass",
    "set_links_inertia": "link inertia",
    "set_links_COM": "link center of mass",
}


def _refuse_unsupported(solver: RigidSolver, method: str, idx) -> None:
    if method in CONFIGURATION_SETTERS and solver.sim.cur_step_global > 0:
        gs.raise_exception(
            f"{method} got a tensor that tracks gradients between steps of a differentiable rollout (step "
            f"{solver.sim.cur_step_global}): the link poses the previous step derived from the configuration it "
            "overwrites would pass their gradient on to that configuration in Genesis 1.4.5's reverse pass, so the "
            "gradient would be wrong. Set a tracked configuration after `scene.reset()`, before the first step, or "
            "pass an untracked value."
        )
    if method in LINK_PARAMETERS and solver.sim.cur_step_global > 0:
        gs.raise_exception(
            f"{method} got a tensor that tracks gradients between steps of a differentiable rollout (step "
            f"{solver.sim.cur_step_global}): the next step starts from the link inertias and centers of mass the "
            "setter derives from the new value, and Genesis 1.4.5's reverse pass gives their gradient to the value the "
            "previous step ran with, so the gradient would be wrong. Set a tracked inertial property after "
            "`scene.reset()`, before the first step, or pass an untracked value."
        )
    if method == "set_dofs_position" and any(len(_qs_of_dofs(solver)[d]) != 1 for d in _dofs_list(solver, idx)):
        gs.raise_exception(
            "set_dofs_position got a tensor that tracks gradients for a rotational dof of a free or ball joint, whose "
            "configuration is a quaternion rather than one entry per dof. Set it with `set_qpos` (the quaternion "
            "entries), or pass an untracked value."
        )
    if method == "set_dofs_armature" or method in LINK_PARAMETERS:
        rows = _constraint_rows(solver)
        if rows:
            what = "armature" if method == "set_dofs_armature" else _LINK_WHAT[method]
            gs.raise_exception(
                f"{method} got a tensor that tracks gradients in a scene with {' and '.join(rows)}: the {what} also "
                "sets the inverse weights of the constraint rows, whose gradient Genesis 1.4.5 does not compute, so "
                "the gradient would be biased (5e-3 to 7e-2 relative error measured for a mass through contact). "
                "Disable them (`RigidOptions(enable_collision=False, enable_joint_limit=False)`, no frictionloss, no "
                "equality) or pass an untracked value."
            )


# What an untracked value set between steps of a rollout with tracked inputs leaves approximate: (what happened, why,
# what to do), by kind of setter (see `_refuse_unsupported` for the tracked case).
_BETWEEN_STEPS = {
    "configuration": (
        "overwrote the configuration",
        "the gradient of the inputs before it is cut at the entries it overwrote, but the link poses the previous step "
        "derived from them still pass theirs on in Genesis 1.4.5's reverse pass (1e-2 relative error measured on a "
        "2-link arm).",
        "Set the configuration after `scene.reset()`, before the first step, or start a new rollout there.",
    ),
    "inertial": (
        "changed an inertial property",
        "the link inertias and centers of mass the next step starts from were derived from the new value, but Genesis "
        "1.4.5's reverse pass differentiates them with the previous one and gives their gradient to it (1e-1 relative "
        "error measured on the gradient of a mass set at reset, 2-link arm).",
        "Set inertial properties after `scene.reset()`, before the first step, or start a new rollout there.",
    ),
}


def _warn_between_steps(solver: RigidSolver, method: str, kind: str) -> None:
    """An untracked configuration or inertial property set between steps of a rollout with tracked inputs."""
    sim = solver.sim
    if not records.has_tracked_inputs(sim):
        return
    what, why, fix = _BETWEEN_STEPS[kind]
    input_checks.report_approximate_gradient(
        f"RigidSolver.{method}",
        f"'{method}' {what} between steps of a differentiable rollout (before step {sim.cur_step_global}): {why}",
        fix,
        sim,
    )


class _Call(NamedTuple):
    """One taped parameter call: its setter, the tracked value (None if untracked), its selection, and for a mass
    written with `scale_inertia` the (old mass, new mass, new inertia) of the selection."""

    method: str
    value: torch.Tensor | None
    idx: object
    envs_idx: object
    extra: tuple | None = None


def _index_arg(method: str) -> str:
    if method == "set_qpos":
        return "qs_idx"
    if method in GEOM_PARAMETERS:
        return "geoms_idx"
    return "links_idx" if method in LINK_PARAMETERS else "dofs_idx"


def _detached(values, as_float: bool = False):
    """The arguments (a tuple or a dict), every tensor that tracks gradients detached (every tensor a Python float with
    `as_float`)."""

    def cut(v):
        if not isinstance(v, torch.Tensor):
            return v
        return v.item() if as_float else v.detach() if v.requires_grad else v

    return {k: cut(v) for k, v in values.items()} if isinstance(values, dict) else tuple(cut(v) for v in values)


def parameter_setter(method: str, stock):
    """The implementation of a parameter setter in a differentiable scene: the call is taped for the coming step."""
    sig = signature(stock)
    value_arg = list(sig.parameters)[1]  # kp, kv, damping, ..., mass, inertia, com
    # `set_geom_friction`'s kernel takes a Python float (one geom), which the stock callers pass: a tensor becomes its
    # value.
    as_float = method == "set_geom_friction"

    @wraps(stock)
    def wrapper(self: RigidSolver, *args, **kwargs):
        if not (torch.is_grad_enabled() and _has_grad(self)):
            # No gradient to give: the value alone. A tracked tensor reaching Genesis's setter kernels compiles a
            # variant with gradient pointers under the same fastcache key, and the next untracked call loading it
            # segfaulted (stock 1.4.5, `set_dofs_armature` in a differentiable scene, one kernel cache).
            return stock(self, *_detached(args, as_float), **_detached(kwargs, as_float))
        arguments = sig.bind(self, *args, **kwargs).arguments
        value = arguments.get(value_arg)
        tracked = isinstance(value, torch.Tensor) and value.requires_grad
        idx, envs_idx = arguments.get(_index_arg(method)), arguments.get("envs_idx")
        if tracked:
            _refuse_unsupported(self, method, idx)
            index_arg = _index_arg(method)
            count = getattr(self, "n_" + index_arg[: -len("_idx")])  # n_dofs, n_links, n_geoms, n_qs
            tape_guards.refuse_bad_indices(method, idx, envs_idx, index_arg[: -len("s_idx")], count, self.n_envs)
            tape_guards.refuse_unusable_values(method, (value,))
            records.note_tracked(self.sim)
            if method in GEOM_PARAMETERS:
                records.of_solver(self).friction_tracked = True
        elif method in CONFIGURATION_SETTERS and self.sim.cur_step_global > 0:
            _warn_between_steps(self, method, "configuration")
        elif method in LINK_PARAMETERS and self.sim.cur_step_global > 0:
            _warn_between_steps(self, method, "inertial")
        if tracked or as_float:
            # Genesis gets the value alone.
            args, kwargs = _detached(args, as_float), _detached(kwargs, as_float)
        scaled = method == "set_links_mass" and arguments.get("scale_inertia", False)
        mass_old = _link_values(self, "inertial_mass", idx, envs_idx) if scaled else None
        result = stock(self, *args, **kwargs)
        extra = None
        if scaled:
            mass_new = _link_values(self, "inertial_mass", idx, envs_idx)
            extra = (mass_old, mass_new, _link_values(self, "inertial_i", idx, envs_idx))
        # Taped for the coming step, tracked or not: its reversal clears the gradient of what it wrote.
        records.of_solver(self).pending_parameters.append(
            _Call(method, value if tracked else None, idx, envs_idx, extra)
        )
        return result

    return wrapper


def _process_input(stock):
    """`RigidSolver.process_input` (once per substep), then the parameter calls made since the last one taped."""

    def process_input(self: RigidSolver, in_backward: bool = False):
        inputs = stock(self, in_backward=in_backward)
        # Parameter calls are taped in differentiable scenes only: a plain scene's step does not look for any.
        record = None if in_backward or not self._requires_grad else records.peek_solver(self)
        # Nothing set since the last step and nothing taped in this rollout (the usual step): nothing to do.
        if record is None or not (record.pending_parameters or record.taped_parameters):
            return inputs
        calls, record.pending_parameters = record.pending_parameters, []
        first_substep = self.sim.cur_substep_global
        if calls:
            record.taped_parameters[first_substep] = calls
            inputs = [*inputs, *(call.value for call in calls if call.value is not None)]
        else:
            record.taped_parameters.pop(first_substep, None)
        return inputs

    return process_input


def process_input_grad(self: RigidSolver):
    pairs = patching.original(RigidSolver, "process_input_grad")(self)
    record = records.peek_solver(self)
    calls = None if record is None else record.taped_parameters.get(self.sim.cur_substep_global)
    # Reverse order of the calls: a later call on the same dofs overwrote an earlier one.
    for call in reversed(calls or ()):
        grad = _consume(self, call)
        if call.value is not None:
            pairs.append((call.value, grad_like(grad, call.value)))
    return pairs


def note_reverse(solver: RigidSolver) -> None:
    """A step of `solver` is about to be reversed: its parameter gradients are filled from now on."""
    records.of_solver(solver).reversed = True


def pending_configuration(solver: RigidSolver) -> list[str]:
    """The tracked configuration setters called since the last step of `solver` (none taped yet)."""
    record = records.peek_solver(solver)
    calls = () if record is None else record.pending_parameters
    return [c.method for c in calls if c.value is not None and c.method in CONFIGURATION_SETTERS]


def clear_grads(solver: RigidSolver) -> list:
    """Drop the parameter gradients and the taped calls of the last rollout (at `scene.reset()`). Returns the calls
    made since the last step, which no step taped."""
    record = records.of_solver(solver)
    pending, record.pending_parameters = record.pending_parameters, []
    record.taped_parameters.clear()
    record.friction_tracked = False
    # Genesis fills them only while reversing: a rollout that was not differentiated has none to clear.
    if record.reversed and _has_grad(solver):
        record.reversed = False
        for field in GRAD_FIELDS:
            _field_grad(solver, field).zero_()
        for field in LINK_GRAD_FIELDS:
            _field_grad(solver, field, "links").zero_()
        if solver.dyn_info.geoms.friction.has_grad():
            _field_grad(solver, "friction", "geoms").zero_()
            _field_grad(solver, "friction_ratio").zero_()
    return pending


def implementation(row, stock):
    """The catalog's hook: the solver-level parameter setters are taped (`parameter_setter`); the entity setters, and
    the setters whose tracked input is refused, are Genesis's."""
    if row.owner == "RigidSolver" and row.status is Status.DIFFERENTIABLE_PARAMETER:
        return parameter_setter(row.name, stock)
    return None


def refuse_tracked(call: str, why: str, args: tuple, kwargs: dict) -> None:
    """Refuse a tracked input of a setter whose gradient is not supported (called in a differentiable scene)."""
    for arg, value in (*zip(("",) * len(args), args, strict=True), *kwargs.items()):
        if isinstance(value, torch.Tensor) and value.requires_grad:
            what = f" ('{arg}')" if arg else ""
            gs.raise_exception(
                f"{call} got a tensor that tracks gradients{what} in a differentiable scene, but its gradient is not "
                f"supported: {why}. Pass an untracked value (`.detach()`)."
            )


def install() -> None:
    patching.patch(array_class, "get_dofs_info", _get_dofs_info)
    patching.patch(array_class, "get_links_info", _get_links_info)
    patching.patch(array_class, "get_geoms_info", _get_geoms_info)
    patching.patch(array_class, "get_geoms_state", _get_geoms_state)
    patching.patch(array_class, "get_contact_data", _get_contact_data)
    # The stock method given at install (a replacement called at every substep skips the lookup).
    patching.patch(RigidSolver, "process_input", _process_input(RigidSolver.process_input))
    patching.patch(RigidSolver, "process_input_grad", process_input_grad)
