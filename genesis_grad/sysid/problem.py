"""
The identification loss: mean squared joint-position error of the multiple shooting windows, as a function of the
log-space parameter vector ``z`` (see ``parameters``), with and without its gradient.

``loss(z)`` runs the windows forward without a graph; ``loss_and_grad(z)`` runs them with the selected parameters as
tensors tracking gradients, through the stock setters made differentiable by the plugin, and back-propagates.
``window_vjp(z, vector)`` gives, in a scene with one parameter copy per window (``SysIdSim(per_env_params=True)``),
the vector-Jacobian product of each window's residuals separately: ``v_b^T J_b`` for every window ``b`` from one
reverse pass, the rows the Gauss-Newton method builds ``J^T J`` from (see ``optimize``). The counts: every simulated
environment-step is one forward step, every reversed one a backward step (a backward step of the Panda costs about 4
forward steps of wall-clock on CPU, see docs/sysid.md).
"""

from __future__ import annotations

import numpy as np

from .parameters import ParamSpec, from_z, z_bound
from .sim import SysIdSim
from .trajectory import Trajectory


class GradientUnavailable(RuntimeError):
    """The model parameters do not receive gradients: the plugin's differentiable parameter setters are missing."""

    def __init__(self, detail: str):
        super().__init__(
            f"the model parameters got no gradient ({detail}): this install lacks differentiable parameter setters "
            "(the plugin, or the upstream series with its parameter patch); use a gradient-free method (cma, nelder-mead)"
        )


class SysIdProblem:
    """
    The identification problem: a simulator, the windows of a trajectory and the selected parameters.

    Parameters
    ----------
    sim : SysIdSim
        Built with one environment per window.
    traj : Trajectory
    spec : ParamSpec
    window : int
        Steps per window.
    bound_ratio : float
        Each parameter is bounded to ``[nominal / ratio, nominal * ratio]``.

    Attributes
    ----------
    nominal : np.ndarray
        The model's values of the selected parameters (``z = 0``).
    bound : float
        ``|z| <= bound``.
    backward_steps : int
        Environment-steps reversed so far.
    """

    def __init__(self, sim: SysIdSim, traj: Trajectory, spec: ParamSpec, window: int, bound_ratio: float = 10.0):
        self.sim, self.traj, self.spec, self.window = sim, traj, spec, window
        self.windows = sim.windows(traj, window)
        self.nominal = spec.gather(sim.nominal)
        self.bound = z_bound(bound_ratio)
        self.groups = spec.groups()
        self.backward_steps = 0

    @property
    def forward_steps(self) -> int:
        return self.sim.forward_steps

    @property
    def total_steps(self) -> int:
        """Forward plus backward environment-steps."""
        return self.sim.forward_steps + self.backward_steps

    def values(self, z: np.ndarray) -> np.ndarray:
        """Parameter values of coordinates ``z``."""
        return from_z(np.asarray(z, dtype=np.float64), self.nominal)

    def simulate(self, z):
        """
        Simulated positions (B, W, n_dofs) for coordinates ``z`` (a tensor that may track gradients): shape (p,),
        shared by every window, or (B, p), one row per window (a scene with ``per_env_params``).
        """
        import torch

        z = torch.as_tensor(z, dtype=torch.float64)
        values = from_z(z, self.nominal)
        params = {kind: (values[..., pos], dofs) for kind, (pos, dofs) in self.groups.items()}
        return self.sim.rollout(params, self.windows)

    def residuals(self, z) -> np.ndarray:
        """Simulated minus measured positions, flattened (no graph)."""
        import torch

        with torch.no_grad():
            return (self.simulate(z) - self.windows.q).reshape(-1).numpy()

    def loss(self, z) -> float:
        """Mean squared joint-position error over every window, step and dof (no graph)."""
        return float(np.mean(self.residuals(z) ** 2))

    def loss_and_grad(self, z) -> tuple[float, np.ndarray]:
        """
        The loss and its gradient with respect to ``z``, by back-propagation through the rollout.

        Raises
        ------
        GradientUnavailable
            When the parameters are not in the autograd graph (no issue-13 setters).
        """
        import torch

        zt = torch.tensor(np.asarray(z, dtype=np.float64), requires_grad=True)
        with torch.enable_grad():
            loss = ((self.simulate(zt) - self.windows.q) ** 2).mean()
            if not loss.requires_grad:
                raise GradientUnavailable("the loss does not depend on them in the graph")
            loss.backward()
        B, W = self.windows.shape
        self.backward_steps += B * W
        if not torch.is_tensor(zt.grad):
            raise GradientUnavailable("their .grad is None after backward")
        return float(loss.detach()), zt.grad.numpy().copy()

    def window_vjp(self, z, vector=None, keep=None) -> tuple[float, np.ndarray | None]:
        """
        The loss at ``z`` and, per window ``b``, the vector-Jacobian product ``v_b^T J_b`` of its residuals ``r_b``
        (simulated minus measured positions, (W, n_dofs)) with respect to ``z``: one forward pass with a graph, one
        reverse pass. Every window runs with its own copy of the parameters, so that the reverse pass keeps the
        windows' gradients apart.

        Parameters
        ----------
        z : np.ndarray, shape (p,)
        vector : np.ndarray of shape (B, W, n_dofs), optional
            ``v``; default the residuals themselves, which gives the rows ``J_b^T r_b`` (their sum is ``N / 2`` times
            the gradient of the loss, ``N`` the number of residuals).
        keep : callable, optional
            ``keep(loss) -> bool``, asked after the forward pass: False skips the reverse pass (a rejected trial point
            costs its forward steps only) and returns ``(loss, None)``.

        Returns
        -------
        (float, np.ndarray of shape (B, p) or None)

        Raises
        ------
        ValueError
            When the scene has one parameter copy for all windows.
        GradientUnavailable
            When the parameters are not in the autograd graph (no issue-13 setters).
        """
        import torch

        if not self.sim.per_env_params:
            raise ValueError("window_vjp needs a scene with one parameter copy per window (per_env_params=True)")
        B, W = self.windows.shape
        zt = torch.tensor(np.tile(np.asarray(z, dtype=np.float64), (B, 1)), requires_grad=True)
        with torch.enable_grad():
            r = self.simulate(zt) - self.windows.q
            loss = float((r.detach() ** 2).mean())
            if keep is not None and not keep(loss):
                return loss, None
            if not r.requires_grad:
                raise GradientUnavailable("the loss does not depend on them in the graph")
            v = r.detach() if vector is None else torch.as_tensor(vector, dtype=torch.float64)
            (r * v).sum().backward()
        self.backward_steps += B * W
        if not torch.is_tensor(zt.grad):
            raise GradientUnavailable("their .grad is None after backward")
        return loss, zt.grad.numpy().copy()
