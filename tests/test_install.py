"""install() / uninstall() / version guard / gs.from_torch compat."""

import genesis as gs
import pytest
import torch
from genesis.engine.entities.rigid_entity.rigid_entity import RigidEntity
from genesis.engine.solvers.rigid.rigid_solver import RigidSolver
from helpers import PLANAR_CAR, make_scene, reported

import genesis_grad_patch as ggp
from genesis_grad_patch import version

pytestmark = pytest.mark.plugin_only

PATCHED = [
    (RigidEntity, "process_input_grad"),
    *[(RigidSolver, name) for name in ("control_dofs_position", "control_dofs_velocity", "control_dofs_force")],
    *[(RigidSolver, name) for name in ("get_qpos", "get_dofs_position", "get_links_pos", "get_links_quat")],
]


def _resolved():
    return {(owner, name): getattr(owner, name) for owner, name in PATCHED}


def _skipped_by_dynamo() -> bool:
    """Whether Dynamo skips Genesis (runs it eagerly inside `torch.compile`)."""
    from torch._dynamo import trace_rules

    return bool(trace_rules.SKIP_DIRS_RE.match(gs.__file__))


def test_uninstall_restores_every_original_object():
    assert ggp.is_installed()
    assert _skipped_by_dynamo()
    patched = _resolved()
    ggp.uninstall()
    try:
        assert not ggp.is_installed()
        stock = _resolved()
        assert not hasattr(gs, "from_torch")
        assert not _skipped_by_dynamo()
        for key in PATCHED:
            assert stock[key] is not patched[key], key
        # Attributes RigidSolver inherited are inherited again rather than copied onto it.
        assert "get_links_quat" not in vars(RigidSolver)
        ggp.uninstall()  # idempotent
    finally:
        ggp.install()
    reinstalled = _resolved()
    ggp.install()  # idempotent
    assert _resolved() == reinstalled
    assert all(reinstalled[key] is not stock[key] for key in PATCHED)
    assert hasattr(gs, "from_torch")
    assert _skipped_by_dynamo()


def test_version_guard(monkeypatch):
    monkeypatch.setattr(version, "genesis_version", lambda: "1.4.4")
    monkeypatch.delenv(version.FORCE_ENV_VAR, raising=False)
    with pytest.raises(ggp.UnsupportedGenesisVersion, match=r"genesis-world==1\.4\.5.*1\.4\.4"):
        version.check_genesis_version()
    monkeypatch.setenv(version.FORCE_ENV_VAR, "1")
    version.check_genesis_version()


def test_install_after_scene_is_built():
    """Patches act at class level, so a scene built before `install()` becomes differentiable too."""
    ggp.uninstall()
    try:
        scene, (car,) = make_scene(gs.morphs.MJCF(file=PLANAR_CAR))
    finally:
        ggp.install()
    target = torch.tensor([0.2, -0.1], dtype=torch.float64, requires_grad=True)
    car.control_dofs_position(target, dofs_idx_local=[3, 4])
    for _ in range(3):
        scene.step()
    car.get_qpos()[2].backward()
    assert target.grad is not None and target.grad.abs().max() > 0


def test_from_torch_keeps_the_graph():
    x = torch.tensor([1.0, 2.0], dtype=torch.float32, requires_grad=True)
    y = gs.from_torch(x * 2)
    assert y.requires_grad and y.dtype == gs.tc_float and y.device == gs.device
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([2.0, 2.0]))
    with reported("detach=True"):
        assert not gs.from_torch(x, detach=True).requires_grad
    assert gs.from_torch(torch.ones(2), requires_grad=True).requires_grad
    assert gs.from_torch(torch.arange(3)).dtype == torch.int64
    with pytest.raises(gs.GenesisException, match="expects a torch.Tensor"):
        gs.from_torch([1.0, 2.0])


def test_disable_env_var_makes_import_a_noop(tmp_path):
    import os
    import subprocess
    import sys

    code = "import genesis_grad_patch as g, genesis as gs; print(g.is_installed(), hasattr(gs, 'from_torch'))"
    env = {**os.environ, ggp.DISABLE_ENV_VAR: "1"}
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
    assert "disabled" in out.stderr


def test_every_private_genesis_name_is_in_the_adapter():
    """`genesis_api` is the one file to audit for another Genesis release: no private attribute is used elsewhere."""
    import ast
    from pathlib import Path

    from genesis_grad_patch._impl import genesis_api

    package = Path(ggp.__file__).parent
    listed = {name for attributes in genesis_api.PRIVATE_ATTRIBUTES.values() for name in attributes}
    defined, used = set(), {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                used.setdefault(node.attr, set()).add(path.name)
            elif (
                isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("genesis.", "quadrants."))
            ):
                assert path.name == "genesis_api.py", f"{path.name} imports Genesis internals ({node.module})"
    not_genesis = {"_getframe", "_C", "_base", "_recompile_re", "_s_global"}  # sys, torch, Dynamo, the plugin's slot
    unlisted = {name: files for name, files in used.items() if name not in defined | not_genesis | listed}
    assert not unlisted, f"private Genesis attributes used but not listed in genesis_api: {unlisted}"


def test_private_genesis_names_exist_on_the_installed_release():
    from genesis_grad_patch._impl import genesis_api

    scene, _ = make_scene(gs.morphs.MJCF(file=PLANAR_CAR))
    assert genesis_api.audit(scene) == []


def _defined_by_plugin(value) -> bool:
    """Whether `value` (a function, method, property, or a wrapper of one) comes from the plugin."""
    for _ in range(8):  # a wrapper's chain of `__wrapped__`
        try:
            value = getattr(value, "__func__", None) or getattr(value, "fget", None) or value
            if str(getattr(value, "__module__", "")).startswith("genesis_grad_patch"):
                return True
            value = getattr(value, "__wrapped__", None)
        except Exception:  # torch's lazy namespaces raise on unknown attributes
            return False
        if value is None:
            return False
    return False


def _plugin_objects_on_genesis_torch_and_quadrants() -> list[str]:
    """The attributes of Genesis's, quadrants's and torch's modules and classes that the plugin defined: what a patch
    would have left behind (read with `vars`, which neither imports nor triggers deprecation shims)."""
    import sys

    owners = [torch, torch.Tensor, torch.nn.Parameter, torch.nn.functional]
    for module_name, module in list(sys.modules.items()):
        if module is not None and module_name.startswith(("genesis.", "quadrants")):
            owners.append(module)
            owners += [
                cls
                for cls in vars(module).values()
                if isinstance(cls, type) and getattr(cls, "__module__", None) == module_name
            ]
    return sorted(
        f"{getattr(owner, '__name__', owner)}.{name}"
        for owner in owners
        for name, value in list(vars(owner).items())
        if _defined_by_plugin(value)
    )


def test_uninstall_leaves_nothing_of_the_plugin_behind():
    """After a rollout that filled every kind of per-solver record (replay, parameter tape, friction tracking, state
    cache, curved contacts), `uninstall()` leaves no plugin object on Genesis, torch or quadrants, no record, and no
    subscriber on the solver."""
    from genesis_grad_patch._impl import records

    scene = gs.Scene(
        sim_options=gs.options.SimOptions(dt=0.01, requires_grad=True),
        rigid_options=gs.options.RigidOptions(tolerance=1e-12, iterations=200),
        show_viewer=False,
    )
    scene.add_entity(gs.morphs.Plane())
    body = scene.add_entity(gs.morphs.Cylinder(radius=0.1, height=0.2, pos=(0, 0, 0.0999)))
    scene.build()
    solver = scene.sim.rigid_solver
    stock_subscribers = set(solver._subscribers)
    force = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    friction = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    body.set_friction(friction)
    for _ in range(3):
        body.control_dofs_force(force, dofs_idx_local=list(range(6)))
        scene.step()
    body.get_qpos()[0].backward()
    assert force.grad is not None and friction.grad is not None
    record = records.peek_solver(solver)
    assert record.replay is not None and record.taped_parameters and record.friction_tracked
    assert record.state_subscriber is not None and record.curved_pairs[0] is not None
    assert _plugin_objects_on_genesis_torch_and_quadrants(), "the scan finds nothing even while installed"

    ggp.uninstall()
    try:
        assert _plugin_objects_on_genesis_torch_and_quadrants() == []
        assert not _skipped_by_dynamo()
        assert records.solver_records() == [] and records.peek_sim(scene.sim) is None
        assert set(solver._subscribers) == stock_subscribers
    finally:
        ggp.install()
        scene.reset()


SCOPED_TORCH = """
import gc, torch
stock = torch.Tensor.detach
import genesis as gs
import genesis_grad_patch
from genesis_grad_patch._impl import detach_watch
gs.init(backend=gs.cpu, precision="64", logging_level="warning")
assert torch.Tensor.detach is stock, "torch wrapped at import"
plain = gs.Scene(sim_options=gs.options.SimOptions(requires_grad=False), show_viewer=False)
plain.add_entity(gs.morphs.Plane())
plain.build()
assert torch.Tensor.detach is stock, "torch wrapped for a scene without gradients"
scene = gs.Scene(sim_options=gs.options.SimOptions(requires_grad=True), show_viewer=False)
scene.add_entity(gs.morphs.Plane())
scene.build()
assert torch.Tensor.detach is not stock and detach_watch.is_watching(), "torch not watched in a differentiable scene"
del scene
gc.collect()
assert torch.Tensor.detach is stock and not detach_watch.is_watching(), "torch still wrapped with no scene left"
print("ok")
"""


def test_torch_is_wrapped_only_while_a_differentiable_scene_is_alive():
    """Importing the plugin leaves torch as it is; strict mode's detach watch wraps torch's detaching methods from the
    build of a differentiable scene until the last one is collected."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SCOPED_TORCH], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
