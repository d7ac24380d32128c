"""
The gradient of contact friction: d loss / d friction coefficient through the friction cones of contacts.

Genesis 1.4.5 reverses the contact rows of the constraint solver by hand (`kernel_manual_add_collision_constraints_bw`),
with respect to the contact position, normal and penetration, and its differentiable narrow phase carries those on to
the geoms. The friction coefficient mu of a contact is left out, though every pyramid row reads it twice:

- its direction n_i = mu d_i - normal (d_i = -d1, +d1, -d2, +d2, the tangents of the contact), hence the Jacobian row
  jac[i, dof] = J_dof . n_i (J_dof: the contact point velocity one dof makes, relative between the two links);
- its regularization diag = 2 mu_r^2 (1 + mu_r^2) invweight (1 - imp) / imp, mu_r^2 = mu^2 / impratio, efc_D = 1 / diag.

Given the upstream gradients the adjoint solve leaves per row (`dL_djac`, `dL_daref`, `dL_defc_D`), this module adds

    dL/dmu = sum_i [ sum_dof g_jac[i, dof] d jac[i, dof] / dmu  +  dL_defc_D[i] d efc_D / dmu ]

with g_jac = dL_djac + dL_daref * d aref / d jac_qvel * qvel, as the stock reverse does for the position and normal.
jac[i] is linear in mu and the two rows of a tangent differ only by the sign of d_i, so d jac[i] / dmu = J . d_i =
s_i (jac[odd row] - jac[even row]) / (2 mu): the Jacobian rows already assembled give it, no kinematic chain is walked
again. The result goes to `contact_data.friction.grad`, from which Genesis's autodiff of the narrow phase
(`func_set_contact`: mu = max(mu_a r_a, mu_b r_b, 1e-2)) carries it on to the geoms' friction (`dyn_info.geoms.friction`)
and friction ratio (`dyn_state.geoms.friction_ratio`), once those have gradient storage (`params.py` allocates it).

The 4-row pyramid is the only contact layout of a differentiable scene: Genesis 1.4.5 refuses the elliptic cone and
torsional and rolling friction with `requires_grad`.
"""

import genesis as gs
import quadrants as qd

from . import patching, records
from .genesis_api import array_class, geom, rigid_solver

_KERNEL = "kernel_manual_add_collision_constraints_bw"


@qd.kernel(fastcache=True)
def kernel_contact_friction_bw(
    dyn_state: array_class.DynState,
    collider_state: array_class.ColliderState,
    constraint_state: array_class.ConstraintState,
    dyn_info: array_class.DynInfo,
    rigid_info: array_class.RigidInfo,
    rigid_config: qd.template(),
):
    """Write d loss / d mu of every live contact into `contact_data.friction.grad`."""
    EPS = rigid_info.EPS[None]
    _B = dyn_state.dofs.ctrl_mode.shape[1]
    max_contact_pairs = collider_state.contact_data.link_a.shape[0]

    qd.loop_config(serialize=qd.static(rigid_config.para_level < gs.PARA_LEVEL.PARTIAL))
    for flat_idx in range(max_contact_pairs * _B):
        i_b = flat_idx % _B
        i_col_ = flat_idx // _B
        n_hib = collider_state.n_contacts_hibernated[i_b]
        if i_col_ < collider_state.n_contacts[i_b] - n_hib:
            # The row group of the i_col_-th live contact, in the order the forward assembled them.
            i_col = collider_state.contact_sort_idx[n_hib + i_col_, i_b]
            link_a = collider_state.contact_data.link_a[i_col, i_b]
            link_b = collider_state.contact_data.link_b[i_col, i_b]
            friction = collider_state.contact_data.friction[i_col, i_b]
            sol_params = collider_state.contact_data.sol_params[i_col, i_b]
            penetration = collider_state.contact_data.penetration[i_col, i_b]

            link_a_maybe_batch = [link_a, i_b] if qd.static(rigid_config.batch_links_info) else link_a
            invweight = dyn_info.links.invweight[link_a_maybe_batch][0]
            if link_b > -1:
                link_b_maybe_batch = [link_b, i_b] if qd.static(rigid_config.batch_links_info) else link_b
                invweight = invweight + dyn_info.links.invweight[link_b_maybe_batch][0]

            imp, b_coef, _, _ = geom.imp_aref_grad(sol_params, -penetration)
            # diag = C0 (1 - imp) / imp, C0 = (invweight + mu_r^2 invweight) 2 mu_r^2; efc_D = 1 / max(diag, EPS).
            friction_sq_reg = friction * friction / rigid_info.impratio[None]
            C0 = (invweight + friction_sq_reg * invweight) * 2.0 * friction_sq_reg
            diag_raw = C0 * (1.0 - imp) / imp
            diag = qd.max(diag_raw, EPS)
            d_efc_D_d_friction = gs.qd_float(0.0)
            if diag_raw > EPS:
                d_C0_d_friction = (
                    2.0 * invweight * (1.0 + 2.0 * friction_sq_reg) * 2.0 * friction / rigid_info.impratio[None]
                )
                d_efc_D_d_friction = -((1.0 - imp) / imp) * d_C0_d_friction / (diag * diag)

            head = (
                constraint_state.n_constraints_equality[i_b]
                + constraint_state.n_constraints_frictionloss[i_b]
                + i_col_ * qd.static(rigid_config.rows_per_contact)
            )
            g_friction = gs.qd_float(0.0)
            for i in range(4):
                n_con = head + i
                s_i = gs.qd_float(2 * (i % 2) - 1)
                even = head + (i // 2) * 2
                g_friction += constraint_state.dL_defc_D[n_con, i_b] * d_efc_D_d_friction
                # aref = -b_coef jac_qvel + ..., jac_qvel = jac . qvel
                dL_d_jac_qvel = constraint_state.dL_daref[n_con, i_b] * (-b_coef)
                for k in range(constraint_state.jac_n_dofs[n_con, i_b]):
                    i_d = constraint_state.jac_dofs_idx[n_con, k, i_b]
                    g_jac = constraint_state.dL_djac[n_con, i_d, i_b] + dL_d_jac_qvel * dyn_state.dofs.vel[i_d, i_b]
                    d_jac_d_friction = (
                        s_i
                        * (constraint_state.jac[even + 1, i_d, i_b] - constraint_state.jac[even, i_d, i_b])
                        / (2.0 * friction)
                    )
                    g_friction += g_jac * d_jac_d_friction
            # Assigned, not accumulated: the narrow phase's reverse reads the slots of this step's contacts alone.
            collider_state.contact_data.friction.grad[i_col, i_b] = g_friction


def _collision_constraints_bw(dyn_state, collider_state, constraint_state, dyn_info, rigid_info, rigid_config):
    """The stock reverse of the contact rows, then that of their friction coefficients (before the narrow phase's)."""
    patching.original(rigid_solver, _KERNEL)(
        dyn_state, collider_state, constraint_state, dyn_info, rigid_info, rigid_config
    )
    # Only while a rollout tracks a friction (a kernel launch per reversed substep otherwise spent for nothing). The
    # gradients a skipped launch leaves in the contact slots from an earlier rollout reach only the geoms' friction
    # gradients, which no tracked value reads before the next launch overwrites them, and `scene.reset()` clears.
    if records.friction_tracked_anywhere() and collider_state.contact_data.friction.has_grad():
        kernel_contact_friction_bw(dyn_state, collider_state, constraint_state, dyn_info, rigid_info, rigid_config)


def install() -> None:
    patching.patch(rigid_solver, _KERNEL, _collision_constraints_bw)
