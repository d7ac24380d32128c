"""Strict mode: every silent gradient break is reported at the user's line, with its cause and what to change."""

import inspect
import re
import warnings

import genesis as gs
import numpy as np
import pytest
import torch
from helpers import build_diag_arm

import genesis_grad_patch as ggp
from genesis_grad_patch import strict
from genesis_grad_patch._impl import patching
from genesis_grad_patch.strict import GradientBreakError, GradientBreakWarning

pytestmark = pytest.mark.plugin_only


@pytest.fixture(scope="module")
def grad_arm():
    return build_diag_arm(requires_grad=True)


@pytest.fixture(scope="module")
def plain_arm():
    return build_diag_arm(requires_grad=False)


@pytest.fixture(autouse=True)
def warn_mode():
    strict.clear_events()
    with ggp.set_mode("warn"):
        yield


def next_line() -> str:
    """'this_file:N' for the line after the caller's: where the call under test is."""
    frame = inspect.currentframe().f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno + 1}"


def tracked(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def only_break(record) -> str:
    messages = [str(w.message) for w in record if issubclass(w.category, GradientBreakWarning)]
    assert len(messages) == 1, messages
    return messages[0]


# ------------------------------------------------------------------------------------------------------------------
# Tracked inputs to a scene built without requires_grad=True
# ------------------------------------------------------------------------------------------------------------------


def test_tracked_control_in_non_differentiable_scene(plain_arm):
    scene, arm = plain_arm
    scene.reset()
    x = tracked(0.2, -0.1)
    with pytest.warns(GradientBreakWarning) as record:
        where = next_line()
        arm.control_dofs_position(x * 2)
    message = only_break(record)
    assert where in message and "requires_grad=True" in message and "control_dofs_position" in message
    assert record[0].filename == __file__  # the warning points at the user's line

    with ggp.set_mode("raise"), pytest.raises(GradientBreakError, match="SimOptions") as info:
        where = next_line()
        scene.sim.rigid_solver.control_dofs_position(x, dofs_idx=[0, 1])
    assert where in str(info.value)
    assert isinstance(info.value, gs.GenesisException) and isinstance(info.value, RuntimeError)

    with pytest.warns(GradientBreakWarning, match="requires_grad=True") as record:
        where = next_line()
        arm.set_dofs_velocity(x)
    assert where in only_break(record)

    # Untracked inputs, or tracked ones with strict mode off: silent, and the value still applies.
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientBreakWarning)
        arm.control_dofs_position(x.detach())
        with ggp.set_mode("off"):
            arm.control_dofs_position(x)
        scene.step()


# ------------------------------------------------------------------------------------------------------------------
# Conversions and detaches
# ------------------------------------------------------------------------------------------------------------------


def test_from_torch_detach_of_tracked_tensor(grad_arm):
    scene, arm = grad_arm
    scene.reset()
    action = tracked(0.3, 0.1) * 2
    with pytest.warns(GradientBreakWarning) as record:
        where_convert = next_line()
        target = gs.from_torch(action, detach=True)
    message = only_break(record)
    assert where_convert in message and "detach=True" in message

    # Fed to a control, the converted tensor is recognized as a detached copy, and the conversion named.
    with pytest.warns(GradientBreakWarning) as record:
        where = next_line()
        arm.control_dofs_position(target)
    message = only_break(record)
    assert where in message and f"gs.from_torch(..., detach=True) at {where_convert}" in message

    # Carried on to numpy, the cut keeps its name.
    with pytest.warns(GradientBreakWarning) as record:
        arm.control_dofs_position(target.numpy())
    assert "gs.from_torch(..., detach=True) then `.numpy()`" in only_break(record)

    # Without detach=True, or of an untracked tensor: no break.
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientBreakWarning)
        gs.from_torch(action)
        gs.from_torch(action.detach(), detach=True)


def test_detached_control_input(grad_arm):
    scene, arm = grad_arm
    scene.reset()
    action = tracked(0.3, 0.1) * 2
    with pytest.warns(GradientBreakWarning) as record:
        where = next_line()
        arm.control_dofs_position(action.detach())
    message = only_break(record)
    assert where in message and f"`.detach()` of a tracked tensor at {where}" in message

    with pytest.warns(GradientBreakWarning, match=r"`.detach\(\)` then `.numpy\(\)` of a tracked tensor"):
        arm.control_dofs_position(action.detach().numpy())

    # A fresh untracked target is no detach.
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientBreakWarning)
        arm.control_dofs_position(torch.tensor([0.1, 0.2], dtype=torch.float64))
        arm.control_dofs_position(np.array([0.1, 0.2]))


# Genesis turns the list's tensors into numbers, about which torch warns too: the break report is what this test checks.
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning")
def test_list_of_tracked_tensors(grad_arm):
    scene, arm = grad_arm
    scene.reset()
    action = tracked(0.3, 0.1) * 2
    with pytest.warns(GradientBreakWarning) as record:
        where = next_line()
        arm.control_dofs_position([action[0], action[1]])
    message = only_break(record)
    assert where in message and "torch.stack" in message


# ------------------------------------------------------------------------------------------------------------------
# Getters
# ------------------------------------------------------------------------------------------------------------------


def test_getter_under_no_grad_during_tracked_rollout(grad_arm):
    scene, arm = grad_arm
    scene.reset()
    # No tracked input yet: reading without gradients is nothing to report.
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientBreakWarning)
        with torch.no_grad():
            arm.get_qpos()
    arm.control_dofs_position(tracked(0.2, 0.1) * 1.0)
    scene.step()
    with pytest.warns(GradientBreakWarning) as record:
        with torch.no_grad():
            where = next_line()
            arm.get_qpos()
    message = only_break(record)
    assert where in message and "torch.no_grad()" in message and "get_qpos" in message

    with ggp.set_mode("raise"), pytest.raises(GradientBreakError, match=r"torch\.inference_mode\(\)") as info:
        with torch.inference_mode():
            where = next_line()
            arm.get_pos()
    assert where in str(info.value)

    # An explicit opt-out for values that are only logged.
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientBreakWarning)
        with ggp.set_mode("off"), torch.no_grad():
            arm.get_dofs_position()
        assert arm.get_qpos().requires_grad


def test_break_in_code_without_a_file_warns(grad_arm):
    """
    Code with no file (`python -c`, a script piped to stdin) runs as `__main__` whose loader is the built-in importer,
    which raises ImportError when asked for source. The warning is given without its line of source, not that error
    (it was the ImportError, at the first break of such a script).
    """
    import importlib.machinery

    scene, arm = grad_arm
    scene.reset()
    arm.control_dofs_position(tracked(0.2, 0.1) * 1.0)
    scene.step()
    code = compile("with torch.no_grad():\n    arm.get_qpos()\n", "<string>", "exec")
    namespace = {"__name__": "__main__", "__loader__": importlib.machinery.BuiltinImporter, "torch": torch, "arm": arm}
    with pytest.warns(GradientBreakWarning, match="Gradient break at <string>:2: 'get_qpos' was called under"):
        exec(code, namespace)


def test_non_differentiable_getter_during_tracked_rollout(grad_arm):
    scene, arm = grad_arm
    scene.reset()
    arm.control_dofs_position(tracked(0.2, 0.1) * 1.0)
    scene.step()
    with pytest.warns(GradientBreakWarning) as record:
        where = next_line()
        arm.get_dofs_force()
    message = only_break(record)
    assert where in message and "get_dofs_force" in message and "outside the autograd graph" in message

    for getter in ("get_links_acc", "get_dofs_control_force", "get_links_net_contact_force", "get_contacts"):
        with pytest.warns(GradientBreakWarning, match=getter):
            getattr(arm, getter)()

    # Under no_grad the user asked for the value only.
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientBreakWarning)
        with torch.no_grad():
            arm.get_dofs_force()


def test_non_differentiable_getter_in_grad_mode_without_tracked_inputs(grad_arm):
    # Was: silent (a detached tensor without a word) unless the rollout already had a tracked input.
    scene, arm = grad_arm
    scene.reset()
    for getter in ("get_links_acc", "get_dofs_force", "get_contacts"):
        with pytest.warns(GradientBreakWarning, match=getter) as record:
            for _ in range(3):
                scene.step()
                where = next_line()
                getattr(arm, getter)()
        message = only_break(record)  # once per call site
        assert where in message
        with ggp.set_mode("raise"), pytest.raises(GradientBreakError, match=getter):
            getattr(arm, getter)()


# ------------------------------------------------------------------------------------------------------------------
# Setters without a gradient path
# ------------------------------------------------------------------------------------------------------------------


def test_setter_dropping_tracked_input(grad_arm):
    scene, arm = grad_arm
    scene.reset()
    x = tracked(0.2, 0.1) * 1.0
    with pytest.warns(GradientBreakWarning) as record:
        where = next_line()
        arm.set_dofs_force_range(x - 3.0, torch.full((2,), 3.0, dtype=torch.float64))
    message = only_break(record)
    assert where in message and "set_dofs_force_range" in message and "control_dofs_position" in message

    # (Joint limits, friction losses and friction are refused at the call instead: see tests/test_params.py.)
    with pytest.warns(GradientBreakWarning, match="set_dofs_act_gain"):
        arm.set_dofs_act_gain(x * 10 + 5)
    with ggp.set_mode("raise"), pytest.raises(GradientBreakError, match="set_dofs_act_gain") as info:
        where = next_line()
        scene.sim.rigid_solver.set_dofs_act_gain(x * 10 + 5)
    assert where in str(info.value)

    # The setters Genesis tapes, and the dof parameters the plugin differentiates, carry the gradient: no break.
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientBreakWarning)
        arm.set_dofs_velocity(x)
        arm.set_dofs_kp(x * 10 + 5)
        arm.set_dofs_position(x)
    # Never stepped: the reset drops them, and says so.
    with pytest.warns(GradientBreakWarning, match="dropped tracked values"):
        scene.reset()


def test_solver_control_keeps_its_gradient_whoever_calls_it(grad_arm):
    # Whether a call comes from Genesis is known from the call's origin (a context variable set by the entity methods
    # and Genesis's own work), not from the caller's module name: user code in any module is routed and taped.
    scene, arm = grad_arm
    x = tracked(0.2, -0.1)
    scene.reset()
    for _ in range(2):
        scene.sim.rigid_solver.control_dofs_position(x, dofs_idx=[0, 1])
        scene.step()
    (arm.get_dofs_position() ** 2).sum().backward()
    assert x.grad is not None and x.grad.abs().min() > 0


# ------------------------------------------------------------------------------------------------------------------
# Backward misuse
# ------------------------------------------------------------------------------------------------------------------


def short_rollout(scene, arm, x: torch.Tensor, n: int = 3) -> torch.Tensor:
    scene.reset()
    for i in range(n):
        arm.control_dofs_position(x * (i + 1))
        scene.step()
    return (arm.get_dofs_position() ** 2).sum()


def test_backward_after_reset(grad_arm):
    scene, arm = grad_arm
    loss = short_rollout(scene, arm, tracked(0.2, -0.1))
    where_reset = next_line()
    scene.reset()
    with pytest.raises(GradientBreakError, match=r"reset since \(`scene.reset\(\)`") as info:
        where = next_line()
        loss.backward()
    assert where in str(info.value) and where_reset in str(info.value) and "before `scene.reset()`" in str(info.value)


def test_backward_twice(grad_arm):
    scene, arm = grad_arm
    x = tracked(0.2, -0.1)
    loss = short_rollout(scene, arm, x)
    where_first = next_line()
    loss.backward(retain_graph=True)
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(GradientBreakError, match="backward was called twice") as info:
        where = next_line()
        loss.backward()
    message = str(info.value)
    assert where in message and f"first backward at {where_first}" in message and "sum the losses" in message


def test_backward_after_destroy():
    scene, arm = build_diag_arm(requires_grad=True)
    loss = short_rollout(scene, arm, tracked(0.2, -0.1), n=2)
    scene.destroy()
    # Stock Genesis runs the reverse pass of the destroyed scene anyway, since the entity keeps the simulator alive.
    with pytest.raises(GradientBreakError, match="destroyed") as info:
        where = next_line()
        loss.backward()
    assert where in str(info.value) and "before destroying the scene" in str(info.value)


# ------------------------------------------------------------------------------------------------------------------
# Modes, silence on healthy code, uninstall
# ------------------------------------------------------------------------------------------------------------------


def test_healthy_rollout_is_silent(grad_arm):
    scene, arm = grad_arm
    x = tracked(0.2, -0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientBreakWarning)
        loss = short_rollout(scene, arm, x)
        loss.backward()
    assert x.grad.abs().sum() > 0
    assert not strict.events()


def test_modes(monkeypatch):
    assert ggp.get_mode() == "warn"
    with ggp.set_mode("raise"):
        assert ggp.get_mode() == "raise"
    assert ggp.get_mode() == "warn"
    with pytest.raises(ValueError, match="strict mode"):
        ggp.set_mode("loud")
    monkeypatch.setenv(strict.MODE_ENV_VAR, "RAISE")
    assert strict._mode_from_env() == "raise"
    monkeypatch.setenv(strict.MODE_ENV_VAR, "nonsense")
    with pytest.warns(RuntimeWarning, match=strict.MODE_ENV_VAR):
        assert strict._mode_from_env() == "warn"


def test_uninstall_reverts_every_patch_and_strict_alone():
    from genesis.engine.entities.rigid_entity.rigid_entity import RigidEntity
    from genesis.engine.simulator import Simulator
    from genesis.engine.solvers.rigid.rigid_solver import RigidSolver

    core = [
        (RigidEntity, "control_dofs_position"),
        (RigidEntity, "set_dofs_position"),
        (RigidSolver, "get_qpos"),
        (RigidSolver, "set_qpos"),
        (Simulator, "reset_grad"),
    ]
    strict_only = [(RigidEntity, "get_dofs_force"), (Simulator, "reverse_step"), (torch.Tensor, "detach")]

    def replaced(owner, name) -> bool:
        return any(o is owner and n == name for o, n, _ in patching.replaced())

    assert all(replaced(owner, name) for owner, name in core + strict_only)
    stock = {(owner, name): patching.original(owner, name) for owner, name in core + strict_only}
    # Strict mode alone: the gradients stay, the reports and their records go.
    ggp.uninstall(("strict",))
    try:
        assert all(replaced(owner, name) for owner, name in core)
        assert not any(replaced(owner, name) for owner, name in strict_only)
        assert all(getattr(owner, name) is stock[owner, name] for owner, name in strict_only)
        assert not strict.events()
    finally:
        ggp.install()
    ggp.uninstall()
    try:
        assert all(getattr(owner, name) is stock[owner, name] for owner, name in core + strict_only)
        assert not hasattr(gs, "from_torch") and not patching.replaced()
        # Scoped patching: installed in the block, stock again after it.
        with ggp.patched():
            assert ggp.is_installed() and replaced(RigidSolver, "get_qpos")
        assert not ggp.is_installed() and RigidSolver.get_qpos is stock[RigidSolver, "get_qpos"]
    finally:
        ggp.install()
    with ggp.patched(strict=False):
        assert ggp.is_installed() and not replaced(Simulator, "reverse_step")
    assert replaced(Simulator, "reverse_step")


def test_catalog_lists_every_replaced_genesis_method():
    """The catalog is the one list of what the plugin touches: every replaced Genesis attribute has its row."""
    from genesis_grad_patch import catalog

    rows = {(row.owner, row.name) for row in catalog.ROWS}
    for owner, name, _ in patching.replaced():
        if owner in (torch, torch.Tensor):
            continue  # detach_watch's torch methods: not Genesis's
        label = owner.__name__.rsplit(".", 1)[-1]
        assert (label, name) in rows, f"{label}.{name} is replaced but not in the catalog"


def _helper_that_detaches(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x).detach()


@pytest.mark.parametrize(
    "cut, how",
    [
        (lambda a: a.detach(), "`.detach()`"),
        (lambda a: torch.tensor([a[0].item(), a[1].item()], dtype=torch.float64), "rebuilt from `.item()`"),
        (lambda a: a.tolist(), "`.tolist()`"),
        (lambda a: torch.tensor(a.tolist(), dtype=torch.float64), "rebuilt from `.tolist()`"),
        (lambda a: a.data, "`.data`"),
        (lambda a: a.detach().numpy(), "`.detach()` then `.numpy()`"),
        (_helper_that_detaches, "`.detach()`"),
        (lambda a: a.detach() * 0.5, "`.detach()`"),
        (lambda a: a.detach() * 1.0, "`.detach()`"),
        (
            lambda a: torch.stack([a[0].detach(), torch.tensor(0.0, dtype=torch.float64)]).clamp(-1.0, 1.0),
            "`.detach()`",
        ),
    ],
    ids=[
        "detach",
        "item",
        "tolist",
        "tolist_rebuilt",
        "data",
        "detach_numpy",
        "helper",
        "scaled",
        "times_one",
        "stacked_clamped",
    ],
)
def test_common_detaches_are_caught_in_raise_mode(grad_arm, cut, how):
    """Without the detach watch: only a detached named local or `gs.from_torch(detach=True)` was caught; these passed silently."""
    scene, arm = grad_arm
    policy = torch.nn.Linear(2, 2).double()
    scene.reset()
    with ggp.set_mode("raise"):
        obs = arm.get_qpos()
        with pytest.raises(GradientBreakError, match=re.escape(how)):
            arm.control_dofs_position(cut(policy(obs + 0.1)))
        arm.control_dofs_position(torch.tensor([0.1, 0.2], dtype=torch.float64))  # a fresh target is no detach
        scene.step()


def test_arithmetic_on_a_detached_input_to_a_tracked_policy_is_no_cut(grad_arm):
    """A detached observation fed to a policy (the usual way to cut the gradient through the observation) gives a
    tracked target: not a cut, even though the observation is derived from a recorded detach."""
    scene, arm = grad_arm
    policy = torch.nn.Linear(2, 2).double()
    scene.reset()
    with ggp.set_mode("raise"):
        obs = arm.get_qpos().detach() * 0.5 + 0.1
        arm.control_dofs_position(policy(obs))
        scene.step()
        fresh = torch.zeros(2, dtype=torch.float64) + 0.1
        arm.control_dofs_position(fresh)
        scene.step()


def test_constructors_are_watched_from_the_first_cut(grad_arm):
    """The rebuild watch (`torch.tensor` & co., which Genesis calls at every step) is installed at the first recorded
    cut only, still names a rebuild after it, and goes with strict mode."""
    scene, arm = grad_arm
    stock_tensor = patching.original(torch, "tensor")
    ggp.uninstall(("strict",))
    ggp.install()
    try:
        assert torch.tensor is stock_tensor, "watched before any cut"
        scene.reset()
        arm.control_dofs_position(torch.tensor([0.1, 0.2], dtype=torch.float64))
        scene.step()
        assert torch.tensor is stock_tensor, "a rollout without cuts installed the watch"
        x = torch.tensor([0.1, 0.2], dtype=torch.float64, requires_grad=True)
        value = (x * 2)[0].item()
        assert torch.tensor is not stock_tensor
        with ggp.set_mode("raise"), pytest.raises(GradientBreakError, match=re.escape("rebuilt from `.item()`")):
            arm.control_dofs_position(torch.tensor([value, 0.0], dtype=torch.float64))
    finally:
        ggp.uninstall(("strict",))
        assert torch.tensor is stock_tensor
        ggp.install()


def test_doctor_names_the_detach_of_a_parameter_output(grad_arm):
    """Without the break record: the doctor said the parameters were "used neither by the loss nor by any input of the rollout"."""
    scene, arm = grad_arm
    policy = torch.nn.Linear(2, 2).double()
    scene.reset()
    loss = 0.0
    with pytest.warns(GradientBreakWarning):
        for _ in range(3):
            arm.control_dofs_position(policy(arm.get_qpos()).detach())
            scene.step()
            loss = loss + (arm.get_qpos() ** 2).sum()
    report = ggp.doctor(loss, policy)
    assert {p.reason_kind for p in report.params} == {"cut_at_detach"}
    assert all("`.detach()` of a tracked tensor" in p.reason for p in report.params)


def test_documented_table_is_the_catalog():
    from pathlib import Path

    from genesis_grad_patch import catalog

    page = (Path(__file__).parents[1] / "docs" / "differentiable.md").read_text()
    table = page.split("<!-- catalog:begin -->\n")[1].split("\n<!-- catalog:end -->")[0]
    assert table == catalog.markdown_table(), (
        "docs/differentiable.md is stale: paste `python -m genesis_grad_patch.catalog`"
    )
