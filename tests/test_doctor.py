"""
The gradient doctor on a healthy closed-loop rollout and on the report's broken patterns
(shared/reference/pytorch-conversion-report.ko.md): it must name the break the report could not find.

The rollout is the report's, on a two-joint arm: an MLP maps the error state (dof positions minus a reference) to the
PD targets of the next step, and the loss sums the squared error state after each step.
"""

import json
import sys
import types
import warnings
from pathlib import Path

import genesis as gs
import pytest
import torch
from helpers import build_diag_arm

import genesis_grad_patch as ggp
from genesis_grad.cli import COMMANDS, build_parser
from genesis_grad_patch import strict
from genesis_grad_patch.doctor import (
    AFTER_LAST_READ,
    CUT_AT_DETACH,
    NON_DIFFERENTIABLE_GETTER,
    NOT_IN_GRAPH,
    REQUIRES_GRAD_FALSE,
    SCENE_NOT_DIFFERENTIABLE,
    DoctorReport,
)

pytestmark = pytest.mark.plugin_only

HORIZON = 4
REF = torch.tensor([0.4, -0.3], dtype=torch.float64)


@pytest.fixture(scope="module")
def arm_scene():
    return build_diag_arm(requires_grad=True)


@pytest.fixture(autouse=True)
def quiet_warn_mode():
    strict.clear_events()
    with ggp.set_mode("warn"), warnings.catch_warnings():
        warnings.simplefilter("ignore", strict.GradientBreakWarning)
        yield


def make_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(torch.float64)


def line_of(marker: str) -> str:
    """'this_file:N' of the line of the rollout tagged with `marker`."""
    lines = Path(__file__).read_text().splitlines()
    numbers = [i for i, line in enumerate(lines, 1) if line.rstrip().endswith(marker)]
    assert len(numbers) == 1, marker
    return f"{__file__}:{numbers[0]}"


def from_torch(tensor, **kwargs):
    """The report's conversion: `gs.from_torch` where it exists (plugin compat), a no-op on stock Genesis 1.x."""
    convert = getattr(gs, "from_torch", None)
    return tensor if convert is None else convert(tensor, **kwargs)


def rollout(scene, arm, model, pattern: str = "healthy") -> torch.Tensor:
    scene.reset()
    loss = 0.0
    for _ in range(HORIZON):
        pose = arm.get_dofs_position()  # <read obs>
        if pattern == "2.4":
            pose = pose.detach()  # <2.4 detached pose>
        new_steer = model(pose - REF)

        if pattern == "2.1":  # Genesis 0.x's default, explicit here
            target = gs.from_torch(new_steer, detach=True)  # <2.1>
        elif pattern == "2.2":
            # Genesis 0.x converted with detach=True by default: what the report's code did.
            steer_gs = gs.from_torch(new_steer.unsqueeze(0), detach=True)  # <2.2>
            target = gs.from_torch(torch.stack([steer_gs[0, 0], steer_gs[0, 1]]))
        else:  # 2.3: all the torch work first, one conversion
            target = from_torch(torch.stack([new_steer[0] * 0.8, new_steer[1] * 0.8]))
        arm.control_dofs_position(target)  # <control>
        scene.step()

        if pattern == "3.1":
            with torch.no_grad():
                pose = arm.get_dofs_position()  # <3.1 no_grad>
        else:
            pose = arm.get_dofs_position()  # <read loss>
        if pattern == "2.4":
            pose = pose.detach()
        loss = loss + ((pose - REF) ** 2).sum()
    return loss


def reasons(report: DoctorReport) -> set:
    return {p.reason_kind for p in report.params}


def test_doctor_healthy(arm_scene):
    scene, arm = arm_scene
    model = make_mlp()
    loss = rollout(scene, arm, model)
    report = ggp.doctor(loss, model)

    assert report.healthy and all(p.gets_gradient for p in report.params)
    assert len(report.scenes) == 1  # other live scenes of the session do not concern this loss
    assert report.steps == list(range(1, HORIZON + 1))
    assert all(p.steps == list(range(1, HORIZON + 1)) for p in report.params)
    # The first input is computed from the initial state, which depends on nothing tracked (read as a stock value).
    first, inputs = report.inputs
    assert first.steps == [1] and not first.depends_on_state and first.reaches_loss
    assert inputs.reaches_loss and inputs.depends_on_state and inputs.steps == list(range(2, HORIZON + 1))
    for group in (first, inputs):
        assert group.call == "RigidEntity.control_dofs_position(position)"
        assert group.location == Path(line_of("# <control>")).name
        assert group.params == ["0.weight", "0.bias", "2.weight", "2.bias"]
    getters = {g for read in report.reads for g in read.getters}
    assert f"get_dofs_position ({Path(line_of('# <read loss>')).name})" in getters
    assert f"get_dofs_position ({Path(line_of('# <read obs>')).name})" in getters

    json.dumps(report.to_dict())
    text = str(report)
    assert "Healthy" in text and "control_dofs_position" in text

    # The report does not depend on whether backward already ran.
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert ggp.doctor(loss, model).healthy


def test_doctor_2_1_from_torch_detach(arm_scene):
    scene, arm = arm_scene
    model = make_mlp()
    report = ggp.doctor(rollout(scene, arm, model, "2.1"), model)
    assert not report.healthy and reasons(report) == {CUT_AT_DETACH}
    where = line_of("# <2.1>")
    assert all(where in p.reason and "detach=True" in p.reason for p in report.params)
    assert report.steps == []  # nothing of the rollout tracks gradients: its reads are stock values, no graph
    assert not report.inputs
    assert any(b.location == where and b.kind == strict.CUT_AT_DETACH for b in report.breaks)
    assert Path(where).name in str(report)


def test_doctor_2_2_nested_conversions(arm_scene):
    scene, arm = arm_scene
    model = make_mlp()
    report = ggp.doctor(rollout(scene, arm, model, "2.2"), model)
    assert reasons(report) == {CUT_AT_DETACH}
    assert all(line_of("# <2.2>") in p.reason for p in report.params)


def test_doctor_2_3_on_stock_genesis(arm_scene):
    scene, arm = arm_scene
    model = make_mlp()
    ggp.uninstall()
    try:
        loss = rollout(scene, arm, model, "2.3")
        report = ggp.doctor(loss, model)
    finally:
        ggp.install()
    # The report's finding: the loss does not require grad. The doctor says where the chain breaks and why.
    assert not loss.requires_grad and not report.plugin_installed
    assert reasons(report) == {NON_DIFFERENTIABLE_GETTER}
    assert all("genesis-grad-patch is not installed" in p.reason for p in report.params)
    (inputs,) = report.inputs
    assert not inputs.reaches_loss and inputs.params == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert any("does not differentiate PD targets" in f for f in report.findings)

    # The same code with the plugin: healthy.
    assert ggp.doctor(rollout(scene, arm, model, "2.3"), model).healthy


def test_doctor_2_4_error_state_from_detached_pose(arm_scene):
    scene, arm = arm_scene
    model = make_mlp()
    loss = rollout(scene, arm, model, "2.4")
    report = ggp.doctor(loss, model)
    assert not loss.requires_grad
    assert reasons(report) == {NON_DIFFERENTIABLE_GETTER}
    assert all("left the graph" in p.reason and ".detach()" in p.reason for p in report.params)
    assert any("passes through none of its steps or state reads" in f for f in report.findings)


def test_doctor_3_1_get_qpos_under_no_grad(arm_scene):
    scene, arm = arm_scene
    model = make_mlp()
    report = ggp.doctor(rollout(scene, arm, model, "3.1"), model)
    assert reasons(report) == {NON_DIFFERENTIABLE_GETTER}
    where = line_of("# <3.1 no_grad>")
    assert all(where in p.reason for p in report.params)
    assert [b.kind for b in report.breaks] == [strict.READ_UNDER_NO_GRAD]


def test_doctor_3_1_get_qpos_on_stock_genesis(arm_scene):
    scene, arm = arm_scene
    model = make_mlp()
    ggp.uninstall()
    try:
        scene.reset()
        arm.control_dofs_position(from_torch(model(torch.tensor([0.1, -0.2], dtype=torch.float64))))
        for _ in range(HORIZON):
            scene.step()
        qpos = scene.sim.rigid_solver.get_qpos()
        report = ggp.doctor(qpos[0] + qpos[1] ** 2, model)
    finally:
        ggp.install()
    assert not qpos.requires_grad
    assert reasons(report) == {NON_DIFFERENTIABLE_GETTER}
    assert all("not installed" in p.reason for p in report.params)


def test_doctor_other_reasons(arm_scene):
    scene, arm = arm_scene
    used, unused, frozen, late = (torch.tensor([0.2, 0.1], dtype=torch.float64, requires_grad=True) for _ in range(4))
    frozen.requires_grad_(False)
    scene.reset()
    arm.control_dofs_position(used * 1.0)
    scene.step()
    loss = (arm.get_dofs_position() ** 2).sum()
    arm.control_dofs_position(late * 1.0)
    scene.step()
    report = ggp.doctor(loss, {"used": used, "unused": unused, "frozen": frozen, "late": late})
    kinds = {p.name: p.reason_kind for p in report.params}
    assert kinds == {
        "used": None,
        "unused": NOT_IN_GRAPH,
        "frozen": REQUIRES_GRAD_FALSE,
        "late": AFTER_LAST_READ,
    }
    assert report.params[0].steps == [1]


def test_doctor_scene_not_differentiable():
    scene, arm = build_diag_arm(requires_grad=False)
    x = torch.tensor([0.2, 0.1], dtype=torch.float64, requires_grad=True)
    arm.control_dofs_position(x * 2)  # <non-differentiable scene>
    scene.step()
    loss = (arm.get_dofs_position() ** 2).sum()
    report = ggp.doctor(loss, [x])
    (param,) = report.params
    assert param.reason_kind == SCENE_NOT_DIFFERENTIABLE
    assert line_of("# <non-differentiable scene>") in param.reason and "requires_grad=True" in param.reason
    scene.destroy()


def test_cli_doctor(arm_scene, tmp_path, capsys):
    # The script reuses this module's scene (a second build would only cost time).
    fixture = types.ModuleType("diag_doctor_fixture")
    fixture.scene, fixture.arm, fixture.rollout, fixture.make_mlp = *arm_scene, rollout, make_mlp
    sys.modules[fixture.__name__] = fixture
    script = tmp_path / "train.py"
    try:
        parser = build_parser()

        script.write_text(
            "from diag_doctor_fixture import arm, make_mlp, rollout, scene\n\n\n"
            "def main():\n    model = make_mlp()\n    return rollout(scene, arm, model, '2.1'), model\n"
        )
        args = parser.parse_args(["doctor", str(script)])
        assert COMMANDS[args.command].run(args) == 1
        out = capsys.readouterr().out
        assert "cut at a conversion/detach" in out and "test_doctor.py" in out

        script.write_text(
            "from diag_doctor_fixture import arm, make_mlp, rollout, scene\n\n"
            "model = make_mlp()\nloss = rollout(scene, arm, model)\n"
        )
        args = parser.parse_args(["doctor", str(script), "--json"])
        assert COMMANDS[args.command].run(args) == 0
        assert json.loads(capsys.readouterr().out)["healthy"] is True
    finally:
        del sys.modules[fixture.__name__]
