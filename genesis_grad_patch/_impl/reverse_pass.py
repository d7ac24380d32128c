"""
The reverse pass of a step starts from its checkpoint, without first replaying the step.

Genesis reverses a step in three parts (`Simulator._step_grad`): `Simulator.load_ckpt` restores the first frame of the
step's checkpoint and replays the whole step forward, which re-applies the taped calls and rebuilds the adjoint cache
(qpos, velocity and acceleration at each substep boundary); then each substep, last first, is replayed once more from
its frame of that cache and reversed (`RigidSolver.substep_pre_coupling_grad`). The first replay rebuilds nothing the
checkpoint does not hold already: `RigidSolver.save_ckpt` copied every frame of the adjoint cache after the forward
step, and the forward computed them with the very controls and parameters the step ran with. Restoring all the frames
and re-applying the taped calls is enough; the substep replays of the reverse pass recompute everything else.

That replay was half a forward step per reversed step (15 of the 48 kernel launches of a reversed step of the steering
car, three of them host-to-solver copies that cost ~170 us each on CPU): skipping it changes no gradient of a converged scene (the constraint solve of the
substep replay starts from the forward's warm start, restored with the frames, instead of from the first replay's
solution).

Only the common case takes this path: a rigid-only scene whose checkpoint window is one step (`substeps_local` equal to
`substeps`, Genesis's default in differentiable mode) and whose taped calls at that step are control calls (the
state setters replay against the restored state, which the stock path rebuilds). Everything else goes through
Genesis's own `load_ckpt`.
"""

from operator import attrgetter

import genesis as gs
import quadrants as qd
import torch

from . import control, patching, records, replay
from .genesis_api import RigidSolver, Simulator, array_class, constraint_backward

# Taped entity calls that only write control fields: replaying them needs no restored state.
_CONTROL_CALLS = frozenset(control.CONTROL_TARGETS)
# Checkpoint entry -> (the adjoint cache array holding its frames, the array the stock restore writes its first into).
_FRAMES = {
    "qpos": (attrgetter("_rigid_adjoint_cache.qpos"), attrgetter("rigid_info.qpos")),
    "dofs_vel": (attrgetter("_rigid_adjoint_cache.dofs_vel"), attrgetter("dyn_state.dofs.vel")),
    "dofs_acc": (attrgetter("_rigid_adjoint_cache.dofs_acc"), attrgetter("dyn_state.dofs.acc")),
}
_WARM_START = attrgetter("constraint_solver.constraint_state.qacc_ws")


def _reusable(sim: Simulator, ckpt_name: str) -> bool:
    """Whether the step whose checkpoint is `ckpt_name` can be reversed from its checkpoint alone."""
    if not (gs.use_zerocopy and sim._rigid_only and sim._steps_local == 1):
        return False
    solver = sim.rigid_solver
    if ckpt_name not in solver._ckpt:
        return False
    for entity in solver._entities:
        for taped in entity._ckpt[ckpt_name]["_tgt_buffer"]:
            if not _CONTROL_CALLS.issuperset(key[0] for key in taped):
                return False
    return True


def _restore(solver: RigidSolver, ckpt_name: str) -> None:
    """Write every frame of the checkpoint back into the adjoint cache, and its first frame into the state."""
    ckpt = solver._ckpt[ckpt_name]
    for name, (frames, current) in _FRAMES.items():
        saved = torch.from_numpy(ckpt[name])
        records.view(solver, "cache." + name, frames).copy_(saved)
        records.view(solver, name, current).copy_(saved[0])
    if solver.constraint_solver is not None and solver._substeps == 1:
        # The forward's warm start of this step's constraint solve: the acceleration the previous step ended with.
        records.view(solver, "qacc_ws", _WARM_START).copy_(torch.from_numpy(ckpt["dofs_acc"][0]))
    for entity in solver._entities:
        entity.load_ckpt(ckpt_name)


def load_ckpt(self: Simulator) -> None:
    """`Simulator.load_ckpt` (once per reversed step): restore the checkpoint and re-apply the step's taped calls."""
    start = self._cur_substep_global - self._substeps_local
    ckpt_name = str(start)
    if not _reusable(self, ckpt_name):
        return patching.original(Simulator, "load_ckpt")(self)
    solver = self.rigid_solver
    _restore(solver, ckpt_name)
    replay.restored(solver, ckpt_name)
    # What the replayed step did besides its substeps: the taped calls applied at its first substep, the external
    # forces cleared at its end, and the clock advanced to the end of the window.
    self._cur_substep_global = start
    self.process_input(in_backward=True)
    self._cur_substep_global = start + self._substeps_local
    solver.clear_external_force()
    # As the last replayed substep leaves them: the cartesian state is refreshed from the restored frames by each
    # substep replay of the reverse pass.
    solver._is_forward_pos_updated = solver._is_forward_vel_updated = not solver._enable_mujoco_compatibility


def compute_gradients(constraint_state, rigid_info) -> None:
    """
    `constraint.backward.kernel_compute_gradients` (once per reversed substep of a scene with constraints), serialized
    on the CPU.

    Genesis serializes every loop on the CPU (`PARA_LEVEL.NEVER`: one thread does the work, parallelism is across
    processes), through `qd.loop_config(serialize=...)` in each kernel; this kernel has none, so each of its five loops
    is handed to quadrants's thread pool and waited for, ~60 us apiece whatever the work (car, 16 contact rows: 400 us
    for the kernel, 2.45 -> 2.15 ms per reversed step serialized, bit-identical gradients). Upstream: patch 0014.
    """
    if gs.backend == gs.cpu:
        kernel_compute_gradients_serial(constraint_state, rigid_info)
    else:
        patching.original(constraint_backward, "kernel_compute_gradients")(constraint_state, rigid_info)


def _envs_ndarray(solver: RigidSolver) -> qd.Ndarray:
    record = records.of_solver(solver)
    if record.envs_ndarray is None:
        envs_idx = solver._scene._envs_idx
        record.envs_ndarray = qd.ndarray(qd.i32, shape=envs_idx.shape)
        record.envs_ndarray.from_numpy(envs_idx.cpu().numpy().astype("int32"))
    return record.envs_ndarray


def update_cartesian_grad(self: RigidSolver, envs_idx) -> None:
    """
    `RigidSolver._update_cartesian_grad` (once or twice per reversed substep), given the environments as a quadrants
    ndarray.

    quadrants reuses the bound arguments of a launch whose arguments are the same objects, except when one is a torch
    tensor, whose memory it cannot track: the scene's tensor of environment indices made its two kernels bind every
    array of the solver state anew at each call (~60 us each on CPU).
    """
    if envs_idx is self._scene._envs_idx:
        envs_idx = _envs_ndarray(self)
    patching.original(RigidSolver, "_update_cartesian_grad")(self, envs_idx)


def install() -> None:
    patching.patch(Simulator, "load_ckpt", load_ckpt)
    patching.patch(RigidSolver, "_update_cartesian_grad", update_cartesian_grad)
    patching.patch(constraint_backward, "kernel_compute_gradients", compute_gradients)


@qd.kernel(fastcache=True)
def kernel_compute_gradients_serial(constraint_state: array_class.ConstraintState, rigid_info: array_class.RigidInfo):
    """
    Genesis's `constraint.backward.kernel_compute_gradients` (the gradients of the constraint solve's inputs, from its
    adjoint vector), with every loop serialized: the CPU runs it (see `compute_gradients`).
    """
    _B = constraint_state.bw_u.shape[1]
    n_dofs = constraint_state.bw_u.shape[0]
    n_constraints = constraint_state.bw_Ju.shape[0]

    # clear grads
    qd.loop_config(serialize=True)
    for i_d0, i_d1, i_b in qd.ndrange(n_dofs, n_dofs, _B):
        constraint_state.dL_dM[i_d0, i_d1, i_b] = gs.qd_float(0.0)
    qd.loop_config(serialize=True)
    for i_c, i_d, i_b in qd.ndrange(n_constraints, n_dofs, _B):
        constraint_state.dL_djac[i_c, i_d, i_b] = gs.qd_float(0.0)
    qd.loop_config(serialize=True)
    for i_c, i_b in qd.ndrange(n_constraints, _B):
        constraint_state.dL_daref[i_c, i_b] = gs.qd_float(0.0)
        constraint_state.dL_defc_D[i_c, i_b] = gs.qd_float(0.0)
        constraint_state.bw_Ju[i_c, i_b] = gs.qd_float(0.0)
        constraint_state.bw_y[i_c, i_b] = gs.qd_float(0.0)
        constraint_state.bw_w[i_c, i_b] = gs.qd_float(0.0)
    qd.loop_config(serialize=True)
    for i_d, i_b in qd.ndrange(n_dofs, _B):
        constraint_state.dL_dforce[i_d, i_b] = gs.qd_float(0.0)

    # Ju, w, y. Every Jacobian product runs over the row's support (jac_dofs_idx), as the forward's do: an entry
    # outside it is structurally zero and moves nothing, so its gradient is zero.
    qd.loop_config(serialize=True)
    for i_b in range(_B):
        # Ju
        for i_c in range(constraint_state.n_constraints[i_b]):
            s = gs.qd_float(0.0)
            for k in range(constraint_state.jac_n_dofs[i_c, i_b]):
                i_d = constraint_state.jac_dofs_idx[i_c, k, i_b]
                s += constraint_state.jac[i_c, i_d, i_b] * constraint_state.bw_u[i_d, i_b]
            constraint_state.bw_Ju[i_c, i_b] = s

        # w = J qacc - aref
        # y = D \odot w
        for i_c in range(constraint_state.n_constraints[i_b]):
            t = gs.qd_float(0.0)
            for k in range(constraint_state.jac_n_dofs[i_c, i_b]):
                i_d = constraint_state.jac_dofs_idx[i_c, k, i_b]
                t += constraint_state.jac[i_c, i_d, i_b] * constraint_state.qacc[i_d, i_b]
            constraint_state.bw_w[i_c, i_b] = t - constraint_state.aref[i_c, i_b]
            constraint_state.bw_y[i_c, i_b] = constraint_state.efc_D[i_c, i_b] * constraint_state.bw_w[i_c, i_b]

        # grads
        # force: u
        for i_d in range(n_dofs):
            constraint_state.dL_dforce[i_d, i_b] += constraint_state.bw_u[i_d, i_b]

        # per-constraint (mask by active)
        # aref: Ju \odot D
        # D: -Ju \odot w
        # J: -[u * y^T + qacc * (D \odot (Ju)^T)]
        for i_c in range(constraint_state.n_constraints[i_b]):
            if constraint_state.active[i_c, i_b] != 0:
                # aref: Ju \odot D
                constraint_state.dL_daref[i_c, i_b] += (
                    constraint_state.efc_D[i_c, i_b] * constraint_state.bw_Ju[i_c, i_b]
                )
                # D: -Ju \odot w
                constraint_state.dL_defc_D[i_c, i_b] -= (
                    constraint_state.bw_Ju[i_c, i_b] * constraint_state.bw_w[i_c, i_b]
                )

                # J: -[u * y^T + qacc * (D \odot (Ju))^T]
                DJu_i = constraint_state.efc_D[i_c, i_b] * constraint_state.bw_Ju[i_c, i_b]
                y_i = constraint_state.bw_y[i_c, i_b]
                for k in range(constraint_state.jac_n_dofs[i_c, i_b]):
                    i_d = constraint_state.jac_dofs_idx[i_c, k, i_b]
                    constraint_state.dL_djac[i_c, i_d, i_b] += -(
                        constraint_state.bw_u[i_d, i_b] * y_i + constraint_state.qacc[i_d, i_b] * DJu_i
                    )

        # M: -u * qacc^T, over the mass blocks the forward reads (see dofs_mass_block_start in array_class.py): an entry
        # outside them is structurally zero and moves nothing, so its gradient is zero.
        for i in range(n_dofs):
            for j in range(rigid_info.dofs_mass_block_start[i], rigid_info.dofs_mass_block_end[i]):
                val0 = -constraint_state.bw_u[i, i_b] * constraint_state.qacc[j, i_b]
                val1 = -constraint_state.bw_u[j, i_b] * constraint_state.qacc[i, i_b]
                constraint_state.dL_dM[i, j, i_b] += (val0 + val1) * 0.5  # symmetrize
