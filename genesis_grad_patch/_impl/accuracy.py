"""
Where a gradient of a differentiable rollout is only approximate, said before it is used.

Two causes lie in Genesis's reverse pass itself, whatever the plugin does around it:

- Contacts whose reverse is not the derivative of their forward. Genesis detects contacts with its full (forward)
  narrow phase, then reverses a reconstruction of them (`func_narrow_phase_diff_convex_vs_convex`): closed forms for a
  plane against a body-fixed support point (box vertex, sphere centre, convex mesh vertex) and for two spheres, exact;
  an EPA face of a polytope approximation for every other pair (`diff_gjk.py`), exact between polytopes only. A curved
  shape moves its contact point along its surface as it turns, which the reconstruction holds fixed (cylinders and
  capsules on a plane are detected in closed form by `curved_contacts.py` instead, exact), and the pairs the forward
  solves in closed form (sphere-box, sphere-capsule, capsule-capsule) leave the reconstruction nothing to start from.
  `pair_error` says what is known of each pair.
- Constraint solves stopped at the iteration cap. The adjoint of the constraint solve (`constraint/backward.py`)
  differentiates its optimality conditions, which hold only once the solve has converged: a step whose solve ran out
  of `RigidOptions(iterations=...)` before its tolerance gets a gradient off by as much as the solve is (0.28 measured
  on a box stack at 3 iterations).

Each step of a rollout that tracks inputs is observed on the device, without a host read: the solver's own flag
(`constraint_state.improved` still set after the last iteration means it stopped at the cap) and, in scenes holding an
approximate pair at all, which geometry pairs came within contact range (the broad phase's candidates). The first reverse pass of the rollout reads the record
once and reports what it found (strict mode: a `GradientBreakWarning` of kind `APPROXIMATE_CONTACT` or
`UNCONVERGED_SOLVE`, a `GradientBreakError` in "raise" mode), as does the doctor.
"""

import sys
from dataclasses import dataclass, field
from types import FrameType

import genesis as gs
import torch

from . import breaks, patching, records
from .breaks import BreakKind, user_frame
from .genesis_api import RigidSolver, Simulator, qd_to_torch

_T = gs.GEOM_TYPE

# Geometry type pairs (smaller type first, as Genesis orders them) whose contact reverse is approximate, with the
# relative error of a gradient measured through them (float64, central differences agreeing to 1e-5; a free body
# pushed by a tracked force for 20 steps, loss on its pose). A convex mesh or a box against a plane or a polytope, a
# sphere against a plane or a sphere are exact (<= 2e-7) and not listed, and so are a cylinder or a capsule against a
# plane, which the plugin detects in closed form (`curved_contacts.py`: 2.4e-9 on pybullet's racecar). Non-convex
# meshes and terrain are reported whatever they touch (their contacts come from signed distance fields, which the
# reverse does not reconstruct).
APPROXIMATE_PAIRS: dict[tuple[int, int], str] = {
    (_T.PLANE, _T.ELLIPSOID): "1.08 relative error measured (ellipsoid pushed along a plane)",
}
# Curved shapes: against anything but a plane (and a sphere against a sphere) they go through the EPA reconstruction,
# or through a closed-form forward the reverse does not reconstruct.
_CURVED = (_T.SPHERE, _T.ELLIPSOID, _T.CYLINDER, _T.CAPSULE)
_CURVED_ERROR = (
    "the differentiable detection misses some of them, a cylinder or a capsule resting on a box sinks into it where a "
    "non-differentiable scene holds it, and the reverse reconstructs the others from a polytope approximation of the "
    "curved surface"
)
_SDF_ERROR = "not differentiated: the reverse does not reconstruct signed-distance contacts"


def pair_error(type_a: int, type_b: int, convex_a: bool = True, convex_b: bool = True) -> str | None:
    """What is known of the error of the gradient through a contact of two geometries, None where it is exact."""
    if type_a > type_b:
        type_a, type_b, convex_a, convex_b = type_b, type_a, convex_b, convex_a
    if type_b == _T.TERRAIN or not (convex_a and convex_b):
        return _SDF_ERROR
    if (type_a, type_b) in APPROXIMATE_PAIRS:
        return APPROXIMATE_PAIRS[(type_a, type_b)]
    if type_a == _T.PLANE or (type_a == _T.SPHERE and type_b == _T.SPHERE):
        return None
    if type_a in _CURVED or type_b in _CURVED:
        return _CURVED_ERROR
    return None


@dataclass
class _Monitor:
    """What the steps of one rollout of a solver left on the device, read once by `report`."""

    #: (n_geoms, n_geoms) approximate geometry pairs, None where the scene has none.
    approximate: torch.Tensor | None
    #: Zero-copy views of the solver's fields, or None where Genesis cannot share them (read by copy then).
    views: dict | None
    epoch: int = -1
    #: (step, 0-dim bool): the constraint solve of that step stopped at the iteration cap in some environment.
    unconverged: list = field(default_factory=list)
    #: Flat (i_a * n_geoms + i_b) approximate pairs in contact during the rollout, and a last entry for the others.
    contacts: torch.Tensor | None = None
    #: (max_pairs, 1) slot indices, compared with the live counts of candidate pairs.
    slots: torch.Tensor | None = None
    #: The rollouts whose findings were recorded (doctor or backward) and warned of (backward).
    recorded: int = -1
    warned: int = -1


def _monitor(solver: RigidSolver) -> _Monitor:
    record = records.of_solver(solver)
    monitor = record.accuracy
    if monitor is None:
        geoms = solver.geoms
        approximate = None
        if solver._enable_collision and geoms:
            # Only the pairs Genesis may put in contact (its own filter: same link, adjacent links, ...): a scene whose
            # approximate pairs never collide observes nothing per step.
            may_collide = solver.collider._collision_pair_idx
            table = torch.zeros((len(geoms), len(geoms)), dtype=torch.bool)
            for a in geoms:
                for b in geoms:
                    if a.idx < b.idx and may_collide[a.idx, b.idx] >= 0:
                        error = pair_error(a.type, b.type, a.is_convex, b.is_convex)
                        table[a.idx, b.idx] = table[b.idx, a.idx] = error is not None
            if table.any():
                approximate = table.to(gs.device)
        monitor = record.accuracy = _Monitor(approximate, _views(solver) if gs.use_zerocopy else None)
        max_pairs = solver.collider.collider_state.broad_collision_pairs.shape[0]
        monitor.slots = torch.arange(max_pairs, device=gs.device)[:, None]
        if approximate is not None:
            monitor.contacts = torch.zeros(approximate.numel() + 1, dtype=torch.bool, device=gs.device)
    return monitor


def _fields(solver: RigidSolver) -> dict:
    constraint_state = solver.constraint_solver.constraint_state
    collider_state = solver.collider.collider_state
    return {
        "improved": constraint_state.improved,
        "n_constraints": constraint_state.n_constraints,
        "n_pairs": collider_state.n_broad_pairs,
        "pairs": collider_state.broad_collision_pairs,
    }


def _views(solver: RigidSolver) -> dict:
    return {name: qd_to_torch(value, copy=False) for name, value in _fields(solver).items()}


def _observe(solver: RigidSolver) -> None:
    """Record, on the device, how this substep's constraint solve ended and which approximate pairs touched (a few
    torch operations: this runs at every substep of a tracked rollout)."""
    sim = solver._sim
    monitor = _monitor(solver)
    if monitor.epoch != sim._grad_epoch:
        monitor.epoch, monitor.unconverged = sim._grad_epoch, []
        if monitor.contacts is not None:
            monitor.contacts.zero_()
    views = monitor.views or {name: qd_to_torch(value) for name, value in _fields(solver).items()}
    # Still improving after the last iteration, with constraints to solve (their count is never negative).
    stopped = torch.logical_and(views["improved"], views["n_constraints"]).any()
    monitor.unconverged.append((sim._cur_substep_global // sim._substeps, stopped))
    table = monitor.approximate
    if table is not None:
        n = table.shape[0]
        # The candidate pairs of the broad phase (bounding boxes overlapping), not the contacts: Genesis's
        # differentiable detection misses some contacts of curved shapes altogether. The flat index of every live
        # candidate of an approximate pair is marked, the others go to the last entry (stale slots are masked out; a
        # negative index of a never-written slot wraps inside the table, masked too).
        candidates = views["pairs"]
        pair = candidates[..., 0] * n + candidates[..., 1]
        hits = table.view(-1)[pair] & (monitor.slots < views["n_pairs"])
        monitor.contacts[torch.where(hits, pair, n * n)] = True


def _constraint_force(stock):
    """`RigidSolver._func_constraint_force` (once per substep): the stock solve, then observed in a tracked rollout."""

    def constraint_force(self: RigidSolver) -> None:
        stock(self)
        if self._requires_grad and not self._is_backward and torch.is_grad_enabled() and breaks.checking:
            sim = self._sim
            if records.tracked_epochs.get(id(sim)) == sim._grad_epoch:  # records.has_tracked_inputs, inline
                _observe(self)

    return constraint_force


def _geom_name(solver: RigidSolver, i_g: int) -> str:
    geom = solver.geoms[i_g]
    link = geom.link
    return f"{_T(geom.type).name.lower()} geom {geom.idx} of link '{link.name}' (entity {link.entity.idx})"


def findings(sim: Simulator) -> list[tuple[BreakKind, str, str, int | None]]:
    """
    What the current rollout of `sim` has that makes its gradient approximate: (kind, cause, fix, step) tuples.

    One host read per solver and rollout. Empty where the rollout tracked nothing or strict mode was off.
    """
    solver = sim.rigid_solver
    monitor = records.of_solver(solver).accuracy if solver.is_active else None
    if monitor is None or monitor.epoch != sim._grad_epoch:
        return []
    found = []
    if monitor.unconverged:
        stopped = torch.stack([flag for _, flag in monitor.unconverged]).cpu()
        steps = sorted({monitor.unconverged[i][0] for i in stopped.nonzero().reshape(-1).tolist()})
        if steps:
            iterations = solver._options.iterations
            shown = ", ".join(map(str, steps[:8])) + (f" and {len(steps) - 8} more" if len(steps) > 8 else "")
            found.append(
                (
                    BreakKind.UNCONVERGED_SOLVE,
                    f"the constraint solve stopped at its iteration cap (`RigidOptions(iterations={iterations})`) "
                    f"before reaching its tolerance at step(s) {shown} (counted from 0 at the last reset): the "
                    "reverse pass differentiates the solve as if it had converged, so the gradient through those "
                    "steps is approximate (0.28 relative error measured on a box stack at 3 iterations).",
                    f"Raise `gs.options.RigidOptions(iterations=...)` above {iterations} (or loosen `tolerance`) until "
                    "no step reaches the cap.",
                    steps[0],
                )
            )
    if monitor.contacts is not None:
        n = monitor.approximate.shape[0]
        for flat in monitor.contacts[:-1].nonzero().reshape(-1).cpu().tolist():
            i_a, i_b = divmod(flat, n)
            geom_a, geom_b = solver.geoms[i_a], solver.geoms[i_b]
            error = pair_error(geom_a.type, geom_b.type, geom_a.is_convex, geom_b.is_convex)
            found.append(
                (
                    BreakKind.APPROXIMATE_CONTACT,
                    f"the {_geom_name(solver, i_a)} came within contact range of the {_geom_name(solver, i_b)} (their "
                    "bounding boxes overlapped) during the rollout, and Genesis's differentiable contacts of this pair "
                    f"of shapes are approximate ({error}).",
                    "Use shapes whose contacts are exact for the parts in contact (a box, a sphere or a convex mesh "
                    "on a plane; boxes and convex meshes on each other; two spheres), or treat this gradient as an "
                    "approximation.",
                    None,
                )
            )
    return found


def report(sim: Simulator, frame: FrameType | None = None, warn: bool = True) -> None:
    """
    Report, once per rollout, what makes the gradient of the current rollout of `sim` approximate.

    Called by the first reverse pass of a rollout (at the user's `backward()` line) and by the doctor (`warn` False:
    recorded for its report, neither warned of nor raised).
    """
    solver = sim.rigid_solver
    monitor = records.of_solver(solver).accuracy if solver.is_active else None
    epoch = sim._grad_epoch
    if monitor is None or monitor.epoch != epoch or monitor.warned == epoch or (not warn and monitor.recorded == epoch):
        return
    found = findings(sim)
    record = monitor.recorded != epoch
    monitor.recorded = epoch
    if warn:
        monitor.warned = epoch
    frame = user_frame(sys._getframe(1) if frame is None else frame)
    for kind, cause, fix, step in found:
        breaks.report(kind, "loss.backward", frame, cause, fix, sim, step, warn=warn, record=record)


def install() -> None:
    patching.patch(
        RigidSolver, "_func_constraint_force", _constraint_force(RigidSolver._func_constraint_force), group="strict"
    )
