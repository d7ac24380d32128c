"""
One on-disk kernel cache shared by plain and differentiable scenes.

In a differentiable scene the plugin gives the model's parameter arrays (dofs, links, geoms, contacts) gradient storage,
so the same kernels meet two memory layouts. Quadrants keys each ndarray a kernel reads by its gradient storage as
well, so each layout gets kernels of its own from a shared cache. Two processes sharing one fresh cache, the first
compiling for one layout and the second loading for the other, must run and compute the same physics.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ASSETS

# Run in a new process (`gs.init` is once per process): the parameter setters, the PD control and the step, then the
# state printed as one line of floats; in a differentiable scene the targets and the gains track gradients, and the
# backward runs too.
_CHILD = """
import sys

import torch

import genesis as gs

gs.init(backend=gs.cpu, precision="64", logging_level="warning", seed=0)
import genesis_grad_patch  # noqa: E402

differentiable = sys.argv[1] == "1"
scene = gs.Scene(sim_options=gs.options.SimOptions(dt=0.01, requires_grad=differentiable), show_viewer=False)
scene.add_entity(gs.morphs.Plane())
arm = scene.add_entity(gs.morphs.MJCF(file=sys.argv[2]))
box = scene.add_entity(gs.morphs.Box(size=(0.2, 0.2, 0.2), pos=(1.0, 0.0, 0.1)))
scene.build()
box.set_friction(0.7)
box.set_mass(2.0)
arm.set_dofs_armature([0.01, 0.02])
arm.set_dofs_damping([0.1, 0.2])
arm.set_dofs_kv([1.0, 2.0])
arm.set_dofs_position([0.1, 0.2])
target = torch.tensor([0.5, -0.2], dtype=torch.float64, requires_grad=differentiable)
kp = torch.tensor([20.0, 10.0], dtype=torch.float64, requires_grad=differentiable)
arm.set_dofs_kp(kp)
loss = 0.0
for _ in range(5):
    arm.control_dofs_position(target)
    scene.step()
    loss = loss + (arm.get_dofs_position() ** 2).sum()
with torch.no_grad(), genesis_grad_patch.set_mode("off"):  # logged, on purpose outside the graph
    values = [scene.rigid_solver.get_qpos(), scene.rigid_solver.get_dofs_velocity(), arm.get_dofs_kp()]
print(" ".join(repr(float(x)) for value in values for x in value.reshape(-1)))
if differentiable:
    loss.backward()
    grads = torch.cat([target.grad, kp.grad])
    assert torch.isfinite(grads).all() and (grads != 0).all(), grads
"""


@pytest.mark.slow
@pytest.mark.plugin_only  # the patch's own test (tests/grad/test_rigid_control.py in the series) covers its layouts
@pytest.mark.parametrize("first_requires_grad", [True, False])
def test_kernel_cache_shared_by_plain_and_differentiable_scenes(first_requires_grad, tmp_path):
    env = {**os.environ, "QD_OFFLINE_CACHE_FILE_PATH": str(tmp_path / "kernel_cache")}
    results = {}
    for requires_grad in (first_requires_grad, not first_requires_grad):
        run = subprocess.run(
            [sys.executable, "-c", _CHILD, str(int(requires_grad)), str(ASSETS / "arm.xml")],
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        # Quadrants's compile-time warnings ("[W ...") would hide the error.
        stderr = "\n".join(line for line in run.stderr.splitlines() if not line.startswith("[W "))
        assert run.returncode == 0, f"requires_grad={requires_grad}, exit code {run.returncode}:\n{stderr[-3000:]}"
        results[requires_grad] = np.array(run.stdout.strip().splitlines()[-1].split(), dtype=np.float64)
    # The same physics either way: a plain and a differentiable scene run the same forward.
    np.testing.assert_allclose(results[True], results[False], rtol=1e-12, atol=1e-12)
