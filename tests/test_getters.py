"""Differentiable state getters: same values as stock, gradients equal to finite differences, one read per step."""

import warnings

import genesis as gs
import pytest
import torch
from helpers import ASSETS, PLANAR_CAR, UPSTREAM_MODE, assert_grad_close, central_fd, make_scene, reported

import genesis_grad_patch as ggp
from genesis_grad_patch.strict import GradientBreakError, GradientBreakWarning

T = 5
SPIN = torch.tensor([0.3, -0.2, 0.5, 1.0, -2.0, 0.7], dtype=torch.float64)


@pytest.fixture(scope="module")
def scene_2envs():
    scene, entities = make_scene(
        gs.morphs.MJCF(file=PLANAR_CAR),
        gs.morphs.MJCF(file=str(ASSETS / "arm.xml")),
        gs.morphs.Box(size=(0.2, 0.3, 0.1), pos=(-2.0, 0.0, 1.0)),
        n_envs=2,
    )
    return scene, *entities


@pytest.fixture(scope="module")
def scene_single():
    scene, entities = make_scene(
        gs.morphs.MJCF(file=PLANAR_CAR), gs.morphs.Box(size=(0.2, 0.3, 0.1), pos=(-2.0, 0.0, 1.0))
    )
    return scene, *entities


def _advance(scene, box, n_steps=3):
    scene.reset()
    # A tracked input: the getters of this rollout build the graph (a rollout that tracks nothing reads stock values).
    spin = SPIN.clone().requires_grad_()
    box.set_dofs_velocity(spin.expand(scene.n_envs, 6) if scene.n_envs else spin)
    for _ in range(n_steps):
        scene.step()


ENTITY_CALLS = [
    ("get_qpos", {}),
    ("get_qpos", {"qs_idx_local": [0, 2]}),
    ("get_qpos", {"qs_idx_local": 1}),
    ("get_dofs_position", {}),
    ("get_dofs_position", {"dofs_idx_local": slice(1, 4)}),
    ("get_dofs_velocity", {}),
    ("get_dofs_velocity", {"dofs_idx_local": torch.tensor([2, 0])}),
    ("get_links_pos", {}),
    ("get_links_pos", {"links_idx_local": [1]}),
    ("get_links_quat", {}),
    ("get_links_quat", {"links_idx_local": [0, 1]}),
    ("get_pos", {}),
    ("get_quat", {}),
]
BOX_CALLS = [("get_vel", {}), ("get_ang", {}), ("get_dofs_position", {}), ("get_pos", {}), ("get_quat", {})]


def _calls(car, box, n_envs):
    calls = [(car, name, kwargs) for name, kwargs in ENTITY_CALLS] + [(box, n, kw) for n, kw in BOX_CALLS]
    if n_envs:
        calls += [(car, name, {**kwargs, "envs_idx": [1]}) for name, kwargs in ENTITY_CALLS[:4]]
        calls += [(box, name, {"envs_idx": [0, 1]}) for name, _ in BOX_CALLS]
    return calls


@pytest.mark.parametrize("layout", ["scene_single", "scene_2envs"])
def test_values_dtype_shape_match_stock(request, layout):
    scene, car, *_, box = request.getfixturevalue(layout)
    _advance(scene, box)
    solver = scene.sim.rigid_solver
    calls = _calls(car, box, scene.n_envs)
    calls += [(solver, "get_qpos", {}), (solver, "get_dofs_position", {"dofs_idx": [3, 4]})]
    calls += [(solver, "get_links_pos", {"links_idx": [0, 2]}), (solver, "get_links_quat", {})]
    for obj, name, kwargs in calls:
        differentiable = getattr(obj, name)(**kwargs)
        with torch.no_grad(), ggp.set_mode("off"):  # the reference value, read on purpose without a graph
            stock = getattr(obj, name)(**kwargs)
        assert differentiable.requires_grad, f"{name}({kwargs}) is not differentiable"
        assert not stock.requires_grad
        assert differentiable.dtype == stock.dtype and differentiable.shape == stock.shape, f"{name}({kwargs})"
        torch.testing.assert_close(differentiable, stock, rtol=1e-12, atol=1e-12, msg=f"{name}({kwargs})")


GETTER_LOSSES = {
    "get_qpos": lambda car, box: (car.get_qpos() ** 2).sum(),
    "get_dofs_position": lambda car, box: (
        (car.get_dofs_position(dofs_idx_local=[1, 2, 3]) ** 2).sum() + box.get_dofs_position()[..., 3:].sum()
    ),
    "get_dofs_velocity": lambda car, box: (car.get_dofs_velocity() ** 2).sum(),
    "get_pos": lambda car, box: car.get_pos().sum() + (box.get_pos() ** 2).sum(),
    "get_quat": lambda car, box: (
        (car.get_quat() * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum() + box.get_quat()[..., 1:].sum()
    ),
    "get_vel": lambda car, box: (box.get_vel() ** 2).sum(),
    "get_ang": lambda car, box: (box.get_ang() * torch.tensor([1.0, -1.0, 2.0])).sum(),
    "get_links_pos": lambda car, box: (car.get_links_pos(links_idx_local=[1, 2])[..., :2] ** 2).sum(),
    "get_links_quat": lambda car, box: car.get_links_quat()[..., 3].sum(),
}


@pytest.mark.parametrize("getter", list(GETTER_LOSSES))
@pytest.mark.parametrize("layout", ["scene_single", "scene_2envs"])
def test_getter_gradients_match_fd(request, layout, getter):
    scene, car, *_, box = request.getfixturevalue(layout)
    loss_fn = GETTER_LOSSES[getter]

    def rollout(x):
        scene.reset()
        box.set_dofs_velocity(SPIN.expand(scene.n_envs, 6) if scene.n_envs else SPIN)
        loss = 0.0
        for t in range(T):
            car.control_dofs_position(x[t], dofs_idx_local=[3, 4])
            box.control_dofs_velocity(x[t, ..., :1].expand(*x.shape[1:-1], 6) * 0 + x[t, ..., :1], dofs_idx_local=None)
            scene.step()
            loss = loss + loss_fn(car, box)
        return loss

    shape = (T, scene.n_envs, 2) if scene.n_envs else (T, 2)
    x = (
        0.4 * torch.rand(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) - 0.2
    ).requires_grad_()
    (grad,) = torch.autograd.grad(rollout(x), x)
    coords = [0, 1, x.numel() // 2, x.numel() - 1]
    fd = central_fd(rollout, x, coords, eps=1e-5)
    assert_grad_close(grad.reshape(-1)[coords], fd, rtol=1e-6)


def test_state_is_read_once_per_step(scene_single, monkeypatch):
    scene, car, box = scene_single
    solver = scene.sim.rigid_solver
    # Each state read registers one state on the tape of the step.
    reads = []
    register = solver._queried_states.append
    monkeypatch.setattr(solver._queried_states, "append", lambda state: reads.append(1) or register(state))
    scene.reset()
    car.set_dofs_velocity(torch.zeros(car.n_dofs, dtype=torch.float64, requires_grad=True))
    scene.step()
    for _ in range(3):
        car.get_qpos(), car.get_pos(), box.get_vel(), box.get_ang(), solver.get_dofs_position()
    assert len(reads) == 1
    scene.step()
    car.get_qpos(), car.get_quat()
    assert len(reads) == 2
    # Any setter invalidates the cache: the next read sees the new state (an overwrite between steps: reported).
    with reported("overwrote the configuration between steps"):
        car.set_qpos(torch.tensor([0.1, 0.2, 0.3, 0.0, 0.0]))
    qpos = car.get_qpos()
    assert len(reads) == 3
    torch.testing.assert_close(qpos.detach(), torch.tensor([0.1, 0.2, 0.3, 0.0, 0.0], dtype=qpos.dtype))
    scene.reset()
    car.get_qpos()
    if not UPSTREAM_MODE:  # the plugin's getters read stock values until the rollout has a tracked input
        assert len(reads) == 3, "a rollout that tracks nothing reads stock values: no state on the tape"
        car.set_dofs_velocity(torch.zeros(car.n_dofs, dtype=torch.float64, requires_grad=True))
        car.get_qpos()
    assert len(reads) == 4
    scene.step()  # the tracked velocity above is used: nothing left pending for the next test's reset


def test_stock_path_off_grad(scene_single):
    scene, car, box = scene_single
    _advance(scene, box, 1)
    with torch.no_grad(), reported("called under `torch.no_grad"):
        assert not car.get_qpos().requires_grad
    with torch.inference_mode(), reported("called under `torch.inference_mode"):
        assert not box.get_vel().requires_grad


def test_stock_path_in_non_differentiable_scene():
    scene, (car,) = make_scene(gs.morphs.MJCF(file=PLANAR_CAR), requires_grad=False)
    scene.step()
    assert not car.get_qpos().requires_grad
    assert not scene.sim.rigid_solver.get_links_pos().requires_grad


# Copies and differentiable centers of mass are in the upstream patch too (patches/0009). Still plugin-only (see
# patches/README.md, "Differences"): non-base link velocities warn instead of raising. Genesis's own reads inside the
# step take the stock path in both.


@pytest.mark.parametrize("layout", ["scene_single", "scene_2envs"])
def test_getter_results_are_their_own_tensors(request, layout):
    # Was: results were views of the step's cached state, so zeroing one in place zeroed what the next getter returned.
    scene, car, *_, box = request.getfixturevalue(layout)
    _advance(scene, box)
    solver = scene.sim.rigid_solver
    calls = [(obj, name, kwargs) for obj, name, kwargs in _calls(car, box, scene.n_envs)]
    calls += [(solver, "get_qpos", {}), (solver, "get_dofs_velocity", {}), (solver, "get_links_pos", {})]
    calls += [(solver, "get_links_quat", {}), (car, "get_links_pos", {"links_idx_local": 1})]
    for obj, name, kwargs in calls:
        with torch.no_grad(), reported("called under `torch.no_grad"):
            stock = getattr(obj, name)(**kwargs)
        getattr(obj, name)(**kwargs).mul_(0.0)
        torch.testing.assert_close(
            getattr(obj, name)(**kwargs).detach(), stock, rtol=1e-12, atol=1e-12, msg=f"{name}({kwargs})"
        )


def test_in_place_edit_of_a_result_keeps_the_gradient_exact(scene_2envs):
    # Was: zeroing 'get_dofs_velocity()' in place zeroed the cached state: the loss lost its velocity term, and its
    # gradient no longer matched finite differences of the same code.
    scene, car, _, box = scene_2envs

    def rollout(x):
        scene.reset()
        loss = 0.0
        for t in range(T):
            car.control_dofs_position(x[t], dofs_idx_local=[3, 4])
            scene.step()
            logged = car.get_dofs_velocity()
            logged[:, 0] = 0.0  # e.g. masking a dof for a log, in place
            loss = loss + (car.get_dofs_velocity() ** 2).sum() + car.get_qpos().sum() + logged.sum()
        return loss

    x = 0.4 * torch.rand((T, 2, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64) - 0.2
    x.requires_grad_()
    (grad,) = torch.autograd.grad(rollout(x), x)
    coords = [0, 3, x.numel() - 1]
    assert_grad_close(grad.reshape(-1)[coords], central_fd(rollout, x, coords, eps=1e-5), rtol=1e-6)


COM_REFS = (gs.link_ref_frame.link_COM, gs.link_ref_frame.root_COM)


@pytest.mark.parametrize("layout", ["scene_single", "scene_2envs"])
def test_centers_of_mass_are_differentiable(request, layout):
    # Was: 'get_links_pos(ref=link_COM/root_COM)' raised in grad mode. Both are functions of the link poses.
    scene, car, *_, box = request.getfixturevalue(layout)
    _advance(scene, box)
    for ref in COM_REFS:
        for kwargs in ({}, {"links_idx_local": [1, 2]}):
            out = car.get_links_pos(ref=ref, **kwargs)
            with torch.no_grad(), ggp.set_mode("off"):
                stock = car.get_links_pos(ref=ref, **kwargs)
            assert out.requires_grad and out.dtype == stock.dtype and out.shape == stock.shape
            torch.testing.assert_close(out.detach(), stock, rtol=1e-12, atol=1e-12, msg=f"{ref} {kwargs}")

    def rollout(x):
        scene.reset()
        box.set_dofs_velocity(SPIN.expand(scene.n_envs, 6) if scene.n_envs else SPIN)
        loss = 0.0
        for t in range(T):
            car.control_dofs_position(x[t], dofs_idx_local=[3, 4])
            scene.step()
            loss = loss + (car.get_links_pos(ref=COM_REFS[0])[..., :2] ** 2).sum()
            loss = loss + car.get_links_pos(ref=COM_REFS[1]).sum() + (box.get_links_pos(ref=COM_REFS[0]) ** 2).sum()
        return loss

    shape = (T, scene.n_envs, 2) if scene.n_envs else (T, 2)
    x = 0.4 * torch.rand(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) - 0.2
    x.requires_grad_()
    (grad,) = torch.autograd.grad(rollout(x), x)
    coords = [0, 1, x.numel() - 1]
    assert_grad_close(grad.reshape(-1)[coords], central_fd(rollout, x, coords, eps=1e-5), rtol=1e-6)


@pytest.mark.plugin_only
def test_link_velocities_without_gradient_warn_and_return_stock(scene_2envs):
    # Was: a GenesisException in grad mode, where stock 1.4.5 returned the value (valid code that only logs it broke).
    scene, car, arm, box = scene_2envs
    calls = [
        (arm, "get_vel", {}),
        (arm, "get_ang", {}),
        (car, "get_links_vel", {}),
        (arm.links[1], "get_vel", {}),
        (box, "get_links_vel", {"ref": gs.link_ref_frame.link_COM}),
    ]
    for obj, name, kwargs in calls:
        _advance(scene, box, 1)  # a new rollout: the call site below reports again
        with torch.no_grad():
            stock = getattr(obj, name)(**kwargs)
        with pytest.warns(GradientBreakWarning, match="not differentiable") as record:
            for _ in range(3):  # one call site: one warning per rollout
                out = getattr(obj, name)(**kwargs)
        assert len([w for w in record if issubclass(w.category, GradientBreakWarning)]) == 1, name
        assert not out.requires_grad
        torch.testing.assert_close(out, stock, rtol=0, atol=0)
        with ggp.set_mode("raise"), pytest.raises(GradientBreakError, match="not differentiable"):
            getattr(obj, name)(**kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("error", GradientBreakWarning)
            with ggp.set_mode("off"):
                getattr(obj, name)(**kwargs)
            with torch.no_grad():
                getattr(obj, name)(**kwargs)
    # The velocity of a free base stays differentiable.
    assert box.get_vel().requires_grad and box.get_ang().requires_grad


def _tracked_steps(scene, arm, n=3):
    scene.reset()
    x = torch.tensor([0.2, -0.1], dtype=torch.float64, requires_grad=True)
    for i in range(n):
        arm.control_dofs_position(x * (i + 1))
        scene.step()
    return x


def test_genesis_sensor_reads_take_the_stock_path():
    # Was: the raycaster's 'get_links_pos' inside 'scene.step()' returned differentiable tensors, which it copies into
    # its persistent pose buffer: the buffer carried autograd history (and kept the rollout's graph alive).
    scene = gs.Scene(
        sim_options=gs.options.SimOptions(dt=0.01, requires_grad=True, gravity=(0, 0, 0)), show_viewer=False
    )
    arm = scene.add_entity(gs.morphs.MJCF(file=str(ASSETS / "diag_arm.xml")))
    sensor = scene.add_sensor(
        gs.sensors.Raycaster(
            pattern=gs.sensors.raycaster.GridPattern(resolution=0.5, size=(1.0, 1.0)),
            entity_idx=arm.idx,
            link_idx_local=1,
            max_range=5.0,
        )
    )
    scene.build()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        x = _tracked_steps(scene, arm)
        loss = (arm.get_dofs_position() ** 2).sum()
    assert not record, [str(w.message) for w in record]
    buffers = (sensor._shared_metadata.links_pos, sensor._shared_metadata.links_quat)
    assert all(not b.requires_grad and b.grad_fn is None for b in buffers)
    torch.testing.assert_close(buffers[0][0, 0], arm.links[1].get_pos().detach())
    loss.backward()
    assert x.grad.abs().sum() > 0


class _ReadingViewer:
    """Stands in for the viewer: its per-step update reads a link velocity, as the mouse interaction plugin does."""

    def __init__(self, link):
        self.link, self.reads = link, []

    def update(self, *args, **kwargs):
        pass

    def update_on_sim_step(self, advanced):
        self.reads.append(self.link.get_vel())


def test_viewer_reads_take_the_stock_path(scene_2envs):
    # Was: the viewer's 'link.get_vel()' of a non-base link raised in a differentiable scene in grad mode.
    scene, _, arm, _ = scene_2envs
    viewer = _ReadingViewer(arm.links[1])
    scene.visualizer._viewer = viewer
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", GradientBreakWarning)
            _tracked_steps(scene, arm)
    finally:
        scene.visualizer._viewer = None
    assert len(viewer.reads) == 3 and not any(read.requires_grad for read in viewer.reads)
