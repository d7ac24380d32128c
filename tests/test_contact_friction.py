"""
Contact friction: d loss / d friction coefficient through the friction pyramid of the contacts, against
central finite differences (float64, 1e-6 relative, box contacts), for every friction setter, batched, with two
dynamic bodies in contact, and under any schedule of friction calls (a property test). Stock Genesis 1.4.5 gives the
coefficient no gradient (its `.grad` stays None: the contact rows' reverse pass leaves it out); the plugin before this
change refused the call. Both modes: the plugin and patch 0011.
"""

from dataclasses import dataclass

import genesis as gs
import pytest
import torch
from helpers import assert_grad_close, central_fd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# A contact's coefficient is the larger of its two geoms' (each times its friction ratio): the box's is set above the
# plane's 1.0 so that it is the one in effect.
FRICTION, RATIO = 1.4, 1.3
VELOCITY = (1.5, 0.3, 0.0, 0.0, 0.0, 0.5)  # sliding and spinning: the friction force is the box's deceleration


def _scene(*morphs, n_envs: int = 0, substeps: int = 1, **rigid_options):
    """A plane and the given bodies, with gravity, in a differentiable scene."""
    scene = gs.Scene(
        sim_options=gs.options.SimOptions(dt=0.01 * substeps, substeps=substeps, requires_grad=True),
        rigid_options=gs.options.RigidOptions(**rigid_options),
        show_viewer=False,
    )
    scene.add_entity(gs.morphs.Plane())
    entities = [scene.add_entity(morph) for morph in morphs]
    scene.build(n_envs=n_envs)
    return scene, entities


def _box(**kwargs):
    return gs.morphs.Box(size=(0.2, 0.2, 0.2), pos=(0.0, 0.0, 0.1), **kwargs)


@pytest.fixture(scope="module")
def sliding():
    scene, (box,) = _scene(_box())
    return scene, box


@pytest.fixture(scope="module")
def sliding2():
    """Two environments, the box sliding at a different speed in each."""
    scene, (box,) = _scene(_box(), n_envs=2)
    return scene, box


def _rollout(scene, box, set_value, horizon: int = 10, schedule=None):
    """Set a value after the reset, slide the box, and sum its squared planar offset and yaw over the steps."""
    scene.reset()
    set_value()
    velocity = torch.tensor(VELOCITY, dtype=torch.float64)
    if scene.n_envs:
        velocity = velocity * torch.linspace(1.0, 0.7, scene.n_envs, dtype=torch.float64)[:, None]
    box.set_dofs_velocity(velocity)
    loss = 0.0
    for t in range(horizon):
        if schedule is not None and t in schedule:
            schedule[t]()
        scene.step()
        q = box.get_dofs_position()
        loss = loss + (q[..., :2] ** 2).sum() + (q[..., 5] ** 2).sum()
    return loss


def _geom(box) -> int:
    return box.geoms[0].idx


SETTERS = {
    "solver.set_geoms_friction": (FRICTION, lambda box, x: box.solver.set_geoms_friction(x, geoms_idx=[_geom(box)])),
    "solver.set_geoms_friction_ratio": (
        RATIO,
        lambda box, x: box.solver.set_geoms_friction_ratio(x, geoms_idx=[_geom(box)]),
    ),
    "entity.set_friction": (FRICTION, lambda box, x: box.set_friction(x[0])),
    "link.set_friction": (FRICTION, lambda box, x: box.links[0].set_friction(x[0])),
    "geom.set_friction": (FRICTION, lambda box, x: box.geoms[0].set_friction(x[0])),
    "entity.set_friction_ratio": (RATIO, lambda box, x: box.set_friction_ratio(x, links_idx_local=[0])),
}


@pytest.mark.parametrize("setter", SETTERS)
def test_friction_gradient_matches_fd(sliding, setter):
    scene, box = sliding
    value, set_ = SETTERS[setter]
    x = torch.tensor([value], dtype=torch.float64, requires_grad=True)
    _rollout(scene, box, lambda: set_(box, x)).backward()
    fd = central_fd(lambda v: _rollout(scene, box, lambda: set_(box, v)), x)
    assert x.grad is not None and x.grad.abs().item() > 1e-4
    assert_grad_close(x.grad, fd)


@pytest.mark.plugin_only
def test_entity_friction_given_several_coefficients_is_refused(sliding):
    """Before: "Boolean value of Tensor with more than one value is ambiguous" from Genesis's range check. (The link's
    and geom's `set_friction` are Genesis's own methods, not replaced: they still answer that way.)"""
    scene, box = sliding
    scene.reset()
    x = torch.full((3,), FRICTION, dtype=torch.float64, requires_grad=True)
    with pytest.raises(gs.GenesisException, match=r"takes one friction coefficient .* shape \(3,\)"):
        box.set_friction(x)
    scene.reset()


@pytest.mark.parametrize("when", ["overridden", "tracked again"])
def test_friction_changed_between_steps(sliding, when):
    """A value set at reset drives the steps until the next call: it gets their gradient alone, exactly."""
    scene, box = sliding
    solver, geom = scene.sim.rigid_solver, [_geom(box)]

    def loss(x):
        later = x[1:] if when == "tracked again" else torch.tensor([1.8], dtype=torch.float64)
        return _rollout(
            scene,
            box,
            lambda: solver.set_geoms_friction(x[:1], geoms_idx=geom),
            12,
            {5: lambda: solver.set_geoms_friction(later, geoms_idx=geom)},
        )

    x = torch.tensor([FRICTION, 1.8], dtype=torch.float64, requires_grad=True)
    loss(x).backward()
    assert_grad_close(x.grad, central_fd(loss, x))


@pytest.mark.parametrize("envs_idx", [None, [1]])
def test_batched_friction_ratio(sliding2, envs_idx):
    """Friction ratios are per environment: each environment's value gets its own environment's gradient."""
    scene, box = sliding2
    n = 2 if envs_idx is None else len(envs_idx)
    x = torch.full((n, 1), RATIO, dtype=torch.float64).add_(torch.arange(n, dtype=torch.float64)[:, None] * 0.1)
    x.requires_grad_(True)

    def loss(v):
        return _rollout(
            scene, box, lambda: scene.sim.rigid_solver.set_geoms_friction_ratio(v, [_geom(box)], envs_idx=envs_idx)
        )

    loss(x).backward()
    assert_grad_close(x.grad, central_fd(loss, x))


def test_batched_shared_friction(sliding2):
    """A geom's friction is shared by the environments: its gradient is the sum over them."""
    scene, box = sliding2
    x = torch.tensor([FRICTION], dtype=torch.float64, requires_grad=True)

    def loss(v):
        return _rollout(scene, box, lambda: scene.sim.rigid_solver.set_geoms_friction(v, geoms_idx=[_geom(box)]))

    loss(x).backward()
    assert_grad_close(x.grad, central_fd(loss, x))


def test_two_dynamic_bodies():
    """A box sliding on a box that rests on the plane: both geoms of the contact move, both coefficients matter."""
    scene, (base, top) = _scene(
        gs.morphs.Box(size=(1.0, 1.0, 0.2), pos=(0.0, 0.0, 0.1)),
        gs.morphs.Box(size=(0.2, 0.2, 0.2), pos=(0.0, 0.0, 0.3)),
    )
    geoms = [_geom(base), _geom(top)]
    x = torch.tensor([1.4, 1.5], dtype=torch.float64, requires_grad=True)

    def loss(v):
        return _rollout(scene, top, lambda: scene.sim.rigid_solver.set_geoms_friction(v, geoms_idx=geoms))

    loss(x).backward()
    assert_grad_close(x.grad, central_fd(loss, x))


def test_contact_rows_after_frictionloss_rows(sliding):
    """Dof friction losses add constraint rows before the contacts' ones: the contact rows are found past them."""
    scene, box = sliding
    box.set_dofs_frictionloss(torch.full((6,), 0.05, dtype=torch.float64))
    try:
        value, set_ = SETTERS["solver.set_geoms_friction"]
        x = torch.tensor([value], dtype=torch.float64, requires_grad=True)
        _rollout(scene, box, lambda: set_(box, x)).backward()
        assert_grad_close(x.grad, central_fd(lambda v: _rollout(scene, box, lambda: set_(box, v)), x))
    finally:
        box.set_dofs_frictionloss(torch.zeros(6, dtype=torch.float64))


# The property: any schedule of friction calls gets FD-exact gradients.


@dataclass(frozen=True)
class FrictionCall:
    ratio: bool  # the friction ratio of some environments, else the geom's friction (all environments)
    envs: tuple[int, ...] | None
    tracked: bool


@st.composite
def friction_schedules(draw):
    horizon = draw(st.integers(2, 12))
    calls = {}
    for t in range(horizon):
        if draw(st.booleans()):
            ratio = draw(st.booleans())
            envs = draw(st.sampled_from((None, (0,), (1,)))) if ratio else None
            calls[t] = FrictionCall(ratio, envs, draw(st.booleans()))
    if not any(call.tracked for call in calls.values()):
        calls[0] = FrictionCall(draw(st.booleans()), None, True)
    return horizon, calls


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(schedule=friction_schedules())
def test_any_friction_schedule_matches_fd(sliding2, schedule):
    """Per step, at most one call of a friction setter: held, overridden, per environment, tracked or not."""
    scene, box = sliding2
    solver, geom = scene.sim.rigid_solver, [_geom(box)]
    horizon, calls = schedule
    tracked = [t for t, call in sorted(calls.items()) if call.tracked]

    def call_at(x, t):
        call = calls[t]
        base = (RATIO if call.ratio else FRICTION) + 0.05 * t
        value = x[tracked.index(t)] if call.tracked else torch.tensor(base, dtype=torch.float64)
        if call.ratio:
            n = 2 if call.envs is None else len(call.envs)
            solver.set_geoms_friction_ratio(value.expand(n, 1), geom, envs_idx=call.envs)
        else:
            solver.set_geoms_friction(value.reshape(1), geoms_idx=geom)

    def at_reset(x):
        # The values of the last rollout stay after a reset, as stock Genesis keeps model parameters: start afresh.
        solver.set_geoms_friction(torch.tensor([FRICTION], dtype=torch.float64), geoms_idx=geom)
        solver.set_geoms_friction_ratio(torch.ones(2, 1, dtype=torch.float64), geom)
        if 0 in calls:
            call_at(x, 0)

    def loss(x):
        steps = {t: (lambda t=t: call_at(x, t)) for t in calls if t > 0}
        return _rollout(scene, box, lambda: at_reset(x), horizon, steps)

    x0 = [(RATIO if calls[t].ratio else FRICTION) + 0.05 * t for t in tracked]
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    try:
        loss(x).backward()
        assert_grad_close(x.grad, central_fd(loss, x))
    finally:
        solver.set_geoms_friction(torch.tensor([FRICTION], dtype=torch.float64), geoms_idx=geom)
        solver.set_geoms_friction_ratio(torch.ones(2, 1, dtype=torch.float64), geom)
