"""
The trajectory generator: a multi-sine excitation of every servo, simulated with hidden ground-truth parameters,
recorded at every step with optional Gaussian noise (``genesis-grad sysid generate``).
"""

from __future__ import annotations

import numpy as np

from .sim import SysIdSim
from .trajectory import Trajectory, excitation


def excitation_center(lower: np.ndarray, upper: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    """A center for each joint's excitation: 0 where the whole swing fits in the limits, else the nearest such point."""
    lo = np.where(np.isfinite(lower), lower + amplitude, -np.inf)
    hi = np.where(np.isfinite(upper), upper - amplitude, np.inf)
    center = np.clip(0.0, lo, hi)
    # A range narrower than the swing: its middle.
    return np.where(lo > hi, 0.5 * (lower + upper), center)


def generate(
    sim: SysIdSim,
    values: dict[str, np.ndarray],
    duration: float = 4.0,
    amplitude: float = 0.3,
    noise: float = 0.0,
    noise_vel: float | None = None,
    seed: int = 0,
    velocity_targets: bool = True,
) -> Trajectory:
    """
    Simulate an excitation with the parameters ``values`` and record it.

    Parameters
    ----------
    sim : SysIdSim
        One environment; its ``dt`` is the sample step.
    values : dict
        Full per-dof values of every kind (the ground truth).
    duration : float
        Seconds.
    amplitude : float
        Peak excursion of each target from its center (rad; a slide joint gets at most a quarter of its range).
    noise, noise_vel : float
        Standard deviations of the Gaussian noise added to the recorded positions and velocities (``noise_vel``
        defaults to ``noise``); the targets are exact.
    velocity_targets : bool
        Send the targets' derivative as velocity target (``target_vel_`` columns), which makes kv and damping
        distinguishable.
    """
    lower, upper = sim.limits
    act = sim.actuated
    width = upper[act] - lower[act]
    amp = np.minimum(amplitude, np.where(np.isfinite(width), 0.25 * width, amplitude))
    center = excitation_center(lower[act], upper[act], amp)
    time, target_pos, target_vel = excitation(center, amp, duration, sim.dt, seed=seed)
    q0 = excitation_center(lower, upper, np.zeros_like(lower))
    q0[act] = center
    q, dq = sim.record(values, time, target_pos, target_vel if velocity_targets else None, q0)
    rng = np.random.default_rng(seed + 1)
    if noise > 0.0:
        q = q + rng.normal(0.0, noise, size=q.shape)
    noise_vel = noise if noise_vel is None else noise_vel
    if noise_vel > 0.0:
        dq = dq + rng.normal(0.0, noise_vel, size=dq.shape)
    names = sim.dof_names
    return Trajectory(
        time=time,
        actuated=[names[i] for i in act],
        target_pos=target_pos,
        target_vel=target_vel if velocity_targets else None,
        joints=list(names),
        q=q,
        dq=dq,
    )
