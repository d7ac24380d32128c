"""Differentiable state getters: same values as stock, gradients equal to finite differences, one read per step."""

import genesis as gs
import pytest
import torch
from conftest import ASSETS, PLANAR_CAR, assert_grad_close, central_fd, make_scene

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
    box.set_dofs_velocity(SPIN.expand(scene.n_envs, 6) if scene.n_envs else SPIN)
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
        with torch.no_grad():
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
    scene.step()
    for _ in range(3):
        car.get_qpos(), car.get_pos(), box.get_vel(), box.get_ang(), solver.get_dofs_position()
    assert len(reads) == 1
    scene.step()
    car.get_qpos(), car.get_quat()
    assert len(reads) == 2
    # Any setter invalidates the cache: the next read sees the new state.
    car.set_qpos(torch.tensor([0.1, 0.2, 0.3, 0.0, 0.0]))
    qpos = car.get_qpos()
    assert len(reads) == 3
    torch.testing.assert_close(qpos.detach(), torch.tensor([0.1, 0.2, 0.3, 0.0, 0.0], dtype=qpos.dtype))
    scene.reset()
    car.get_qpos()
    assert len(reads) == 4


def test_stock_path_off_grad(scene_single):
    scene, car, box = scene_single
    _advance(scene, box, 1)
    with torch.no_grad():
        assert not car.get_qpos().requires_grad
    with torch.inference_mode():
        assert not box.get_vel().requires_grad


def test_stock_path_in_non_differentiable_scene():
    scene, (car,) = make_scene(gs.morphs.MJCF(file=PLANAR_CAR), requires_grad=False)
    scene.step()
    assert not car.get_qpos().requires_grad
    assert not scene.sim.rigid_solver.get_links_pos().requires_grad


def test_non_differentiable_getters_raise_in_grad_mode(scene_2envs):
    scene, car, arm, box = scene_2envs
    _advance(scene, box, 1)
    with pytest.raises(gs.GenesisException, match="not differentiable"):
        car.get_links_pos(ref=gs.link_ref_frame.link_COM)
    with pytest.raises(gs.GenesisException, match="free-floating"):
        arm.get_vel()
    with pytest.raises(gs.GenesisException, match="free-floating"):
        car.get_links_vel()
    # The stock path stays available where no gradient is needed.
    with torch.no_grad():
        assert arm.get_vel().shape == (2, 3)
