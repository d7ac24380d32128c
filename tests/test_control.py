"""Differentiable PD control targets (entities and solver) and tape hygiene, checked against finite differences."""

import genesis as gs
import pytest
import torch
from helpers import ASSETS, PLANAR_CAR, UPSTREAM_MODE, assert_grad_close, central_fd, make_scene, stock_genesis

T = 6
STEER = [3, 4]


def _morphs():
    return (
        gs.morphs.MJCF(file=PLANAR_CAR),
        gs.morphs.MJCF(file=str(ASSETS / "arm.xml")),
        gs.morphs.Box(size=(0.2, 0.3, 0.1), pos=(-2.0, 0.0, 1.0)),
    )


def _setup_box(box, n_envs):
    # A free body under PD on all six dofs, rotational ones included.
    box.set_dofs_kp(torch.full((6,), 30.0))
    box.set_dofs_kv(torch.full((6,), 3.0))


@pytest.fixture(scope="module")
def single():
    scene, entities = make_scene(*_morphs())
    _setup_box(entities[2], 0)
    return scene, *entities


@pytest.fixture(scope="module")
def batched():
    scene, entities = make_scene(*_morphs(), n_envs=3)
    _setup_box(entities[2], 3)
    return scene, *entities


@pytest.fixture(scope="module", params=["single", "batched"])
def any_scene(request):
    return request.getfixturevalue(request.param)


def observe(scene, weight: float = 1.0) -> torch.Tensor:
    """A loss that every dof of every entity reaches: weighted squares of the solver's qpos and dofs velocity."""
    solver = scene.sim.rigid_solver
    qpos, vel = solver.get_qpos(), solver.get_dofs_velocity()
    w = torch.linspace(0.5, 1.5, qpos.shape[-1], dtype=qpos.dtype)
    return weight * ((qpos * w) ** 2).sum() + 0.1 * (vel**2).sum()


def observe_state(scene) -> torch.Tensor:
    """The same kind of loss through `get_state()`, which stock Genesis already differentiates."""
    state = scene.sim.rigid_solver.get_state()
    return (state.qpos**2).sum() + 0.1 * (state.dofs_vel**2).sum()


def rollout(scene, apply, x: torch.Tensor, horizon: int = T, loss_fn=observe) -> torch.Tensor:
    scene.reset()
    loss = 0.0
    for t in range(horizon):
        apply(t, x)
        scene.step()
        loss = loss + loss_fn(scene)
    return loss


def check_fd(scene, apply, x, coords=None, horizon=T, rtol=1e-6) -> torch.Tensor:
    """Assert autograd == central finite differences on the given coordinates of `x`; return the autograd gradient."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(rollout(scene, apply, x, horizon), x)
    coords = list(range(x.numel())) if coords is None else coords
    # The loss sums large terms: a wider step keeps round-off below the O(eps^2) truncation error.
    fd = central_fd(lambda y: rollout(scene, apply, y, horizon), x, coords, eps=1e-4)
    assert_grad_close(grad.reshape(-1)[coords], fd, rtol=rtol)
    return grad


def _targets(n_envs, *shape, scale=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch = (n_envs,) if n_envs else ()
    return scale * (2 * torch.rand((T, *batch, *shape), generator=gen, dtype=torch.float64) - 1)


@pytest.mark.parametrize("method", ["position", "velocity", "position_velocity"])
def test_entity_pd_targets(any_scene, method):
    scene, car, arm, box = any_scene

    def apply(t, x):
        if method == "position_velocity":
            car.control_dofs_position_velocity(x[t, ..., :2], x[t, ..., 2:], dofs_idx_local=STEER)
        else:
            getattr(car, f"control_dofs_{method}")(x[t], dofs_idx_local=STEER)

    x = _targets(scene.n_envs, 4 if method == "position_velocity" else 2)
    grad = check_fd(scene, apply, x, coords=[0, 1, 2, 3, x.numel() - 1])
    assert grad.abs().max() > 0


def test_dofs_and_envs_subsets(batched):
    scene, car, arm, box = batched

    def apply(t, x):
        car.control_dofs_position(x[t], dofs_idx_local=[4], envs_idx=[0, 2])

    x = _targets(0, 2, 1)
    check_fd(scene, apply, x, coords=[0, 1, 4, 11])


def test_several_calls_per_step_on_several_entities(any_scene):
    scene, car, arm, box = any_scene
    n = scene.n_envs

    def apply(t, x):
        car.control_dofs_position(x[t, ..., 0:1], dofs_idx_local=[3])
        car.control_dofs_velocity(x[t, ..., 1:2], dofs_idx_local=[4])
        arm.control_dofs_position_velocity(x[t, ..., 2:4], x[t, ..., 4:6])
        box.control_dofs_position(x[t, ..., 6:12])

    x = _targets(n, 12)
    coords = [0, 1, 2, 4, 6, 9, 11] if not n else [0, 13, 26, 28, 30, 33]
    check_fd(scene, apply, x, coords=coords)


def test_free_joint_rotational_targets(single):
    scene, car, arm, box = single

    def apply(t, x):
        box.control_dofs_position(x[t], dofs_idx_local=[3, 4, 5])

    grad = check_fd(scene, apply, _targets(0, 3, scale=0.5), coords=[0, 1, 2, 15, 17])
    assert grad[0].abs().max() > 0


def test_target_persists_until_overwritten(single):
    """A target set once drives every later step: its gradient sums over all of them."""
    scene, car, arm, box = single

    def apply(t, x):
        if t == 0:
            car.control_dofs_position(x, dofs_idx_local=STEER)

    check_fd(scene, apply, torch.tensor([0.3, -0.2], dtype=torch.float64), horizon=10)


def test_same_tensor_in_two_calls_sums(single):
    scene, car, arm, box = single

    def apply(t, x):
        car.control_dofs_position(x[t, :1], dofs_idx_local=[3])
        arm.control_dofs_position(x[t], dofs_idx_local=[0, 1])

    check_fd(scene, apply, _targets(0, 2), coords=[0, 1, 10])


def test_target_broadcast_over_envs(batched):
    scene, car, arm, box = batched

    def apply(t, x):
        car.control_dofs_position(x[t], dofs_idx_local=STEER)  # (2,) for 3 envs

    check_fd(scene, apply, _targets(0, 2), coords=[0, 1, 7])


def test_solver_level_global_dofs(any_scene):
    """The solver's control methods take global dof indices; stock Genesis does not tape them at all."""
    scene, car, arm, box = any_scene
    solver = scene.sim.rigid_solver
    dofs = [car.dof_start + 4, arm.dof_start, arm.dof_start + 1, box.dof_start + 3]

    def apply(t, x):
        solver.control_dofs_position(x[t, ..., :4], dofs_idx=dofs)
        solver.control_dofs_velocity(x[t, ..., 4:5], dofs_idx=[car.dof_start + 3])

    x = _targets(scene.n_envs, 5)
    check_fd(scene, apply, x, coords=[0, 1, 2, 3, 4, x.numel() - 1])


def test_solver_level_position_velocity(single):
    scene, car, arm, box = single
    solver = scene.sim.rigid_solver

    def apply(t, x):
        solver.control_dofs_position_velocity(x[t, :2], x[t, 2:], dofs_idx=[arm.dof_start, arm.dof_start + 1])

    check_fd(scene, apply, _targets(0, 4), coords=[0, 1, 2, 3])


def test_force_range_saturation(single):
    """A clamped actuator passes no gradient, and finite differences agree."""
    scene, car, arm, box = single
    car.set_dofs_force_range(torch.tensor([-0.5, -0.5]), torch.tensor([0.5, 0.5]), dofs_idx_local=STEER)
    try:

        def apply(t, x):
            car.control_dofs_position(x[t], dofs_idx_local=STEER)

        x = torch.zeros((T, 2), dtype=torch.float64)
        x[:, 0] = 2.5  # saturates the left hinge at every step; the right one stays in range
        x[:, 1] = 0.01
        grad = check_fd(scene, apply, x, coords=[0, 1, 2, 3])
        assert grad[:, 0].abs().max() == 0.0
        assert grad[:, 1].abs().max() > 0.0
    finally:
        car.set_dofs_force_range(torch.tensor([-3.0, -3.0]) * 20, torch.tensor([3.0, 3.0]) * 20, dofs_idx_local=STEER)


def test_substeps(request):
    scene, (car,) = make_scene(gs.morphs.MJCF(file=PLANAR_CAR), substeps=3, dt=0.015)

    def apply(t, x):
        car.control_dofs_position(x[t], dofs_idx_local=STEER)

    check_fd(scene, apply, _targets(0, 2), coords=[0, 1, 5, 11])


# ---------------------------------------------------------------------------------------------------------------------
# Tape hygiene: untracked calls after tracked ones must not leak their gradient into the tracked inputs.
# ---------------------------------------------------------------------------------------------------------------------


def _tracked_then_untracked(car, method):
    def apply(t, x):
        if t < 10:
            getattr(car, method)(x[t], dofs_idx_local=STEER)
        else:
            getattr(car, method)(torch.tensor([0.2, -0.1], dtype=torch.float64), dofs_idx_local=STEER)

    return apply


@pytest.mark.parametrize("method", ["control_dofs_force", "control_dofs_position", "control_dofs_velocity"])
def test_untracked_steps_after_tracked_ones(single, method):
    scene, car, arm, box = single
    x = _targets(0, 2, seed=1).repeat(4, 1)[:10]
    check_fd(scene, _tracked_then_untracked(car, method), x, coords=[0, 9, 18, 19], horizon=20)


def test_stock_force_gradient_is_stale(single):
    """The stock bug the plugin fixes: the step-9 force input receives the gradient of steps 10-19."""
    if UPSTREAM_MODE:
        pytest.skip("the upstream patch fixes stock Genesis itself")
    scene, car, arm, box = single
    apply = _tracked_then_untracked(car, "control_dofs_force")
    x = _targets(0, 2, seed=1).repeat(4, 1)[:10].requires_grad_(True)
    fd = central_fd(lambda y: rollout(scene, apply, y, 20, observe_state), x, [18], eps=1e-4)
    with stock_genesis():
        (stock,) = torch.autograd.grad(rollout(scene, apply, x, 20, observe_state), x)
    (fixed,) = torch.autograd.grad(rollout(scene, apply, x, 20, observe_state), x)
    assert_grad_close(fixed.reshape(-1)[[18]], fd)
    assert abs(stock.reshape(-1)[18] - fd[0]) > 0.1 * abs(fd[0])


@pytest.mark.plugin_only
def test_control_split_cache_is_bounded():
    """A solver-level control call's split over the entities is cached per index set, 64 sets at most: a policy that
    draws new index sets at every call does not grow it without bound."""
    from genesis_grad_patch._impl import control, records

    class Entity:
        dof_start, n_dofs = 0, 8

    class Solver:
        entities = [Entity()]

    solver = Solver()
    for i in range(200):
        dofs = (i % 8, (i // 8) % 8, (i // 64) % 8)
        split = control._control_split(solver, dofs)
        assert split[0][2] == list(dofs)
    assert 0 < len(records.of_solver(solver).control_split) <= 64
