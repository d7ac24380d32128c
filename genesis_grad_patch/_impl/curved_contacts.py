"""
Exact contacts of cylinders and capsules on a plane in differentiable scenes: the wheels of a car, a rolling pipe.

Genesis 1.4.5 detects a plane against a convex shape with one support point and rotated "perturbation" detections
for the others, then reverses a reconstruction that holds each contact point fixed on the shape. A cylinder's or a
capsule's contact point slides along its rim or its cap as it turns, so the reverse is not the derivative of the
forward (0.94 relative error measured on an upright cylinder, 0.58 on the steering of pybullet's racecar).

In a differentiable scene these pairs take closed forms instead, the ones of MuJoCo's `mjc_PlaneCylinder` and
`mjc_PlaneCapsule`, written once (`func_plane_curved_contact`) and used both ways:

- forward: the pairs are taken out of Genesis's broad phase (their `collision_pair_idx` entries set to -1, restored by
  `uninstall()`), and `kernel_plane_curved_contacts` appends their contacts after Genesis's detection, through
  Genesis's own `func_add_contact` (friction, solver parameters and link indices as for any contact);
- reverse: `kernel_plane_curved_contacts_diff.grad` carries the gradients of those contacts' positions, normals,
  depths and friction to the two geoms' poses (and friction), before Genesis's reverse of the other contacts, which
  then finds zero gradients on these slots.

Capsule: a sphere test at each end of the segment (up to 2 contacts). Cylinder: the deepest rim point of the disk at
either end of the axis (a cylinder lying on its side touches with both), and two more points of the nearer disk at 120
degrees (a cylinder standing on a face), each only while it is below the plane (up to 4 contacts). Every contact is a
smooth function of the two poses, except where a disk lies exactly parallel to the plane, where the rim direction is
taken from the cylinder's own x axis. Each contact keeps its slot while the cylinder rocks: MuJoCo orders the two disks
nearer first, and a wheel tilting through level then swapped them between steps, which Genesis's reverse pass does not
follow (3.7e-2 relative error measured on a rolling cylinder, 3e-11 with the disks in a fixed order).
"""

from dataclasses import dataclass

import genesis as gs
import numpy as np
import quadrants as qd

from . import patching, records
from .genesis_api import Collider, array_class, contact
from .genesis_api import geom as geom_utils

_PLANE = gs.GEOM_TYPE.PLANE
_CURVED = (gs.GEOM_TYPE.CYLINDER, gs.GEOM_TYPE.CAPSULE)
_MAX_CONTACTS = 4  # per pair


@qd.func
def func_plane_curved_contact(
    i_ga: int,
    i_gb: int,
    i_b: int,
    k: int,
    dyn_state: array_class.DynState,
    dyn_info: array_class.DynInfo,
):
    """
    The k-th contact of plane `i_ga` and cylinder or capsule `i_gb`: (is_col, normal, contact_pos, penetration).

    Genesis's conventions: the normal points from the curved geom to the plane, the penetration is positive inside,
    the position lies halfway between the deepest point and the plane.
    """
    plane_dir = qd.Vector(
        [dyn_info.geoms.data[i_ga][0], dyn_info.geoms.data[i_ga][1], dyn_info.geoms.data[i_ga][2]], dt=gs.qd_float
    )
    up = geom_utils.qd_transform_by_quat(plane_dir, dyn_state.geoms.quat[i_ga, i_b])
    up = up / up.norm()
    plane_pos = dyn_state.geoms.pos[i_ga, i_b]
    center = dyn_state.geoms.pos[i_gb, i_b]
    quat = dyn_state.geoms.quat[i_gb, i_b]
    axis = geom_utils.qd_transform_by_quat(qd.Vector([0.0, 0.0, 1.0], dt=gs.qd_float), quat)
    radius = dyn_info.geoms.data[i_gb][0]
    half = 0.5 * dyn_info.geoms.data[i_gb][1]

    point = center
    is_col = False
    if dyn_info.geoms.type[i_gb] == gs.GEOM_TYPE.CAPSULE:
        # A sphere at each end of the segment.
        sign = 1.0 - 2.0 * k
        point = center + (sign * half) * axis - radius * up
        is_col = k < 2 and up.dot(point - plane_pos) < 0.0
    else:
        # The rim direction is the part of -up across the axis, scaled to the radius; the disk whose end of the axis
        # points towards the plane is the nearer one.
        along = up.dot(axis)
        rim = along * axis - up
        rim_sqr = rim.norm_sqr()
        if rim_sqr > 1e-20:
            rim = rim * (radius / qd.sqrt(rim_sqr))
        else:
            rim = radius * geom_utils.qd_transform_by_quat(qd.Vector([1.0, 0.0, 0.0], dt=gs.qd_float), quat)
        near = -half * axis if along > 0.0 else half * axis
        # k = 0, 1: the deepest rim point of the disk at +axis, -axis (a cylinder lying on its side touches with both);
        # k = 2, 3: two more points of the nearer disk, at 120 degrees (a cylinder standing on a face).
        offset = half * axis + rim
        if k == 1:
            offset = -half * axis + rim
        elif k >= 2:
            side = (5.0 - 2.0 * k) * (0.5 * qd.sqrt(3.0)) * rim.cross(axis)  # k = 2: +1, k = 3: -1
            offset = near - 0.5 * rim + side
        point = center + offset
        is_col = up.dot(point - plane_pos) < 0.0
    penetration = -up.dot(point - plane_pos)
    contact_pos = point + 0.5 * penetration * up
    return is_col, -up, contact_pos, penetration


@qd.kernel(fastcache=True)
def kernel_plane_curved_contacts(
    pairs: qd.types.ndarray(),
    first: qd.types.ndarray(),
    feature: qd.types.ndarray(),
    dyn_state: array_class.DynState,
    collider_state: array_class.ColliderState,
    dyn_info: array_class.DynInfo,
    rigid_info: array_class.RigidInfo,
    collider_info: array_class.ColliderInfo,
    rigid_config: qd.template(),
    errno: qd.Tensor,
):
    """Append the contacts of the (plane, curved geom, pair index) `pairs` to each environment's buffer."""
    _B = collider_state.n_contacts.shape[0]
    qd.loop_config(serialize=rigid_config.para_level < gs.PARA_LEVEL.ALL)
    for i_b in range(_B):
        first[i_b] = collider_state.n_contacts[i_b]
        for i_p in range(pairs.shape[0]):
            i_ga, i_gb, i_pair = pairs[i_p, 0], pairs[i_p, 1], pairs[i_p, 2]
            for k in range(_MAX_CONTACTS):
                is_col, normal, contact_pos, penetration = func_plane_curved_contact(
                    i_ga, i_gb, i_b, k, dyn_state, dyn_info
                )
                if is_col:
                    i_c = contact.func_add_contact(
                        i_ga,
                        i_gb,
                        i_b,
                        i_pair,
                        normal,
                        contact_pos,
                        penetration,
                        dyn_state,
                        collider_state,
                        dyn_info,
                        rigid_info,
                        collider_info,
                        False,
                        errno,
                    )
                    if i_c >= 0:
                        feature[i_c, i_b] = k
                        # Genesis's detection gave the contacts before these their logical order (the identity in a
                        # differentiable scene, which prunes nothing); these follow it.
                        collider_state.contact_sort_idx[i_c, i_b] = i_c
                        # What Genesis's own reverse reads of every contact slot: kept finite and self-referring, the
                        # gradients it finds on this slot being zero (see `_backward_narrowphase`).
                        collider_state.diff_contact_input.geom_a[i_b, i_c] = i_ga
                        collider_state.diff_contact_input.geom_b[i_b, i_c] = i_gb
                        collider_state.diff_contact_input.core_local[i_b, i_c] = qd.Vector.zero(gs.qd_float, 3)
                        collider_state.diff_contact_input.ref_id[i_b, i_c] = i_c
                        collider_state.diff_contact_input.valid[i_b, i_c] = 1


@qd.kernel(fastcache=True)
def kernel_plane_curved_contacts_diff(
    first: qd.types.ndarray(),
    feature: qd.types.ndarray(),
    dyn_state: array_class.DynState,
    collider_state: array_class.ColliderState,
    dyn_info: array_class.DynInfo,
    rigid_info: array_class.RigidInfo,
    collider_info: array_class.ColliderInfo,
    rigid_config: qd.template(),
    errno: qd.Tensor,
):
    """The contacts `kernel_plane_curved_contacts` appended, as functions of the poses: only its `.grad` runs."""
    # Serial where Genesis is (the CPU): a parallel loop over this little work costs more in thread dispatch (~60 us).
    qd.loop_config(serialize=rigid_config.para_level < gs.PARA_LEVEL.ALL)
    for i_c, i_b in qd.ndrange(collider_state.contact_data.pos.shape[0], collider_state.n_contacts.shape[0]):
        if i_c >= first[i_b] and i_c < collider_state.n_contacts[i_b]:
            i_ga = collider_state.diff_contact_input.geom_a[i_b, i_c]
            i_gb = collider_state.diff_contact_input.geom_b[i_b, i_c]
            _, normal, contact_pos, penetration = func_plane_curved_contact(
                i_ga, i_gb, i_b, feature[i_c, i_b], dyn_state, dyn_info
            )
            contact.func_set_contact(
                i_ga,
                i_gb,
                i_b,
                i_c,
                collider_state.contact_data.pair_idx[i_c, i_b],
                normal,
                contact_pos,
                penetration,
                dyn_state,
                collider_state,
                dyn_info,
                rigid_info,
                collider_info,
                errno,
            )


@qd.kernel(fastcache=True)
def kernel_clear_contact_grads(
    first: qd.types.ndarray(),
    collider_state: array_class.ColliderState,
    rigid_config: qd.template(),
    with_friction: qd.template(),
):
    """Zero the upstream gradients of the appended contacts, once their own reverse has used them (their friction's
    too where the contact data has gradient storage for it)."""
    qd.loop_config(serialize=rigid_config.para_level < gs.PARA_LEVEL.ALL)
    for i_b in range(collider_state.n_contacts.shape[0]):
        for i_c in range(first[i_b], collider_state.n_contacts[i_b]):
            collider_state.contact_data.pos.grad[i_c, i_b] = qd.Vector.zero(gs.qd_float, 3)
            collider_state.contact_data.normal.grad[i_c, i_b] = qd.Vector.zero(gs.qd_float, 3)
            collider_state.contact_data.penetration.grad[i_c, i_b] = 0.0
            if qd.static(with_friction):
                collider_state.contact_data.friction.grad[i_c, i_b] = 0.0


@dataclass
class _Pairs:
    """The plane-curved pairs of a differentiable scene, taken out of Genesis's broad phase."""

    # Quadrants ndarrays, not torch tensors: a kernel launch converts each torch argument anew (65 us for these
    # three, four times as much as the rest of the launch).
    found: list[tuple[int, int, int]]  # plane geom, curved geom, collision pair index
    pairs: qd.Ndarray  # (n, 3) int32: `found`
    first: qd.Ndarray  # (n_envs,) int32: the first slot of the appended contacts, per environment
    feature: qd.Ndarray  # (max_contacts, n_envs) int32: which contact of its pair each appended slot holds


def plane_curved_pairs(collider: Collider) -> list[tuple[int, int, int]]:
    """The (plane geom, cylinder or capsule geom, collision pair index) pairs of a collider that may collide."""
    geoms = collider._solver.geoms
    table = collider._collision_pair_idx
    found = []
    for plane in geoms:
        if plane.type != _PLANE:
            continue
        for body in geoms:
            if body.type in _CURVED:
                i_ga, i_gb = sorted((plane.idx, body.idx))
                i_pair = int(table[i_ga, i_gb])
                if i_pair >= 0:
                    found.append((plane.idx, body.idx, i_pair))
    return found


def _pairs_of(collider: Collider) -> "_Pairs | None":
    """The collider's plane-curved pairs, or None where there are none (or the scene is not differentiable), looked up
    once and kept in its solver's record."""
    solver = collider._solver
    record = records.of_solver(solver)
    if record.curved_pairs is not None:
        return record.curved_pairs[0]
    state = None
    found = plane_curved_pairs(collider) if solver._requires_grad else []
    if found:
        device_table = collider.collider_info.collision_pair_idx
        for i_plane, i_body, _ in found:
            device_table[min(i_plane, i_body), max(i_plane, i_body)] = -1
        max_contacts = collider.collider_state.contact_data.pos.shape[0]
        pairs = qd.ndarray(dtype=qd.i32, shape=(len(found), 3))
        pairs.from_numpy(np.array(found, dtype=np.int32))
        state = _Pairs(
            found=found,
            pairs=pairs,
            first=qd.ndarray(dtype=qd.i32, shape=(solver._B,)),
            feature=qd.ndarray(dtype=qd.i32, shape=(max_contacts, solver._B)),
        )
    record.curved_pairs = (state,)
    return state


def _detection(stock):
    """`Collider.detection`: Genesis's detection, then the plane-curved contacts of a differentiable scene."""

    def detection(self: Collider) -> None:
        if not self._solver._requires_grad:
            # A plain scene: Genesis's contacts (no record looked up at every step).
            return stock(self)
        state = _pairs_of(self)
        stock(self)
        if state is not None:
            solver = self._solver
            kernel_plane_curved_contacts(
                state.pairs,
                state.first,
                state.feature,
                solver.dyn_state,
                self.collider_state,
                solver.dyn_info,
                solver.rigid_info,
                self.collider_info,
                solver.rigid_config,
                solver._errno,
            )

    return detection


def _backward_narrowphase(self: Collider) -> None:
    """The reverse of the plane-curved contacts, then Genesis's reverse of every other contact."""
    record = records.peek_solver(self._solver)
    state = None if record is None or record.curved_pairs is None else record.curved_pairs[0]
    if state is not None:
        solver = self._solver
        collider_state = self.collider_state
        kernel_plane_curved_contacts_diff.grad(
            state.first,
            state.feature,
            solver.dyn_state,
            collider_state,
            solver.dyn_info,
            solver.rigid_info,
            self.collider_info,
            solver.rigid_config,
            solver._errno,
        )
        kernel_clear_contact_grads(
            state.first, collider_state, solver.rigid_config, collider_state.contact_data.friction.has_grad()
        )
    patching.original(Collider, "backward_narrowphase")(self)


def restore() -> None:
    """Put the pairs back into Genesis's broad phase (used by `uninstall`)."""
    for solver, record in records.solver_records():
        state = None if record.curved_pairs is None else record.curved_pairs[0]
        if state is not None:
            device_table = solver.collider.collider_info.collision_pair_idx
            for i_plane, i_body, i_pair in state.found:
                device_table[min(i_plane, i_body), max(i_plane, i_body)] = i_pair
        record.curved_pairs = None


def use_closed_form(solver, on: bool) -> None:
    """Compare the two paths (benchmarks): the pairs go back to Genesis's broad phase; with `on` they are taken out
    again at the next detection, without it the solver is marked as having none (Genesis's own contacts)."""
    restore()
    if not on:
        records.of_solver(solver).curved_pairs = (None,)


def install() -> None:
    patching.patch(Collider, "detection", _detection(Collider.detection))
    patching.patch(Collider, "backward_narrowphase", _backward_narrowphase)
