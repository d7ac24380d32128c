"""
The failed patterns of the report (shared/reference/pytorch-conversion-report.ko.md), written as the report wrote them.

Each test trains nothing: it checks that d loss / d MLP parameters exists, matches central finite differences, and
that the same code on stock Genesis (plugin uninstalled) breaks the chain, so that the test catches a regression.
"""

import genesis as gs
import numpy as np
import pytest
import torch
from helpers import PLANAR_CAR, UPSTREAM_MODE, assert_grad_close, central_differences, make_scene, stock_genesis

HORIZON = 6
STEER = [3, 4]  # local dofs of the two steering hinges (after x, y, yaw)
N_REF = 50
REFERENCE = {
    "pos_x": np.linspace(0.0, 2.0, N_REF),
    "pos_y": np.full(N_REF, 0.2),
    "yaw": np.full(N_REF, 0.05),
    "speed": np.full(N_REF, 1.0),
}
# The MLP parameters probed by finite differences: (parameter index, flat index).
PROBES = [(0, 0), (0, 5), (1, 3), (2, 2), (3, 0)]


@pytest.fixture(scope="module")
def car_scene():
    scene, (car,) = make_scene(gs.morphs.MJCF(file=PLANAR_CAR))
    return scene, car


def from_torch(tensor):
    """The report's conversion: `gs.from_torch` where it exists (plugin compat), a no-op on Genesis 1.x otherwise."""
    convert = getattr(gs, "from_torch", None)
    return tensor if convert is None else convert(tensor)


def make_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(torch.float64)


def compute_error_state_torch(g_pos_x, g_pos_y, g_heading, g_speed, reference, ref_idx):
    """The report's section 2.4, verbatim but for the lines it elided."""
    device = g_pos_x.device
    ref_x = torch.tensor(reference["pos_x"][ref_idx], device=device)
    ref_y = torch.tensor(reference["pos_y"][ref_idx], device=device)
    ref_yaw = torch.tensor(reference["yaw"][ref_idx], device=device)
    ref_speed = torch.tensor(reference["speed"][ref_idx], device=device)
    dx = g_pos_x - ref_x
    dy = g_pos_y - ref_y
    e_lat = dy * torch.cos(ref_yaw) - dx * torch.sin(ref_yaw)
    e_head = g_heading - ref_yaw
    e_speed = g_speed - ref_speed
    return e_lat, e_head, e_speed


def read_error_state(car, step):
    qpos = car.get_qpos()
    speed = car.get_dofs_velocity()[0]
    ref_idx = min(step, N_REF - 1)
    return compute_error_state_torch(qpos[0], qpos[1], qpos[2], speed, REFERENCE, ref_idx)


def rollout(scene, car, model, pattern: str) -> torch.Tensor:
    scene.reset()
    car.set_dofs_velocity(torch.tensor([1.0, 0.0, 0.0]), dofs_idx_local=[0, 1, 2])
    loss = 0.0
    for step in range(HORIZON):
        if pattern == "2.4":
            state = torch.stack(read_error_state(car, step))
        else:
            # Before 2.4 the MLP input carried no gradient, only the control path did. A constant input keeps finite
            # differences comparable: a state-dependent but detached input would be a path FD sees and autograd not.
            state = torch.tensor([0.2, 0.05, step / HORIZON], dtype=torch.float64)
        new_steer = model(state)[0]

        if pattern == "2.1":
            steer_gs = from_torch(new_steer.unsqueeze(0))
            car.control_dofs_position(position=steer_gs, dofs_idx_local=STEER)
        elif pattern == "2.2":
            steer_gs = from_torch(new_steer.unsqueeze(0))
            car.control_dofs_position(
                position=from_torch(torch.stack([steer_gs[0], steer_gs[0]])), dofs_idx_local=STEER
            )
        else:  # 2.3 and 2.4
            steer_cmd = new_steer * 0.8
            steer_cmds_torch = torch.stack([steer_cmd, steer_cmd])
            steer_cmds_gs = from_torch(steer_cmds_torch)
            car.control_dofs_position(position=steer_cmds_gs, dofs_idx_local=STEER)

        scene.step()
        e_lat, e_head, _ = read_error_state(car, step + 1)
        loss = loss + e_lat**2 + e_head**2
    return loss


def params_fd(model, loss_fn, probes, eps=1e-6) -> torch.Tensor:
    """Central differences of the loss along the probed (parameter, flat index) coordinates of the model."""
    params = list(model.parameters())
    grads = [central_differences(lambda: loss_fn().item(), params[i_p], (i_flat,), eps)[0] for i_p, i_flat in probes]
    return torch.tensor(grads, dtype=torch.float64)


def check_pattern(scene, car, pattern):
    model = make_mlp()
    loss = rollout(scene, car, model, pattern)
    assert loss.requires_grad, "the loss is cut from the MLP: the report's break"
    loss.backward()
    params = list(model.parameters())
    autograd = torch.stack([params[i_p].grad.view(-1)[i_flat] for i_p, i_flat in PROBES])
    assert autograd.abs().max() > 1e-8, "the gradient reaching the MLP is zero"
    fd = params_fd(model, lambda: rollout(scene, car, model, pattern), PROBES)
    assert_grad_close(autograd, fd, rtol=1e-6)

    if not UPSTREAM_MODE:
        with stock_genesis():
            loss = rollout(scene, car, make_mlp(), pattern)
            assert not loss.requires_grad, "stock Genesis was expected to break the chain"


@pytest.mark.parametrize("pattern", ["2.1", "2.2", "2.3", "2.4"])
def test_report_pattern(car_scene, pattern):
    check_pattern(*car_scene, pattern)


def test_report_3_1_qpos_requires_grad_after_step(car_scene):
    scene, car = car_scene
    model = make_mlp()

    def run(model):
        scene.reset()
        new_steer = model(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64))[0]
        steer_gs = from_torch(new_steer.unsqueeze(0))
        assert steer_gs.requires_grad or not torch.is_grad_enabled()
        car.control_dofs_position(position=steer_gs, dofs_idx_local=STEER)
        for _ in range(HORIZON):
            scene.step()
        return scene.sim.rigid_solver.get_qpos()

    qpos = run(model)
    assert qpos.requires_grad
    (qpos[2] + qpos[1] ** 2).backward()
    params = list(model.parameters())
    autograd = torch.stack([params[i_p].grad.view(-1)[i_flat] for i_p, i_flat in PROBES])
    fd = params_fd(model, lambda: (lambda q: q[2] + q[1] ** 2)(run(model)), PROBES)
    assert_grad_close(autograd, fd, rtol=1e-6)

    if not UPSTREAM_MODE:
        with stock_genesis():
            assert not run(make_mlp()).requires_grad
