"""
The simulator of system identification: one Genesis scene of the robot, built differentiable, that replays the
recorded control targets from recorded states (multiple shooting windows, one window per environment).

The scene has gravity, but no collisions and no joint limits: identification data is free-space motion inside the
limits (the generator keeps its targets inside them), and constraints would make the gradient of armature
unavailable (the plugin refuses a tracked armature where constraint rows read it).

Simulated steps are counted per environment: a window of ``W`` steps in a batch of ``B`` windows costs ``W * B``
forward steps; ``SysIdProblem`` counts each reversed step as one backward step.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ParameterError, TrajectoryFileError
from .parameters import KINDS
from .trajectory import Trajectory


def default_robot() -> str:
    """The Franka Panda shipped with genesis-world (the variant whose fingers have their own servos, no tendon).

    Found without importing Genesis, so that ``genesis-grad --help`` stays instant.
    """
    spec = importlib.util.find_spec("genesis")
    root = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else Path(".")
    return str(root / "assets" / "xml" / "franka_emika_panda" / "panda_no_tendon.xml")


class _DropRecords(logging.Filter):
    """A logging filter dropping the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@dataclass
class Windows:
    """Multiple shooting windows of a trajectory, in robot dof order (torch tensors, float64).

    ``q0``/``dq0``: (B, n_dofs) start states; ``target_pos``/``target_vel``: (B, W, n_actuated) targets (``target_vel``
    None for a pure position servo); ``q``: (B, W, n_dofs) measured positions after each step; ``start``: (B,) sample
    index of each window's start.
    """

    q0: object
    dq0: object
    target_pos: object
    target_vel: object
    q: object
    start: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(number of windows, steps per window)."""
        return tuple(self.q.shape[:2])


class SysIdSim:
    """
    A robot in a scene built for system identification, with ``n_envs`` environments (one per window).

    Parameters
    ----------
    robot_file : str
        MJCF (``.xml``) or URDF (``.urdf``, base fixed) file. Every joint but a fixed base must have one dof.
    dt : float
        Simulation step (s): the trajectory's sample step.
    n_envs : int
        Number of environments (windows simulated side by side).
    requires_grad : bool
        Build the scene differentiable (needed by the gradient-based fits).
    per_env_params : bool
        Give every environment its own copy of the dof parameters (``RigidOptions(batch_dofs_info=True)``), so that
        one reverse pass returns one gradient per window (the Jacobian rows of the Gauss-Newton method). Values shared
        by every window are broadcast.

    Attributes
    ----------
    dof_names : list of str
        The robot's joints, in local dof order.
    actuated : list of int
        Local indices of the dofs with a position servo (kp > 0).
    nominal : dict of str to np.ndarray
        The model's own value of each parameter kind, per dof.
    forward_steps : int
        Environment-steps simulated so far.
    """

    def __init__(
        self, robot_file: str, dt: float, n_envs: int = 1, requires_grad: bool = True, per_env_params: bool = False
    ):
        import genesis as gs

        import genesis_grad_patch  # noqa: F401  (installs the differentiable controls, getters and parameters)

        if not gs._initialized:
            gs.init(backend=gs.cpu, precision="64", logging_level="warning")
        path = Path(robot_file)
        if path.suffix.lower() == ".urdf":
            morph = gs.morphs.URDF(file=str(path), fixed=True, collision=False)
        elif path.suffix.lower() == ".xml":
            morph = gs.morphs.MJCF(file=str(path), collision=False)
        else:
            raise ParameterError(f"{robot_file}: the robot must be an MJCF (.xml) or URDF (.urdf) file")
        self.scene = gs.Scene(
            sim_options=gs.options.SimOptions(dt=dt, requires_grad=requires_grad),
            rigid_options=gs.options.RigidOptions(
                enable_collision=False,
                enable_self_collision=False,
                enable_joint_limit=False,
                batch_dofs_info=per_env_params,
            ),
            show_viewer=False,
        )
        # Loading a robot whose visual meshes are not closed (Genesis's own Franka: 17 of them) logs one warning per
        # mesh about the inertia estimate, on every `sysid generate` / `fit`; the identification reads the file's
        # inertial values and never collides (collision is off): those lines are dropped, every other one is kept.
        quiet = _DropRecords("Mesh is not watertight")
        gs.logger.addFilter(quiet)
        try:
            self.robot = self.scene.add_entity(morph)
        finally:
            gs.logger.removeFilter(quiet)
        self.scene.build(n_envs=n_envs)
        self.n_envs = n_envs
        self.dt = dt
        self.requires_grad = requires_grad
        self.per_env_params = per_env_params
        self.robot_file = str(robot_file)
        joints = [j for j in self.robot.joints if j.n_dofs > 0]
        if any(j.n_dofs != 1 for j in joints):
            bad = next(j.name for j in joints if j.n_dofs != 1)
            raise ParameterError(f"{robot_file}: joint {bad!r} has several dofs; only 1-dof joints are supported")
        self.dof_names = [j.name for j in joints]
        try:
            self.nominal = {k: self._get(k) for k in KINDS}
        except gs.GenesisException as exc:
            raise ParameterError(f"{robot_file}: {str(exc).splitlines()[0]} (a tendon or non-PD actuator)") from None
        self.actuated = [i for i in range(len(self.dof_names)) if self.nominal["kp"][i] > 0.0]
        lower, upper = self.robot.get_dofs_limit()
        self.limits = (self._np(lower), self._np(upper))
        self.forward_steps = 0

    @staticmethod
    def _np(t) -> np.ndarray:
        t = t.detach().cpu().numpy()
        return t[0] if t.ndim == 2 else t

    def _get(self, kind: str) -> np.ndarray:
        return self._np(getattr(self.robot, f"get_dofs_{kind}")()).astype(np.float64)

    # ------------------------------------------------------------------ data

    def windows(self, traj: Trajectory, window: int) -> Windows:
        """
        Cut ``traj`` into ``self.n_envs`` consecutive windows of ``window`` steps (samples past the last whole window
        are not used).

        Raises
        ------
        TrajectoryFileError
            When the trajectory is shorter than ``n_envs * window`` steps.
        """
        import torch

        B, W = self.n_envs, window
        if B * W > len(traj) - 1:
            raise TrajectoryFileError(
                f"the trajectory has {len(traj) - 1} steps, fewer than {B} windows of {W} steps: use a shorter --window"
            )
        col = [traj.joints.index(n) for n in self.dof_names]
        act = [traj.actuated.index(self.dof_names[i]) for i in self.actuated]
        start = np.arange(B) * W
        rows = start[:, None] + np.arange(W)[None]  # controls of rows i drive step i -> i + 1
        q, dq = traj.q[:, col], traj.velocities()[:, col]

        def t(a):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)

        return Windows(
            q0=t(q[start]),
            dq0=t(dq[start]),
            target_pos=t(traj.target_pos[:, act][rows]),
            target_vel=None if traj.target_vel is None else t(traj.target_vel[:, act][rows]),
            q=t(q[rows + 1]),
            start=start,
        )

    # ------------------------------------------------------------------ simulation

    def rollout(self, params: dict[str, tuple[object, list[int]]], windows: Windows):
        """
        Simulate every window from its measured start state under the recorded targets.

        Parameters
        ----------
        params : dict
            kind -> (values, local dof indices): passed to ``robot.set_dofs_<kind>`` after ``scene.reset()`` and
            before the first step (values may track gradients). Parameters not given get the model's values.
            Values are shared by every window (shape (n,)) or, with ``per_env_params``, one row per window (B, n).
        windows : Windows

        Returns
        -------
        torch.Tensor, shape (B, W, n_dofs)
            Simulated positions after each step (in the autograd graph under grad mode).
        """
        import torch

        B, W = windows.shape
        if B != self.n_envs:
            raise ValueError(f"{B} windows for a scene of {self.n_envs} environments")
        robot = self.robot
        self.scene.reset()
        # Every kind is written, the model's values where not given: scene.reset() does not restore parameters, so
        # the values of an earlier rollout (another selection, another method) would otherwise stay in effect.
        for kind in KINDS:
            full = torch.as_tensor(self.nominal[kind], dtype=torch.float64)
            if kind in params:
                values, dofs = params[kind]
                values = torch.as_tensor(values, dtype=torch.float64)
                full = full.expand(*values.shape[:-1], -1).clone()
                full[..., dofs] = values
            if self.per_env_params and full.ndim == 1:
                full = full.expand(B, -1)  # autograd sums the windows' gradients back
            getattr(robot, f"set_dofs_{kind}")(full)
        # The restart state is data, not a parameter: untracked values.
        robot.set_dofs_position(windows.q0)
        robot.set_dofs_velocity(windows.dq0)
        out = []
        for k in range(W):
            if windows.target_vel is None:
                robot.control_dofs_position(windows.target_pos[:, k], dofs_idx_local=self.actuated)
            else:
                robot.control_dofs_position_velocity(
                    windows.target_pos[:, k], windows.target_vel[:, k], dofs_idx_local=self.actuated
                )
            self.scene.step()
            out.append(robot.get_dofs_position())
        self.forward_steps += B * W
        return torch.stack(out, dim=1)

    def record(self, values: dict[str, np.ndarray], time: np.ndarray, target_pos, target_vel, q0: np.ndarray):
        """
        One noise-free run of the whole record from rest at ``q0`` (the generator): positions and velocities.

        Needs a scene of one environment. ``values`` are full per-dof values of every kind.
        """
        import torch

        if self.n_envs != 1:
            raise ValueError("record() needs a scene built with n_envs=1")
        robot = self.robot
        T = len(time)
        self.scene.reset()
        with torch.no_grad():
            for kind in KINDS:
                value = torch.as_tensor(values[kind], dtype=torch.float64)
                getattr(robot, f"set_dofs_{kind}")(value[None] if self.per_env_params else value)
            robot.set_dofs_position(torch.as_tensor(q0[None], dtype=torch.float64))
            robot.set_dofs_velocity(torch.zeros(1, len(q0), dtype=torch.float64))
            q, dq = [self._np(robot.get_dofs_position())], [self._np(robot.get_dofs_velocity())]
            for i in range(T - 1):
                tp = torch.as_tensor(target_pos[i][None], dtype=torch.float64)
                if target_vel is None:
                    robot.control_dofs_position(tp, dofs_idx_local=self.actuated)
                else:
                    tv = torch.as_tensor(target_vel[i][None], dtype=torch.float64)
                    robot.control_dofs_position_velocity(tp, tv, dofs_idx_local=self.actuated)
                self.scene.step()
                q.append(self._np(robot.get_dofs_position()))
                dq.append(self._np(robot.get_dofs_velocity()))
        self.forward_steps += T - 1
        return np.stack(q), np.stack(dq)
