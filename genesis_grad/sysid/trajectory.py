"""
Recorded trajectories: the CSV format, its reader (one-line errors) and writer, and the excitation the generator uses.

CSV format (UTF-8, with or without a byte-order mark; one header line, then one row per sample):

- ``time``: seconds, strictly increasing with a constant step (the simulation step ``dt`` of the fit), >= 2 rows;
- ``target_<joint>``: the position target sent to the servo of ``<joint>`` during ``[t_i, t_i+1)``, one column per
  actuated joint;
- ``target_vel_<joint>`` (optional, all or none): the velocity target sent with it. Without it the servo is a pure
  position servo (target velocity 0) and ``kv`` and ``damping`` of a joint act alike (both multiply its velocity):
  only their sum is identifiable;
- ``q_<joint>``: the measured position of ``<joint>`` at ``t_i`` (rad, or m for a slide joint), one per joint;
- ``dq_<joint>`` (optional, all or none): the measured velocity; by default the central difference of ``q``.
  Multiple shooting restarts each window from the measured position and velocity.

Other columns are ignored. The reader refuses, in one line naming the file, row and column, a missing or duplicated
column, a non-number, a NaN, too few rows, a time that does not increase by a constant step, a target without a
measurement of the same joint.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..csv_text import read_csv_text
from .errors import TrajectoryFileError

# Relative tolerance on the constancy of the time step (CSV round trip of %.17g is exact; 1e-6 allows hand-written
# files with 6 significant digits).
_DT_RTOL = 1e-6


@dataclass
class Trajectory:
    """
    A recorded trajectory (arrays indexed by sample; see the module docstring for the meaning of each).

    Attributes
    ----------
    time : np.ndarray, shape (T,)
    actuated : list of str
        Joints with a servo target, in column order.
    target_pos : np.ndarray, shape (T, len(actuated))
    target_vel : np.ndarray, shape (T, len(actuated)) or None
    joints : list of str
        Measured joints, in column order.
    q : np.ndarray, shape (T, len(joints))
    dq : np.ndarray, shape (T, len(joints)) or None
    """

    time: np.ndarray
    actuated: list[str]
    target_pos: np.ndarray
    target_vel: np.ndarray | None
    joints: list[str]
    q: np.ndarray
    dq: np.ndarray | None = None

    @property
    def dt(self) -> float:
        """The (constant) time step."""
        return float(self.time[1] - self.time[0])

    def __len__(self) -> int:
        return len(self.time)

    def velocities(self) -> np.ndarray:
        """The measured velocities, or central differences of the positions (one-sided at both ends)."""
        return self.dq if self.dq is not None else np.gradient(self.q, self.dt, axis=0)


def load_trajectory_csv(path: str | Path) -> Trajectory:
    """
    Read and validate a trajectory CSV (format in the module docstring).

    Raises
    ------
    TrajectoryFileError
        A ``ValueError`` with a one-line message naming the file, the row (1-based, header excluded) and the reason.
    """
    path = Path(path)
    rows = list(csv.reader(io.StringIO(read_csv_text(path, "trajectory CSV", TrajectoryFileError), newline="")))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise TrajectoryFileError(f"{path}: empty file; expected a header with time, target_<joint>..., q_<joint>...")
    header = [h.strip() for h in rows[0]]
    seen = set()
    for name in header:
        if name and name in seen:
            raise TrajectoryFileError(f"{path}: column {name!r} appears twice in the header")
        seen.add(name)
    if "time" not in header:
        raise TrajectoryFileError(
            f"{path}: missing column 'time'; expected a header with time, target_<joint>..., q_<joint>..."
        )

    def joints_with(prefix: str) -> list[str]:
        # target_vel_ columns also start with target_: those are not position targets.
        names = [h[len(prefix) :] for h in header if h.startswith(prefix) and len(h) > len(prefix)]
        return [n for n in names if not (prefix == "target_" and n.startswith("vel_"))]

    actuated, joints = joints_with("target_"), joints_with("q_")
    if not joints:
        raise TrajectoryFileError(f"{path}: no measured joint: expected q_<joint> columns")
    if not actuated:
        raise TrajectoryFileError(f"{path}: no control target: expected target_<joint> columns")
    for name in actuated:
        if name not in joints:
            raise TrajectoryFileError(f"{path}: column 'target_{name}' has no measured position 'q_{name}'")
    vel_targets, velocities = joints_with("target_vel_"), joints_with("dq_")
    for what, got, want in (("target_vel_", vel_targets, actuated), ("dq_", velocities, joints)):
        if got and sorted(got) != sorted(want):
            missing = [n for n in want if n not in got] or [n for n in got if n not in want]
            raise TrajectoryFileError(
                f"{path}: {what}<joint> columns must be given for all joints of the {what[:-1]} family or none; "
                f"mismatch on {', '.join(missing)}"
            )
    body = rows[1:]
    if len(body) < 2:
        raise TrajectoryFileError(f"{path}: a trajectory needs at least 2 rows, got {len(body)}")

    index = {name: i for i, name in enumerate(header)}

    def column(name: str) -> np.ndarray:
        out = np.empty(len(body))
        j = index[name]
        for i, row in enumerate(body):
            raw = row[j].strip() if j < len(row) else ""
            try:
                value = float(raw)
            except ValueError:
                raise TrajectoryFileError(f"{path}: row {i + 1}, column {name!r}: {raw!r} is not a number") from None
            if not math.isfinite(value):
                raise TrajectoryFileError(f"{path}: row {i + 1}, column {name!r} is {raw!r} (NaN or infinite)")
            out[i] = value
        return out

    time = column("time")
    steps = np.diff(time)
    if steps[0] <= 0.0:
        raise TrajectoryFileError(f"{path}: row 2: time must increase, got {time[0]!r} then {time[1]!r}")
    bad = np.flatnonzero(np.abs(steps - steps[0]) > _DT_RTOL * steps[0])
    if bad.size:
        i = int(bad[0])
        raise TrajectoryFileError(
            f"{path}: row {i + 2}: time step {steps[i]:.9g} s differs from the first one ({steps[0]:.9g} s); "
            "samples must be uniform (the step is the simulation dt)"
        )

    def stack(prefix: str, names: Sequence[str]) -> np.ndarray:
        return np.stack([column(prefix + n) for n in names], axis=1)

    return Trajectory(
        time=time,
        actuated=actuated,
        target_pos=stack("target_", actuated),
        target_vel=stack("target_vel_", actuated) if vel_targets else None,
        joints=joints,
        q=stack("q_", joints),
        dq=stack("dq_", joints) if velocities else None,
    )


def save_trajectory_csv(traj: Trajectory, path: str | Path) -> Path:
    """Write ``traj`` in the CSV format of ``load_trajectory_csv`` (``%.17g``: the round trip is exact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["time"] + [f"target_{n}" for n in traj.actuated]
    blocks = [traj.time[:, None], traj.target_pos]
    if traj.target_vel is not None:
        header += [f"target_vel_{n}" for n in traj.actuated]
        blocks.append(traj.target_vel)
    header += [f"q_{n}" for n in traj.joints]
    blocks.append(traj.q)
    if traj.dq is not None:
        header += [f"dq_{n}" for n in traj.joints]
        blocks.append(traj.dq)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[f"{v:.17g}" for v in row] for row in np.concatenate(blocks, axis=1)])
    return path


def check_against_robot(traj: Trajectory, dof_names: Sequence[str], actuated: Sequence[str], source: str) -> None:
    """
    Refuse, in one line, a trajectory that does not fit the robot: an unknown joint, a robot joint not measured.

    Parameters
    ----------
    dof_names : sequence of str
        The robot's dofs (1-dof joints), all of which must be measured.
    actuated : sequence of str
        The robot's joints with a servo (kp > 0).
    """
    for name in traj.joints:
        if name not in dof_names:
            raise TrajectoryFileError(
                f"{source}: column 'q_{name}': the robot has no joint {name!r} ({', '.join(dof_names)})"
            )
    missing = [n for n in dof_names if n not in traj.joints]
    if missing:
        raise TrajectoryFileError(
            f"{source}: no measured position for joint(s) {', '.join(missing)} (columns q_<joint>)"
        )
    for name in traj.actuated:
        if name not in actuated:
            raise TrajectoryFileError(
                f"{source}: column 'target_{name}': joint {name!r} has no position servo (kp = 0)"
            )


def excitation(
    home: np.ndarray,
    amplitude: np.ndarray,
    duration: float,
    dt: float,
    seed: int = 0,
    n_sines: int = 3,
    f_range: tuple[float, float] = (0.2, 1.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    A multi-sine excitation per joint around ``home``: targets and their exact derivatives.

    Each joint gets ``n_sines`` sines of random frequencies in ``f_range`` (Hz) and phases, each sine shifted to be
    zero at t = 0 so that the target starts at ``home``, where the robot rests; the sum is scaled so that its peak is
    ``amplitude``.

    Returns
    -------
    time : np.ndarray, shape (T,)
    target_pos, target_vel : np.ndarray, shape (T, n_joints)
    """
    rng = np.random.default_rng(seed)
    n_steps = int(round(duration / dt))
    time = np.arange(n_steps + 1) * dt
    n = len(home)
    freq = 2 * np.pi * rng.uniform(*f_range, size=(n_sines, n))
    phase = rng.uniform(0, 2 * np.pi, size=(n_sines, n))
    arg = freq[None] * time[:, None, None] + phase[None]
    pos = (np.sin(arg) - np.sin(phase)[None]).sum(axis=1)
    vel = (freq[None] * np.cos(arg)).sum(axis=1)
    scale = np.asarray(amplitude, dtype=np.float64) / np.maximum(np.abs(pos).max(axis=0), 1e-12)
    return time, home[None] + pos * scale, vel * scale
