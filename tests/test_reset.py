"""
`scene.reset()` and the pending tape: calls taped for a step that never came are dropped (stock Genesis applied them at
the first step of the next rollout in grad mode only), the tracked ones reported; a tracked parameter given the same
index twice is refused.
"""

import warnings

import genesis as gs
import pytest
import torch
from helpers import UPSTREAM_MODE, build_diag_arm, stock_genesis

from genesis_grad_patch import strict


@pytest.fixture(scope="module")
def arm():
    return build_diag_arm()


def _arm_loss(scene, arm, kp=None, steps: int = 5):
    if kp is not None:
        arm.set_dofs_kp(kp)
    for _ in range(steps):
        arm.control_dofs_position(torch.tensor([0.3, -0.2], dtype=torch.float64))
        scene.step()
    return arm.get_dofs_position().sum()


def test_reset_drops_a_pending_velocity(arm):
    """A velocity set before `scene.reset()` is not applied at the first step after it, in grad mode as under no_grad
    (stock Genesis replays it from its pending tape in grad mode only)."""
    scene, arm_ = arm
    scene.reset()
    with torch.no_grad():
        clean = _arm_loss(scene, arm_).item()
    scene.reset()
    arm_.set_dofs_velocity(torch.tensor([3.0, -2.0], dtype=torch.float64))
    scene.reset()
    assert _arm_loss(scene, arm_).item() == pytest.approx(clean, abs=1e-12)


@pytest.mark.plugin_only
def test_reset_reports_a_dropped_tracked_input(arm):
    scene, arm_ = arm
    scene.reset()
    velocity = torch.tensor([3.0, -2.0], dtype=torch.float64, requires_grad=True)
    arm_.set_dofs_velocity(velocity)
    with pytest.warns(strict.GradientBreakWarning, match=r"dropped tracked values given to set_dofs_velocity"):
        scene.reset()
    kp = torch.tensor([50.0, 60.0], dtype=torch.float64, requires_grad=True)
    arm_.set_dofs_kp(kp)
    with pytest.warns(strict.GradientBreakWarning, match=r"set_dofs_kp"):
        scene.reset()
    assert strict.CUT_AT_RESET in [e.kind for e in strict.events()]
    arm_.set_dofs_kp(torch.tensor([100.0, 100.0], dtype=torch.float64))  # the fixture's other tests: default gains
    scene.reset()


@pytest.mark.plugin_only
def test_reset_after_backward_says_nothing(arm):
    scene, arm_ = arm
    scene.reset()
    kp = torch.tensor([100.0, 100.0], dtype=torch.float64, requires_grad=True)
    _arm_loss(scene, arm_, kp).backward()
    assert kp.grad is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error", strict.GradientBreakWarning)
        scene.reset()


def test_reset_clears_a_failed_stock_setter(arm):
    """A stock rollout whose taped setter raised, then the plugin installed: the next rollout starts clean."""
    if UPSTREAM_MODE:
        pytest.skip("the stock path does not exist against the patched tree")
    scene, arm_ = arm
    scene.reset()
    with torch.no_grad():
        clean = _arm_loss(scene, arm_).item()
    with stock_genesis():
        scene.reset()
        with pytest.raises(gs.GenesisException):
            arm_.control_dofs_velocity(torch.zeros(5, dtype=torch.float64))  # wrong length: taped, then raises
    scene.reset()
    assert _arm_loss(scene, arm_).item() == pytest.approx(clean, abs=1e-12)


@pytest.mark.parametrize(
    "call",
    [
        lambda arm_, v: arm_.set_dofs_kp(v, dofs_idx_local=[0, 0]),
        lambda arm_, v: arm_.set_dofs_damping(v, dofs_idx_local=[1, 1]),
    ],
)
def test_parameter_given_twice_is_refused(arm, call):
    scene, arm_ = arm
    scene.reset()
    value = torch.tensor([10.0, 20.0], dtype=torch.float64, requires_grad=True)
    with pytest.raises(gs.GenesisException, match="same dof index more than once"):
        call(arm_, value)
    scene.reset()


@pytest.mark.plugin_only
def test_state_read_before_the_first_step_is_reported_at_backward(arm):
    """A tracked configuration read back and differentiated before any step taped it: reported, not a silent None."""
    scene, arm_ = arm
    scene.reset()
    q0 = torch.tensor([0.2, -0.1], dtype=torch.float64, requires_grad=True)
    arm_.set_qpos(q0)
    loss = arm_.get_qpos().sum()
    with pytest.warns(strict.GradientBreakWarning, match=r"before any step"):
        loss.backward()
    with pytest.warns(strict.GradientBreakWarning, match="dropped tracked values given to set_qpos"):
        scene.reset()  # the configuration was never stepped


@pytest.mark.plugin_only
def test_state_read_before_a_step_that_came_says_nothing(arm):
    scene, arm_ = arm
    scene.reset()
    q0 = torch.tensor([0.2, -0.1], dtype=torch.float64, requires_grad=True)
    arm_.set_qpos(q0)
    loss = arm_.get_qpos().sum()
    scene.step()
    loss = loss + arm_.get_qpos().sum()
    with warnings.catch_warnings():
        warnings.simplefilter("error", strict.GradientBreakWarning)
        loss.backward()
    assert q0.grad is not None
    scene.reset()
