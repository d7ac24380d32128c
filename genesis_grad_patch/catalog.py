"""
The catalog: every Genesis method the plugin touches, with its gradient status and what replaces it.

One row per method. The replacements (`replacements.py`) are built from it, strict mode's checks and the doctor's
reasons read it, and so do the table in docs/differentiable.md (`python -m genesis_grad_patch.catalog`) and the error
messages that list what is supported: supporting one more method is one row here plus its implementation.

Statuses of the public methods:

- ``differentiable input``: a control or state setter whose tensor argument is taped for the step it is given at, and
  gets d loss / d input from `loss.backward()` (Genesis tapes the entity methods; the plugin hands the gradient over);
- ``differentiable parameter``: a model parameter or the initial configuration, taped per step like a control and
  replayed by the reverse pass with the value each step ran with (`params.py`, `replay.py`);
- ``differentiable read``: a getter whose result is a torch function of the differentiable state (`getters.py`);
- ``input, gradient dropped (reported)``: the value is used, the gradient is not computed; a tracked tensor is
  reported (strict mode) and given to Genesis detached;
- ``input, tracked value refused``: a parameter acting only through constraint rows whose reverse pass Genesis 1.4.5 does not
  differentiate (torsional and rolling friction, friction loss, joint limits, solver parameters): a tracked tensor in a
  differentiable scene is refused at the call with the reason;
- ``read, outside the graph (reported)``: the stock value; reported when the user reads it in grad mode.

Rows with status ``machinery`` are the internal Genesis methods the plugin replaces to implement the above.
"""

import enum
from dataclasses import dataclass


class Status(str, enum.Enum):
    DIFFERENTIABLE_INPUT = "differentiable input"
    DIFFERENTIABLE_PARAMETER = "differentiable parameter"
    DIFFERENTIABLE_READ = "differentiable read"
    # Named for what the user sees: the value is used without its gradient (and reported), or a tracked value raises.
    UNSUPPORTED_INPUT = "input, gradient dropped (reported)"
    REFUSED_INPUT = "input, tracked value refused"
    UNSUPPORTED_READ = "read, outside the graph (reported)"
    MACHINERY = "machinery"


ENTITY = "RigidEntity"
SOLVER = "RigidSolver"


@dataclass(frozen=True)
class Method:
    """One Genesis method the plugin touches."""

    owner: str  # "RigidEntity", "RigidSolver", or the dotted owner of a machinery row
    name: str
    status: Status
    #: The plugin module implementing it (in `genesis_grad_patch._impl`; for a public method, the module's
    #: `implementation(row, stock)` gives what the replacement calls), "" for a public method left stock: it reaches a
    #: replaced solver method.
    module: str = ""
    #: For an unsupported method: why. For machinery: what the replacement is for.
    note: str = ""

    @property
    def call(self) -> str:
        return f"{self.owner}.{self.name}"

    @property
    def replaced(self) -> bool:
        """Whether the plugin replaces this method (public entity getters reach the solver's instead)."""
        return bool(self.module)


def _rows(owner: str, names: tuple[str, ...], status: Status, module: str = "", note: str = "") -> list[Method]:
    return [Method(owner, name, status, module, note) for name in names]


CONTROLS = ("control_dofs_force", "control_dofs_velocity", "control_dofs_position", "control_dofs_position_velocity")
# Entity setters Genesis tapes (`@tracked`) besides the controls.
TAPED_STATE_SETTERS = ("set_pos", "set_quat", "set_dofs_velocity")
# Dof parameters: setter -> the terms of its gradient, each (field of `dyn_info.dofs` it writes, component or None,
# sign). The reverse pass leaves the gradients of those fields, and `_impl/params.py` sums the terms into the gradient
# of the setter's value. A new dof parameter is one entry here.
DOF_PARAMETERS: dict[str, tuple[tuple[str, int | None, float], ...]] = {
    "set_dofs_kp": (("act_gain", None, 1.0), ("act_bias", 1, -1.0)),
    "set_dofs_kv": (("act_bias", 2, -1.0),),
    "set_dofs_damping": (("damping", None, 1.0),),
    "set_dofs_armature": (("armature", None, 1.0),),
    "set_dofs_stiffness": (("stiffness", None, 1.0),),
}
# Dof and link parameters and the initial configuration, differentiated by params.py.
PARAMETER_SETTERS = (
    *DOF_PARAMETERS,
    "set_links_mass",
    "set_links_inertia",
    "set_links_COM",
    "set_qpos",
    "set_dofs_position",
)
SOLVER_READS = (
    "get_qpos",
    "get_dofs_position",
    "get_dofs_velocity",
    "get_links_pos",
    "get_links_quat",
    "get_links_vel",
    "get_links_ang",
)
# Entity getters that return a differentiable solver read's result.
ENTITY_READS = (
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
)

_NO_GRADIENT = "its gradient is supported neither by Genesis nor by genesis-grad-patch"
_UNSUPPORTED_DOF_SETTERS = ("set_dofs_act_gain", "set_dofs_act_bias", "set_dofs_force_range")
_UNSUPPORTED_BOTH = _UNSUPPORTED_DOF_SETTERS
_WHY_FRICTIONLOSS = (
    "a friction loss acts through the dof friction constraint rows alone, whose bounds the reverse pass of Genesis "
    "1.4.5's constraint solver does not differentiate, so the gradient would be zero"
)
_WHY_LIMIT = (
    "joint limits act through the limit constraint rows alone, whose position and activation the reverse pass of "
    "Genesis 1.4.5's constraint solver does not differentiate, so the gradient would be zero"
)
_WHY_SOL_PARAMS = (
    "solver parameters set the impedance of the constraint rows, which the reverse pass of Genesis 1.4.5's "
    "constraint solver does not differentiate, so the gradient would be zero"
)
# Friction coefficients: differentiable through the friction pyramid of the contacts (`contact_friction.py`).
FRICTION_SOLVER = ("set_geoms_friction", "set_geom_friction", "set_geoms_friction_ratio")
FRICTION_ENTITY = ("set_friction", "set_friction_ratio")
_WHY_FRICTION_OTHER = (
    "torsional and rolling friction are off in differentiable scenes (Genesis 1.4.5 refuses them with "
    "`requires_grad`), so the coefficient acts on nothing and its gradient would be zero"
)
_OTHER_FRICTION_SOLVER = (
    "set_geoms_friction_torsional",
    "set_geom_friction_torsional",
    "set_geoms_friction_rolling",
    "set_geom_friction_rolling",
)
_OTHER_FRICTION_ENTITY = ("set_friction_torsional", "set_friction_rolling")

ROWS: tuple[Method, ...] = (
    *_rows(ENTITY, CONTROLS, Status.DIFFERENTIABLE_INPUT, "control"),
    *_rows(SOLVER, CONTROLS, Status.DIFFERENTIABLE_INPUT, "control"),
    *_rows(ENTITY, TAPED_STATE_SETTERS, Status.DIFFERENTIABLE_INPUT, "control"),
    *_rows(ENTITY, (*PARAMETER_SETTERS, "set_mass"), Status.DIFFERENTIABLE_PARAMETER, "params"),
    *_rows(SOLVER, PARAMETER_SETTERS, Status.DIFFERENTIABLE_PARAMETER, "params"),
    *_rows(SOLVER, SOLVER_READS, Status.DIFFERENTIABLE_READ, "getters"),
    *_rows(ENTITY, ENTITY_READS, Status.DIFFERENTIABLE_READ, "", "reads through the solver getter"),
    *_rows(
        ENTITY,
        (*_UNSUPPORTED_BOTH, "set_dofs_invweight", "set_links_invweight"),
        Status.UNSUPPORTED_INPUT,
        "input_checks",
        _NO_GRADIENT,
    ),
    *_rows(ENTITY, ("apply_links_external_wrench",), Status.UNSUPPORTED_INPUT, "input_checks", _NO_GRADIENT),
    *_rows(ENTITY, FRICTION_ENTITY, Status.DIFFERENTIABLE_PARAMETER, "params"),
    *_rows(SOLVER, FRICTION_SOLVER, Status.DIFFERENTIABLE_PARAMETER, "params"),
    *_rows(ENTITY, _OTHER_FRICTION_ENTITY, Status.REFUSED_INPUT, "params", _WHY_FRICTION_OTHER),
    *_rows(SOLVER, _OTHER_FRICTION_SOLVER, Status.REFUSED_INPUT, "params", _WHY_FRICTION_OTHER),
    *_rows(ENTITY, ("set_dofs_frictionloss",), Status.REFUSED_INPUT, "params", _WHY_FRICTIONLOSS),
    *_rows(SOLVER, ("set_dofs_frictionloss",), Status.REFUSED_INPUT, "params", _WHY_FRICTIONLOSS),
    *_rows(ENTITY, ("set_dofs_limit",), Status.REFUSED_INPUT, "params", _WHY_LIMIT),
    *_rows(SOLVER, ("set_dofs_limit",), Status.REFUSED_INPUT, "params", _WHY_LIMIT),
    *_rows(SOLVER, ("set_sol_params", "set_global_sol_params"), Status.REFUSED_INPUT, "params", _WHY_SOL_PARAMS),
    *_rows(
        SOLVER,
        ("set_dofs_velocity", "set_base_links_pos", "set_base_links_quat", "set_links_pos", "set_links_quat"),
        Status.UNSUPPORTED_INPUT,
        "input_checks",
        "at solver level only the controls and the model parameters are differentiable: use the entity's setter",
    ),
    *_rows(
        SOLVER,
        (*_UNSUPPORTED_BOTH, "apply_links_external_wrench"),
        Status.UNSUPPORTED_INPUT,
        "input_checks",
        _NO_GRADIENT,
    ),
    *_rows(
        ENTITY,
        (
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
        ),
        Status.UNSUPPORTED_READ,
        "input_checks",
        _NO_GRADIENT,
    ),
    *_rows(
        SOLVER,
        (
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
        ),
        Status.UNSUPPORTED_READ,
        "input_checks",
        _NO_GRADIENT,
    ),
    # Machinery: internal methods replaced to implement the rows above.
    Method(ENTITY, "process_input_grad", Status.MACHINERY, "control", "hands the PD-target gradients to the inputs"),
    Method(SOLVER, "process_input", Status.MACHINERY, "params", "tapes the parameter setters per step"),
    Method(SOLVER, "process_input_grad", Status.MACHINERY, "params", "hands the parameter gradients to the inputs"),
    Method(SOLVER, "save_ckpt", Status.MACHINERY, "replay", "records the controls and parameters of each step"),
    Method(SOLVER, "load_ckpt", Status.MACHINERY, "replay", "restores them before a step is replayed"),
    Method(SOLVER, "reset_grad", Status.MACHINERY, "replay", "restores the parameters; drops the pending tape"),
    Method(
        "backward",
        "kernel_compute_gradients",
        Status.MACHINERY,
        "reverse_pass",
        "the constraint solve's input gradients, serialized on the CPU",
    ),
    Method(
        SOLVER,
        "_update_cartesian_grad",
        Status.MACHINERY,
        "reverse_pass",
        "its kernels given the environments as a quadrants ndarray (bound once)",
    ),
    Method(SOLVER, "add_grad_from_state", Status.MACHINERY, "getters", "hands a getter's gradient to the solver"),
    Method(
        "Simulator", "load_ckpt", Status.MACHINERY, "reverse_pass", "reverses a step from its checkpoint, no replay"
    ),
    Method(SOLVER, "_func_constraint_force", Status.MACHINERY, "accuracy", "observes approximate contacts and solves"),
    Method(
        "Collider", "detection", Status.MACHINERY, "curved_contacts", "cylinder/capsule-plane contacts in closed form"
    ),
    Method("Collider", "backward_narrowphase", Status.MACHINERY, "curved_contacts", "their reverse, before the rest"),
    Method("array_class", "get_dofs_info", Status.MACHINERY, "params", "dof parameters with gradient storage"),
    Method(
        "array_class", "get_links_info", Status.MACHINERY, "params", "link inertial parameters with gradient storage"
    ),
    Method("array_class", "get_geoms_info", Status.MACHINERY, "params", "geom friction with gradient storage"),
    Method("array_class", "get_geoms_state", Status.MACHINERY, "params", "friction ratios with gradient storage"),
    Method("array_class", "get_contact_data", Status.MACHINERY, "params", "contact friction with gradient storage"),
    Method(
        "rigid_solver",
        "kernel_manual_add_collision_constraints_bw",
        Status.MACHINERY,
        "contact_friction",
        "adds the reverse of the contact rows with respect to the friction coefficient",
    ),
    Method("StepNode", "forward", Status.MACHINERY, "tape_guards", "saves the inputs (in-place edits detected)"),
    Method("StepNode", "backward", Status.MACHINERY, "tape_guards", "no double backward; recovers; runs as Genesis"),
    Method("Simulator", "track_state", Status.MACHINERY, "tape_guards", "names the steps run under no_grad"),
    Method("Simulator", "reset_grad", Status.MACHINERY, "backward_checks", "forgets the rollout's bookkeeping"),
    Method("Simulator", "reverse_step", Status.MACHINERY, "backward_checks", "backward after reset/destroy, twice"),
    Method("Scene", "build", Status.MACHINERY, "callers", "Genesis's own reads take the stock path"),
    Method("Scene", "reset", Status.MACHINERY, "callers", "Genesis's own reads take the stock path"),
    Method("Scene", "step", Status.MACHINERY, "callers", "Genesis's own reads take the stock path"),
    Method("genesis", "from_torch", Status.MACHINERY, "compat", "Genesis 0.x's conversion, keeping the graph"),
)


def rows(owner: str | None = None, *statuses: Status) -> list[Method]:
    """The rows of an owner (all owners if None) with one of the statuses (any status if none given)."""
    return [r for r in ROWS if (owner is None or r.owner == owner) and (not statuses or r.status in statuses)]


def names(owner: str, *statuses: Status) -> tuple[str, ...]:
    """The method names of an owner with one of the statuses."""
    return tuple(r.name for r in rows(owner, *statuses))


def lookup(owner: str, name: str) -> Method | None:
    """The row of a method, or None if the plugin does not touch it."""
    for row in ROWS:
        if row.owner == owner and row.name == name:
            return row
    return None


def supported_inputs_text() -> str:
    """The differentiable inputs, as listed in error messages."""
    inputs = ", ".join(f"`{n}`" for n in names(ENTITY, Status.DIFFERENTIABLE_INPUT))
    params = ", ".join(f"`{n}`" for n in names(ENTITY, Status.DIFFERENTIABLE_PARAMETER))
    return f"the inputs {inputs} and the parameters {params}"


def supported_reads_text() -> str:
    """The differentiable getters, as listed in error messages."""
    return ", ".join(f"`{n}`" for n in names(ENTITY, Status.DIFFERENTIABLE_READ))


def markdown_table() -> str:
    """The table of the public methods and their gradient status, as docs/differentiable.md shows it."""
    lines = ["| method | entity | solver |", "|---|---|---|"]
    public = [r for r in ROWS if r.status is not Status.MACHINERY and r.owner in (ENTITY, SOLVER)]
    for name in dict.fromkeys(r.name for r in public):
        cells = []
        for owner in (ENTITY, SOLVER):
            row = lookup(owner, name)
            cells.append(row.status.value if row is not None else "-")
        lines.append(f"| `{name}` | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
