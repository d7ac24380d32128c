"""
A tracked rollout reads nothing back from the device per step or per reversed step.

On a GPU every read of device data on the host (`.item()`, `.tolist()`, `bool(tensor)`, `int(tensor)`,
`torch.equal`) waits for the queue to drain: one per step turns a rollout of asynchronous launches into a synchronous
one. The reads the plugin's own code makes (the immediate caller is a module of `genesis_grad_patch`) are counted over
rollouts of two lengths: their count must not grow with the horizon. Reads made once per rollout (the accuracy report
at backward, caches made at the first step) are allowed; Genesis's own reads (its error flags every few steps, the
NaN check of each reversed substep) are not the plugin's. Against the upstream patch, the reads counted are those of
the modules the series adds to Genesis (the replay record, the parameter tape).

On CPU these reads cost nothing, which is why the count, not a timing, is what keeps the property.
"""

import sys
from pathlib import Path

import genesis as gs
import pytest
import torch
from helpers import DIAG_ARM, UPSTREAM_MODE, make_scene

if UPSTREAM_MODE:
    _RIGID_DIR = Path(gs.__file__).parent / "engine" / "solvers" / "rigid"
    COUNTED = tuple(str(_RIGID_DIR / name) for name in ("replay.py", "params_grad.py"))
else:
    COUNTED = (str(Path(__import__("genesis_grad_patch").__file__).parent),)
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


class HostReads:
    """Counts the reads of tensor values on the host made directly by the counted code, while active."""

    def __init__(self):
        self.count = 0
        self.where: list[str] = []

    def _counting(self, stock):
        def read(*args, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(COUNTED):
                self.count += 1
                self.where.append(f"{Path(caller.co_filename).name}:{caller.co_name}")
            return stock(*args, **kwargs)

        return read

    def __enter__(self) -> "HostReads":
        self._saved = [(torch.Tensor, name, getattr(torch.Tensor, name)) for name in READS]
        self._saved.append((torch, "equal", torch.equal))
        for owner, name, stock in self._saved:
            setattr(owner, name, self._counting(stock))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, stock in self._saved:
            setattr(owner, name, stock)


@pytest.fixture(scope="module")
def arm():
    scene, (arm,) = make_scene(gs.morphs.MJCF(file=DIAG_ARM), n_envs=4)
    return scene, arm


def _reads(scene, arm, steps: int, schedule: str) -> HostReads:
    x = torch.full((steps, 4, 2), 0.1, dtype=torch.float64, requires_grad=True)
    kp = torch.tensor([30.0, 20.0], dtype=torch.float64, requires_grad=True)
    kv = torch.tensor([3.0, 2.0], dtype=torch.float64, requires_grad=True)
    scene.reset()
    with HostReads() as reads:
        arm.set_dofs_kp(kp)
        arm.set_dofs_kv(kv)
        loss = 0.0
        for t in range(steps):
            if schedule == "every step":
                arm.control_dofs_position(x[t], dofs_idx_local=[0, 1])
            elif schedule == "held" and t % 3 == 0:
                arm.control_dofs_position(x[t], dofs_idx_local=[0, 1])
            elif schedule == "force and velocity":
                arm.control_dofs_force(x[t, :, :1], dofs_idx_local=[0])
                arm.control_dofs_velocity(x[t, :, 1:], dofs_idx_local=[1])
            elif schedule == "solver":
                scene.sim.rigid_solver.control_dofs_position(x[t], dofs_idx=[0, 1])
            scene.step()
            loss = loss + arm.get_qpos().square().sum() + arm.get_dofs_velocity().square().sum()
            loss = loss + arm.get_links_pos()[:, -1].square().sum()
        loss.backward()
    assert x.grad.abs().sum() > 0 and (kp.grad.abs().sum() + kv.grad.abs().sum()) > 0
    return reads


@pytest.mark.parametrize("schedule", ["every step", "held", "force and velocity", "solver"])
def test_no_host_read_per_step_or_reversed_step(arm, schedule):
    scene, arm = arm
    _reads(scene, arm, 4, schedule)  # views and caches made
    short, long = _reads(scene, arm, 4, schedule), _reads(scene, arm, 12, schedule)
    assert long.count == short.count, (
        f"{long.count - short.count} more host reads in 8 more steps: {sorted(set(long.where))}"
    )
