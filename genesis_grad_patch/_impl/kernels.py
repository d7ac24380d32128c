"""Quadrants kernels that read the gradients Genesis's reverse pass accumulates on the PD control targets."""

import genesis as gs
import quadrants as qd

from .genesis_api import array_class


@qd.kernel(fastcache=True)
def kernel_get_dofs_ctrl_pd_grad(
    dofs_idx: qd.types.ndarray(),
    envs_idx: qd.types.ndarray(),
    position_grad: qd.types.ndarray(),
    velocity_grad: qd.types.ndarray(),
    dyn_state: array_class.DynState,
    rigid_config: qd.template(),
):
    """
    Read, then clear, the gradients of the PD position and velocity targets of the given dofs.

    Every PD control call writes both targets (the one it is not given is set to zero), so an earlier value of either
    target cannot reach any later step: the gradient accumulated so far belongs to this call alone.
    """
    qd.loop_config(serialize=rigid_config.para_level < gs.PARA_LEVEL.PARTIAL)
    for i_d_, i_b_ in qd.ndrange(dofs_idx.shape[0], envs_idx.shape[0]):
        i_d = dofs_idx[i_d_]
        i_b = envs_idx[i_b_]
        position_grad[i_b_, i_d_] = dyn_state.dofs.ctrl_pos.grad[i_d, i_b]
        velocity_grad[i_b_, i_d_] = dyn_state.dofs.ctrl_vel.grad[i_d, i_b]
        dyn_state.dofs.ctrl_pos.grad[i_d, i_b] = 0.0
        dyn_state.dofs.ctrl_vel.grad[i_d, i_b] = 0.0
