"""
Differentiable model parameters, against central finite differences: the dof parameters (kp, kv, damping,
armature, stiffness), the inertial properties of the links (mass, inertia, center of mass, `set_mass`) and the initial
configuration; and the refusals of what is not differentiable. Both modes: the plugin and patch 0010; the strict-mode
reports are plugin-only.
"""

import warnings

import genesis as gs
import pytest
import torch
from helpers import DIAG_ARM, assert_grad_close, build_diag_arm, central_fd, make_scene

from genesis_grad_patch.strict import GradientBreakWarning

SETTERS = ("set_dofs_kp", "set_dofs_kv", "set_dofs_damping", "set_dofs_armature", "set_dofs_stiffness")
VALUES = {
    "set_dofs_kp": (8.0, 5.0),
    "set_dofs_kv": (0.8, 0.6),
    "set_dofs_damping": (0.3, 0.2),
    "set_dofs_armature": (0.05, 0.02),
    "set_dofs_stiffness": (2.0, 1.0),
}


@pytest.fixture(scope="module")
def arm():
    return build_diag_arm()


def _two_env_arm(**rigid_options):
    """The arm in two environments, with the given `RigidOptions` (per-env parameters)."""
    scene = gs.Scene(
        sim_options=gs.options.SimOptions(dt=0.01, requires_grad=True, gravity=(0, 0, 0)),
        rigid_options=gs.options.RigidOptions(**rigid_options),
        show_viewer=False,
    )
    arm = scene.add_entity(gs.morphs.MJCF(file=DIAG_ARM))
    scene.build(n_envs=2)
    return scene, arm


@pytest.fixture(scope="module")
def arms2():
    """Two environments, each with its own dof parameters (`batch_dofs_info`)."""
    return _two_env_arm(batch_dofs_info=True)


def rollout(scene, arm, setter: str, p: torch.Tensor, horizon: int = 12, envs_idx=None, change_at=None):
    defaults = {name: torch.tensor(VALUES[name], dtype=torch.float64) for name in SETTERS}
    scene.reset()
    for name, value in defaults.items():
        getattr(arm, name)(value)
    getattr(arm, setter)(p, envs_idx=envs_idx) if envs_idx is not None else getattr(arm, setter)(p)
    return _drive(scene, arm, horizon, change_at, lambda: getattr(arm, setter)(2.0 * defaults[setter]))


def _drive(scene, arm, horizon: int, change_at, change) -> torch.Tensor:
    """Drive the arm from a set velocity (a PD target at step 0, `change()` before step `change_at`); the summed squared
    state over the steps."""
    arm.set_dofs_velocity(torch.tensor([1.0, -0.7], dtype=torch.float64))
    loss = 0.0
    for t in range(horizon):
        if t == 0:
            arm.control_dofs_position(torch.tensor([0.3, -0.2], dtype=torch.float64))
        if t == change_at:
            change()
        scene.step()
        state = scene.sim.rigid_solver.get_state()
        loss = loss + (state.qpos**2).sum() + 0.1 * (state.dofs_vel**2).sum()
    return loss


@pytest.mark.parametrize("setter", SETTERS)
def test_dof_parameter_gradient_matches_fd(arm, setter):
    scene, arm = arm
    p = torch.tensor(VALUES[setter], dtype=torch.float64) * 1.3
    x = p.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(rollout(scene, arm, setter, x), x)
    fd = central_fd(lambda y: rollout(scene, arm, setter, y), p, eps=1e-6 * p.abs().max().item())
    assert grad.abs().max() > 0
    assert_grad_close(grad, fd, rtol=1e-6)


@pytest.mark.parametrize("setter", ["set_dofs_kp", "set_dofs_damping"])
def test_parameter_changed_mid_rollout_gets_only_its_steps(arm, setter):
    """A later untracked call on the same dofs takes the gradient of the steps it drove."""
    scene, arm = arm
    p = torch.tensor(VALUES[setter], dtype=torch.float64) * 1.3
    x = p.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(rollout(scene, arm, setter, x, change_at=6), x)
    fd = central_fd(lambda y: rollout(scene, arm, setter, y, change_at=6), p, eps=1e-6 * p.abs().max().item())
    assert_grad_close(grad, fd, rtol=1e-6)


@pytest.mark.parametrize("per_env", [False, True], ids=["shared", "per_env"])
def test_batched_parameters(arms2, per_env):
    scene, arm = arms2
    p = torch.tensor(VALUES["set_dofs_kv"], dtype=torch.float64) * 1.3
    if per_env:
        p = torch.stack([p, 0.8 * p])
    x = p.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(rollout(scene, arm, "set_dofs_kv", x), x)
    fd = central_fd(lambda y: rollout(scene, arm, "set_dofs_kv", y), p, eps=1e-6)
    assert grad.shape == p.shape
    assert_grad_close(grad, fd, rtol=1e-6)


def test_gradients_do_not_leak_between_rollouts(arm):
    scene, arm = arm
    p = torch.tensor(VALUES["set_dofs_damping"], dtype=torch.float64)
    grads = []
    for _ in range(2):
        x = p.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(rollout(scene, arm, "set_dofs_damping", x), x)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=0)


def test_armature_with_contacts_is_refused(contact_scene):
    scene, (arm, _, _) = contact_scene
    scene.reset()
    with pytest.raises(gs.GenesisException, match="set_dofs_armature got a tensor that tracks gradients"):
        arm.set_dofs_armature(torch.tensor([0.05, 0.02], dtype=torch.float64, requires_grad=True))
    scene.step()


def state_rollout(scene, arm, method: str, q0: torch.Tensor, horizon: int = 12, mid=None):
    scene.reset()
    getattr(arm, method)(q0)
    loss = 0.0
    for t in range(horizon):
        if t == 0:
            arm.control_dofs_position(torch.tensor([0.3, -0.2], dtype=torch.float64))
        if mid is not None and t == mid:
            arm.set_dofs_position(torch.tensor([0.1], dtype=torch.float64), dofs_idx_local=[0], zero_velocity=False)
        scene.step()
        state = scene.sim.rigid_solver.get_state()
        loss = loss + (state.qpos**2).sum() + 0.1 * (state.dofs_vel**2).sum()
    return loss


@pytest.mark.parametrize("method", ["set_qpos", "set_dofs_position"])
def test_initial_configuration_gradient_matches_fd(arm, method):
    """Stock Genesis tapes neither setter: the initial configuration got no gradient."""
    scene, arm = arm
    q0 = torch.tensor([0.4, -0.3], dtype=torch.float64)
    x = q0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(state_rollout(scene, arm, method, x), x)
    fd = central_fd(lambda y: state_rollout(scene, arm, method, y), q0, eps=1e-6)
    assert grad.abs().max() > 0
    assert_grad_close(grad, fd, rtol=1e-6)


@pytest.mark.plugin_only  # strict mode's report
def test_configuration_set_between_steps(arm):
    """
    Tracked: refused. Untracked: it cuts the gradient of the configuration it overwrote (without the guard: 0.66 relative
    error, silently), and strict mode says the rest is approximate (1.2e-2: the link poses derived from it).
    """
    scene, arm = arm
    scene.reset()
    scene.step()
    with pytest.raises(gs.GenesisException, match="between steps of a differentiable rollout"):
        arm.set_qpos(torch.zeros(2, dtype=torch.float64, requires_grad=True))
    q0 = torch.tensor([0.4, -0.3], dtype=torch.float64)
    x = q0.clone().requires_grad_(True)
    with pytest.warns(GradientBreakWarning, match="overwrote the configuration between steps"):
        (grad,) = torch.autograd.grad(state_rollout(scene, arm, "set_qpos", x, mid=5), x)
    fd = central_fd(lambda y: state_rollout(scene, arm, "set_qpos", y, mid=5), q0, eps=1e-6)
    err = ((grad - fd).abs().max() / fd.abs().max()).item()
    assert err < 5e-2, err


# ------------------------------------------------ inertial properties of the links ------------------------------------

LINKS = [1, 2]  # the two moving links of the arm (link 0 is its fixed world body)
LINK_VALUES = {
    "set_links_mass": lambda n: torch.tensor([1.3, 0.7][:n], dtype=torch.float64),
    "set_links_COM": lambda n: torch.tensor([[0.1, 0.02, -0.01], [0.05, 0.0, 0.03]][:n], dtype=torch.float64),
}


@pytest.fixture(scope="module")
def arms2_links():
    """Two environments, each with its own link inertial properties (`batch_links_info`)."""
    return _two_env_arm(batch_links_info=True)


def _symmetric_inertia(p: torch.Tensor) -> torch.Tensor:
    """Inertia matrices (..., 3, 3) from 6 numbers per link: the diagonal, then the (0, 1), (0, 2), (1, 2) products."""
    rows = [[p[..., 0], p[..., 3], p[..., 4]], [p[..., 3], p[..., 1], p[..., 5]], [p[..., 4], p[..., 5], p[..., 2]]]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def link_rollout(scene, arm, setter, p, links=None, envs_idx=None, horizon=12, change_at=None):
    """A rollout with one link setter called on `p` after the reset (and, with `change_at`, untracked mid-way)."""
    scene.reset()
    arm.set_dofs_kp(torch.tensor(VALUES["set_dofs_kp"], dtype=torch.float64))
    arm.set_dofs_kv(torch.tensor(VALUES["set_dofs_kv"], dtype=torch.float64))
    kwargs = {} if envs_idx is None else {"envs_idx": envs_idx}
    value = _symmetric_inertia(p) if setter == "set_links_inertia" else p
    if setter == "set_mass":
        arm.set_mass(value, **kwargs)
    else:
        getattr(arm, setter)(value, links_idx_local=links, **kwargs)
    mass = torch.tensor([0.9, 0.4], dtype=torch.float64)
    return _drive(scene, arm, horizon, change_at, lambda: arm.set_links_mass(mass, links_idx_local=LINKS, **kwargs))


def link_value(setter: str, n_links: int) -> torch.Tensor:
    if setter == "set_mass":
        return torch.tensor(2.5, dtype=torch.float64)
    if setter == "set_links_inertia":
        # Principal moments and small products of inertia: physical (positive definite) and not diagonal.
        return torch.tensor([[2e-3, 3e-3, 4e-3, 2e-4, -1e-4, 3e-4], [1e-3, 1.5e-3, 2e-3, -1e-4, 2e-4, 1e-4]])[
            :n_links
        ].to(torch.float64)
    return LINK_VALUES[setter](n_links)


def check_link_gradient(scene, arm, setter, p, rtol=1e-6, **kwargs):
    x = p.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(link_rollout(scene, arm, setter, x, **kwargs), x)
    # A relative step of 1e-5: the inertias are ~1e-3, and a smaller one leaves round-off at the 1e-6 level.
    fd = central_fd(lambda y: link_rollout(scene, arm, setter, y, **kwargs), p, eps=1e-5 * p.abs().max().item())
    assert grad.shape == p.shape
    assert grad.abs().max() > 0
    assert_grad_close(grad, fd, rtol=rtol)


@pytest.mark.parametrize("links", [LINKS, [2], [1]], ids=["both", "fore", "upper"])
@pytest.mark.parametrize("setter", ["set_links_mass", "set_links_COM", "set_links_inertia"])
def test_link_parameter_gradient_matches_fd(arm, setter, links):
    scene, arm = arm
    check_link_gradient(scene, arm, setter, link_value(setter, len(links)), links=links)


def test_entity_mass_gradient_matches_fd(arm):
    """`set_mass` writes every link's mass and scales its inertia along: both paths reach the total mass."""
    scene, arm = arm
    check_link_gradient(scene, arm, "set_mass", link_value("set_mass", 0))


def test_solver_level_link_setter(arm):
    scene, arm = arm
    solver = scene.sim.rigid_solver
    p = link_value("set_links_mass", 2)

    def rollout(y):
        scene.reset()
        solver.set_links_mass(y, links_idx=[arm.links[1].idx, arm.links[2].idx])
        arm.set_dofs_velocity(torch.tensor([1.0, -0.7], dtype=torch.float64))
        loss = 0.0
        for _ in range(10):
            scene.step()
            loss = loss + (solver.get_state().qpos ** 2).sum()
        return loss

    x = p.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(rollout(x), x)
    assert_grad_close(grad, central_fd(rollout, p, eps=1e-6), rtol=1e-6)


def test_tracked_link_parameter_between_steps_is_refused(arm):
    scene, arm = arm
    scene.reset()
    scene.step()
    with pytest.raises(gs.GenesisException, match="set_links_mass got a tensor that tracks gradients between steps"):
        arm.set_links_mass(link_value("set_links_mass", 2).requires_grad_(True), links_idx_local=LINKS)


@pytest.mark.plugin_only  # strict mode's report
def test_untracked_link_parameter_between_steps_is_reported(arm):
    """
    In a rollout with tracked inputs, strict mode says the gradient is approximate (the link inertias the next step
    starts from are differentiated with the previous value, 1e-1 relative error here).
    """
    scene, arm = arm
    x = link_value("set_links_mass", 2).requires_grad_(True)
    with pytest.warns(GradientBreakWarning, match="changed an inertial property between steps"):
        link_rollout(scene, arm, "set_links_mass", x, links=LINKS, change_at=6)


def test_inertia_then_entity_mass(arm):
    """`set_mass` scales an inertia set before it: both tracked values get their gradient (I' = I m' / m)."""
    scene, arm = arm
    inertia = link_value("set_links_inertia", 2)
    mass = torch.tensor(2.5, dtype=torch.float64)

    def rollout(p):
        scene.reset()
        # Masses survive a reset, and `set_mass` scales the inertia by the ratio to them: the same ones every time.
        arm.set_links_mass(torch.tensor([1.0, 0.5], dtype=torch.float64), links_idx_local=LINKS)
        arm.set_links_inertia(_symmetric_inertia(p[:12].reshape(2, 6)), links_idx_local=LINKS)
        arm.set_mass(p[12])
        arm.set_dofs_velocity(torch.tensor([1.0, -0.7], dtype=torch.float64))
        loss = 0.0
        for _ in range(10):
            scene.step()
            loss = loss + (scene.sim.rigid_solver.get_state().qpos ** 2).sum()
        return loss

    p = torch.cat([inertia.reshape(-1), mass[None]])
    x = p.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(rollout(x), x)
    # Per coordinate steps: inertias are ~1e-3, the mass ~1.
    fd = torch.stack([central_fd(rollout, p, coords=[i], eps=1e-5 * p[i].abs().item())[0] for i in range(13)])
    assert_grad_close(grad[:12], fd[:12], rtol=1e-6)
    assert_grad_close(grad[12:], fd[12:], rtol=1e-6)


@pytest.mark.parametrize(
    "setter, links, envs_idx, per_env",
    [
        ("set_links_mass", LINKS, None, False),
        ("set_links_mass", LINKS, None, True),
        ("set_links_mass", [2], [1], True),
        ("set_links_COM", [1], None, True),
        ("set_links_inertia", LINKS, [0], True),
        ("set_mass", None, None, True),
        ("set_mass", None, [1], False),
    ],
    ids=[
        "mass-shared",
        "mass-per_env",
        "mass-fore-env1",
        "com-per_env",
        "inertia-env0",
        "set_mass-per_env",
        "set_mass-env1",
    ],
)
def test_batched_link_parameters(arms2_links, setter, links, envs_idx, per_env):
    """Shared (one value for the selected environments) or per-environment values, any subset of links and envs."""
    scene, arm = arms2_links
    p = link_value(setter, len(links) if links is not None else 0)
    if per_env:
        n_envs = 2 if envs_idx is None else len(envs_idx)
        p = torch.stack([p * (1.0 - 0.2 * i) for i in range(n_envs)])
    check_link_gradient(scene, arm, setter, p, links=links, envs_idx=envs_idx)


def test_link_gradients_do_not_leak_between_rollouts(arm):
    scene, arm = arm
    p = link_value("set_links_COM", 2)
    grads = []
    for _ in range(2):
        x = p.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(link_rollout(scene, arm, "set_links_COM", x, links=LINKS), x)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=0)


@pytest.fixture(scope="module")
def contact_scene():
    """The arm, a plane and a box: collision pairs exist, so contact constraint rows can be active."""
    return make_scene(
        gs.morphs.MJCF(file=DIAG_ARM), gs.morphs.Plane(), gs.morphs.Box(size=(0.2, 0.2, 0.2), pos=(1.0, 0.0, 0.2))
    )


@pytest.mark.parametrize("setter", ["set_links_mass", "set_links_inertia", "set_links_COM", "set_mass"])
def test_link_parameters_with_contacts_are_refused(contact_scene, setter):
    scene, (arm, _, _) = contact_scene
    scene.reset()
    value = link_value(setter, 1)
    value = _symmetric_inertia(value) if setter == "set_links_inertia" else value
    with pytest.raises(gs.GenesisException, match=r"tracks gradients in a scene with collisions.*inverse weights"):
        if setter == "set_mass":
            arm.set_mass(value.requires_grad_(True))
        else:
            getattr(arm, setter)(value.requires_grad_(True), links_idx_local=[2])
    scene.step()


def _tracked(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


REFUSED_CALLS = {
    "solver.set_geom_friction_torsional": (
        lambda arm, solver: solver.set_geom_friction_torsional(_tracked(0.1)[0], 0),
        "torsional and rolling friction are off",
    ),
    "solver.set_geoms_friction_rolling": (
        lambda arm, solver: solver.set_geoms_friction_rolling(_tracked(0.01), geoms_idx=[0]),
        "torsional and rolling friction are off",
    ),
    "entity.set_dofs_frictionloss": (
        lambda arm, solver: arm.set_dofs_frictionloss(_tracked(0.1, 0.1)),
        "a friction loss acts through",
    ),
    "solver.set_dofs_limit": (
        lambda arm, solver: solver.set_dofs_limit(_tracked(-1.0, -1.0), torch.tensor([1.0, 1.0])),
        "joint limits act through",
    ),
    "entity.set_dofs_limit": (
        lambda arm, solver: arm.set_dofs_limit(torch.tensor([-1.0, -1.0]), _tracked(1.0, 1.0)),
        "joint limits act through",
    ),
    "solver.set_global_sol_params": (
        lambda arm, solver: solver.set_global_sol_params(_tracked(0.02, 1.0, 0.9, 0.95, 0.001, 0.5, 2.0)),
        "solver parameters set the impedance",
    ),
}


@pytest.mark.parametrize("call", REFUSED_CALLS)
def test_unsupported_parameter_is_refused(arm, call):
    """A tracked input of a parameter without gradient support is refused at the call, naming what and why."""
    scene, arm = arm
    scene.reset()
    refused, why = REFUSED_CALLS[call]
    with pytest.raises(gs.GenesisException, match=rf"got a tensor that tracks gradients.*not supported: {why}"):
        refused(arm, scene.sim.rigid_solver)


def test_link_mass_with_frictionloss_is_refused(arm):
    """Dof friction losses add constraint rows, regularized with the inverse weights as contacts are."""
    scene, arm = arm
    scene.reset()
    arm.set_dofs_frictionloss(torch.tensor([0.1, 0.0], dtype=torch.float64))
    try:
        with pytest.raises(
            gs.GenesisException, match="set_links_mass got a tensor .* a scene with dof friction losses"
        ):
            arm.set_links_mass(_tracked(1.0), links_idx_local=[1])
    finally:
        arm.set_dofs_frictionloss(torch.zeros(2, dtype=torch.float64))


def test_no_gradient_storage_without_requires_grad():
    """The off-grad path: no gradient storage, and the setters write the value of a tracked tensor as stock does."""
    scene, arm = build_diag_arm(requires_grad=False)
    solver = scene.sim.rigid_solver
    assert not solver.dyn_info.links.inertial_mass.has_grad()
    assert not solver.dyn_info.dofs.damping.has_grad()
    mass = torch.tensor([1.2, 0.6], dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # strict mode: the scene is not differentiable
        arm.set_links_mass(mass, links_idx_local=LINKS)
    torch.testing.assert_close(arm.get_links_mass(links_idx_local=LINKS), mass.detach())
    scene.step()
