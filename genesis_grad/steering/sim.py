"""
The car scene: building it (batched over environments), resetting it to sampled states, stepping it with a steering
command, and reading the pose as torch tensors.

In a scene built with ``requires_grad=True`` and the plugin installed, the steering command given to ``step`` (a torch
tensor from the policy) reaches the physics through ``control_dofs_position``, and the pose read by ``observe`` comes
from the differentiable getters (``get_pos``, ``get_quat``, ``get_vel``, ``get_dofs_position``): a loss on the errors
back-propagates through the wheel-ground contact dynamics into the policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import genesis as gs
import numpy as np
import torch

import genesis_grad_patch  # noqa: F401  (installs the differentiable PD targets and getters)

from .error_state import nearest_reference_index, wrap_angle_torch
from .paths import TorchReference

CAR_XML = Path(__file__).parent / "assets" / "car.xml"
# The car's wheel shapes: spheres (one contact point each), or cylinders (a rim point of each disk, as a URDF car).
CAR_FILES = {"sphere": CAR_XML, "cylinder": Path(__file__).parent / "assets" / "car_cylinder_wheels.xml"}
# The policy `genesis-grad train` makes with its default recipe and seed 0 (benchmarks/steering.py's seed-0 run).
DEFAULT_POLICY = Path(__file__).parent / "assets" / "policy_default.pt"

# Geometry of assets/car.xml, needed by the controllers and the state sampler.
WHEEL_RADIUS = 0.08
WHEELBASE = 0.6
FRONT_AXLE = 0.3  # from the chassis origin, along its x axis
STEER_LIMIT = 0.5  # rad, commands are clipped here (the hinge range is 0.6)
CHASSIS_Z = 0.0795  # resting height of the chassis origin (wheel radius minus the contact penetration)
STEER_JOINTS = ("steer_fl", "steer_fr")
DRIVE_JOINTS = ("drive_rl", "drive_rr")
SPIN_JOINTS = ("spin_fl", "spin_fr")


def ensure_genesis_init(**kwargs) -> None:
    """Call ``gs.init(backend=gs.cpu, precision="64")`` unless Genesis is already initialized in this process."""
    if not getattr(gs, "_initialized", False):
        options = {"backend": gs.cpu, "precision": "64", "logging_level": "warning"}
        options.update(kwargs)
        gs.init(**options)


def yaw_from_quat(quat: torch.Tensor) -> torch.Tensor:
    """Yaw (rad) of (..., 4) quaternions in Genesis's (w, x, y, z) order."""
    w, x, y, z = quat.unbind(-1)
    return torch.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


@dataclass
class StartState:
    """Initial states of a batch of cars, shape (B,) each. ``idx`` is the reference index the state was sampled at."""

    x: torch.Tensor
    y: torch.Tensor
    yaw: torch.Tensor
    speed: torch.Tensor
    steer: torch.Tensor
    idx: torch.Tensor


@dataclass
class Observation:
    """What a controller sees at one step, shape (B,) unless noted. Differentiable in a differentiable scene."""

    x: torch.Tensor
    y: torch.Tensor
    yaw: torch.Tensor
    speed: torch.Tensor
    steer: torch.Tensor  # current wheel angle (the servo lags its command)
    e_lat: torch.Tensor  # signed distance to the path (> 0 left of it)
    e_head: torch.Tensor  # heading minus the path's heading at the nearest point
    e_speed: torch.Tensor
    idx: torch.Tensor  # nearest reference sample (no gradient)
    ref_speed: torch.Tensor
    preview_xy: torch.Tensor  # (B, K, 2) the reference points at the preview distances ahead, in the car's frame
    preview_speed: torch.Tensor  # (B, K) reference speed at the preview distances ahead
    preview_distances: tuple[float, ...] = ()


@dataclass
class Trajectory:
    """Per-step records of a closed-loop rollout: lists of (B,) tensors, and the ``active`` mask of each step, taken
    every ``dt`` seconds (the scene's step, which losses on command rates need)."""

    dt: float
    obs: list[Observation] = field(default_factory=list)
    steer_cmd: list[torch.Tensor] = field(default_factory=list)
    active: list[torch.Tensor] = field(default_factory=list)

    def stack(self, name: str) -> torch.Tensor:
        """(T, B) tensor of an observation field, or of ``steer_cmd`` / ``active``."""
        if name in ("steer_cmd", "active"):
            return torch.stack(getattr(self, name))
        return torch.stack([getattr(o, name) for o in self.obs])


class SteeringSim:
    """
    A batch of ``n_envs`` cars on a ground plane.

    Parameters
    ----------
    n_envs : int
        Number of parallel environments (at least 1; every tensor is batched).
    dt : float
        Simulation step (s).
    requires_grad : bool
        Build a differentiable scene. Rollouts under ``torch.no_grad()`` run in it as well, without taping.
    car_file : str or Path
        MJCF of the car: ``CAR_FILES["cylinder"]`` (the default: cylinder wheels, as real cars have them) or
        ``CAR_FILES["sphere"]`` (``assets/car.xml``: sphere wheels, one contact point each).
    """

    def __init__(
        self,
        n_envs: int = 16,
        dt: float = 0.01,
        requires_grad: bool = True,
        car_file: str | Path = CAR_FILES["cylinder"],
    ):
        ensure_genesis_init()
        if gs.backend == gs.cpu:
            # Torch's intra-op thread pool and the simulator's CPU threads oversubscribe the cores: measured on 2 cores,
            # a (16, 10) x (10, 64) linear layer took 9 ms instead of microseconds and a training window ran 4x slower.
            torch.set_num_threads(1)
        self.n_envs = int(n_envs)
        self.dt = float(dt)
        self.requires_grad = bool(requires_grad)
        self.scene = gs.Scene(
            sim_options=gs.options.SimOptions(dt=dt, requires_grad=requires_grad),
            show_viewer=False,
        )
        self.scene.add_entity(gs.morphs.Plane())
        self.car = self.scene.add_entity(gs.morphs.MJCF(file=str(car_file)))
        self.scene.build(n_envs=self.n_envs)

        car = self.car
        self.steer_dofs = [car.get_joint(n).dofs_idx_local[0] for n in STEER_JOINTS]
        self.drive_dofs = [car.get_joint(n).dofs_idx_local[0] for n in DRIVE_JOINTS]
        self.spin_dofs = [car.get_joint(n).dofs_idx_local[0] for n in SPIN_JOINTS]
        self.steer_qs = [car.get_joint(n).qs_idx_local[0] for n in STEER_JOINTS]
        self.n_qs, self.n_dofs = car.n_qs, car.n_dofs
        # Environment-steps simulated so far (forward steps only; the reverse pass re-simulates a window once more).
        self.env_steps = 0

    @property
    def dtype(self) -> torch.dtype:
        return gs.tc_float

    # ------------------------------------------------------------------ reset / step / read

    def reset(self, start: StartState) -> None:
        """Reset every environment to ``start``: pose, forward velocity, wheel spin and steering angle."""
        B = self.n_envs
        self.scene.reset()
        f = lambda v: torch.as_tensor(v, dtype=gs.tc_float, device=gs.device).detach().reshape(B)  # noqa: E731
        x, y, yaw, speed, steer = f(start.x), f(start.y), f(start.yaw), f(start.speed), f(start.steer)
        qpos = torch.zeros((B, self.n_qs), dtype=gs.tc_float, device=gs.device)
        qpos[:, 0], qpos[:, 1], qpos[:, 2] = x, y, CHASSIS_Z
        qpos[:, 3], qpos[:, 6] = torch.cos(0.5 * yaw), torch.sin(0.5 * yaw)
        for q in self.steer_qs:
            qpos[:, q] = steer
        self.car.set_qpos(qpos)
        vel = torch.zeros((B, self.n_dofs), dtype=gs.tc_float, device=gs.device)
        # The linear velocity of a free joint is expressed in the world frame.
        vel[:, 0], vel[:, 1] = speed * torch.cos(yaw), speed * torch.sin(yaw)
        for d in (*self.drive_dofs, *self.spin_dofs):
            vel[:, d] = speed / WHEEL_RADIUS
        self.car.set_dofs_velocity(vel)

    def step(self, steer_cmd: torch.Tensor, speed_target: torch.Tensor) -> None:
        """
        Command the steering servos (rad, clipped to ``STEER_LIMIT`` by the caller's policy) and the rear wheel speed
        (m/s), then advance one step. ``steer_cmd`` may carry gradient; ``speed_target`` is a constant.
        """
        steer_cmd = steer_cmd.reshape(self.n_envs)
        # Same angle on both front wheels, as `torch.stack([steer_cmd, steer_cmd])` of the users' script.
        self.car.control_dofs_position(torch.stack([steer_cmd, steer_cmd], dim=1), self.steer_dofs)
        wheel_speed = (speed_target.detach().reshape(self.n_envs, 1) / WHEEL_RADIUS).expand(self.n_envs, 2)
        self.car.control_dofs_velocity(wheel_speed.to(gs.tc_float).contiguous(), self.drive_dofs)
        self.scene.step()
        self.env_steps += self.n_envs

    def read_pose(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x, y, yaw, signed forward speed and mean front-wheel angle, shape (B,) each."""
        pos = self.car.get_pos()
        yaw = yaw_from_quat(self.car.get_quat())
        vel = self.car.get_vel()
        speed = vel[:, 0] * torch.cos(yaw) + vel[:, 1] * torch.sin(yaw)
        steer = self.car.get_dofs_position(self.steer_dofs).mean(dim=1)
        return pos[:, 0], pos[:, 1], yaw, speed, steer

    def observe(
        self,
        reference: TorchReference,
        prev_idx: torch.Tensor | None = None,
        preview_distances: Sequence[float] = (),
    ) -> Observation:
        """
        Read the pose and compute the tracking errors against the nearest point of the path (on the segments around
        the nearest sample, searched near ``prev_idx`` when given, see ``nearest_reference_index``), and the reference
        points and speeds at ``preview_distances`` (m) of arc length ahead of that point, the points in the car's
        frame (x forward, y left, from the chassis origin). Every value but ``idx`` is continuous in the pose and
        differentiable.
        """
        x, y, yaw, speed, steer = self.read_pose()
        idx = nearest_reference_index(x, y, reference, prev_idx=prev_idx)
        s, e_lat, ref_yaw = reference.project(x, y, idx)
        e_head = wrap_angle_torch(yaw - ref_yaw)
        # The speed the car is told to drive at: a constant of the reference at its nearest sample (its wheels get it,
        # without gradient).
        ref_speed = reference.at("speed", idx)
        if preview_distances:
            ahead = s[:, None] + torch.as_tensor(preview_distances, dtype=s.dtype, device=s.device)[None, :]
            dx, dy = reference.interp("pos_x", ahead) - x[:, None], reference.interp("pos_y", ahead) - y[:, None]
            c, si = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
            preview_xy = torch.stack([c * dx + si * dy, c * dy - si * dx], dim=-1)
            preview_speed = reference.interp("speed", ahead)
        else:
            preview_xy, preview_speed = x.new_zeros((self.n_envs, 0, 2)), x.new_zeros((self.n_envs, 0))
        return Observation(
            x=x,
            y=y,
            yaw=yaw,
            speed=speed,
            steer=steer,
            e_lat=e_lat,
            e_head=e_head,
            e_speed=speed - ref_speed,
            idx=idx,
            ref_speed=ref_speed,
            preview_xy=preview_xy,
            preview_speed=preview_speed,
            preview_distances=tuple(preview_distances),
        )

    # ------------------------------------------------------------------ closed loop

    def rollout(
        self,
        reference: TorchReference,
        controller: Callable[[Observation], torch.Tensor],
        start: StartState,
        n_steps: int,
        preview_distances: Sequence[float] = (),
        fail_lateral: float = math.inf,
    ) -> Trajectory:
        """
        Run ``controller`` in closed loop for ``n_steps`` from ``start``.

        An environment stops counting (``active`` False, its rows are still simulated) once it reaches the end of its
        path or its lateral error exceeds ``fail_lateral``. Gradients are recorded unless called under
        ``torch.no_grad()``. The trajectory holds ``n_steps + 1`` observations (the last one after the last step).
        """
        self.reset(start)
        traj = Trajectory(dt=self.dt)
        idx = start.idx.to(gs.device)
        active = torch.ones(self.n_envs, dtype=torch.bool, device=gs.device)
        for t in range(n_steps + 1):
            obs = self.observe(reference, prev_idx=idx, preview_distances=preview_distances)
            idx = obs.idx
            active = active & (idx < reference.n.to(idx.device) - 1) & (obs.e_lat.detach().abs() <= fail_lateral)
            traj.obs.append(obs)
            traj.active.append(active.clone())
            if t == n_steps:
                break
            cmd = controller(obs).reshape(self.n_envs)
            traj.steer_cmd.append(cmd)
            self.step(cmd, obs.ref_speed)
        return traj


def sample_start_states(
    reference: TorchReference,
    generator: torch.Generator,
    lateral: float = 0.3,
    heading: float = 0.2,
    steer: float = 0.1,
    speed_jitter: float = 0.1,
    end_margin: float = 0.0,
) -> StartState:
    """
    Sample one start state per environment on its reference: a uniform position along the arc length (keeping
    ``end_margin`` meters before the end), then uniform offsets in [-lateral, lateral] m across the path, [-heading,
    heading] rad of heading, [-steer, steer] rad of wheel angle and a speed within ``speed_jitter`` (relative) of the
    reference speed.
    """
    B = reference.n_envs
    dtype = reference["s"].dtype

    def u(scale):
        return (2.0 * torch.rand(B, generator=generator, dtype=dtype) - 1.0) * scale

    length = reference.at("s", reference.n - 1)
    s0 = torch.rand(B, generator=generator, dtype=dtype) * torch.clamp(length - end_margin, min=0.0)
    idx = torch.clamp(torch.searchsorted(reference["s"], s0[:, None].contiguous())[:, 0], max=reference.n - 1)
    rx, ry, ryaw = reference.at("pos_x", idx), reference.at("pos_y", idx), reference.at("yaw", idx)
    off = u(lateral)
    return StartState(
        x=rx - off * torch.sin(ryaw),
        y=ry + off * torch.cos(ryaw),
        yaw=ryaw + u(heading),
        speed=reference.at("speed", idx) * (1.0 + u(speed_jitter)),
        steer=u(steer),
        idx=idx,
    )


def path_start_states(reference: TorchReference) -> StartState:
    """Start exactly on the first reference point of each environment's path, at the reference speed."""
    B = reference.n_envs
    idx = torch.zeros(B, dtype=torch.long)
    zeros = torch.zeros(B, dtype=reference["s"].dtype)
    return StartState(
        x=reference.at("pos_x", idx),
        y=reference.at("pos_y", idx),
        yaw=reference.at("yaw", idx),
        speed=reference.at("speed", idx),
        steer=zeros,
        idx=idx,
    )


def assign_paths(paths: Sequence, n_envs: int) -> TorchReference:
    """A ``TorchReference`` giving the paths to the environments in turn (env i follows path i mod len(paths))."""
    return TorchReference(paths, np.arange(n_envs) % len(paths))
