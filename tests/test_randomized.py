"""Property test: random gains, dof subsets, horizons, batch sizes and PD modes all match finite differences."""

import genesis as gs
import pytest
import torch
from helpers import ASSETS, PLANAR_CAR, assert_grad_close, central_fd, make_scene
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def scenes():
    built = {}
    for n_envs in (0, 2):
        scene, (car, arm) = make_scene(
            gs.morphs.MJCF(file=PLANAR_CAR), gs.morphs.MJCF(file=str(ASSETS / "arm.xml")), n_envs=n_envs
        )
        built[n_envs] = (scene, car, arm)
    return built


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_envs=st.sampled_from([0, 2]),
    method=st.sampled_from(["position", "velocity", "position_velocity"]),
    kp=st.floats(5.0, 60.0),
    kv=st.floats(0.5, 6.0),
    subset=st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True),
    horizon=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_random_pd_rollouts_match_fd(scenes, n_envs, method, kp, kv, subset, horizon, seed):
    scene, car, arm = scenes[n_envs]
    actuated = [car.dof_start + 3, car.dof_start + 4, arm.dof_start, arm.dof_start + 1]
    solver = scene.sim.rigid_solver
    solver.set_dofs_kp(torch.full((4,), kp), dofs_idx=actuated)
    solver.set_dofs_kv(torch.full((4,), kv), dofs_idx=actuated)
    dofs = [actuated[i] for i in subset]
    n_args = 2 if method == "position_velocity" else 1

    def rollout(x):
        scene.reset()
        loss = 0.0
        for t in range(horizon):
            args = x[t].unbind(0)[:n_args] if n_args == 2 else (x[t, 0],)
            getattr(solver, f"control_dofs_{method}")(*args, dofs_idx=dofs)
            scene.step()
            loss = loss + (solver.get_qpos() ** 2).sum() + 0.1 * (solver.get_dofs_velocity() ** 2).sum()
        return loss

    batch = (n_envs,) if n_envs else ()
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand((horizon, 2, *batch, len(dofs)), generator=gen, dtype=torch.float64) - 0.5).requires_grad_()
    (grad,) = torch.autograd.grad(rollout(x), x)
    coords = sorted({0, x.numel() - 1, int(torch.randint(x.numel(), (1,), generator=gen))})
    if n_args == 1:
        # Only the first of the two rows is used as a target: its coordinates are the ones to probe.
        coords = sorted({0, (horizon - 1) * x[0].numel()})
    fd = central_fd(rollout, x, coords, eps=1e-4)
    assert_grad_close(grad.reshape(-1)[coords], fd, rtol=1e-6)
    assert grad.abs().max() > 0
