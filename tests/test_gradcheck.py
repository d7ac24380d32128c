"""Rollout gradcheck: passes on a correct rollout, fails on a deliberately wrong gradient."""

import json
import sys
import types

import pytest
import torch
from helpers import build_diag_arm

import genesis_grad_patch as ggp
from genesis_grad.cli import COMMANDS, build_parser
from genesis_grad_patch.gradcheck import GradcheckResult
from genesis_grad_patch.strict import GradientBreakWarning

pytestmark = pytest.mark.plugin_only

HORIZON = 5


@pytest.fixture(scope="module")
def arm_scene():
    return build_diag_arm(requires_grad=True)


class DoubleGrad(torch.autograd.Function):
    """Identity whose backward doubles the gradient: a deliberately wrong gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def make_rollout(scene, arm, wrong: bool = False, reset: bool = True):
    def rollout(targets: torch.Tensor) -> torch.Tensor:
        if reset:
            scene.reset()
        loss = 0.0
        for t in range(HORIZON):
            target = targets[t]
            arm.control_dofs_position(DoubleGrad.apply(target) if wrong else target)
            scene.step()
            q = arm.get_dofs_position()
            loss = loss + (q[0] - 0.3) ** 2 + q[1] ** 2 + 0.1 * q[0] * q[1]
        return loss

    return rollout


def targets() -> torch.Tensor:
    return torch.linspace(-0.5, 0.7, 2 * HORIZON, dtype=torch.float64).reshape(HORIZON, 2)


def test_gradcheck_passes_on_correct_rollout(arm_scene):
    result = ggp.gradcheck(make_rollout(*arm_scene), targets(), n_probe=4, seed=1)
    assert isinstance(result, GradcheckResult)
    assert result.passed and bool(result), str(result)
    assert len(result.probes) == 4 and len({(p.input_index, p.flat_index) for p in result.probes}) == 4
    assert result.worst_rel_error < 1e-5
    assert all(abs(p.autograd) > 1e-8 for p in result.probes)
    json.dumps(result.to_dict())
    assert "PASSED" in str(result)


def test_gradcheck_fails_on_wrong_gradient(arm_scene):
    result = ggp.gradcheck(make_rollout(*arm_scene, wrong=True), targets(), n_probe=3, seed=1)
    assert not result.passed, str(result)
    # autograd is twice the true gradient: |2g - g| / |2g| = 0.5
    assert result.worst_rel_error == pytest.approx(0.5, rel=1e-4)
    assert all(p.autograd == pytest.approx(2 * p.finite_difference, rel=1e-4) for p in result.probes)
    assert "FAILED" in str(result)


def test_gradcheck_scene_argument_and_module_inputs(arm_scene):
    scene, arm = arm_scene
    torch.manual_seed(0)
    policy = torch.nn.Linear(2, 2).to(torch.float64)
    obs = torch.tensor([0.2, -0.1], dtype=torch.float64)

    def rollout(*params):
        # Uses the module, not the parameters it is given: gradcheck perturbs them in place.
        loss = 0.0
        for _ in range(3):
            arm.control_dofs_position(policy(obs + arm.get_dofs_position()))
            scene.step()
            loss = loss + (arm.get_dofs_position() ** 2).sum()
        return loss

    before = [p.detach().clone() for p in policy.parameters()]
    result = ggp.gradcheck(rollout, policy, n_probe=3, scene=scene)
    assert result.passed, str(result)
    assert all(torch.equal(p, b) for p, b in zip(policy.parameters(), before, strict=True))


def test_gradcheck_disconnected_loss_fails(arm_scene):
    scene, arm = arm_scene

    def rollout(targets):
        arm.control_dofs_position(targets[0])
        scene.step()
        with torch.no_grad():
            q = arm.get_dofs_position()
        return (q**2).sum()

    # Strict mode names the break too, during the autograd pass.
    with pytest.warns(GradientBreakWarning, match="no_grad"):
        result = ggp.gradcheck(rollout, targets(), n_probe=2, seed=0, scene=scene)
    assert not result.passed and any("does not require grad" in note for note in result.notes)


def test_cli_gradcheck(arm_scene, tmp_path, capsys):
    fixture = types.ModuleType("diag_gradcheck_fixture")
    fixture.make = lambda wrong: (make_rollout(*arm_scene, wrong=wrong), targets(), {"n_probe": 2})
    sys.modules[fixture.__name__] = fixture
    script = tmp_path / "check.py"
    script.write_text(
        "from diag_gradcheck_fixture import make\n\n\n"
        "def good():\n    return make(False)\n\n\ndef bad():\n    return make(True)\n"
    )
    try:
        parser = build_parser()
        args = parser.parse_args(["gradcheck", f"{script}:good"])
        assert COMMANDS[args.command].run(args) == 0 and "PASSED" in capsys.readouterr().out
        args = parser.parse_args(["gradcheck", f"{script}:bad", "--json"])
        assert COMMANDS[args.command].run(args) == 1 and json.loads(capsys.readouterr().out)["passed"] is False
    finally:
        del sys.modules[fixture.__name__]
