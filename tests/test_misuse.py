"""
Misuse of the differentiable rollout: each gets a clear error at the point of misuse and leaves nothing behind. Each
test fails without its guard (noted per test). The plugin does it in `tape_guards.py`, the
upstream series in patches 0003-0005; both run these tests (the reload test is the plugin's alone).
"""

import subprocess
import sys
import textwrap

import genesis as gs
import pytest
import torch
from helpers import DIAG_ARM, build_diag_arm, reported


@pytest.fixture(scope="module")
def arm():
    return build_diag_arm()


@pytest.fixture(scope="module")
def arms3():
    return build_diag_arm(n_envs=3)


def _rollout(scene, arm, x, horizon=4):
    scene.reset()
    loss = 0.0
    for _ in range(horizon):
        arm.control_dofs_position(x)
        scene.step()
        loss = loss + (arm.get_qpos() ** 2).sum()
    return loss


def test_tracked_inputs_are_written_by_value(arms3):
    """
    The fields take only the value of a tracked input (its gradient goes through the tape). Written as is into a
    zero-copy view of a field, the input gave the cached view an autograd history, and the next plain write to it failed
    with "a leaf Variable that requires grad is being used in an in-place operation" (stock 1.4.5: this test raises
    there; patch 0006 upstream).
    """
    if not gs.use_zerocopy:
        pytest.skip("The fields are only written through torch views with zero-copy.")
    scene, arm = arms3
    solver = scene.sim.rigid_solver
    dofs = solver.dyn_state.dofs
    scene.reset()
    targets = torch.zeros((4, 3, 1), dtype=torch.float64, requires_grad=True)
    arm.control_dofs_position(targets[0] + 0.1, dofs_idx_local=[1])
    arm.control_dofs_velocity(targets[1] + 0.2, dofs_idx_local=[0])
    arm.set_dofs_velocity(targets[2] + 0.3, dofs_idx_local=[0])
    solver.control_dofs_force(targets[3] + 0.4, dofs_idx=[arm.dof_start], envs_idx=[0, 1, 2])
    for field in (dofs.ctrl_pos, dofs.ctrl_vel, dofs.ctrl_force, dofs.vel):
        assert not gs.utils.misc.qd_to_torch(field, transpose=True, copy=False).requires_grad
    scene.step()
    arm.control_dofs_position(torch.tensor([[0.0], [0.1], [0.2]], dtype=torch.float64), dofs_idx_local=[1])
    arm.control_dofs_velocity(0.0, dofs_idx_local=[0])
    solver.control_dofs_force(0.0, dofs_idx=[arm.dof_start])
    scene.step()
    ctrl_pos = gs.utils.misc.qd_to_torch(dofs.ctrl_pos, transpose=True)[:, arm.dof_start + 1]
    torch.testing.assert_close(ctrl_pos, torch.tensor([0.0, 0.1, 0.2], dtype=ctrl_pos.dtype))


def test_duplicated_indices_with_tracked_target_are_refused(arm, arms3):
    """Without the guard: the dof is driven by the last duplicate, the whole gradient goes to the first entry, silently."""
    scene, arm_ = arm
    x = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    scene.reset()
    with pytest.raises(gs.GenesisException, match="same dof index more than once"):
        arm_.control_dofs_position(x, dofs_idx_local=[1, 1])
    with pytest.raises(gs.GenesisException, match="same dof index more than once"):
        scene.sim.rigid_solver.control_dofs_force(x, dofs_idx=[0, 0])
    with reported(r"`\.detach\(\)` of a tracked tensor"):  # strict mode names the cut; the duplicate is stock's
        arm_.control_dofs_position(x.detach(), dofs_idx_local=[1, 1])
    scene.step()

    scene3, arm3 = arms3
    scene3.reset()
    with pytest.raises(gs.GenesisException, match="same environment index more than once"):
        arm3.control_dofs_position(torch.zeros((2, 2), dtype=torch.float64, requires_grad=True), envs_idx=[1, 1])
    scene3.step()


def test_failed_backward_leaves_nothing_behind(arm):
    """Without the guard (and on stock Genesis): after "Nan grad in qpos or dofs_vel", the next clean rollout's gradient was all zeros."""
    scene, arm_ = arm
    x = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    (clean,) = torch.autograd.grad(_rollout(scene, arm_, x), x)
    poisoned = _rollout(scene, arm_, x) + (arm_.get_qpos() * 0.0).sum().sqrt()  # d sqrt(0) = inf, times 0: NaN
    with pytest.raises(gs.GenesisException, match="Nan grad"):
        torch.autograd.grad(poisoned, x)
    (after,) = torch.autograd.grad(_rollout(scene, arm_, x), x)
    torch.testing.assert_close(after, clean, rtol=1e-12, atol=0)


def test_rejected_call_is_taken_off_the_tape(arm):
    """Without the guard: the rejected call stayed taped, so every later step (even after a reset) raised the same error."""
    scene, arm_ = arm
    scene.reset()
    with pytest.raises(gs.GenesisException):
        arm_.control_dofs_position(torch.zeros(3, dtype=torch.float64, requires_grad=True))
    scene.step()
    scene.reset()
    scene.step()
    x = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(_rollout(scene, arm_, x), x)
    assert grad.abs().max() > 0


def test_inplace_modified_target_is_detected(arm):
    """Without the guard: the replay used the modified value and the gradient changed, with no error."""
    scene, arm_ = arm
    x = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    target = x * 1.0
    scene.reset()
    arm_.control_dofs_position(target)
    scene.step()
    loss = (arm_.get_qpos() ** 2).sum()
    with torch.no_grad():
        target.add_(0.5)
    with pytest.raises(
        gs.GenesisException,
        match=r"step 0 \(counted from 0 at the last reset\) has been modified by an inplace operation",
    ):
        loss.backward()


def test_no_grad_steps_are_named(arm):
    """Without the guard: "can't retain_grad on Tensor that has requires_grad=False" from deep inside Genesis."""
    scene, arm_ = arm
    x = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    scene.reset()
    arm_.control_dofs_position(x)
    scene.step()
    with torch.no_grad():
        scene.step()
        scene.step()
    scene.step()
    with pytest.raises(gs.GenesisException, match=r"after steps 1-2 of it ran under `torch.no_grad\(\)`"):
        arm_.get_qpos()
    with torch.no_grad(), reported("called under `torch.no_grad"):
        arm_.get_qpos()  # reading without a gradient stays possible (and is reported)
    scene.reset()
    (grad,) = torch.autograd.grad(_rollout(scene, arm_, x), x)  # and the next rollout is clean
    assert grad.abs().max() > 0


def _in_a_fresh_process(body: str) -> subprocess.CompletedProcess:
    """Run `body` after building the differentiable arm in a new process (plugin installed); it must exit 0."""
    preamble = f"""
        import genesis as gs, torch
        import genesis_grad_patch as ggp
        gs.init(backend=gs.cpu, precision="64", logging_level="warning")
        scene = gs.Scene(sim_options=gs.options.SimOptions(dt=0.01, requires_grad=True, gravity=(0, 0, 0)))
        arm = scene.add_entity(gs.morphs.MJCF(file={DIAG_ARM!r}))
        scene.build()
        """
    script = textwrap.dedent(preamble) + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


RELOADED = [
    "_impl.control",
    "_impl.getters",
    "_impl.replay",
    "_impl.tape_guards",
    "_impl.compat",
    "strict",
    "doctor",
    "gradcheck",
]


@pytest.mark.plugin_only
def test_reload_of_a_submodule_keeps_working():
    """
    Without the guard: reloading `control` captured the patched `assign_indexed_tensor` as the stock one: RecursionError.

    Run apart: a reload makes new warning and error classes, which would no longer match the ones the other test
    modules imported.
    """
    result = _in_a_fresh_process(
        f"""
        import importlib

        def grad():
            x = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
            scene.reset()
            loss = 0.0
            for _ in range(4):
                arm.control_dofs_position(x)
                scene.step()
                loss = loss + (arm.get_qpos() ** 2).sum()
            return torch.autograd.grad(loss, x)[0]

        before = grad()
        for module in {RELOADED!r}:
            importlib.reload(importlib.import_module("genesis_grad_patch." + module))
            torch.testing.assert_close(grad(), before, rtol=1e-12, atol=0)
            assert ggp.is_installed()
            print("RELOADED", module)
        """
    )
    assert result.stdout.count("RELOADED") == len(RELOADED)


def test_double_backward_is_refused():
    """Without the guard (and on stock Genesis): `torch.autograd.grad(..., create_graph=True)` segfaulted. Run apart: a crash is a crash."""
    result = _in_a_fresh_process(
        """
        x = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
        arm.control_dofs_position(x)
        scene.step()
        loss = (arm.get_qpos() ** 2).sum()
        try:
            torch.autograd.grad(loss, x, create_graph=True)
        except gs.GenesisException as error:
            print("REFUSED:", error)
        """
    )
    assert "REFUSED: Double backward through a Genesis step is not supported" in result.stdout


@pytest.mark.plugin_only
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda a, B: a.control_dofs_position(_tracked(B, 1), dofs_idx_local=[5]), "dof index 5 .* there are 2 dofs"),
        (lambda a, B: a.control_dofs_position(_tracked(1, 2), envs_idx=[7]), "environment index 7 .* 3 environments"),
        (lambda a, B: a.set_dofs_kp(_tracked(1), dofs_idx_local=[-3]), "dof index -3 .* there are 2 dofs"),
        (lambda a, B: a.set_dofs_kp(_tracked(1, 2), envs_idx=[7]), "environment index 7 .* 3 environments"),
        (lambda a, B: a.set_links_mass(_tracked(1), links_idx_local=[9]), "link index 9 .* there are 3 links"),
    ],
    ids=["control_dof", "control_env", "kp_negative_dof", "kp_env", "mass_link"],
)
def test_out_of_range_index_with_a_tracked_value_is_refused(arms3, call, match):
    """Before: accepted (an out-of-range write into the fields, its gradient read back from there), or an IndexError."""
    scene, arm_ = arms3
    scene.reset()
    with pytest.raises(gs.GenesisException, match=match):
        call(arm_, 3)
    scene.reset()


@pytest.mark.plugin_only
def test_complex_target_and_non_positive_mass_are_refused(arm):
    """Before: accepted (the imaginary part dropped; a finite gradient of an unphysical model)."""
    scene, arm_ = arm
    scene.reset()
    with pytest.raises(gs.GenesisException, match="complex tensor that tracks gradients"):
        arm_.control_dofs_position(torch.zeros(2, dtype=torch.complex128, requires_grad=True))
    with pytest.raises(gs.GenesisException, match=r"mass <= 0 \(-1\)"):
        arm_.set_links_mass(torch.tensor([-1.0], dtype=torch.float64, requires_grad=True), links_idx_local=[1])
    scene.reset()


def _tracked(*shape) -> torch.Tensor:
    return torch.ones(shape, dtype=torch.float64, requires_grad=True)


@pytest.mark.plugin_only
def test_rollout_under_torch_compile_gives_the_eager_gradient(arm):
    """Before: `TypeError: make_launch_context(): incompatible function arguments` (Dynamo traced into Quadrants)."""
    scene, arm_ = arm
    torch.manual_seed(0)
    policy = torch.nn.Linear(2, 2).double()

    def rollout(scale):
        scene.reset()
        loss = 0.0
        for _ in range(3):
            arm_.control_dofs_position(scale * torch.tanh(policy(arm_.get_qpos())))
            scene.step()
            loss = loss + (arm_.get_qpos() ** 2).sum()
        return loss

    grads = []
    for run in (rollout, torch.compile(rollout, backend="aot_eager")):
        policy.zero_grad()
        scale = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        run(scale).backward()
        grads.append((scale.grad, policy.weight.grad.clone()))
    (eager_scale, eager_weight), (compiled_scale, compiled_weight) = grads
    assert eager_scale.abs() > 1e-6
    torch.testing.assert_close(compiled_scale, eager_scale, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(compiled_weight, eager_weight, rtol=1e-12, atol=0.0)
