"""Quadrants kernels of the plugin: PD target gradients read out, getter-state kinematics gradients added in."""

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


@qd.kernel(fastcache=True)
def kernel_add_kinematics_grad(
    dofs_pos_grad: qd.types.ndarray(),
    links_i_pos_grad: qd.types.ndarray(),
    links_root_COM_grad: qd.types.ndarray(),
    dyn_state: array_class.DynState,
    rigid_config: qd.template(),
):
    """
    Add the gradients of the dof positions and centers of mass a getter state holds, (n_envs, n, ...) each, to the
    solver's gradient fields, which the reverse of forward kinematics carries back to qpos. Used without zero-copy,
    where the fields have no torch view to add to (`kernel_get_state_grad` adds the state's other four).
    """
    qd.loop_config(serialize=rigid_config.para_level < gs.PARA_LEVEL.PARTIAL)
    for i_d, i_b in qd.ndrange(dofs_pos_grad.shape[1], dofs_pos_grad.shape[0]):
        dyn_state.dofs.pos.grad[i_d, i_b] = dyn_state.dofs.pos.grad[i_d, i_b] + dofs_pos_grad[i_b, i_d]
    qd.loop_config(serialize=rigid_config.para_level < gs.PARA_LEVEL.PARTIAL)
    for i_l, i_b in qd.ndrange(links_i_pos_grad.shape[1], links_i_pos_grad.shape[0]):
        for j in qd.static(range(3)):
            dyn_state.links.i_pos.grad[i_l, i_b][j] = (
                dyn_state.links.i_pos.grad[i_l, i_b][j] + links_i_pos_grad[i_b, i_l, j]
            )
            dyn_state.links.root_COM.grad[i_l, i_b][j] = (
                dyn_state.links.root_COM.grad[i_l, i_b][j] + links_root_COM_grad[i_b, i_l, j]
            )
