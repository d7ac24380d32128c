"""
The contract of replay fidelity, as a property: any control schedule gets FD-exact gradients.

Per control tick (every `decimation` steps), zero to two calls of any kind (none, force, position, velocity,
position+velocity), on random dof subsets, tracked or not, on an entity or on the solver, on random environment subsets
of batched scenes; gains changed between steps; horizons of 1-40 steps; substeps 1 and 2. Every probed coordinate of
the tracked inputs matches central finite differences (float64, 1e-6 relative). Without `replay.py`, 28 of the 40
schedules of this budget were wrong.

`GENESIS_GRAD_PATCH_SCHEDULE_LOG=FILE` appends each example's relative error to FILE instead of asserting (to count
the wrong schedules of a build).
"""

import os
from dataclasses import dataclass

import genesis as gs
import pytest
import torch
from helpers import DIAG_ARM, make_scene
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

METHODS = ("force", "position", "velocity", "position_velocity")
SCALE = {"force": 1.5, "position": 0.5, "velocity": 1.0}
N_ENVS = (0, 3)
SUBSTEPS = (1, 2)
LOG = os.environ.get("GENESIS_GRAD_PATCH_SCHEDULE_LOG")


@pytest.fixture(scope="module")
def scenes():
    """Two arms (2 dofs each, so that solver-level calls span entities), unbatched and batched, 1 and 2 substeps."""
    built = {}
    for n_envs in N_ENVS:
        for substeps in SUBSTEPS:
            morphs = (gs.morphs.MJCF(file=DIAG_ARM, pos=(0, 0, 0)), gs.morphs.MJCF(file=DIAG_ARM, pos=(1, 0, 0)))
            scene, arms = make_scene(*morphs, n_envs=n_envs, substeps=substeps, dt=0.01 * substeps)
            built[n_envs, substeps] = (scene, arms)
    return built


@dataclass(frozen=True)
class Call:
    method: str
    on_solver: bool
    entity: int
    dofs: tuple[int, ...]  # local to the entity, or global on the solver
    envs: tuple[int, ...] | None
    tracked: bool


@dataclass(frozen=True)
class Schedule:
    n_envs: int
    substeps: int
    horizon: int
    decimation: int
    calls: dict[int, tuple[Call, ...]]
    gains: dict[int, tuple[tuple[float, ...], tuple[float, ...]]]  # step -> (kp, kv) of the 4 dofs
    seed: int


@st.composite
def schedules(draw) -> Schedule:
    n_envs = draw(st.sampled_from(N_ENVS))
    horizon = draw(st.integers(1, 40))
    decimation = draw(st.integers(1, 5))
    calls = {}
    for t in range(0, horizon, decimation):
        step_calls = []
        for _ in range(draw(st.integers(0, 2))):
            on_solver = draw(st.booleans())
            n_dofs = 4 if on_solver else 2
            dofs = tuple(draw(st.lists(st.integers(0, n_dofs - 1), min_size=1, max_size=n_dofs, unique=True)))
            envs = None
            if n_envs and draw(st.booleans()):
                envs = tuple(
                    sorted(draw(st.lists(st.integers(0, n_envs - 1), min_size=1, max_size=n_envs, unique=True)))
                )
            step_calls.append(
                Call(
                    draw(st.sampled_from(METHODS)), on_solver, draw(st.integers(0, 1)), dofs, envs, draw(st.booleans())
                )
            )
        if step_calls:
            calls[t] = tuple(step_calls)
    if not any(call.tracked for step_calls in calls.values() for call in step_calls):
        # Every example has an input to differentiate: a tracked call at step 0 joins the schedule.
        calls[0] = (*calls.get(0, ()), Call(draw(st.sampled_from(METHODS)), False, 0, (0, 1), None, True))
    gain = st.tuples(*[st.floats(2.0, 30.0)] * 4)
    damping = st.tuples(*[st.floats(0.2, 3.0)] * 4)
    changes = draw(st.lists(st.integers(0, horizon - 1), max_size=2, unique=True))
    gains = {t: (draw(gain), draw(damping)) for t in changes}
    return Schedule(
        n_envs, draw(st.sampled_from(SUBSTEPS)), horizon, decimation, calls, gains, draw(st.integers(0, 999))
    )


def _arg_shapes(call: Call, n_envs: int) -> list[tuple[int, ...]]:
    batch = (len(call.envs) if call.envs is not None else n_envs,) if n_envs else ()
    return [(*batch, len(call.dofs))] * (2 if call.method == "position_velocity" else 1)


def _scales(call: Call) -> list[float]:
    return [SCALE["position"], SCALE["velocity"]] if call.method == "position_velocity" else [SCALE[call.method]]


class Rollout:
    """A schedule played on its scene; tracked arguments are slices of one flat input vector."""

    def __init__(self, schedule: Schedule, scene, arms):
        self.schedule, self.scene, self.arms = schedule, scene, arms
        self.solver = scene.sim.rigid_solver
        self.kp0, self.kv0 = self.solver.get_dofs_kp().clone(), self.solver.get_dofs_kv().clone()
        gen = torch.Generator().manual_seed(schedule.seed)
        self.constants, self.slices, n = {}, {}, 0
        for t, step_calls in schedule.calls.items():
            for i, call in enumerate(step_calls):
                for j, (shape, scale) in enumerate(zip(_arg_shapes(call, schedule.n_envs), _scales(call), strict=True)):
                    value = scale * (2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1)
                    if call.tracked:
                        self.slices[t, i, j] = (n, shape)
                        n += value.numel()
                    self.constants[t, i, j] = value
        self.x0 = torch.cat([self.constants[key].reshape(-1) for key in self.slices] or [torch.zeros(0)])

    def _args(self, x, t, i, call):
        args = []
        for j in range(len(_arg_shapes(call, self.schedule.n_envs))):
            if (t, i, j) in self.slices:
                start, shape = self.slices[t, i, j]
                args.append(x[start : start + torch.Size(shape).numel()].reshape(shape))
            else:
                args.append(self.constants[t, i, j])
        return args

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.scene.reset()
        self.solver.set_dofs_kp(self.kp0)
        self.solver.set_dofs_kv(self.kv0)
        loss = 0.0
        for t in range(self.schedule.horizon):
            if t in self.schedule.gains:
                kp, kv = self.schedule.gains[t]
                self.solver.set_dofs_kp(torch.tensor(kp, dtype=torch.float64))
                self.solver.set_dofs_kv(torch.tensor(kv, dtype=torch.float64))
            for i, call in enumerate(self.schedule.calls.get(t, ())):
                envs = list(call.envs) if call.envs is not None else None
                args = self._args(x, t, i, call)
                if call.on_solver:
                    getattr(self.solver, f"control_dofs_{call.method}")(*args, dofs_idx=list(call.dofs), envs_idx=envs)
                else:
                    arm = self.arms[call.entity]
                    getattr(arm, f"control_dofs_{call.method}")(*args, dofs_idx_local=list(call.dofs), envs_idx=envs)
            self.scene.step()
            state = self.solver.get_state()
            loss = loss + (state.qpos**2).sum() + 0.1 * (state.dofs_vel**2).sum()
        return loss

    def restore_gains(self):
        self.solver.set_dofs_kp(self.kp0)
        self.solver.set_dofs_kv(self.kv0)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate] if LOG else list(Phase),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(schedule=schedules())
def test_any_schedule_matches_finite_differences(scenes, schedule):
    scene, arms = scenes[schedule.n_envs, schedule.substeps]
    rollout = Rollout(schedule, scene, arms)
    try:
        x = rollout.x0.clone().requires_grad_(True)
        loss = rollout(x)
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
        grad = torch.zeros_like(x) if grad is None else grad
        gen = torch.Generator().manual_seed(schedule.seed)
        coords = sorted({0, x.numel() - 1, int(torch.randint(x.numel(), (1,), generator=gen))})
        with torch.no_grad():
            fd = torch.stack(
                [(rollout(x0 + e) - rollout(x0 - e)) / 2e-5 for x0, e in _perturbations(rollout.x0, coords, 1e-5)]
            )
    finally:
        rollout.restore_gains()
    err = ((grad[coords] - fd).abs().max() / max(fd.abs().max().item(), 1e-9)).item()
    if LOG:
        with open(LOG, "a") as log:
            log.write(f"{err:.3e} {schedule}\n")
        return
    assert err <= 1e-6, f"autograd {grad[coords].tolist()} != finite differences {fd.tolist()} (rel. err {err:.2e})"


def _perturbations(x0: torch.Tensor, coords, eps: float):
    for i in coords:
        e = torch.zeros_like(x0)
        e[i] = eps
        yield x0, e
