"""
Before/after numbers of the upstream patches, against whichever Genesis is imported (stock or patched tree).

    GENESIS_GRAD_PATCH_DISABLE=1 .venv/bin/python scripts/measure_upstream_patch.py                      # stock 1.4.5
    PYTHONPATH=build/upstream-genesis .venv/bin/python scripts/measure_upstream_patch.py                 # patched

The plugin is never imported. Float64 on CPU, a two-link hinge arm under gravity, no contact; every gradient is compared
with a central finite difference of the same rollout (run on the same scene, without taping).

1. Stale control force (patch 0001): tracked `control_dofs_force` on steps 0-9, then an untracked constant force on
   steps 10-19. Reports d loss / d force of steps 9 and 0.
2. PD targets on the entity (patch 0002): tracked `control_dofs_position` targets on 10 steps.
3. The report's pattern (patch 0002): solver-level `control_dofs_position`, `scene.step()`, solver `get_qpos()`.
"""

import sys

import genesis as gs
import numpy as np
import torch

ARM = """
<mujoco model="arm2">
  <worldbody>
    <body name="upper" pos="0 0 1">
      <joint name="shoulder" type="hinge" axis="0 1 0" damping="0.1"/>
      <inertial pos="0.15 0 0" mass="1.0" diaginertia="0.01 0.01 0.01"/>
      <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.03" contype="0" conaffinity="0"/>
      <body name="lower" pos="0.3 0 0">
        <joint name="elbow" type="hinge" axis="0 1 0" damping="0.1"/>
        <inertial pos="0.15 0 0" mass="0.5" diaginertia="0.005 0.005 0.005"/>
        <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.03" contype="0" conaffinity="0"/>
      </body>
    </body>
  </worldbody>
</mujoco>
"""
FD_EPS = 1e-6


def build():
    scene = gs.Scene(
        sim_options=gs.options.SimOptions(dt=0.01, requires_grad=True),
        rigid_options=gs.options.RigidOptions(enable_collision=False, enable_joint_limit=False),
        show_viewer=False,
    )
    arm = scene.add_entity(gs.morphs.MJCF(file=ARM))
    scene.build()
    arm.set_dofs_kp([20.0, 10.0])
    arm.set_dofs_kv([2.0, 1.0])
    return scene, arm


def rollout(scene, arm, apply, n_steps, inputs, read):
    """Run `n_steps` steps from the initial state, `apply(i, inputs[i] or None)` before each; return the loss."""
    scene.reset()
    for i in range(n_steps):
        apply(i, inputs[i] if i < len(inputs) else None)
        scene.step()
    return read()


def fd_grad(scene, arm, apply, n_steps, base, which, read):
    grad = np.zeros_like(base[which])
    for k in range(grad.size):
        values = []
        for sign in (1.0, -1.0):
            inputs = [b.copy() for b in base]
            inputs[which].reshape(-1)[k] += sign * FD_EPS
            with torch.no_grad():
                loss = rollout(scene, arm, apply, n_steps, [torch.tensor(x) for x in inputs], read)
            values.append(float(loss))
        grad.reshape(-1)[k] = (values[0] - values[1]) / (2 * FD_EPS)
    return grad


def report(name, ana, fd):
    err = np.abs(ana - fd).max()
    rel = err / max(np.abs(fd).max(), 1e-12)
    print(
        f"  {name}: autograd {np.array2string(ana, precision=4)}  FD {np.array2string(fd, precision=4)}  "
        f"max abs err {err:.2e}  rel {rel:.1e}"
    )


def main():
    gs.init(backend=gs.cpu, precision="64", logging_level="warning")
    print(f"genesis {gs.__version__} from {gs.__file__}")
    scene, arm = build()
    solver = scene.sim.rigid_solver
    target = torch.tensor([0.4, -0.3], dtype=gs.tc_float)
    rng = np.random.default_rng(0)

    def loss_state():
        qpos = solver.get_state().qpos[0]
        return ((qpos - target) ** 2).sum()

    # 1. Stale control force.
    print("1. tracked control_dofs_force on steps 0-9, untracked constant force on steps 10-19")
    base = [rng.standard_normal(2) for _ in range(10)]
    constant = torch.tensor([0.5, -0.2], dtype=gs.tc_float)

    def apply_force(i, x):
        arm.control_dofs_force(x if x is not None else constant)

    xs = [torch.tensor(b, requires_grad=True) for b in base]
    loss = rollout(scene, arm, apply_force, 20, xs, loss_state)
    loss.backward()
    for which in (9, 0):
        report(
            f"d loss / d force[{which}]",
            xs[which].grad.numpy(),
            fd_grad(scene, arm, apply_force, 20, base, which, loss_state),
        )

    # 2. PD position targets on the entity.
    print("2. tracked entity control_dofs_position targets on steps 0-9")
    base = [0.3 * rng.standard_normal(2) for _ in range(10)]

    def apply_pos(i, x):
        arm.control_dofs_position(x)

    xs = [torch.tensor(b, requires_grad=True) for b in base]
    try:
        loss = rollout(scene, arm, apply_pos, 10, xs, loss_state)
        loss.backward()
    except Exception as e:  # stock Genesis raises here
        print(f"  backward raised {type(e).__name__}: {e}")
    else:
        for which in (9, 0):
            report(
                f"d loss / d position[{which}]",
                xs[which].grad.numpy(),
                fd_grad(scene, arm, apply_pos, 10, base, which, loss_state),
            )

    # 3. The report's pattern: solver-level control, step, solver get_qpos.
    print("3. solver.control_dofs_position(target) -> scene.step() -> solver.get_qpos() (steps 0-9)")
    dofs_idx = [arm.dof_start, arm.dof_start + 1]

    def apply_solver_pos(i, x):
        solver.control_dofs_position(x, dofs_idx)

    def loss_qpos():
        return ((solver.get_qpos() - target) ** 2).sum()

    xs = [torch.tensor(b, requires_grad=True) for b in base]
    loss = rollout(scene, arm, apply_solver_pos, 10, xs, loss_qpos)
    print(f"  get_qpos().requires_grad = {solver.get_qpos().requires_grad}")
    try:
        loss.backward()
    except Exception as e:
        print(f"  loss.backward() raised {type(e).__name__}: {e}")
    else:
        print(f"  position[9].grad is {'None' if xs[9].grad is None else 'set'}")
        if xs[9].grad is not None:
            for which in (9, 0):
                report(
                    f"d loss / d position[{which}]",
                    xs[which].grad.numpy(),
                    fd_grad(scene, arm, apply_solver_pos, 10, base, which, loss_qpos),
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
