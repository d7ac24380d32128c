"""
Devices and broadcasting of the control and getter paths, in both modes.

- A per-environment input of shape (n_envs,), which the control writers accept through Genesis's `broadcast_tensor`,
  gets the gradient `broadcast_tensor`'s own rules give it (it crashed in backward with a raw `broadcast_shapes` error).
- Every tensor the solver-level control routing and the differentiable getters create is created on `gs.device`, and a
  solver-level control call with host indices makes no device-to-host copy. On a CPU machine a misplaced tensor is on
  the right device by chance, so the test checks that each factory call names its device, and that nothing is read back
  with `.tolist()`, `.item()`, `.cpu()` or `.numpy()`.
"""

import genesis as gs
import pytest
import torch
from helpers import DIAG_ARM, assert_grad_close, make_scene
from torch.overrides import TorchFunctionMode

N_ENVS = 3  # differs from the arm's 2 dofs, so that a (N_ENVS,) input can only mean one value per environment
T = 5


@pytest.fixture(scope="module")
def batched():
    scene, (arm,) = make_scene(gs.morphs.MJCF(file=DIAG_ARM), n_envs=N_ENVS)
    return scene, arm


def _rollout(scene, arm, method: str, per_env: torch.Tensor) -> torch.Tensor:
    scene.reset()
    for _ in range(T):
        getattr(arm, method)(per_env)
        scene.step()
    return (scene.sim.rigid_solver.get_state().qpos * torch.tensor([1.0, -0.5])).sum()


@pytest.mark.parametrize("method", ["control_dofs_force", "control_dofs_position"])
def test_per_env_input_gets_broadcast_tensor_gradient(batched, method):
    # `broadcast_tensor` takes a (N_ENVS,) input along the environments: its gradient must be that of the equivalent
    # full (N_ENVS, n_dofs) input, summed over the dofs. Compared with the full input's own gradient rather than with
    # finite differences, so that the test pins the broadcasting rule alone.
    scene, arm = batched
    per_env = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    full = per_env.detach()[:, None].expand(N_ENVS, 2).clone().requires_grad_()

    _rollout(scene, arm, method, per_env).backward()
    _rollout(scene, arm, method, full).backward()
    assert per_env.grad is not None and per_env.grad.shape == per_env.shape
    assert_grad_close(per_env.grad, full.grad.sum(dim=1), rtol=1e-5)  # two rollouts: ~2e-7 run to run


class _DeviceAudit(TorchFunctionMode):
    """Records the factory calls that do not name their device, and every read back to the host."""

    FACTORIES = {torch.arange, torch.tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.as_tensor}
    READBACKS = {"tolist", "item", "cpu", "numpy"}

    def __init__(self):
        super().__init__()
        self.unplaced: list[str] = []
        self.readbacks: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FACTORIES and "device" not in kwargs:
            # as_tensor of a tensor keeps its device; a factory without a device lands on the default one, the CPU.
            if not (func is torch.as_tensor and args and isinstance(args[0], torch.Tensor)):
                self.unplaced.append(func.__name__)
        name = getattr(func, "__name__", "")
        if name in self.READBACKS or (name == "to" and "cpu" in map(str, (*args[1:], *kwargs.values()))):
            self.readbacks.append(name)
        return func(*args, **kwargs)


def test_solver_control_routing_stays_on_device(batched, monkeypatch):
    scene, arm = batched
    solver = scene.sim.rigid_solver
    calls = []
    # The entity call itself is Genesis's (its own sanitizer reads indices back): only the routing is audited here.
    monkeypatch.setattr(arm, "control_dofs_position", lambda **kwargs: calls.append(kwargs))
    target = torch.zeros((N_ENVS, 2), requires_grad=True)
    dofs_idx = [arm.dof_start + 1, arm.dof_start]
    solver.control_dofs_position(target, dofs_idx)  # the first call for an index set computes the split
    with _DeviceAudit() as audit:
        solver.control_dofs_position(target + 1.0, dofs_idx)
    assert len(calls) == 2 and calls[1]["dofs_idx_local"] == [1, 0]
    assert calls[1]["position"].requires_grad
    assert audit.unplaced == [] and audit.readbacks == []


def test_getters_stay_on_device(batched):
    scene, arm = batched
    scene.reset()
    # A tracked input: the getters then build the graph (a rollout that tracks nothing reads stock values).
    arm.control_dofs_position(torch.zeros(N_ENVS, 2, dtype=torch.float64, requires_grad=True))
    scene.step()
    with _DeviceAudit() as audit:
        values = [
            arm.get_qpos(),
            arm.get_dofs_position(dofs_idx_local=[1, 0]),
            arm.get_dofs_velocity(),
            arm.get_links_pos(links_idx_local=[1, 0]),
            arm.get_links_quat(),
        ]
    assert all(value.requires_grad and value.device == torch.device(gs.device) for value in values)
    assert audit.unplaced == [], f"tensors created without a device: {audit.unplaced}"
